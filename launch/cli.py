"""The ``sweep`` command line (one module past 500 lines: it is the whole CLI surface, each command
a thin shell over its layer's module, and splitting it would scatter the shared options).

Bad input of any kind ends with one line, ``error: <what is wrong, where>``,
and exit code 2; nothing is written. Commands contributed by experiment
families (``sweep.commands`` entry points) are loaded only when called, so
``sweep status`` never imports torch.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from launch.errors import UserError

if TYPE_CHECKING:
    from launch.spec_set import SpecSet
    from launch.tasks import Run

CLUSTERS = ["slurm", "local"]


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan and ±inf (a range check lets nan through)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


# harness commands that import torch live in their own modules, loaded on use
LAZY_COMMANDS = {"verify": "launch.verify:verify_command", "resume": "launch.resume:resume_command",
                 "upload": "launch.hub:upload_command", "download": "launch.hub:download_command"}


class _LazyEntry:
    def __init__(self, target: str):
        self.target = target

    def load(self) -> Any:
        import importlib

        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


class SweepGroup(click.Group):
    def _plugins(self) -> dict[str, Any]:
        found: dict[str, Any] = {name: _LazyEntry(t) for name, t in LAZY_COMMANDS.items()}
        found.update({ep.name: ep for ep in entry_points(group="sweep.commands")})
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        ep = self._plugins().get(name)
        if ep is None:
            return None
        try:
            return ep.load()
        except (ImportError, AttributeError) as e:  # a family not installed / not built yet
            reason = str(e)

            def unavailable(**_: Any) -> None:
                raise UserError(f"sweep {name} is unavailable: {reason}")

            return click.Command(name, help=f"(unavailable: {reason})", callback=unavailable)


@click.group(cls=SweepGroup)
def cli() -> None:
    """Grid sweeps of small training runs on SLURM or this machine."""


def _load(spec_path: str, root: str | None, only: str | None = None) -> tuple[SpecSet, list[Run]]:
    """(the spec — a set of parts when composite, see launch.spec_set —, its runs that ``only`` selects)."""
    from launch.spec_set import expand_set, load_spec_set
    from launch.tasks import parse_only, select

    sset = load_spec_set(spec_path, root=root)
    runs = expand_set(sset)
    return sset, select(runs, parse_only(only, runs))


def _distinct_runs(loaded: list[tuple[SpecSet, list[Run]]]) -> list[Run]:
    """The runs of several specs, each once (a composite and one of its parts may both be named).
    Two specs that name different runs in one directory cannot both be right about it: a UserError,
    rather than keeping whichever came first (its numbers would then stand for the other's runs)."""
    seen: dict[str, Run] = {}
    out = []
    for _, runs in loaded:
        for r in runs:
            first = seen.get(r.rel_dir)
            if first is None:
                seen[r.rel_dir] = r
                out.append(r)
            elif first.run_key != r.run_key:
                raise UserError(f"{r.rel_dir}: spec {first.spec!r} names run {first.run_key} there and spec "
                                f"{r.spec!r} run {r.run_key}; name one of them")
    return out


root_option = click.option("--root", type=click.Path(file_okay=False), default=None,
                           help="Tree root (default: the spec's root, usually ./checkpoints).")
only_option = click.option("--only", default=None, metavar="EXPR",
                           help="Filter runs, e.g. 'n_layers=1,use_mlp=false' (also group=, task=, seed=, spec=).")


@cli.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--cluster", type=click.Choice(CLUSTERS), required=True, help="Where to run.")
@root_option
@only_option
@click.option("--dry-run", is_flag=True, help="Print runs, arrays and sbatch parameters; write nothing.")
@click.option("--retry", "retry", default=None, metavar="STATES",
              help="Also resubmit runs that ended in these states, e.g. failed,timeout,node_fail "
                   "(failed, cancelled, timeout, out_of_memory, node_fail, preempted).")
@click.option("--retry-failed", is_flag=True, help="Also resubmit every run that ended without completing "
                                                   "(--retry with all those states).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Local executor: runs at once (default: CPU count).")
@click.option("--partition", default=None)
@click.option("--time", "time_min", type=click.IntRange(min=1), default=None, help="Minutes per job.")
@click.option("--gpus", type=click.IntRange(min=0), default=None)
@click.option("--cpus", type=click.IntRange(min=1), default=None)
@click.option("--mem", "mem_gb", type=FiniteFloatRange(min=0, min_open=True), default=None, help="GB per job.")
@click.option("--account", default=None)
@click.option("--qos", default=None)
@click.option("--constraint", default=None)
@click.option("--setup", multiple=True, help="A shell line run before the job (repeatable).")
@click.option("--throttle", "array_parallelism", type=click.IntRange(min=1), default=None,
              help="At most N array elements at once (%N).")
@click.option("--signal-delay", "signal_delay_s", type=click.IntRange(min=1), default=None,
              help="Seconds before the time limit SLURM signals the job to checkpoint and requeue "
                   "(default: a quarter of --time, at most 90).")
@click.option("--no-snapshot", is_flag=True, help="Run the jobs from the live checkout, not from a snapshot of "
                                                  "the code taken at launch (<root>/.sweep/code/<hash>).")
def launch(spec_path: str, cluster: str, root: str | None, only: str | None, dry_run: bool, retry: str | None,
           retry_failed: bool, concurrency: int | None, no_snapshot: bool, **resources: Any) -> None:
    """Submit the runs of SPEC that are not done yet; returns at once."""
    from launch.cluster_limits import LimitsQuery

    # the scheduler's limits are asked for while the launch path is imported and the spec read (sacctmgr
    # alone takes 0.2-0.3 s: asked after the imports, a 10,000-run launch waited 0.23 s for it)
    limits_query = LimitsQuery() if cluster == "slurm" else None
    try:
        from launch.launcher import launch as do_launch
        from launch.launcher import retry_states

        retry_list = [x.strip() for x in (retry or "").split(",") if x.strip()]
        retry_states(retry_failed, retry_list)  # an unknown state: before anything is read
        spec, runs = _load(spec_path, root, only)
        if not runs:
            raise UserError(f"--only {only!r} matches no run of {spec_path}")
        res = {k: v for k, v in resources.items() if v not in (None, ())}
        if "setup" in res:
            res["setup"] = list(res["setup"])
        if res.get("mem_gb") is not None and float(res["mem_gb"]).is_integer():
            res["mem_gb"] = int(res["mem_gb"])
        do_launch(spec, runs, cluster, retry_failed=retry_failed, retry=retry_list, dry_run=dry_run, resources=res,
                  concurrency=concurrency, echo=click.echo, snapshot=not no_snapshot, limits_query=limits_query)
    finally:  # a launch that stopped early (a bad spec, the controller down) leaves no scontrol running
        if limits_query is not None:
            limits_query.close()


def _warn_missing_roots(loaded: list[Any]) -> None:
    """A tree root that does not exist: most often a relative root (``root: checkpoints``)
    read from another directory than the one the sweep was launched from."""
    for root in sorted({spec.root for spec, _ in loaded}):
        if not root.is_dir():
            hint = " (a relative root is taken from the current directory; pass --root)" \
                if not root.is_absolute() else ""
            click.echo(f"warning: tree root {root.absolute()} does not exist{hint}", err=True)


def _launched_specs(root: str | None) -> tuple[str, ...]:
    """The spec files launched into a tree (from its manifests), for `sweep status` without SPEC."""
    from launch.store import Store, read_json

    store = Store(Path(root or "checkpoints"))
    found = []
    for m in sorted((store.meta / "manifests").glob("*.json")):
        spec_file = (read_json(m) or {}).get("spec_file")
        if isinstance(spec_file, str) and Path(spec_file).exists():  # a manifest of another shape: skipped
            found.append(spec_file)
    if not found:
        raise UserError(f"no SPEC given and no launched spec found under {store.root}/.sweep/manifests")
    return tuple(found)


@cli.command()
@click.argument("spec_paths", metavar="[SPEC]...", nargs=-1)
@root_option
@only_option
@click.option("-v", "--verbose", is_flag=True, help="One row per run.")
@click.option("--failed", is_flag=True, help="Rows for runs that ended without completing only, with the reason.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--no-scheduler", is_flag=True, help="Do not query SLURM; disk state only.")
def status(spec_paths: tuple[str, ...], root: str | None, only: str | None, verbose: bool, failed: bool,
           as_json: bool, no_scheduler: bool) -> None:
    """Counts of runs by state; -v for one row per run. Without SPEC: every spec launched into the tree.

    \b
    Exit codes: 0 the states are the scheduler's and the runs' own;
    3 the scheduler (sacct and squeue) did not answer: SLURM runs' states are
    from disk alone and may be stale (a warning says so); 2 bad input."""
    with _no_gc():
        _status(spec_paths, root, only, verbose, failed, as_json, no_scheduler)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Python's cycle collector off: at 50,000 runs `sweep status` allocates millions of objects and no
    cycles, and the collector's passes over them were a fifth of its time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _status(spec_paths: tuple[str, ...], root: str | None, only: str | None, verbose: bool, failed: bool,
            as_json: bool, no_scheduler: bool) -> None:
    from launch import status as stt
    from launch.store import Store

    spec_paths = spec_paths or _launched_specs(root)
    loaded = [_load(p, root, only) for p in spec_paths]
    _warn_missing_roots(loaded)
    all_rows, all_counts, all_parts = [], {}, {}
    disk_alone = False
    for spec, runs in loaded:
        headlines = {p.name: p.headline for p in spec.parts}
        statuses, warning = stt.run_statuses(Store(spec.root), runs, query=not no_scheduler,
                                             details=verbose or failed, headlines=headlines)
        if warning:
            click.echo(f"warning: {warning}", err=True)
        disk_alone = disk_alone or isinstance(warning, stt.DiskAlone)
        c = stt.counts(statuses)
        all_counts[spec.name] = c
        shown = [s for s in statuses if not failed or s.state in stt.FAILURES]
        varying = stt.varying_params(runs) if (verbose or failed) else []
        rows = [s.row(spec.root, varying) for s in shown] if (verbose or failed) else []
        all_rows += [{"spec": s.run.spec, **r} for s, r in zip(shown, rows)] if (verbose or failed) else []
        part_counts = {name: stt.counts([s for s in statuses if s.run.spec == name])
                       for name in spec.by_part(runs)} if spec.composite else {}
        if part_counts:
            all_parts[spec.name] = part_counts
        if not as_json:
            click.echo(f"{spec.name}: {len(runs)} runs — {_fmt_counts(c)}")
            for name, pc in part_counts.items():
                click.echo(f"  {name}: {sum(pc.values())} runs — {_fmt_counts(pc)}")
            if verbose or failed:
                named = {h for h in headlines.values() if h}
                headline = named.pop() if len(named) == 1 else None  # parts naming different ones: in --json
                fixed = {k: v for k, v in spec.parts[0].fixed.items()
                         if all(k in p.fixed and p.fixed[k] == v for p in spec.parts)}
                if fixed and rows:
                    click.echo("fixed (every run): " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
                if headline and rows:
                    click.echo(f"{headline}: at the last step logged (@step), mean over the lengths logged there")
                if rows:  # one write: an echo per line was a second per 50,000 runs
                    click.echo("\n".join(f"  {line}" for line in stt.status_table(rows, varying, headline)))
    if as_json:
        out: dict[str, Any] = {"counts": all_counts, "runs": all_rows}
        if all_parts:  # composite specs: their counts per part
            out["parts"] = all_parts
        click.echo(json.dumps(out, indent=1, default=str))
    if disk_alone:
        sys.exit(3)


def _fmt_counts(c: dict[str, int]) -> str:
    return ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in c.items() if n)


@cli.command()
@click.argument("spec_path", metavar="SPEC")
@root_option
@only_option
def cancel(spec_path: str, root: str | None, only: str | None) -> None:
    """Cancel the pending and running runs of SPEC (all, or those --only selects)."""
    from launch.launcher import cancel as do_cancel

    spec, runs = _load(spec_path, root, only)
    do_cancel(spec, runs, whole=only is None, echo=click.echo, warn=lambda m: click.echo(m, err=True))


@cli.command()
@click.argument("spec_paths", metavar="SPEC...", nargs=-1, required=True)
@root_option
@only_option
@click.option("--timeout", "timeout_s", type=FiniteFloatRange(min=0), default=None, help="Give up after S seconds.")
@click.option("--interval", type=FiniteFloatRange(min=0.1), default=5.0, show_default=True)
def wait(spec_paths: tuple[str, ...], root: str | None, only: str | None, timeout_s: float | None,
         interval: float) -> None:
    """Block until no run of SPEC is pending or running; exit 1 if any did not complete."""
    from launch import status as stt
    from launch.store import Store

    loaded = [_load(p, root, only) for p in spec_paths]
    _warn_missing_roots(loaded)
    t0, last = time.time(), ""
    warned: set[str] = set()
    per_root: dict[Any, list[Any]] = {}
    for spec, runs in loaded:
        per_root.setdefault(spec.root, []).append((spec, runs))
    while True:
        total: dict[str, int] = {}
        for spec_root, of_root in per_root.items():
            statuses, warning = stt.run_statuses(Store(spec_root), _distinct_runs(of_root))
            if warning and warning not in warned:  # e.g. no sacct here: the states may never change
                click.echo(f"warning: {warning}", err=True)
                warned.add(warning)
            for k, n in stt.counts(statuses).items():
                total[k] = total.get(k, 0) + n
        line = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in total.items() if n)
        if line != last:
            click.echo(f"[{time.time() - t0:6.0f}s] {line}")
            last = line
        if not any(total[k] for k in stt.ACTIVE):
            break
        if timeout_s is not None and time.time() - t0 > timeout_s:
            click.echo(f"still active after {timeout_s:.0f}s", err=True)
            sys.exit(1)
        time.sleep(interval)
    ended = {k: total[k] for k in stt.FAILURES if total.get(k)}
    if ended:
        click.echo(f"{sum(ended.values())} runs did not complete ({_fmt_counts(ended)}): "
                   f"see `sweep status --failed`", err=True)
        sys.exit(1)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("-n", "--lines", type=click.IntRange(min=1), default=40, help="Lines from the end.")
def logs(run_dir: str, lines: int) -> None:
    """Show the log of a run (its log.txt, then the scheduler's stderr of its job)."""
    from launch import store as st
    from launch.store import read_json

    d = Path(run_dir)
    state = read_json(d / st.STATE_FILE) or {}
    job_err = _job_stderr(d, state)
    if not (d / st.RUN_FILE).exists() and job_err is None:
        raise UserError(f"{run_dir}: not a run directory (no {st.RUN_FILE})")
    log = d / st.LOG_FILE
    if log.exists():
        _tail(log, lines)
    else:
        click.echo(f"{log}: no log yet")
    if state.get("error"):
        click.echo(f"==> error\n{state['error']}")
    # what the job said outside the run (setup lines, imports, the scheduler's kills): not shown
    # for a completed run, whose log.txt says it all
    if job_err is not None and job_err.exists() and state.get("state") != st.COMPLETED:
        _tail(job_err, lines)


def _tail(path: Path, lines: int) -> None:
    text = path.read_text(errors="replace").splitlines()
    click.echo(f"==> {path} (last {min(lines, len(text))} of {len(text)} lines)")
    click.echo("\n".join(text[-lines:]))


def _job_stderr(run_dir: Path, state: dict[str, Any]) -> Path | None:
    """The stderr file of the run's latest job: its tree's jobs files name the job (a run
    whose job died before it started has no directory, only that entry)."""
    from launch.store import META, Store, read_jobs

    here = run_dir.absolute()
    root = next((p for p in here.parents if (p / META / "jobs").is_dir()), None)
    if root is None:
        return None
    rel = here.relative_to(root).as_posix()
    jobs = [read_jobs(Store(root), f.stem).get(rel) for f in sorted((root / META / "jobs").glob("*.json"))]
    job = next((j for j in jobs if isinstance(j, str)), None)
    if job is None:
        return None
    if root.is_relative_to(Path.cwd()):  # shown as the user would type it
        root = root.relative_to(Path.cwd())
    if not job.startswith("local:"):
        return root / META / "submitit" / f"{job}_0_log.err"
    pid = str(state.get("job_id") or "")  # a local run: the worker that ran it last
    return root / META / "submitit-local" / pid / f"{pid}_0_log.err" if pid.isdigit() else None


@cli.command()
@click.argument("spec_paths", metavar="SPEC...", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Parquet file to write.")
@root_option
@only_option
@click.option("--include-incomplete", is_flag=True, help="Also rows of runs not completed (partial sweeps).")
def collect(spec_paths: tuple[str, ...], output: str, root: str | None, only: str | None,
            include_incomplete: bool) -> None:
    """Gather the metrics of every run into one Parquet table."""
    from launch.collect import collect as do_collect
    from launch.store import Store

    loaded = [_load(p, root, only) for p in spec_paths]
    _warn_missing_roots(loaded)
    roots = {str(spec.root) for spec, _ in loaded}
    if len(roots) > 1:
        raise UserError(f"specs use different tree roots ({', '.join(sorted(roots))}); pass --root")
    runs = _distinct_runs(loaded)
    report = do_collect(runs, Store(loaded[0][0].root), Path(output), include_incomplete=include_incomplete)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for reason, dirs in report.skipped.items():
        click.echo(f"skipped {len(dirs)} runs ({reason}): {', '.join(dirs[:3])}{' …' if len(dirs) > 3 else ''}",
                   err=True)
    for rel, problem in report.problems.items():
        click.echo(f"  {rel}: {problem}", err=True)
    click.echo(f"wrote {output}: {report.rows} rows from {report.runs} of {len(runs)} runs")
    for rel, why in report.foreign.items():
        click.echo(f"error: {rel}: not merged: {why}", err=True)
    if report.foreign:
        click.echo(f"{len(report.foreign)} run directories hold another run than the spec names there; "
                   "their rows are not in the table", err=True)
    if report.foreign or report.corrupt:  # the table holds the rest; a script must not take it as whole
        sys.exit(1)


@cli.command()
@click.argument("spec_paths", metavar="SPEC...", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="TASK_MAPPING.md", show_default=True)
@click.option("--check", is_flag=True, help="Exit 1 if the file differs from what the specs give.")
def mapping(spec_paths: tuple[str, ...], output: str, check: bool) -> None:
    """Write TASK_MAPPING.md from the specs."""
    from launch.mapping import render

    loaded = [_load(p, None) for p in spec_paths]
    args = _as_glob(spec_paths)
    text = render(loaded, args)
    if check:
        current = Path(output).read_text() if Path(output).exists() else ""
        if current != text:
            click.echo(f"{output} is stale: run `sweep mapping {args}`", err=True)
            sys.exit(1)
        click.echo(f"{output} is up to date")
        return
    tmp = Path(output).with_name(f".{Path(output).name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, output)
    except OSError as e:
        raise UserError(f"{output}: cannot write: {e.strerror or e}") from None
    click.echo(f"wrote {output}")


def _as_glob(spec_paths: tuple[str, ...]) -> str:
    """``sweeps/a.yaml sweeps/b.yaml`` -> ``sweeps/*.yaml`` when they are all of that folder's
    specs (what the shell made of the glob), so the generated header does not depend on it."""
    folders = {str(Path(p).parent) for p in spec_paths}
    if len(folders) == 1:
        folder = Path(folders.pop())
        if sorted(spec_paths) == sorted(str(p) for p in folder.glob("*.yaml")):
            return str(folder / "*.yaml")
    return " ".join(spec_paths)


def main(argv: list[str] | None = None) -> None:
    try:
        rc = cli.main(args=argv, prog_name="sweep", standalone_mode=False)
        if isinstance(rc, int) and rc:  # ctx.exit(n) returns n when click is not standalone
            sys.exit(rc)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:  # bad CLI arguments: one line, exit 2
        msg = e.format_message().replace("\n", " ")
        ctx = getattr(e, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else "sweep: "
        click.echo(f"error: {where}{msg}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:  # e.g. a --root or output path that cannot be created: one line, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"error: {where}{e.strerror or e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
