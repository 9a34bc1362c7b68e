"""``sweep resume RUN_DIR --steps N [--lr X]``: continue a finished run as a new run.

The parent directory is only read. The child is a new directory beside it,
``<parent>_resume<N>`` (``_resume<N>_lr<X>`` with ``--lr``), so one look at the
tree says what it is and several extensions of one parent never collide. It
holds, from the start:

* ``run.json``: the parent's identity with the extended config, a new run key,
  and ``parent`` = {run_dir, run_key, step, resume_state, sha256}: where it came from;
* a copy of the parent's newest resume state (``resume_<step>.pt`` + sidecar),
  which the experiment's ordinary resume path loads as its starting point;
* a copy of the parent's ``metrics.jsonl``, so the child's history is whole:
  steps up to the parent's end, then the new ones, numbered on from there.

The child appears atomically (built in a hidden directory, then renamed), so a
failed command leaves nothing behind. Rerunning the same command on a child
that did not finish continues it; a finished child is refused.

What changes in the config is the experiment's business, through an optional
hook ``extend(config, steps, lr) -> new_config`` (raise UserError when the
run cannot be extended); its resume check must accept those fields differing
from the parent's finished state. An experiment without ``extend`` cannot be
resumed this way.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from launch import store as st
from launch.cli import FiniteFloatRange
from launch.errors import UserError
from launch.experiment import METRICS_FILE, later_params, load_experiment, with_later_params
from launch.store import Store, read_json, write_json
from launch.tasks import run_key

CHILD_INFIX = "_resume"


@dataclass
class Parent:
    run_dir: Path         # as given
    root: Path            # the tree root it lives in
    rel_dir: str          # relative to root
    info: dict[str, Any]  # its run.json
    experiment: Any       # its experiment (which has an extend hook)
    resume_state: Path    # its newest resume state
    step: int             # the step of that state


def find_parent(run_dir: Path) -> Parent:
    """Everything ``sweep resume`` needs from the parent, or one UserError line."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a run directory (" + ("a file" if run_dir.exists() else "does not exist")
                        + ")")
    info = read_json(run_dir / st.RUN_FILE)
    if info is None:
        raise UserError(f"{run_dir}: not a run directory (no {st.RUN_FILE})")
    if not isinstance(info, dict) or info.get("_corrupt") or not isinstance(info.get("config"), dict) \
            or not isinstance(info.get("experiment"), str):
        raise UserError(f"{run_dir / st.RUN_FILE}: unreadable run file (not the JSON `sweep launch` writes)")
    state = read_json(run_dir / st.STATE_FILE)
    state = {} if state is None else state if isinstance(state, dict) else {"_corrupt": True}
    if state.get("state") != st.COMPLETED:
        now = "corrupt state.json" if state.get("_corrupt") else f"state: {state.get('state') or 'never started'}"
        raise UserError(f"{run_dir}: run is not finished ({now}); only a completed run can be extended")
    experiment = load_experiment(info["experiment"])
    if not hasattr(experiment, "extend"):
        raise UserError(f"experiment {info['experiment']!r} cannot extend a finished run (it has no extend hook)")
    from launch.checkpoint import RESUME_PREFIX, resume_states  # torch: only once the cheap checks pass
    from launch.verify import BAD_STATUSES, verify_file

    states = resume_states(run_dir)
    if not states:
        raise UserError(f"{run_dir}: no resume state (resume_<step>.pt) to continue from")
    newest = states[-1]
    checked = verify_file(newest)
    if checked.status in BAD_STATUSES:
        raise UserError(f"{newest}: the parent's final resume state is {checked.status}: {checked.detail}")
    step = int(newest.name[len(RESUME_PREFIX):-len(".pt")])
    root, rel = _locate(run_dir, str(info.get("rel_dir") or ""))
    return Parent(run_dir=run_dir, root=root, rel_dir=rel, info=info, experiment=experiment, resume_state=newest,
                  step=step)


def _locate(run_dir: Path, rel_dir: str) -> tuple[Path, str]:
    """(tree root, run dir relative to it) from run.json's rel_dir; a run dir
    moved out of its tree counts as a tree of its own (root = its parent)."""
    here = run_dir.resolve()
    rel_parts = Path(rel_dir).parts
    if rel_parts and here.parts[-len(rel_parts):] == rel_parts:
        return Path(*here.parts[:-len(rel_parts)]), rel_dir
    return here.parent, here.name


def child_rel_dir(parent_rel: str, steps: int, lr: float | None) -> str:
    name = f"{Path(parent_rel).name}{CHILD_INFIX}{steps}" + (f"_lr{lr:g}" if lr is not None else "")
    return str(Path(parent_rel).with_name(name))


def child_info(parent: Parent, steps: int, lr: float | None) -> dict[str, Any]:
    """The child's run.json: extended config (the experiment's hook), new key, provenance."""
    info = parent.info
    config = parent.experiment.extend(with_later_params(parent.experiment, dict(info["config"])), steps, lr)
    problems = parent.experiment.check(config)
    if problems:
        raise UserError(f"the extended config is invalid: {problems[0]}")
    changed = {k: [info["config"].get(k), v] for k, v in config.items() if info["config"].get(k) != v}
    sidecar = read_json(_sidecar(parent.resume_state)) or {}
    return {**info, "rel_dir": child_rel_dir(parent.rel_dir, steps, lr), "config": config,
            "run_key": run_key(info["experiment"], config, later_params(parent.experiment)),
            "parent": {"run_dir": parent.rel_dir, "run_key": info.get("run_key"), "step": parent.step,
                       "resume_state": parent.resume_state.name, "sha256": sidecar.get("sha256"),
                       "steps": steps, "lr": lr, "changed": changed}}


def create_child(parent: Parent, info: dict[str, Any]) -> tuple[Path, bool]:
    """Make the child directory (atomically); (its path, whether it was made now).
    An unfinished child of the same extension is reused, so the command can be rerun."""
    child = parent.root / info["rel_dir"]
    if child.exists():
        old = read_json(child / st.RUN_FILE) or {}
        if old.get("run_key") != info["run_key"] or (old.get("parent") or {}).get("run_key") != info["parent"]["run_key"]:
            raise UserError(f"{child} already exists and is not this extension of {parent.run_dir}")
        if (read_json(child / st.STATE_FILE) or {}).get("state") == st.COMPLETED:
            raise UserError(f"{child} already exists and is completed; extend it instead (sweep resume {child} …)")
        return child, False
    stage = child.with_name(f".{child.name}.tmp{os.getpid()}")
    try:
        stage.mkdir()
        for src in (parent.resume_state, _sidecar(parent.resume_state),
                    parent.run_dir / METRICS_FILE):
            if src.exists():
                shutil.copy2(src, stage / src.name)
        write_json(stage / st.RUN_FILE, info)
        os.rename(stage, child)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return child, True


@click.command("resume")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--steps", type=click.IntRange(min=1), required=True, help="Steps (iterations, epochs…) to add.")
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Learning rate of the added steps (the experiment's extend hook says how it is used).")
@click.option("--cluster", type=click.Choice(["local", "slurm"]), default=None,
              help="Submit the new run instead of running it here in the foreground.")
@click.option("--time", "time_min", type=click.IntRange(min=1), default=None, help="SLURM: minutes for the job.")
@click.option("--partition", default=None, help="SLURM partition.")
@click.option("--cpus", type=click.IntRange(min=1), default=None, help="SLURM: CPUs for the job.")
@click.option("--gpus", type=click.IntRange(min=0), default=None, help="SLURM: GPUs for the job.")
def resume_command(run_dir: Path, steps: int, lr: float | None, cluster: str | None, **resources: Any) -> None:
    """Continue the finished run in RUN_DIR for --steps more as a NEW run beside it
    (RUN_DIR_resume<N>), starting from RUN_DIR's final resume state. RUN_DIR is
    not changed; the new run.json names it as `parent`."""
    parent = find_parent(run_dir)
    info = child_info(parent, steps, lr)
    child, created = create_child(parent, info)
    changes = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in info["parent"]["changed"].items()) or "none"
    shown = _shown(child)
    click.echo(f"{'created' if created else 'continuing'} {shown} from {parent.run_dir} at step {parent.step} "
               f"(run {info['run_key']}; config: {changes})")
    store = Store(parent.root)
    if cluster is None:
        from launch.runner import run_one

        if not run_one(parent.root, info["rel_dir"]):
            click.echo(f"error: the extended run failed; see `sweep logs {shown}`", err=True)
            sys.exit(1)
        click.echo(f"completed {shown}")
        return
    from launch.executors import LocalBackend, SlurmBackend, max_array_size, slurm_parameters

    previous = store.state(info["rel_dir"])
    store.update_state(info["rel_dir"], state=st.SUBMITTED, cluster=cluster, submitted_at=time.time(),
                       requeues=0, error=None, ended_at=None)
    try:
        if cluster == "slurm":
            res = {k: v for k, v in resources.items() if v is not None}
            backend: Any = SlurmBackend(store, slurm_parameters(res, f"{info.get('spec', 'sweep')}_resume"))
            submitted = backend.submit([[info["rel_dir"]]], max_array_size())
        else:
            submitted = LocalBackend(store, 1).submit([[info["rel_dir"]]])
    except BaseException:
        if created:
            shutil.rmtree(child, ignore_errors=True)
        elif previous:
            write_json(child / st.STATE_FILE, previous)
        else:
            (child / st.STATE_FILE).unlink(missing_ok=True)
        raise
    store.update_state(info["rel_dir"], job_id=submitted[0].job_id)
    click.echo(f"submitted {shown} as job {submitted[0].job_id}; follow it with `sweep logs {shown}`")


def _sidecar(checkpoint: Path) -> Path:
    from launch.checkpoint import SIDECAR_SUFFIX

    return checkpoint.with_name(checkpoint.name + SIDECAR_SUFFIX)


def _shown(path: Path) -> Path:
    """A path relative to the working directory when it is below it (shorter to read and paste)."""
    try:
        return path.relative_to(Path.cwd().resolve())
    except ValueError:
        return path
