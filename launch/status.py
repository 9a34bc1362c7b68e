"""Where every run stands: its state on disk, corrected by one scheduler query.

The run writes ``running``/``completed``/``failed`` itself; what it cannot
write (killed, cancelled, still queued, requeued) comes from the scheduler:
one ``sacct`` call for all jobs, ``squeue`` when accounting is off, disk alone
(with a warning) when the scheduler is unreachable.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch import store as st
from launch.experiment import PROGRESS_FILE
from launch.local_procs import is_local_worker, local_queue_alive, process_started_at
from launch.store import (
    Store,
    may_have_files,
    read_bytes,
    read_cancelled,
    read_jobs,
    read_json,
    read_state,
    run_path,
)
from launch.tasks import Run

NOT_SUBMITTED, PENDING, RUNNING, COMPLETED, FAILED, REQUEUED = (
    "not_submitted", "pending", "running", "completed", "failed", "requeued")
# how a run ended without completing: failed (its code, or the scheduler's FAILED, BOOT_FAIL, ...)
# or what the scheduler did to its job (the scheduler's own word stays in scheduler_state)
CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED = (
    "cancelled", "timeout", "out_of_memory", "node_fail", "preempted")
FAILURES = [FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED]
STATES = [NOT_SUBMITTED, PENDING, RUNNING, REQUEUED, COMPLETED, *FAILURES]
ACTIVE = {PENDING, RUNNING, REQUEUED}
CANCELLED_BY_SWEEP = "cancelled by sweep cancel"
CANCELLED_BEFORE_START = "cancelled by sweep cancel before it started"

# SLURM job states -> ours
_SLURM = {
    "PENDING": PENDING, "CONFIGURING": PENDING, "RUNNING": RUNNING, "COMPLETING": RUNNING,
    "SUSPENDED": RUNNING, "RESIZING": RUNNING, "STAGE_OUT": RUNNING, "SIGNALING": RUNNING,
    "REQUEUED": REQUEUED, "REQUEUE_HOLD": REQUEUED, "REQUEUE_FED": REQUEUED,
    "COMPLETED": COMPLETED,
    "FAILED": FAILED, "CANCELLED": CANCELLED, "TIMEOUT": TIMEOUT, "NODE_FAIL": NODE_FAIL, "PREEMPTED": PREEMPTED,
    "BOOT_FAIL": FAILED, "DEADLINE": FAILED, "OUT_OF_MEMORY": OUT_OF_MEMORY, "REVOKED": FAILED,
}


_FROM_DISK = {st.SUBMITTED: PENDING, st.RUNNING: RUNNING, st.REQUEUED: REQUEUED}


@dataclass
class RunStatus:
    run: Run
    state: str
    job_id: str | None = None
    scheduler_state: str | None = None
    reason: str | None = None
    step: int | None = None
    total: int | None = None
    headline: str | None = None  # the spec's headline metric, "<split>/<name>"
    headline_value: float | None = None  # its value at the last step logged (mean over lengths)
    headline_step: int | None = None
    updated_at: float | None = None

    def row(self, root: Path | None = None, varying: list[str] | None = None) -> dict[str, Any]:
        """One run as `status -v`/`--json` show it: ``run_dir`` is what `sweep logs` takes, ``params`` the
        parameters that vary between the runs shown (``varying``; all the run's axis values if None)."""
        params = self.run.params if varying is None else \
            {k: (self.run.seed if k == "seed" else self.run.params.get(k)) for k in varying}
        return {"rel_dir": self.run.rel_dir, "run_dir": run_path(root, self.run.rel_dir),
                "group": self.run.group, "task": self.run.task, "seed": self.run.seed, "run_key": self.run.run_key,
                "params": params, "state": self.state, "job_id": self.job_id,
                "scheduler_state": self.scheduler_state, "reason": self.reason, "step": self.step,
                "total": self.total, "headline": self.headline, "headline_value": self.headline_value,
                "headline_step": self.headline_step,
                "age_s": None if self.updated_at is None else round(time.time() - self.updated_at, 1)}


def varying_params(runs: list[Run]) -> list[str]:
    """The parameters that take more than one value among ``runs`` (axis order; ``seed`` last)."""
    values: dict[str, set[Any]] = {}
    for r in runs:
        for k, v in r.params.items():
            values.setdefault(k, set()).add((type(v), v) if isinstance(v, (str, int, float, bool)) or v is None
                                            else json.dumps(v, sort_keys=True, default=str))
    names = [k for k, vs in values.items() if len(vs) > 1 or any(k not in r.params for r in runs)]
    return names + (["seed"] if len({r.seed for r in runs}) > 1 else [])


def status_table(rows: list[dict[str, Any]], varying: list[str], headline: str | None) -> list[str]:
    """`status -v`: a header, then one line per run (and its reason below it, when there is one)."""
    cols = ["state", *varying, "step", "age", *([headline] if headline else []), "job", "run dir"]
    cells = []
    for r in rows:
        prog = f"{r['step']}/{r['total']}" if r.get("step") is not None else "-"
        value = r.get("headline_value")
        shown = "-" if value is None else f"{value:.4g}" + (f" @{r['headline_step']}" if r.get("headline_step")
                                                               is not None else "")
        cells.append([r["state"], *(_cell(r["params"].get(k)) for k in varying), prog, _age(r.get("age_s")),
                      *([shown] if headline else []), r.get("job_id") or "-", r["run_dir"]])
    widths = [max(len(c), *map(len, column)) for c, column in zip(cols, zip(*cells))] if cells else \
        [len(c) for c in cols]
    line = "  ".join(f"{{:<{w}}}" for w in widths).format  # each cell left-justified to its column's width
    out = [line(*cols).rstrip()]
    for r, row in zip(rows, cells):
        out.append(line(*row).rstrip())
        if r.get("reason"):
            out.append(f"    reason: {r['reason']}")
    return out


def _cell(v: Any) -> str:
    return "-" if v is None else json.dumps(v) if isinstance(v, (bool, list, dict)) else str(v)


def _age(s: float | None) -> str:
    if s is None:
        return "-"
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s / n:.0f}{unit}"
    return f"{s:.0f}s"


class DiskAlone(str):
    """The warning of a status whose SLURM jobs' states are from disk alone: the scheduler was asked
    and did not answer (``sweep status`` then exits 3)."""


def _expand_array(jobid: str) -> list[str]:
    """``123_[0-3,7%2]`` -> ``['123_0', ..., '123_3', '123_7']``; other ids unchanged."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", jobid)
    if not m:
        return [jobid]
    base, body = m.group(1), m.group(2).split("%")[0]
    out = []
    for part in body.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += [f"{base}_{i}" for i in range(int(a), int(b) + 1)]
        elif part:
            out.append(f"{base}_{part}")
    return out


def query_slurm(job_ids: set[str]) -> tuple[dict[str, str], str | None]:
    """Scheduler states of ``job_ids`` (array elements ``123_4`` or plain ``123``).

    Returns (states, warning). One sacct call; squeue if accounting is off."""
    if not job_ids:
        return {}, None
    masters = sorted({j.split("_")[0] for j in job_ids})
    states: dict[str, str] = {}
    try:
        p = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(masters)],
                           capture_output=True, text=True, timeout=60)
        if p.returncode == 0:
            for line in p.stdout.splitlines():
                if "|" not in line:
                    continue
                jid, state = line.split("|", 1)
                for j in _expand_array(jid.strip()):
                    states[j] = state.split()[0] if state.strip() else "UNKNOWN"
            return states, None
        sacct_err = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"
    except (OSError, subprocess.TimeoutExpired) as e:
        sacct_err = str(e)
    try:
        p = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(masters)],
                           capture_output=True, text=True, timeout=60)
        if p.returncode == 0 or "Invalid job id" in p.stderr:
            for line in p.stdout.splitlines():
                if "|" in line:
                    jid, state = line.split("|", 1)
                    states[jid.strip()] = state.strip()
            return states, f"sacct unavailable ({sacct_err}); used squeue, which forgets finished jobs"
        err = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"
    except (OSError, subprocess.TimeoutExpired) as e:
        err = str(e)
    return {}, DiskAlone(f"scheduler unreachable (sacct: {sacct_err}; squeue: {err}); states are from disk alone")


def run_statuses(store: Store, runs: list[Run], query: bool = True, details: bool = False,
                 headlines: dict[str, str | None] | None = None) -> tuple[list[RunStatus], str | None]:
    """Every run's status, and a warning when the scheduler could not say. ``details``: step/total, age
    and the headline metric (``headlines``: spec name -> its ``headline:``) too."""
    # plain strings: pathlib's joins cost a second per 50,000 runs, os.path.join a tenth of one (a run
    # directory is relative, checked when the spec is expanded)
    base = os.fspath(store.root) + "/"
    state_file = "/" + st.STATE_FILE
    tops = store.top_dirs()
    disk = {r.rel_dir: read_state(base + r.rel_dir + state_file) if may_have_files(r.rel_dir, tops) else None
            for r in runs}
    jobs: dict[str, str] = {}
    cancelled: dict[str, str] = {}
    for spec in sorted({r.spec for r in runs}):
        jobs.update(read_jobs(store, spec))
        cancelled.update(read_cancelled(store, spec))
    for rel, d in disk.items():  # the latest submission's id wins over what a run recorded
        if rel not in jobs:
            continue
        if not d and cancelled.get(rel) == jobs[rel]:  # sweep cancel stopped it before it started
            disk[rel] = {"state": st.CANCELLED, "job_id": jobs[rel], "error": CANCELLED_BEFORE_START,
                         "_unstarted": True}
        elif not d:  # submitted, not started: the launcher writes no state.json for fresh runs
            disk[rel] = {"state": st.SUBMITTED, "job_id": jobs[rel], "_unstarted": True}
        elif not d.get("_corrupt"):
            d["job_id"] = jobs[rel]
    slurm_ids = {d["job_id"] for d in disk.values()
                 if d and d.get("job_id") and not str(d["job_id"]).startswith(("local:", "pid"))
                 and d.get("state") not in st.ENDED}
    sched, warning = query_slurm(slurm_ids) if query else ({}, None)
    if not query and slurm_ids:
        warning = "scheduler not queried; states are from disk alone"
    _reread_ended(store, runs, disk, sched)
    local_alive: dict[str, bool | None] = {}
    progress_file = "/" + PROGRESS_FILE
    manifests = {spec: store.manifest_runs(spec) for spec in sorted({r.spec for r in runs})}
    # specs whose headline value is shown: metrics.jsonl is read for each of their runs
    shown = {spec for spec in manifests if details and (headlines or {}).get(spec)}
    run_file = "/" + st.RUN_FILE
    out = []
    for r in runs:
        d = disk[r.rel_dir] or {}
        s = RunStatus(run=r, state=NOT_SUBMITTED, job_id=d.get("job_id"), updated_at=d.get("updated_at"))
        dstate = d.get("state")
        key = r.run_key
        entry = manifests[r.spec].get(r.rel_dir)
        if d.get("run_key") == key and entry.__class__ is dict and entry.get("run_key") == key \
                and not d.get("_unstarted"):
            # the common case, as identity_problem finds it (state.json's key is the run's). A headline
            # shown is a number from metrics.jsonl, which state.json does not vouch for: run.json, written
            # with it, does (as collect checks), so then it is read too (a run.json replaced by another
            # run's, state.json kept, must not put that run's number under this run's parameters)
            foreign = _run_file_problem(store, r, manifests[r.spec], base + r.rel_dir + run_file) \
                if r.spec in shown else None
        else:
            # run.json exists only once the run started, and then so does state.json, where the job
            # also records its run key (one file read fewer per run at 10,000 runs)
            info = _identity(store, r, d) if d and not d.get("_unstarted") else None
            foreign = store.identity_problem(r, manifests[r.spec], info)
        if foreign:  # another run's files: none of them is this run's state
            s.state, s.reason = FAILED, foreign
            out.append(s)
            continue
        if d.get("_corrupt"):
            s.state, s.reason = FAILED, "state.json is corrupt" + (f" ({d['_why']})" if d.get("_why") else "")
        elif dstate == st.COMPLETED:
            s.state = COMPLETED
        elif dstate == st.FAILED:
            s.state, s.reason = FAILED, _last_line(d.get("error"))
        elif dstate == st.CANCELLED:
            s.state, s.reason = CANCELLED, _last_line(d.get("error"))
        elif dstate in (st.PREEMPTED, st.NODE_FAIL):  # not requeued: the spec's retry_on leaves it out
            s.state, s.reason = {st.PREEMPTED: PREEMPTED, st.NODE_FAIL: NODE_FAIL}[dstate], _last_line(d.get("error"))
        elif dstate in (st.SUBMITTED, st.RUNNING, st.REQUEUED):
            jid = str(d.get("job_id") or "")
            if jid.startswith("local:"):
                if jid not in local_alive:
                    local_alive[jid] = local_queue_alive(store, jid)
                alive = local_alive[jid]
                if alive is False and dstate == st.RUNNING and _runs_here(d):
                    alive = True  # its own process still runs it, whatever became of the queue's files
                gone = alive is False or (dstate == st.RUNNING and _died_here(d))
                now = _ended_now(store, r) if gone else None
                if now is not None:  # the worker finished the run and exited after its files were read
                    s.state = {st.COMPLETED: COMPLETED, st.FAILED: FAILED, st.CANCELLED: CANCELLED,
                               st.PREEMPTED: PREEMPTED, st.NODE_FAIL: NODE_FAIL}[now["state"]]
                    s.reason = None if s.state == COMPLETED else _last_line(now.get("error"))
                elif alive is False:
                    s.state, s.reason = FAILED, "local worker exited before the run finished"
                elif dstate == st.RUNNING and _died_here(d):
                    # its queue goes on with other workers, but the one running this run is gone
                    s.state, s.reason = FAILED, f"local worker (pid {d['pid']}) died while running it (killed?)"
                else:
                    s.state = RUNNING if dstate == st.RUNNING else PENDING
            elif jid in sched:
                s.scheduler_state = sched[jid]
                mapped = _SLURM.get(sched[jid], PENDING)
                if mapped == COMPLETED:  # job ended, run never said completed
                    s.state = FAILED
                    s.reason = "job completed without completing the run"
                elif mapped in FAILURES:
                    s.state, s.reason = mapped, f"scheduler: {sched[jid]}"
                elif mapped == PENDING and (dstate in (st.REQUEUED, st.RUNNING) or d.get("requeues")):
                    # queued again after it ran (scontrol requeue, a node failure): its step is the last one saved
                    s.state = REQUEUED
                else:
                    s.state = mapped
            else:
                # scheduler not asked, unreachable, or not knowing the job yet (sacct lags
                # sbatch by a few seconds): what the run last wrote
                s.state = _FROM_DISK[dstate]
        if s.reason is None and d.get("corrupt_resume_states"):
            s.reason = _recovered(d["corrupt_resume_states"])
        if details:
            prog = read_json(base + r.rel_dir + progress_file) or {}
            s.step = prog.get("step")
            s.total = prog.get("total")
            s.headline = (headlines or {}).get(r.spec)
            if s.headline:
                s.headline_value, s.headline_step = headline_value(store, r, s.headline)
            s.updated_at = max(filter(None, [s.updated_at, prog.get("time")]), default=None)
        out.append(s)
    return out, warning


def _identity(store: Store, r: Run, d: dict[str, Any]) -> dict[str, Any] | None:
    """What identifies the run in ``r``'s directory: the run key its job recorded in state.json,
    else its run.json (None when it has none)."""
    key = d.get("run_key")
    if isinstance(key, str):
        return {"run_key": key}
    return read_json(store.run_dir(r) / st.RUN_FILE)


def _run_file_problem(store: Store, r: Run, manifest: dict[str, Any], path: str) -> str | None:
    """Why the run.json at ``path`` is not ``r``'s (as identity_problem says), or None when it is or is
    missing. Its bytes are searched for the run key as write_json writes it before any JSON is parsed
    (at 10,000 runs, parsing each run.json added ~15 % to `status -v`, the search ~8 %); a file written
    otherwise is parsed, only slower."""
    try:
        if f'"run_key": "{r.run_key}"'.encode() in read_bytes(path):
            return None
    except OSError:
        pass  # missing, a symlink, unreadable: read_json says which
    return store.identity_problem(r, manifest, read_json(path))


def _recovered(names: object) -> str:
    """The status reason of a run that resumed past resume states failing verification."""
    shown = ", ".join(map(str, names)) if isinstance(names, list) else str(names)
    return f"resumed from an older state: {shown} failed verification (moved to <name>.corrupt)"


_ENDED = {k for k, v in _SLURM.items() if v == COMPLETED or v in FAILURES}


def _reread_ended(store: Store, runs: list[Run], disk: dict[str, dict[str, Any] | None],
                  sched: dict[str, str]) -> None:
    """Read again, after the scheduler answered, the state of every run whose job it says has ended.

    The files were read before the query: a job that ended in between left a run that said
    ``running`` then and says ``completed`` (or ``failed``) now. Judged on the old files it
    would be reported failed ("job completed without completing the run") and retried, so a
    terminal scheduler state is only ever checked against files read after it."""
    for r in runs:
        d = disk[r.rel_dir]
        if not d or d.get("_corrupt") or d.get("state") in st.ENDED:
            continue
        jid = str(d.get("job_id") or "")
        if sched.get(jid) not in _ENDED:
            continue
        now = _ended_now(store, r)
        if now is not None:
            disk[r.rel_dir] = {**now, "job_id": jid}


def _ended_now(store: Store, r: Run) -> dict[str, Any] | None:
    """The run's state read now, when it says the run has ended (else None)."""
    now = read_json(store.run_dir(r) / st.STATE_FILE)
    return now if now and not now.get("_corrupt") and now.get("state") in st.ENDED else None


def _died_here(d: dict[str, Any]) -> bool:
    """The process that wrote ``running`` (pid, host in state.json) no longer runs on this machine
    (gone, or its pid now belongs to another program, as after a reboot, or to a later process)."""
    pid = d.get("pid")
    return isinstance(pid, int) and d.get("host") == socket.gethostname() and not _same_process(d)


def _runs_here(d: dict[str, Any]) -> bool:
    """The process that wrote ``running`` still runs on this machine."""
    pid = d.get("pid")
    return isinstance(pid, int) and d.get("host") == socket.gethostname() and _same_process(d)


def _same_process(d: dict[str, Any]) -> bool:
    """``d["pid"]`` is a live submitit process that started before the run's attempt did (30 s of slack):
    every unit now runs in a process of its own, so a dead run's pid may soon be another worker's, which
    kept the run "running" and `sweep wait` waiting."""
    pid, began = d["pid"], d.get("attempt_started_at")
    if not is_local_worker(pid):
        return False
    started = process_started_at(pid)
    # 30 s of slack: the boot time is in whole seconds, and the clock may have been set since boot
    return started is None or not isinstance(began, (int, float)) or started <= began + 30.0


def _last_line(text: str | None) -> str | None:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else None


def headline_value(store: Store, r: Run, headline: str, tail_bytes: int = 65536) -> tuple[float | None, int | None]:
    """The headline metric (``<split>/<name>``) at the last step the run logged it, and that step: the
    mean over the lengths logged at that step (gen/exact_match_acc of K 17..32); (None, None) when the
    end of metrics.jsonl holds none, or when metrics.jsonl is a symlink (a file the run did not write:
    the harness writes it with O_NOFOLLOW, so a link there holds another run's numbers)."""
    split, _, name = headline.partition("/")
    try:  # plain os calls (no file object): a third of this function's time at 50,000 runs
        fd = os.open(f"{os.fspath(store.root)}/{r.rel_dir}/metrics.jsonl", os.O_RDONLY | os.O_NOFOLLOW)
        try:
            tail, start = os.read(fd, tail_bytes), 0
            if len(tail) == tail_bytes:  # else (short: the end) the whole file, most often
                size = os.fstat(fd).st_size
                start = max(0, size - tail_bytes)
                tail = os.pread(fd, tail_bytes, start)
            step, values, whole = _last_step(tail, start > 0, split, name)
            # the tail began inside the last step's records: the lengths before it would be left out
            # of the mean without a word, so read further back (rare: the common case reads once)
            while values and not whole and start > 0:
                more = min(start, len(tail))  # double what is read
                start -= more
                chunk = os.pread(fd, more, start)
                if len(chunk) != more:  # the file shrank under us (rewritten in place): no sure value
                    return None, None
                tail = chunk + tail
                step, values, whole = _last_step(tail, start > 0, split, name)
        finally:
            os.close(fd)
    except OSError:  # missing, unreadable, or a symlink (ELOOP)
        return None, None
    return (sum(values.values()) / len(values), step) if values else (None, None)


def _last_step(tail: bytes, cut: bool, split: str, name: str) -> tuple[Any, dict[Any, float], bool]:
    """The last step in ``tail`` (the end of a metrics.jsonl) that logged ``split``/``name``, its value
    per length, and whether a record of an earlier step was seen before it (so that no record of the
    last step lies before ``tail``). ``cut``: ``tail`` starts mid-file, its first line maybe torn.

    A length logged twice at the last step (a resumed attempt that logged the step again) counts
    once, with its last value, as analysis.load.drop_rerun_duplicates merges such re-logs: each copy
    counted as a length of its own would weigh the discarded attempt into the mean."""
    lines = tail.decode(errors="replace").splitlines()
    if cut:
        lines = lines[1:]
    step: Any = None
    values: dict[Any, float] = {}
    quoted_name, quoted_split = f'"{name}"', f'"{split}"'
    for line in reversed(lines):
        if quoted_name not in line or quoted_split not in line:  # most lines: no JSON parse
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or rec.get("split") != split or not isinstance(rec.get("metrics"), dict):
            continue
        value = rec["metrics"].get(name)
        if not isinstance(value, (int, float)):  # a bool counts as 1.0 / 0.0, as in collect's table
            continue
        if not values:
            step = rec.get("step")
        elif rec.get("step") != step:
            return step, values, True
        length = rec.get("length")
        key = length if length is None or isinstance(length, (int, float, str)) else \
            json.dumps(length, sort_keys=True, default=str)  # a list or dict is not hashable
        values.setdefault(key, float(value))  # going backwards: the first seen is the last logged
    return step, values, False


def counts(statuses: list[RunStatus]) -> dict[str, int]:
    c = {s: 0 for s in STATES}
    for s in statuses:
        c[s.state] += 1
    return c
