"""``sweep launch``: submit the runs of a spec that are not done yet; and ``sweep cancel``, its inverse
(one module just past 500 lines: both read the same plan of states, jobs files and local queues).

Order of work: expand → check the manifest (no renumbering) → [dry run: print
and stop] → lock → one status query → write run files → submit → record job ids.

A composite spec (:mod:`launch.spec_set`) is launched as one: its parts' manifests
are checked, its parts' locks held, and all its runs submitted together; the
manifest and jobs file each run is recorded in stay its part's.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any

from launch import status as stt
from launch import store as st
from launch.cluster_limits import ClusterLimits, LimitsQuery, cluster_limits
from launch.errors import SchedulerUnreachable, SpecError, UserError
from launch.executors import (
    DEFAULT_MAX_ARRAY_SIZE,
    DEFAULT_TIME_MIN,
    LocalBackend,
    SlurmBackend,
    Submitted,
    cancel_local,
    chunks,
    controller_problem,
    max_array_size,
    queue_code_snapshot,
    render_sbatch,
    restart_local_workers,
    restarted,
    signal_lead_s,
    slurm_parameters,
)
from launch.snapshot import make_snapshot, plan_snapshot, python_path, setup_line, snapshot_dir
from launch.spec import Spec
from launch.spec_set import SpecSet, as_set
from launch.store import (
    Store,
    compact_jobs,
    may_have_files,
    read_jobs,
    read_json,
    record_cancelled,
    record_jobs,
    write_json,
)
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


def retry_states(retry_failed: bool = False, retry: Collection[str] = ()) -> set[str]:
    """The end states whose runs a launch resubmits: ``--retry failed,timeout`` names them;
    ``--retry-failed`` is every way a run can end without completing (what ``failed`` covered
    before the scheduler's reasons had states of their own)."""
    unknown = sorted(set(retry) - set(stt.FAILURES))
    if unknown:
        raise UserError(f"sweep launch: --retry: unknown state {unknown[0]!r} (use any of: "
                        f"{', '.join(stt.FAILURES)})")
    return set(stt.FAILURES) if retry_failed else set(retry)


def plan(spec: Spec | SpecSet, runs: list[Run], store: Store, retry_failed: bool, query: bool = True,
         retry: Collection[str] = ()) -> LaunchPlan:
    sset = as_set(spec)
    again = retry_states(retry_failed, retry)
    statuses, warning = stt.run_statuses(store, runs, query=query)
    skipped: dict[str, int] = {}
    todo = []
    for s in statuses:
        if s.state in again and _finished_since(store, s.run):
            s.state = stt.COMPLETED
        if s.state == stt.NOT_SUBMITTED or s.state in again:
            todo.append(s.run)
        else:
            skipped[s.state] = skipped.get(s.state, 0) + 1
    units = [u for name, part_todo in sset.by_part(todo).items()
             for u in pack_units(part_todo, sset.part(name).pack, sset.part(name).experiment)]
    return LaunchPlan(to_submit=todo, skipped=skipped, units=units, warning=warning)


def _finished_since(store: Store, run: Run) -> bool:
    """A run about to be retried whose own state.json says completed now: its job ended after
    the status was read. Read here, under the launch lock, so a finished run is never retrained."""
    return store.state(run).get("state") == st.COMPLETED


def launch(spec: Spec | SpecSet, runs: list[Run], cluster: str, *, retry_failed: bool = False,
           retry: Collection[str] = (), dry_run: bool = False, resources: dict[str, Any] | None = None,
           concurrency: int | None = None, echo: Any = print, snapshot: bool = True,
           limits_query: LimitsQuery | None = None) -> LaunchPlan:
    """``limits_query``: the cluster's limits, asked for already (the CLI asks before reading the spec)."""
    sset = as_set(spec)
    store = Store(sset.root)
    parts = sset.by_part(runs)  # part name -> its runs: the manifests, locks and jobs files are per part
    for name, part_runs in parts.items():
        store.check_manifest(name, part_runs)
        store.check_other_specs(name, part_runs)
    tops = store.top_dirs()
    for r in runs:
        if may_have_files(r.rel_dir, tops):
            store.check_run_dir(r)
    res = {**sset.resources, **(resources or {})}
    if cluster not in ("slurm", "local"):
        raise UserError(f"unknown cluster {cluster!r} (use slurm or local)")
    check_signal_lead(sset, resources or {})

    down = controller_problem() if cluster == "slurm" else None
    if down and not dry_run:  # one probe, not sbatch's and submitit's retries (18 s and more)
        raise SchedulerUnreachable(f"sweep launch: the SLURM controller does not answer ({down}); "
                                   "nothing submitted")
    limits = None
    if cluster == "slurm" and not down:
        limits = limits_query.result(res.get("qos")) if limits_query else cluster_limits(res.get("qos"))
    check_cluster(sset, resources or {}, 0, limits)  # partition, time: before anything is written
    if dry_run:
        if down:
            echo(f"warning: the SLURM controller does not answer ({down}); cluster limits not checked, "
                 f"MaxArraySize taken as SLURM's default {DEFAULT_MAX_ARRAY_SIZE}")
        p = plan(sset, runs, store, retry_failed, query=cluster == "slurm", retry=retry)
        check_cluster(sset, resources or {}, len(p.units), limits)
        _print_plan(sset, runs, p, cluster, res, store, concurrency, echo, limits,
                    array_size=DEFAULT_MAX_ARRAY_SIZE if down else None,
                    code=plan_snapshot(store) if snapshot else None)
        return p

    with contextlib.ExitStack() as locks:
        for name in sorted(parts):  # one order for every launch: no deadlock between overlapping ones
            locks.enter_context(store.lock(name))
        p = plan(sset, runs, store, retry_failed, retry=retry)
        if p.warning:
            echo(f"warning: {p.warning}")
        if not p.to_submit:
            echo(f"nothing to submit: {_fmt_skipped(p.skipped)}")
            return p
        check_cluster(sset, resources or {}, len(p.units), limits)
        old_manifests = {name: store.read_manifest(name) for name in parts}
        for name, part_runs in parts.items():
            store.write_manifest(name, os.path.abspath(sset.part(name).file), part_runs, old_manifests[name])
        try:
            code, code_dir = make_snapshot(store) if snapshot else (None, None)
        except BaseException:  # e.g. no space left: nothing was launched
            _restore_manifests(store, old_manifests)
            raise
        if cluster == "slurm":
            params = slurm_parameters(res, sset.name)
            if code_dir is not None:  # in the sbatch script: a requeue runs the same snapshot
                params["setup"] = [setup_line(code_dir), *params.get("setup", [])]
            backend: SlurmBackend | LocalBackend = SlurmBackend(store, params)
            array_size = max_array_size()
        else:
            backend = LocalBackend(store, concurrency or res.get("local_concurrency") or os.cpu_count() or 1)
            array_size = 0
        tops = store.top_dirs()
        previous = {r.rel_dir: store.state(r) if may_have_files(r.rel_dir, tops) else {} for r in p.to_submit}
        infos = {r.rel_dir: store.run_info(r, sset.part(r.spec).wandb, sset.part(r.spec).max_requeues,
                                           sset.part(r.spec).fail_on_nonfinite_loss, sset.part(r.spec).retry_on,
                                           code)
                 for r in p.to_submit}
        part_of = {r.rel_dir: r.spec for r in p.to_submit}
        for r in p.to_submit:
            if previous[r.rel_dir]:  # a retry: reset what the last attempt left
                store.update_state(r, base=previous[r.rel_dir], state=st.SUBMITTED, cluster=cluster,
                                   submitted_at=time.time(), requeues=0, error=None, ended_at=None)
            # a fresh run gets no files yet: the jobs file below says it is submitted and
            # the job writes run.json when it starts (20,000 fewer files at 10,000 runs)
        done: dict[str, str] = {}  # run dir -> job id, recorded as each job array is accepted

        def accepted(subs: list[Submitted]) -> None:
            jobs = {rel: s.job_id for s in subs for rel in s.unit}
            by_part: dict[str, dict[str, str]] = {}
            for rel, job in jobs.items():
                by_part.setdefault(part_of[rel], {})[rel] = job
            for name, part_jobs in by_part.items():
                record_jobs(store, name, part_jobs)
            done.update(jobs)

        try:
            with python_path(code_dir if cluster == "local" else None):  # the local workers import from it
                submitted = backend.submit(p.units, array_size, infos, accepted)
        except BaseException:
            for name in parts:
                with contextlib.suppress(OSError):  # else the log stays: read_jobs reads it all the same
                    compact_jobs(store, name)
            for r in p.to_submit:  # leave the runs that were not submitted as they were
                if previous[r.rel_dir] and r.rel_dir not in done:
                    write_json(store.run_dir(r) / st.STATE_FILE, previous[r.rel_dir])
            if done:
                echo(f"{len(done)} of {len(p.to_submit)} runs were submitted before this failure (recorded); "
                     f"launching again submits the rest")
            else:
                _restore_manifests(store, old_manifests)
            raise
        for name in parts:
            compact_jobs(store, name)
        # a run whose job started before the jobs file was written has its own state.json already
        ids = sorted({s.job_id.split("_")[0] for s in submitted})
        what = f"{len(ids)} job array(s) {', '.join(ids[:5])}{'…' if len(ids) > 5 else ''}" \
            if cluster == "slurm" else f"the local queue {ids[0]}"
        echo(f"submitted {len(p.to_submit)} runs in {len(p.units)} jobs to {what}"
             + (f"; skipped {_fmt_skipped(p.skipped)}" if p.skipped else ""))
        return p


def _restore_manifests(store: Store, old_manifests: dict[str, dict[str, Any] | None]) -> None:
    """Put the manifests back as they were before a launch that submitted nothing."""
    for name, old_manifest in old_manifests.items():
        if old_manifest:
            write_json(store.manifest_path(name), old_manifest)
        else:  # nothing launched: the spec may still be edited freely
            store.manifest_path(name).unlink(missing_ok=True)


def check_signal_lead(sset: SpecSet, flags: dict[str, Any]) -> None:
    """Refuse a signal lead (``signal_delay_s``) not shorter than the time limit: SLURM would
    signal (checkpoint, requeue) the job as soon as it starts, again and again."""
    res = {**sset.resources, **flags}
    lead, limit_s = signal_lead_s(res), 60 * int(res.get("time_min", DEFAULT_TIME_MIN))
    if lead < limit_s:
        return
    time_from = (f"--time {flags['time_min']}" if "time_min" in flags else
                 f"resources.time_min: {res['time_min']}" if "time_min" in res else "the default time")
    problem = (f"{lead} s is not shorter than the time limit ({time_from} min = {limit_s} s): SLURM would "
               f"signal the job to requeue as soon as it starts; use a shorter lead or a longer time")
    if "signal_delay_s" in flags:
        raise SpecError("sweep launch", "--signal-delay", problem)
    raise SpecError(sset.parts[0].file, "resources.signal_delay_s", problem)


def check_cluster(sset: SpecSet, flags: dict[str, Any], n_jobs: int, limits: ClusterLimits | None) -> None:
    """Refuse, before anything is submitted, what the cluster would refuse or never run: a partition
    it does not have, a time limit over the partition's MaxTime, more jobs than MaxJobCount leaves room for."""
    if limits is None:  # the scheduler cannot be asked: sbatch will say
        return
    res = {**sset.resources, **flags}

    def where(key: str, flag: str) -> tuple[str, str]:
        return ("sweep launch", flag) if key in flags else (sset.parts[0].file, f"resources.{key}")

    if "partition" in res and res["partition"] not in limits.partitions:
        raise SpecError(*where("partition", "--partition"), f"no partition {res['partition']!r} on this cluster "
                        f"(partitions: {', '.join(sorted(limits.partitions)) or 'none'})")
    name = res.get("partition") or limits.default_partition
    max_time = limits.partitions.get(name) if name else None
    time_min = int(res.get("time_min", DEFAULT_TIME_MIN))
    if max_time is not None and time_min > max_time:
        given = f"{time_min} min" if "time_min" in res else f"not given: the default {time_min} min"
        raise SpecError(*where("time_min", "--time"), f"{given} is more than partition {name}'s MaxTime "
                        f"({max_time} min): SLURM would refuse the jobs or leave them pending for good")
    if limits.max_job_count is not None and limits.jobs_held is not None:
        room = max(0, limits.max_job_count - limits.jobs_held)
        if n_jobs > room:
            raise SpecError("sweep launch", "MaxJobCount", f"{n_jobs} jobs to submit, but the cluster's MaxJobCount "
                            f"{limits.max_job_count} leaves room for {room} ({limits.jobs_held} job records held "
                            f"now); pack runs into fewer jobs (pack: N) or launch part of the grid (--only)")
    if limits.max_submit is not None and limits.user_jobs is not None:
        room = max(0, limits.max_submit - limits.user_jobs)
        if n_jobs > room:
            raise SpecError("sweep launch", "MaxSubmitJobs", f"{n_jobs} jobs to submit, but {limits.max_submit_from} "
                            f"{limits.max_submit} leaves room for {room} ({limits.user_jobs} of yours queued or "
                            f"running); pack runs into fewer jobs (pack: N), launch part of the grid (--only), or "
                            f"launch the rest when jobs have ended")


def _fmt_skipped(skipped: dict[str, int]) -> str:
    if not skipped:
        return "no runs"
    parts = [f"{n} {k.replace('_', ' ')}" for k, n in sorted(skipped.items())]
    ended = [k for k in stt.FAILURES if skipped.get(k)]
    hint = f" (use --retry {','.join(ended)} to resubmit them)" if ended else ""
    return ", ".join(parts) + hint


def _print_plan(sset: SpecSet, runs: list[Run], p: LaunchPlan, cluster: str, res: dict[str, Any], store: Store,
                concurrency: int | None, echo: Any, limits: ClusterLimits | None = None,
                array_size: int | None = None, code: tuple[str, Any] | None = None) -> None:
    kind = f"composite of {len(sset.parts)} specs, " if sset.composite else ""
    echo(f"spec {sset.name} ({sset.file}): {kind}experiment {sset.experiment_name}, {len(runs)} runs in "
         f"{len({r.group for r in runs})} groups, tree {store.root}")
    submit = {r.rel_dir for r in p.to_submit}
    for name, part_runs in sset.by_part(runs).items():
        if sset.composite:
            n = sum(r.rel_dir in submit for r in part_runs)
            echo(f"part {name} ({sset.part(name).file}): {len(part_runs)} runs in "
                 f"{len({r.group for r in part_runs})} groups, {n} to submit")
        fixed = sset.part(name).fixed
        echo(f"{'  ' if sset.composite else ''}fixed (every run): "
             + (", ".join(f"{k}={v}" for k, v in fixed.items()) or "none"))
        for r in part_runs:
            mark = "submit" if r.rel_dir in submit else "skip  "
            params = ", ".join(f"{k}={v}" for k, v in r.params.items())
            echo(f"  {mark} {r.group} task_{r.task:04d} seed{r.seed} [{r.run_key}] {params}")
    echo(f"would submit {len(p.to_submit)} runs as {len(p.units)} jobs" +
         (f"; skip {_fmt_skipped(p.skipped)}" if p.skipped else ""))
    if cluster == "slurm":
        size = array_size or max_array_size()
        arrays = chunks(p.units, size)
        echo(f"job arrays (MaxArraySize {size}): " + (", ".join(
            f"#{i}: {len(a)} elements (offset {i * size})" for i, a in enumerate(arrays)) or "none"))
        params = slurm_parameters(res, sset.name)
        if code is not None:
            params["setup"] = [setup_line(code[1]), *params.get("setup", [])]
        echo("sbatch parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()))
        echo(f"time limit: {params['time']} min per job; SLURM signals it {params['signal_delay_s']} s before the "
             f"limit (USR2: checkpoint and requeue)")
        echo(f"submitit folder: {store.submitit_dir().absolute()}")
        echo(f"code: a snapshot of the packages' sources, {code[1]} (hash {code[0]}; --no-snapshot: the live "
             "checkout)" if code else "code: the live checkout (--no-snapshot)")
        if limits is not None:
            name = res.get("partition") or limits.default_partition
            max_time = limits.partitions.get(name) if name else None
            room = "" if limits.max_job_count is None or limits.jobs_held is None else \
                f"; MaxJobCount {limits.max_job_count}, {limits.jobs_held} job records held: room for " \
                f"{max(0, limits.max_job_count - limits.jobs_held)} jobs"
            if limits.max_submit is not None and limits.user_jobs is not None:
                room += (f"; {limits.max_submit_from} {limits.max_submit}, {limits.user_jobs} of yours queued or "
                         f"running: room for {max(0, limits.max_submit - limits.user_jobs)}")
            echo(f"cluster: partition {name} (MaxTime {'unlimited' if max_time is None else f'{max_time} min'})"
                 + room)
        if arrays:
            echo("--- sbatch script of the first array ---")
            echo(render_sbatch(params, store.submitit_dir(), len(arrays[0])))
    else:
        echo(f"local executor: at most {concurrency or res.get('local_concurrency') or os.cpu_count()} "
             f"runs at once")
        echo(f"code: a snapshot of the packages' sources, {code[1]} (hash {code[0]})" if code else
             "code: the live checkout (--no-snapshot)")
    if p.warning:
        echo(f"warning: {p.warning}")


def cancel(sset: SpecSet, runs: list[Run], *, whole: bool, echo: Any = print, warn: Any = print) -> None:
    """Cancel the pending and running runs among ``runs`` (``whole``: all of the spec's, no --only): whole
    job arrays where it can, the local queues' workers, and nothing written for runs that never started.

    Under the spec's locks, as a launch: a `launch --retry-failed` meanwhile took the runs whose workers
    were being restarted for failed and ran them a second time beside those workers."""
    store = Store(sset.root)
    with contextlib.ExitStack() as locks:
        for name in sorted({p.name for p in sset.parts}):  # launch's order: no deadlock between the two
            locks.enter_context(store.lock(name))
        _cancel(store, sset, runs, whole, echo, warn)


def _cancel(store: Store, sset: SpecSet, runs: list[Run], whole: bool, echo: Any, warn: Any) -> None:
    runs, edited = _as_launched(store, runs, sset if whole else None)
    # every part's jobs (a composite's arrays span its parts), to cancel whole arrays where it can
    jobs = {rel: job for part in sset.parts for rel, job in read_jobs(store, part.name).items()}
    on_slurm = any(not jobs[r.rel_dir].startswith("local:") for r in runs if r.rel_dir in jobs)
    down = controller_problem() if on_slurm else None
    if down:  # one probe, not scancel's retries; nothing is marked cancelled
        raise SchedulerUnreachable(f"sweep cancel: the SLURM controller does not answer ({down}); "
                                   "nothing cancelled")
    statuses, _ = stt.run_statuses(store, runs)
    active = [s for s in statuses if s.state in stt.ACTIVE]
    _refuse_split_units(store, jobs, {r.rel_dir for r in runs}, active)
    slurm_ids = sorted({s.job_id for s in active if s.job_id and not s.job_id.startswith("local:")})
    local = [s for s in active if s.job_id and s.job_id.startswith("local:")]
    signalled_at = time.time()  # an end written after this may be the run's answer to our signal
    if slurm_ids:
        p = subprocess.run(["scancel", *_whole_arrays(slurm_ids, jobs)], capture_output=True, text=True)
        if p.returncode != 0:
            err = p.stderr.strip().splitlines()
            raise UserError(f"scancel failed: {err[-1] if err else f'exit {p.returncode}'}")
    if local:
        stopped = cancel_local(store, {s.run.rel_dir: s.job_id for s in local if s.job_id})
        # the queue's runs that were not cancelled lost their workers too: give them new ones, running
        # the code snapshot their launch took
        for qid, n in stopped.items():
            code = queue_code_snapshot(store, qid)
            where = snapshot_dir(store, code) if code else None
            if where is not None and not where.is_dir():  # else Python would import the checkout without a word
                warn(f"warning: the code snapshot of local queue {qid} ({where}) is gone: its runs left "
                     "restart on the installed code (their state.json then names no snapshot)")
                where = None
            try:
                with python_path(where):
                    restart_local_workers(store, qid, n)
            finally:
                restarted(store, qid)
    unstarted: dict[str, dict[str, str]] = {}  # spec -> run dir -> job id: no directory is made for them
    ended_meanwhile = 0
    for s in active:
        if (store.run_dir(s.run) / st.STATE_FILE).exists():
            # read again: a run that ended before the cancel reached it keeps its end (a completed run marked
            # cancelled lost its numbers from collect); one that ended after — an experiment that stops early
            # on Ctrl-C and returns — was ended by the cancel, not completed
            now = store.state(s.run)
            ended_at = now.get("ended_at")
            if now.get("state") in st.ENDED and isinstance(ended_at, (int, float)) and ended_at < signalled_at:
                ended_meanwhile += 1
                continue
            store.update_state(s.run, base=now, state=st.CANCELLED, ended_at=time.time(),
                               error=stt.CANCELLED_BY_SWEEP)
        elif s.job_id:
            unstarted.setdefault(s.run.spec, {})[s.run.rel_dir] = s.job_id
    for name, cancelled in unstarted.items():  # (its lock is held)
        record_cancelled(store, name, cancelled)
    echo(f"cancelled {len(active) - ended_meanwhile} runs" + (f" (jobs {', '.join(slurm_ids[:8])})" if slurm_ids else "")
         + (f"; {ended_meanwhile} ended on their own meanwhile and keep that end" if ended_meanwhile else "")
         + (f"; {edited} of the runs are as launched, before the spec was edited" if edited else ""))


def _as_launched(store: Store, runs: list[Run], whole: SpecSet | None = None) -> tuple[list[Run], int]:
    """``runs`` with each run whose directory the manifest records under another run key (the spec was
    edited after the launch) replaced by the run launched there, and, with ``whole`` (the spec, when no
    --only narrows it), the launched runs its text no longer names (an axis value or a seed removed); and
    how many runs are as launched: cancelling an edited spec found no run of its own running and cancelled
    nothing, while the launched runs went on."""
    manifests: dict[str, dict[str, Any]] = {}
    out, edited = [], 0
    for r in runs:
        if r.spec not in manifests:
            manifests[r.spec] = store.manifest_runs(r.spec)
        entry = manifests[r.spec].get(r.rel_dir)
        key = entry.get("run_key") if isinstance(entry, dict) else None
        if isinstance(key, str) and key != r.run_key:
            config = entry.get("config") if isinstance(entry.get("config"), dict) else r.config  # type: ignore[union-attr]
            r = replace(r, run_key=key, config=config)
            edited += 1
        out.append(r)
    if whole is not None:
        named = {r.rel_dir for r in runs}
        for part in whole.parts:
            entries = manifests.get(part.name)
            for rel, entry in (store.manifest_runs(part.name) if entries is None else entries).items():
                if rel in named or not isinstance(entry, dict) or not isinstance(entry.get("run_key"), str):
                    continue
                config = entry.get("config") if isinstance(entry.get("config"), dict) else {}
                task, seed = entry.get("task"), entry.get("seed")
                out.append(Run(spec=part.name, experiment=part.experiment_name, group=str(entry.get("group")),
                               task=task if isinstance(task, int) else -1, seed=seed if isinstance(seed, int) else -1,
                               rel_dir=rel, run_key=entry["run_key"], config=config, params={}))
                edited += 1
    return out, edited


def _refuse_split_units(store: Store, jobs: dict[str, str], selected: set[str], active: list[stt.RunStatus]) -> None:
    """A packed job (``pack:``) runs several runs; cancelling it for some of them would stop (or, queued,
    drop) the others, which were not selected: refused, with one line, before anything is cancelled."""
    def unfinished(rel: str) -> bool:
        return store.state(rel).get("state") not in (st.COMPLETED, st.FAILED, st.CANCELLED)

    runs_of: dict[str, list[str]] = {}  # job id -> its runs (one pass: cancel may name 50,000 runs)
    for rel, job in jobs.items():
        runs_of.setdefault(job, []).append(rel)
    unit_of: dict[str, dict[str, list[str]]] = {}  # local queue -> run -> the runs of its unit
    for s in active:
        job = s.job_id or ""
        if job.startswith("local:"):  # the queue's unit files name the runs of each job
            if job not in unit_of:
                qdir = store.meta / "queue" / job.split(":", 1)[1]
                unit_of[job] = {rel: unit for item in [*qdir.glob("todo/*.json"), *qdir.glob("claimed/*.json")]
                                for unit in [(read_json(item) or {}).get("rel_dirs") or []] if len(unit) > 1
                                for rel in unit}  # only a packed unit can be split
            together = unit_of[job].get(s.run.rel_dir, [])
        else:
            together = runs_of.get(job, [])
        left = [rel for rel in together if rel not in selected and unfinished(rel)]
        if left:
            raise UserError(f"sweep cancel: {s.run.rel_dir} runs in one job with {left[0]} (pack), which --only "
                            "does not select: select both or neither; nothing cancelled")


def _whole_arrays(ids: list[str], jobs: dict[str, str]) -> list[str]:
    """The ids scancel takes for ``ids``: an array's id when all its elements the jobs files know of are
    among them (a 50,000-run cancel is then 50 ids, not 50,000), else its elements one by one."""
    elements: dict[str, set[str]] = {}
    for job in jobs.values():
        if "_" in job and not job.startswith("local:"):
            elements.setdefault(job.split("_")[0], set()).add(job)
    wanted: dict[str, list[str]] = {}
    for j in ids:
        wanted.setdefault(j.split("_")[0], []).append(j)
    out: list[str] = []
    for master, of_master in sorted(wanted.items()):
        known = elements.get(master, set())
        out += [master] if known and known <= set(of_master) else sorted(of_master)
    return out
