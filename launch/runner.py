"""What runs inside a job: one unit of work = one or more run directories.

:class:`RunUnit` is a submitit ``Checkpointable``: on preemption or at the time
limit submitit calls :meth:`RunUnit.checkpoint`, which marks the unfinished runs
``requeued`` and hands back the same unit; the experiment then resumes each run
from the resume state it left in its directory. A run requeued more than
``max_requeues`` times ends ``failed`` with that reason.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import submitit

from launch import store as st
from launch.experiment import METRICS_FILE, RunContext, load_experiment, open_append, with_later_params
from launch.provenance import git_commit
from launch.snapshot import running_snapshot
from launch.store import Store, read_json


def global_rank() -> int:
    """This process's rank in a multi-task job (0 when alone)."""
    try:
        return int(submitit.JobEnvironment().global_rank)
    except RuntimeError:
        return int(os.environ.get("SLURM_PROCID", "0"))


def current_job_id() -> str:
    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:
        return os.environ.get("SLURM_JOB_ID", f"pid{os.getpid()}")


class _Tee(io.TextIOBase):
    """Write to the job's own stream and to the run's log file."""

    def __init__(self, *streams: Any):
        self.streams = streams

    def write(self, s: str) -> int:
        for stream in self.streams:
            stream.write(s)
            stream.flush()
        return len(s)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def limit_threads(n: int | None = None) -> None:
    """One job per core slot: cap BLAS/OpenMP threads before torch is imported.

    Without this every run of the local executor (and every SLURM task without a
    cgroup) spawns a thread per core and they fight: 12 small runs took 5.9 min
    with 2 threads each and 31 s with 1 (measured on 2 cores). The user's own
    OMP_NUM_THREADS wins."""
    if n is None:
        n = int(os.environ.get("SLURM_CPUS_PER_TASK") or 0) or None
    if n is None:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(max(1, n)))


def _start(store: Store, rel_dir: str) -> tuple[dict[str, Any], dict[str, Any], float] | None:
    """Mark a run started; None when there is nothing to do (completed, unreadable, over the requeue limit)."""
    run_dir = store.run_dir(rel_dir)
    info = read_json(run_dir / st.RUN_FILE)
    if not info or info.get("_corrupt"):
        print(f"sweep: {run_dir}/{st.RUN_FILE} is missing or corrupt; skipping", file=sys.stderr)
        return None
    state = store.state(rel_dir)
    if state.get("state") in (st.COMPLETED, st.PREEMPTED, st.NODE_FAIL):  # the last two: not to be requeued
        return None
    links = [name for name in (st.LOG_FILE, METRICS_FILE) if (run_dir / name).is_symlink()]
    if links:  # appending to it would write wherever it points
        store.update_state(rel_dir, state=st.FAILED, ended_at=time.time(),
                           error=f"{links[0]} is a symlink (to {os.readlink(run_dir / links[0])}): "
                                 "a run never writes through a symlink; replace it with a plain file")
        return None
    if state.get("state") == st.RUNNING:
        # the last attempt died without a word (scontrol requeue, node failure, SIGKILL):
        # this start is a requeue too, unless the scheduler ended it in a way the spec does not retry
        ended = _previous_end(info)
        if ended is not None:
            store.update_state(rel_dir, state=ended, ended_at=time.time(), error=f"scheduler: {ended.upper()}; not "
                               f"requeued (retry_on: {info.get('retry_on')}); --retry {ended} resubmits it")
            return None
        state = store.update_state(rel_dir, state=st.REQUEUED, requeues=state.get("requeues", 0) + 1)
    max_requeues = int(info.get("max_requeues", 5))
    if state.get("requeues", 0) > max_requeues:
        store.update_state(rel_dir, state=st.FAILED, ended_at=time.time(),
                           error=f"requeued {state['requeues']} times, more than max_requeues={max_requeues}")
        return None
    t0 = time.time()
    store.update_state(rel_dir, state=st.RUNNING, job_id=current_job_id(), host=socket.gethostname(),
                       pid=os.getpid(), started_at=state.get("started_at") or t0, attempt_started_at=t0,
                       attempts=state.get("attempts", 0) + 1, error=None, git_commit=git_commit(),
                       code_snapshot=(running_snapshot() or {}).get("hash"),  # None: run from the checkout
                       run_key=info.get("run_key"))  # the identity, so status need not read run.json
    return info, state, t0


def _previous_end(info: dict[str, Any]) -> str | None:
    """How SLURM ended this job's previous run when that was a node failure or a preemption the run's
    ``retry_on`` leaves out (``sacct -D`` keeps a requeued job's earlier records); else None."""
    retry_on = info.get("retry_on")
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and \
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" or os.environ.get("SLURM_JOB_ID")
    if not isinstance(retry_on, list) or not job or {"node_fail", "preempted"} <= set(retry_on):
        return None
    try:
        p = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job], capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = [line.split()[0] for line in p.stdout.splitlines() if line.strip()]
    previous = words[-2] if len(words) >= 2 else None  # the last record is this run of the job
    ended = {"NODE_FAIL": st.NODE_FAIL, "PREEMPTED": st.PREEMPTED}.get(previous or "")
    return ended if ended is not None and ended not in retry_on else None


def _finish(store: Store, rel_dir: str, state: dict[str, Any], t0: float, error: str | None) -> None:
    if store.state(rel_dir).get("state") in (st.PREEMPTED, st.NODE_FAIL):  # RunUnit.checkpoint ended it so
        return
    fields: dict[str, Any] = {"ended_at": time.time(), "wall_s": state.get("wall_s", 0.0) + time.time() - t0}
    if error is None:
        store.update_state(rel_dir, state=st.COMPLETED, error=None, **fields)
    else:
        store.update_state(rel_dir, state=st.FAILED, error="\n".join(error.strip().splitlines()[-15:]), **fields)


def _context(store: Store, rel_dir: str, info: dict[str, Any]) -> RunContext:
    return RunContext(run_dir=store.run_dir(rel_dir), run_key=info["run_key"], group=info["group"],
                      name=rel_dir, wandb=info.get("wandb"),
                      fail_on_nonfinite_loss=info.get("fail_on_nonfinite_loss") is not False,
                      wandb_config=info["config"] | {"task": info.get("task"), "seed": info.get("seed"),
                                                     "spec": info.get("spec")})


@contextlib.contextmanager
def _logging_to(paths: list[Path], header: str) -> Iterator[list[TextIO]]:
    """stdout/stderr go to the job's own streams and to each run's log.txt."""
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(open_append(p)) for p in paths]
        for log in logs:
            log.write(header)
            log.flush()
        with contextlib.redirect_stdout(_Tee(sys.stdout, *logs)), contextlib.redirect_stderr(_Tee(sys.stderr, *logs)):
            yield logs


def _header() -> str:
    return f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} job {current_job_id()} on {socket.gethostname()}\n"


def run_one(root: Path, rel_dir: str) -> bool:
    """Run (or resume) one run directory. Returns True when it completed."""
    store = Store(root)
    started = _start(store, rel_dir)
    if started is None:  # completed already, unreadable, or over its requeue limit
        return store.state(rel_dir).get("state") == st.COMPLETED
    info, state, t0 = started
    ctx = _context(store, rel_dir, info)
    error = None
    with _logging_to([ctx.run_dir / st.LOG_FILE], _header()) as logs:
        try:
            experiment = load_experiment(info["experiment"])
            experiment.run(with_later_params(experiment, info["config"]), ctx)
        except Exception as e:
            error = _failure(e)
            logs[0].write(error)
        finally:
            ctx.finish()
    error = error or ctx.failure
    _finish(store, rel_dir, state, t0, error)
    return error is None


def _failure(e: BaseException) -> str:
    """The traceback, ending in a line that names the cause where it is known: status shows the last line,
    and "OSError: [Errno 28] ..." or torch's "file write failed" is not what a person should have to read."""
    text = traceback.format_exc()
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        text += f"no space left on device{f' writing {e.filename}' if e.filename else ''}\n"
    return text


def run_pack(root: Path, rel_dirs: list[str]) -> list[bool]:
    """Runs that the experiment trains together in one process (``run_pack``);
    each run keeps its own state, log, metrics and checkpoints."""
    store = Store(root)
    started = {rel: _start(store, rel) for rel in rel_dirs}
    todo = [rel for rel, s in started.items() if s is not None]
    if todo:
        infos = {rel: started[rel][0] for rel in todo}  # type: ignore[index]
        ctxs = [_context(store, rel, infos[rel]) for rel in todo]
        experiment = load_experiment(infos[todo[0]]["experiment"])
        error = None
        with _logging_to([c.run_dir / st.LOG_FILE for c in ctxs], _header() + f"(pack of {len(todo)})\n") as logs:
            try:
                experiment.run_pack([with_later_params(experiment, infos[rel]["config"]) for rel in todo], ctxs)
            except Exception as e:
                error = _failure(e)
                for log in logs:
                    log.write(error)
            finally:
                for c in ctxs:
                    c.finish()
        for rel, ctx in zip(todo, ctxs):
            _, state, t0 = started[rel]  # type: ignore[misc]
            _finish(store, rel, state, t0, error or ctx.failure)  # one run may fail while its pack goes on
    return [store.state(rel).get("state") == st.COMPLETED for rel in rel_dirs]


def run_unit(root: Path, rel_dirs: list[str], infos: dict[str, dict[str, Any]] | None = None) -> list[bool]:
    """A unit of several runs is packed when the experiment can (same pack_key), else run in turn.

    ``infos`` (run dir -> run.json content) come with the submission: the first
    start writes each run.json. In a multi-task job (data parallel) only rank 0
    keeps the books (state, log.txt); the other ranks just run the experiment
    alongside it."""
    if infos and global_rank() == 0:
        owned = []
        for rel in rel_dirs:
            if rel not in infos or Store(root).write_run_info(rel, infos[rel]):
                owned.append(rel)
            else:  # e.g. a second spec that lost a launch race: leave the other run's files alone
                print(f"sweep: {Path(root) / rel} already holds another run than {infos[rel].get('run_key')}; "
                      "not running it there", file=sys.stderr)
        if len(owned) < len(rel_dirs):
            return _as_list(run_unit(root, owned, None), owned, rel_dirs)
    elif infos:  # other ranks wait for rank 0 to write the run files
        deadline = time.time() + 120
        while time.time() < deadline and not all((Path(root) / r / st.RUN_FILE).exists() for r in rel_dirs):
            time.sleep(0.5)
    if global_rank() != 0:
        for rel in rel_dirs:
            info = read_json(Path(root) / rel / st.RUN_FILE) or {}
            if info and not info.get("_corrupt") and Store(root).state(rel).get("state") != st.COMPLETED:
                experiment = load_experiment(info["experiment"])
                experiment.run(with_later_params(experiment, info["config"]), _context(Store(root), rel, info))
        return [True] * len(rel_dirs)
    if len(rel_dirs) > 1:
        infos = [read_json(Path(root) / rel / st.RUN_FILE) or {} for rel in rel_dirs]
        names = {i.get("experiment") for i in infos}
        if len(names) == 1 and None not in names:
            exp = load_experiment(names.pop())
            keys = {exp.pack_key(i["config"]) for i in infos} if hasattr(exp, "run_pack") else {None}
            if len(keys) == 1 and None not in keys:
                return run_pack(Path(root), rel_dirs)
    return [run_one(Path(root), rel) for rel in rel_dirs]


def _as_list(results: list[bool], owned: list[str], rel_dirs: list[str]) -> list[bool]:
    """``results`` (one per run of ``owned``) spread over ``rel_dirs`` (False for the others)."""
    by_rel = dict(zip(owned, results))
    return [by_rel.get(rel, False) for rel in rel_dirs]


class RunUnit(submitit.helpers.Checkpointable):
    """A job's work: run each directory in turn; fail the job if any run failed."""

    def __init__(self, root: str, rel_dirs: list[str], infos: dict[str, dict[str, Any]] | None = None,
                 time_limit_s: int | None = None, signal_lead_s: int | None = None):
        self.root = root
        self.rel_dirs = rel_dirs
        self.infos = infos
        self.time_limit_s, self.signal_lead_s = time_limit_s, signal_lead_s
        self.started_at: float | None = None

    def __call__(self) -> list[str]:
        self.started_at = time.time()
        limit_threads()
        ok = run_unit(Path(self.root), self.rel_dirs, self.infos)
        failed = [rel for rel, good in zip(self.rel_dirs, ok) if not good]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(self.rel_dirs)} runs failed: {', '.join(failed[:5])}")
        return self.rel_dirs

    def preempted(self) -> bool:
        """The USR2 came well before the time limit's signal: a preemption, not the time limit. (SLURM
        checks limits every 30 s, so the limit's signal may come up to that much early.)"""
        if self.started_at is None or self.time_limit_s is None:
            return False
        return time.time() - self.started_at < self.time_limit_s - (self.signal_lead_s or 0) - 45

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        """At the time limit, or preempted: mark the unfinished runs requeued and requeue the job; a
        preemption whose runs' ``retry_on`` leaves it out ends them ``preempted`` instead."""
        store = Store(Path(self.root))
        preempted = self.preempted()
        requeue = False
        for rel in self.rel_dirs:
            s = store.state(rel)
            if s.get("state") != st.RUNNING:
                continue
            wall = s.get("wall_s", 0.0) + time.time() - s.get("attempt_started_at", time.time())
            retry_on = (read_json(store.run_dir(rel) / st.RUN_FILE) or {}).get("retry_on")
            if preempted and isinstance(retry_on, list) and "preempted" not in retry_on:
                store.update_state(rel, state=st.PREEMPTED, ended_at=time.time(), wall_s=wall,
                                   error=f"preempted; not requeued (retry_on: {retry_on}); --retry preempted "
                                         "resubmits it")
            else:
                store.update_state(rel, state=st.REQUEUED, requeues=s.get("requeues", 0) + 1, wall_s=wall)
                requeue = True
        return super().checkpoint(*args, **kwargs) if requeue else None


class LocalWorker:
    """One slot of the local executor: claim units from a queue folder until it is empty.

    submitit's LocalExecutor starts every job at once; starting only N workers
    that pull from a queue caps concurrency at N without a daemon of our own.
    Claiming is an atomic rename, so two workers never take the same unit.
    """

    def __init__(self, root: str, queue_dir: str, threads: int = 1):
        self.root = root
        self.queue_dir = queue_dir
        self.threads = threads

    def __call__(self) -> int:
        # out of the launching terminal's process group (its Ctrl-C is not for the sweep: the controller,
        # left in it, ignores SIGINT, see executors._sigint_ignored_by_children), and SIGINT back for
        # `sweep cancel`, which interrupts the worker running a run it cancels
        with contextlib.suppress(OSError):
            os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        limit_threads(self.threads)
        todo, claimed = Path(self.queue_dir) / "todo", Path(self.queue_dir) / "claimed"
        done = 0
        while True:
            items = sorted(todo.glob("*.json"))
            if not items:
                return done
            for item in items:
                mine = claimed / f"{item.stem}.{os.getpid()}.json"
                try:
                    os.rename(item, mine)
                except FileNotFoundError:
                    if item.exists():  # claimed/ is gone (deleted by hand): made again, or this loop spun for ever
                        claimed.mkdir(parents=True, exist_ok=True)
                    continue  # else another worker took it
                unit = read_json(mine) or {}
                try:
                    self.run_isolated(unit.get("rel_dirs", []), unit.get("infos"))
                finally:  # a claimed file names the unit its worker runs now: `sweep cancel` signals by it
                    mine.unlink(missing_ok=True)
                done += 1
                break

    def run_isolated(self, rel_dirs: list[str], infos: dict[str, dict[str, Any]] | None) -> None:
        """Run a unit in a child process, so that a run killing its process (the out-of-memory killer, a
        segfault in a native library, ``kill -9``) takes only that process: it took the worker, and at
        ``--concurrency 1`` every run left in the queue never ran. The dead run is marked failed here.
        The child is in the worker's process group: ``sweep cancel`` signals both (local_procs.signal_worker)."""
        if not hasattr(os, "fork"):
            run_unit(Path(self.root), rel_dirs, infos)
            return
        sys.stdout.flush()
        sys.stderr.flush()
        worker = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never back into the worker's loop or submitit's exit handling
            _die_with(worker)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # `kill <run's pid>` ends it (submitit ignores TERM)
            code = 1
            try:
                run_unit(Path(self.root), rel_dirs, infos)
                code = 0
            except SystemExit as e:  # a run calling sys.exit(n): its n in the reason
                code = e.code if isinstance(e.code, int) and e.code else 1
                traceback.print_exc()
            except BaseException:  # noqa: BLE001 - e.g. the KeyboardInterrupt of sweep cancel
                traceback.print_exc()
            finally:
                with contextlib.suppress(BaseException):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        try:
            _, status = os.waitpid(pid, 0)
        except BaseException:  # sweep cancel's SIGINT reached the child too: let it end its runs first
            _reap(pid, wait_s=8.0)
            raise
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            how = f"killed by signal {sig} ({signal.Signals(sig).name}" + \
                  ("; the out-of-memory killer sends it" if sig == signal.SIGKILL else "") + ")"
        else:  # 0 too: a run calling os._exit(0) midway left itself "running" and its job's later runs unrun
            how = f"exit code {os.WEXITSTATUS(status)}"
        store = Store(self.root)
        died, rest = [], []
        for rel in rel_dirs:
            s = store.state(rel)
            if s.get("state") == st.RUNNING and s.get("pid") == pid:
                store.update_state(rel, base=s, state=st.FAILED, ended_at=time.time(),
                                   error=f"the run's process died ({how}) before the run finished; the worker "
                                         "went on with the queue")
                died.append(rel)
            elif s.get("state") not in (*st.ENDED, st.RUNNING):
                rest.append(rel)  # not started yet: a unit of runs one after the other (no pack_key)
        if rest and len(rest) < len(rel_dirs):  # the unit's other runs get a child of their own (they were
            self.run_isolated(rest, infos)  # left pending); fewer each time, so this ends
        elif rest:  # it died before it started any: no second try, which could die the same way
            for rel in rest:  # failed in a directory of its own (run.json as a start writes it)
                info = (infos or {}).get(rel)
                if info is not None and store.write_run_info(rel, info):
                    store.update_state(rel, state=st.FAILED, ended_at=time.time(), run_key=info.get("run_key"),
                                       error=f"not run: the process of its job died ({how}) before it started")


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when ``parent`` dies (Linux's PR_SET_PDEATHSIG): a worker killed
    alone (kill -9, the OOM killer) left its child running the unit, out of `sweep cancel`'s reach, and
    the run's end then overwrote a later "cancelled". Elsewhere nothing is set."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl (macOS)
        return
    if os.getppid() != parent:  # the worker died before the prctl took effect
        os._exit(1)


def _reap(pid: int, wait_s: float) -> None:
    """Wait up to ``wait_s`` for the child ``pid`` to end, then kill it: no run outlives its worker."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        except BaseException:  # noqa: BLE001 - a second Ctrl-C: the child is still reaped
            pass
        time.sleep(0.05)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
