"""What runs inside a job: one unit of work = one or more run directories.

:class:`RunUnit` is a submitit ``Checkpointable``: on preemption or at the time
limit submitit calls :meth:`RunUnit.checkpoint`, which marks the unfinished runs
``requeued`` and hands back the same unit; the experiment then resumes each run
from the resume state it left in its directory. A run requeued more than
``max_requeues`` times ends ``failed`` with that reason.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import submitit

from launch import store as st
from launch.experiment import RunContext, load_experiment
from launch.provenance import git_commit
from launch.store import Store, read_json


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


def run_one(root: Path, rel_dir: str) -> bool:
    """Run (or resume) one run directory. Returns True when it completed."""
    store = Store(root)
    run_dir = store.run_dir(rel_dir)
    info = read_json(run_dir / st.RUN_FILE)
    if not info or info.get("_corrupt"):
        print(f"sweep: {run_dir}/{st.RUN_FILE} is missing or corrupt; skipping", file=sys.stderr)
        return False
    state = store.state(rel_dir)
    if state.get("state") == st.COMPLETED:
        return True
    if state.get("state") == st.RUNNING:
        # the last attempt died without a word (scontrol requeue, node failure, SIGKILL):
        # this start is a requeue too
        state = store.update_state(rel_dir, state=st.REQUEUED, requeues=state.get("requeues", 0) + 1)
    max_requeues = int(info.get("max_requeues", 5))
    if state.get("requeues", 0) > max_requeues:
        store.update_state(rel_dir, state=st.FAILED, ended_at=time.time(),
                           error=f"requeued {state['requeues']} times, more than max_requeues={max_requeues}")
        return False
    t0 = time.time()
    store.update_state(rel_dir, state=st.RUNNING, job_id=current_job_id(), host=socket.gethostname(),
                       started_at=state.get("started_at") or t0, attempt_started_at=t0,
                       attempts=state.get("attempts", 0) + 1, error=None, git_commit=git_commit())
    ctx = RunContext(run_dir=run_dir, run_key=info["run_key"], group=info["group"], name=rel_dir,
                     wandb=info.get("wandb"))
    with open(run_dir / st.LOG_FILE, "a") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {state.get('attempts', 0) + 1} "
                  f"job {current_job_id()} on {socket.gethostname()}\n")
        log.flush()
        tee_out, tee_err = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        try:
            with contextlib.redirect_stdout(tee_out), contextlib.redirect_stderr(tee_err):
                load_experiment(info["experiment"]).run(info["config"], ctx)
        except Exception:
            tb = traceback.format_exc()
            log.write(tb)
            store.update_state(rel_dir, state=st.FAILED, ended_at=time.time(),
                               wall_s=state.get("wall_s", 0.0) + time.time() - t0,
                               error="\n".join(tb.strip().splitlines()[-15:]))
            return False
        finally:
            ctx.finish()
    store.update_state(rel_dir, state=st.COMPLETED, ended_at=time.time(),
                       wall_s=state.get("wall_s", 0.0) + time.time() - t0)
    return True


class RunUnit(submitit.helpers.Checkpointable):
    """A job's work: run each directory in turn; fail the job if any run failed."""

    def __init__(self, root: str, rel_dirs: list[str]):
        self.root = root
        self.rel_dirs = rel_dirs

    def __call__(self) -> list[str]:
        limit_threads()
        failed = [rel for rel in self.rel_dirs if not run_one(Path(self.root), rel)]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(self.rel_dirs)} runs failed: {', '.join(failed[:5])}")
        return self.rel_dirs

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        store = Store(Path(self.root))
        for rel in self.rel_dirs:
            s = store.state(rel)
            if s.get("state") == st.RUNNING:
                store.update_state(rel, state=st.REQUEUED, requeues=s.get("requeues", 0) + 1,
                                   wall_s=s.get("wall_s", 0.0) + time.time() - s.get("attempt_started_at", time.time()))
        return super().checkpoint(*args, **kwargs)


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
                    continue  # another worker took it
                rel_dirs = read_json(mine) or []
                for rel in rel_dirs:
                    run_one(Path(self.root), rel)
                done += 1
                break
