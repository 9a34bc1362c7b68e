"""``sweep launch``: submit the runs of a spec that are not done yet.

Order of work: expand → check the manifest (no renumbering) → [dry run: print
and stop] → lock → one status query → write run files → submit → record job ids.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from launch import status as stt
from launch import store as st
from launch.errors import UserError
from launch.executors import (
    LocalBackend,
    SlurmBackend,
    Submitted,
    chunks,
    max_array_size,
    render_sbatch,
    slurm_parameters,
)
from launch.spec import Spec
from launch.store import Store, record_jobs, write_json
from launch.tasks import Run


@dataclass
class LaunchPlan:
    to_submit: list[Run]
    skipped: dict[str, int] = field(default_factory=dict)
    units: list[list[str]] = field(default_factory=list)
    warning: str | None = None


def pack_units(runs: list[Run], pack: int | str, experiment: Any = None) -> list[list[str]]:
    """Group runs into the units one job executes.

    ``pack: 1`` (default): one run per job. ``pack: N`` or ``auto``: runs the
    experiment says can train together (equal ``pack_key``) share a job, up to N
    (``auto``: the experiment's ``pack_size_auto``), in expansion order. An
    experiment without ``pack_key`` gets sequential units of N runs of one group."""
    if pack == 1:
        return [[r.rel_dir] for r in runs]
    key_of = getattr(experiment, "pack_key", None)
    size = int(getattr(experiment, "pack_size_auto", 1)) if pack == "auto" else int(pack)
    open_units: dict[Any, list[str]] = {}
    units: list[list[str]] = []
    for r in runs:
        key = key_of(r.config) if key_of is not None else ("group", r.group)
        if key is None:
            units.append([r.rel_dir])
            continue
        unit = open_units.get(key)
        if unit is None or len(unit) >= size:
            unit = open_units[key] = []
            units.append(unit)
        unit.append(r.rel_dir)
    return units


def plan(spec: Spec, runs: list[Run], store: Store, retry_failed: bool, query: bool = True) -> LaunchPlan:
    statuses, warning = stt.run_statuses(store, runs, query=query)
    skipped: dict[str, int] = {}
    todo = []
    for s in statuses:
        if s.state == stt.NOT_SUBMITTED or (retry_failed and s.state == stt.FAILED):
            todo.append(s.run)
        else:
            skipped[s.state] = skipped.get(s.state, 0) + 1
    return LaunchPlan(to_submit=todo, skipped=skipped, units=pack_units(todo, spec.pack, spec.experiment), warning=warning)


def launch(spec: Spec, runs: list[Run], cluster: str, *, retry_failed: bool = False, dry_run: bool = False,
           resources: dict[str, Any] | None = None, concurrency: int | None = None,
           echo: Any = print) -> LaunchPlan:
    store = Store(spec.root)
    store.check_manifest(spec.name, runs)
    store.check_other_specs(spec.name, runs)
    for r in runs:
        store.check_run_dir(r)
    res = {**spec.resources, **(resources or {})}
    if cluster not in ("slurm", "local"):
        raise UserError(f"unknown cluster {cluster!r} (use slurm or local)")

    if dry_run:
        p = plan(spec, runs, store, retry_failed, query=cluster == "slurm")
        _print_plan(spec, runs, p, cluster, res, store, concurrency, echo)
        return p

    with store.lock(spec.name):
        p = plan(spec, runs, store, retry_failed)
        if p.warning:
            echo(f"warning: {p.warning}")
        if not p.to_submit:
            echo(f"nothing to submit: {_fmt_skipped(p.skipped)}")
            return p
        if cluster == "slurm":
            backend: SlurmBackend | LocalBackend = SlurmBackend(store, slurm_parameters(res, spec.name))
            array_size = max_array_size()
        else:
            backend = LocalBackend(store, concurrency or res.get("local_concurrency") or os.cpu_count() or 1)
            array_size = 0
        old_manifest = store.read_manifest(spec.name)
        store.write_manifest(spec.name, os.path.abspath(spec.file), runs, old_manifest)
        previous = {r.rel_dir: store.state(r) for r in p.to_submit}
        infos = {r.rel_dir: store.run_info(r, spec.wandb, spec.max_requeues, spec.fail_on_nonfinite_loss) for r in p.to_submit}
        for r in p.to_submit:
            if previous[r.rel_dir]:  # a retry: reset what the last attempt left
                store.update_state(r, base=previous[r.rel_dir], state=st.SUBMITTED, cluster=cluster,
                                   submitted_at=time.time(), requeues=0, error=None, ended_at=None)
            # a fresh run gets no files yet: the jobs file below says it is submitted and
            # the job writes run.json when it starts (20,000 fewer files at 10,000 runs)
        done: dict[str, str] = {}  # run dir -> job id, recorded as each job array is accepted

        def accepted(subs: list[Submitted]) -> None:
            jobs = {rel: s.job_id for s in subs for rel in s.unit}
            record_jobs(store, spec.name, jobs)
            done.update(jobs)

        try:
            submitted = backend.submit(p.units, array_size, infos, accepted)
        except BaseException:
            for r in p.to_submit:  # leave the runs that were not submitted as they were
                if previous[r.rel_dir] and r.rel_dir not in done:
                    write_json(store.run_dir(r) / st.STATE_FILE, previous[r.rel_dir])
            if done:
                echo(f"{len(done)} of {len(p.to_submit)} runs were submitted before this failure (recorded); "
                     f"launching again submits the rest")
            elif old_manifest:
                write_json(store.manifest_path(spec.name), old_manifest)
            else:  # nothing launched: the spec may still be edited freely
                store.manifest_path(spec.name).unlink(missing_ok=True)
            raise
        # a run whose job started before the jobs file was written has its own state.json already
        ids = sorted({s.job_id.split("_")[0] for s in submitted})
        what = f"{len(ids)} job array(s) {', '.join(ids[:5])}{'…' if len(ids) > 5 else ''}" \
            if cluster == "slurm" else f"the local queue {ids[0]}"
        echo(f"submitted {len(p.to_submit)} runs in {len(p.units)} jobs to {what}"
             + (f"; skipped {_fmt_skipped(p.skipped)}" if p.skipped else ""))
        return p


def _fmt_skipped(skipped: dict[str, int]) -> str:
    if not skipped:
        return "no runs"
    parts = [f"{n} {k.replace('_', ' ')}" for k, n in sorted(skipped.items())]
    hint = " (use --retry-failed to resubmit failed runs)" if skipped.get(stt.FAILED) else ""
    return ", ".join(parts) + hint


def _print_plan(spec: Spec, runs: list[Run], p: LaunchPlan, cluster: str, res: dict[str, Any], store: Store,
                concurrency: int | None, echo: Any) -> None:
    echo(f"spec {spec.name} ({spec.file}): experiment {spec.experiment_name}, {len(runs)} runs in "
         f"{len({r.group for r in runs})} groups, tree {store.root}")
    submit = {r.rel_dir for r in p.to_submit}
    for r in runs:
        mark = "submit" if r.rel_dir in submit else "skip  "
        params = ", ".join(f"{k}={v}" for k, v in r.params.items())
        echo(f"  {mark} {r.group} task_{r.task:04d} seed{r.seed} [{r.run_key}] {params}")
    echo(f"would submit {len(p.to_submit)} runs as {len(p.units)} jobs" +
         (f"; skip {_fmt_skipped(p.skipped)}" if p.skipped else ""))
    if cluster == "slurm":
        size = max_array_size()
        arrays = chunks(p.units, size)
        echo(f"job arrays (MaxArraySize {size}): " + (", ".join(
            f"#{i}: {len(a)} elements (offset {i * size})" for i, a in enumerate(arrays)) or "none"))
        params = slurm_parameters(res, spec.name)
        echo("sbatch parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()))
        if arrays:
            echo("--- sbatch script of the first array ---")
            echo(render_sbatch(params, store.submitit_dir(), len(arrays[0])))
    else:
        echo(f"local executor: at most {concurrency or res.get('local_concurrency') or os.cpu_count()} "
             f"runs at once")
    if p.warning:
        echo(f"warning: {p.warning}")
