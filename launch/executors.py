"""Executors: hand units of runs to SLURM (job arrays) or to this machine.

A *unit* is the list of run directories one job executes (one run, or a pack).
Both executors are non-blocking: they return job ids as soon as the work is
queued, and the runs report their own state on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from launch.errors import UserError
from launch.local_procs import RESTARTING, is_local_worker, leads_group, parent_pid, pid_alive, signal_worker
from launch.runner import LocalWorker, RunUnit
from launch.store import Store, read_json, write_json

DEFAULT_TIME_MIN = 60
DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's own default
MAX_SIGNAL_LEAD_S = 90  # submitit's default --signal=USR2@90


def signal_lead_s(resources: dict[str, Any]) -> int:
    """Seconds before the time limit that SLURM signals the job (USR2: checkpoint, requeue).

    ``signal_delay_s`` when given; else a quarter of the time limit, at most submitit's 90 s.
    (submitit's fixed 90 s signals a 1-minute job at once and a 2-minute one every 30 s.)"""
    if "signal_delay_s" in resources:
        return int(resources["signal_delay_s"])
    return min(MAX_SIGNAL_LEAD_S, 60 * int(resources.get("time_min", DEFAULT_TIME_MIN)) // 4)


def slurm_parameters(resources: dict[str, Any], job_name: str) -> dict[str, Any]:
    """Spec ``resources`` -> submitit SlurmExecutor parameters."""
    p: dict[str, Any] = {"job_name": job_name, "time": resources.get("time_min", DEFAULT_TIME_MIN),
                         "cpus_per_task": resources.get("cpus", 1), "signal_delay_s": signal_lead_s(resources)}
    if "partition" in resources:
        p["partition"] = resources["partition"]
    if resources.get("gpus"):
        p["gpus_per_node"] = resources["gpus"]
    if "mem_gb" in resources:
        p["mem"] = f"{resources['mem_gb']}G"
    for key in ("account", "qos", "constraint", "setup", "nodes"):
        if key in resources:
            p[key] = resources[key]
    if "tasks_per_node" in resources:
        p["ntasks_per_node"] = resources["tasks_per_node"]
    if "array_parallelism" in resources:
        p["array_parallelism"] = resources["array_parallelism"]
    return p


CONTROLLER_PROBE_TIMEOUT_S = 5.0


def controller_problem(timeout_s: float = CONTROLLER_PROBE_TIMEOUT_S) -> str | None:
    """Why the SLURM controller cannot take commands now (None when it answers ``scontrol ping``).

    One short probe, so a launch or cancel with the controller down ends in about a second:
    sbatch/scancel/scontrol themselves retry for ~9 s each (MessageTimeout), submitit again on top."""
    try:
        p = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        return "scontrol not found (is SLURM installed here?)"
    except subprocess.TimeoutExpired:
        return f"scontrol ping got no answer in {timeout_s:g} s"
    except OSError as e:
        return f"scontrol ping: {e}"
    if p.returncode == 0 and " is UP" in p.stdout:
        return None
    lines = [x.strip() for x in (p.stdout + "\n" + p.stderr).splitlines() if x.strip() and "*" not in x]
    return f"scontrol ping: {lines[0] if lines else f'exit {p.returncode}'}"


def max_array_size() -> int:
    """The cluster's MaxArraySize (``scontrol show config``); SLURM's default if unreadable."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else DEFAULT_MAX_ARRAY_SIZE


def chunks(units: list[list[str]], size: int) -> list[list[list[str]]]:
    """Split units into job arrays of at most ``size`` elements (indices 0..size-1)."""
    return [units[i:i + size] for i in range(0, len(units), size)]


@dataclasses.dataclass
class Submitted:
    unit: list[str]
    job_id: str


def submitit_command() -> str:
    return f"{sys.executable} -u -m submitit.core._submit"


def render_sbatch(params: dict[str, Any], folder: Path, n: int) -> str:
    """The sbatch script submitit will write for an array of ``n`` elements."""
    folder = folder.absolute()  # as submitit makes it: a relative tree root is taken from here
    cmd = f"{submitit_command()} {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=cmd, folder=folder, map_count=n if n > 1 else None, **params)


class _SlurmExecutor(submitit.SlurmExecutor):
    """submitit's, leaving nothing behind when sbatch refuses a submission: the pickles it wrote
    for the array's elements (up to MaxArraySize of them) and the sbatch script are removed.

    ``submit_array`` writes what submitit's ``batch()`` writes (one pickled ``DelayedSubmission`` per
    element, renamed ``<array>_<i>_submitted.pkl`` once sbatch took the array; the same sbatch script)
    in a third of the time: the standard library's C pickler instead of cloudpickle (our callable is an
    importable class, which both pickle by reference) and string paths instead of a ``JobPaths`` and a
    ``Job`` per element — submitit's pathlib joins and cloudpickle were 70 % of a 10,000-run launch."""

    def _internal_process_submissions(
            self, delayed_submissions: list[submitit.core.utils.DelayedSubmission]) -> list[submitit.Job[Any]]:
        written: list[Path] = []
        for d in delayed_submissions:
            _record_dump(d, written)
        try:
            return super()._internal_process_submissions(delayed_submissions)
        except BaseException as e:
            _discard_submission(written, e)
            raise

    def submit_array(self, fns: list[Callable[[], Any]]) -> list[str]:
        """Submit ``fns`` as one job array (a lone one as a plain job, as submitit does); their job ids."""
        folder = str(submitit.core.utils.JobPaths.get_first_id_independent_folder(self.folder))
        if len(fns) == 1 or folder != str(self.folder.expanduser().absolute()):  # a %j folder: submitit's way
            with self.batch():
                jobs = [self.submit(fn) for fn in fns]
            return [j.job_id for j in jobs]
        os.makedirs(folder, exist_ok=True)
        timeout_min = self.parameters.get("time", 5)
        written: list[str] = []
        try:
            for fn in fns:
                d = submitit.core.utils.DelayedSubmission(fn)
                d.set_timeout(timeout_min, self.max_num_timeout)
                path = f"{folder}/{uuid.uuid4().hex}.pkl"
                written.append(path)
                with open(path, "wb") as f:
                    pickle.dump(d, f, pickle.HIGHEST_PROTOCOL)
            array_ex = submitit.SlurmExecutor(self.folder, self.max_num_timeout)
            array_ex.update_parameters(**self.parameters)
            array_ex.parameters["map_count"] = len(fns)
            self._throttle()
            first = array_ex._submit_command(self._submitit_command_str).job_id
        except BaseException as e:
            _discard_submission([Path(p) for p in written], e)
            raise
        ids = [f"{first}_{a}" for a in range(len(fns))]
        for job_id, path in zip(ids, written):
            os.rename(path, f"{folder}/{job_id}_submitted.pkl")
        return ids


def _discard_submission(written: list[Path], e: BaseException) -> None:
    """What a refused submission wrote: its pickles, and the sbatch script sbatch refused."""
    for path in written:
        path.unlink(missing_ok=True)
    cmd = getattr(e.__cause__, "cmd", None)  # CalledProcessError of ["sbatch", <script>]
    if isinstance(cmd, list) and len(cmd) == 2 and Path(cmd[1]).name.startswith(".submission_file_"):
        Path(cmd[1]).unlink(missing_ok=True)


def _record_dump(d: submitit.core.utils.DelayedSubmission, written: list[Path]) -> None:
    """Note where submitit pickles ``d`` (the wrapper takes itself off first: it is not pickled)."""
    def dump(filepath: str | Path) -> None:
        del d.dump
        written.append(Path(filepath))
        d.dump(filepath)

    d.dump = dump  # type: ignore[method-assign]


class SlurmBackend:
    name = "slurm"

    def __init__(self, store: Store, params: dict[str, Any]):
        self.store = store
        self.params = params
        # one flat folder: a folder per job (%j) costs 10,000 mkdirs at launch for 10,000 runs
        self.folder = store.submitit_dir()

    def _executor(self) -> submitit.SlurmExecutor:
        ex = _SlurmExecutor(folder=self.folder, max_num_timeout=1000)
        ex.update_parameters(**self.params)
        return ex

    def submit(self, units: list[list[str]], array_size: int,
               infos: dict[str, dict[str, Any]] | None = None,
               accepted: Callable[[list[Submitted]], None] | None = None) -> list[Submitted]:
        """One job array per chunk; ``accepted`` hears of each array as sbatch takes it, so
        a failure (or Ctrl-C) at a later array loses no record of the earlier ones."""
        if not units:
            return []
        infos = infos or {}
        ex = self._executor()
        out: list[Submitted] = []
        for chunk in chunks(units, array_size):
            with _sigint_deferred():  # an array sbatch took is recorded before Ctrl-C stops the launch
                try:  # submitit prints sbatch's stderr when it fails; our one error line quotes it
                    with contextlib.redirect_stderr(io.StringIO()):
                        ids = ex.submit_array([
                            RunUnit(str(self.store.root), unit, {r: infos[r] for r in unit if r in infos},
                                    60 * int(self.params["time"]), self.params.get("signal_delay_s"))
                            for unit in chunk])
                except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as e:
                    msg = str(e).strip().splitlines()[-1] if str(e).strip() else e
                    raise UserError(f"sbatch failed: {msg}") from None
                done = [Submitted(unit, job_id) for unit, job_id in zip(chunk, ids)]
                if accepted is not None:
                    accepted(done)
            out += done
        return out


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ctrl-C inside the block takes effect when it ends (KeyboardInterrupt then). Without
    this, Ctrl-C while sbatch runs interrupts submitit and sbatch still queues the array,
    which nobody records: a relaunch would submit its runs a second time."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    got: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got:
        raise KeyboardInterrupt


class LocalBackend:
    """At most ``concurrency`` workers (submitit LocalExecutor jobs) pull units from a queue."""

    name = "local"

    def __init__(self, store: Store, concurrency: int):
        self.store = store
        self.concurrency = concurrency

    def submit(self, units: list[list[str]], array_size: int = 0,
               infos: dict[str, dict[str, Any]] | None = None,
               accepted: Callable[[list[Submitted]], None] | None = None) -> list[Submitted]:
        if not units:
            return []
        infos = infos or {}
        qid = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        qdir = self.store.meta / "queue" / qid
        (qdir / "todo").mkdir(parents=True)
        (qdir / "claimed").mkdir()
        for i, unit in enumerate(units):
            write_json(qdir / "todo" / f"{i:07d}.json",
                       {"rel_dirs": unit, "infos": {r: infos[r] for r in unit if r in infos}})
        n = min(self.concurrency, len(units))
        threads = max(1, (os.cpu_count() or 1) // n)
        pids = _start_workers(self.store, qdir, n, threads)
        write_json(qdir / "workers.json", {"pids": pids, "started_at": time.time(), "threads": threads,
                                           "concurrency": n})
        job_id = f"local:{qid}"
        done = [Submitted(unit, job_id) for unit in units]
        if accepted is not None:
            accepted(done)
        return done


def _start_workers(store: Store, qdir: Path, n: int, threads: int) -> list[int]:
    """Start ``n`` workers on the queue ``qdir``; their pids."""
    ex = submitit.LocalExecutor(folder=store.meta / "submitit-local" / "%j")
    # generous timeout: a local queue lives as long as its work
    ex.update_parameters(timeout_min=7 * 24 * 60)
    with _stdio_to_devnull(), _sigint_ignored_by_children():
        workers = [ex.submit(LocalWorker(str(store.root), str(qdir), threads)) for _ in range(n)]
    return [int(w.job_id) for w in workers]


@contextlib.contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """Processes started inside ignore SIGINT (an ignored signal stays ignored across exec, and Python keeps
    it so). Ctrl-C reaches every process of the terminal's foreground group: without this, Ctrl-C on the
    ``sweep wait`` of ``make reproduce-*`` (or on any command sharing the launch's group) stopped submitit's
    controllers, which kill their tasks, and the whole sweep ended failed. The task (LocalWorker) leaves the
    group and takes SIGINT back, so ``sweep cancel``'s SIGINT still stops it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def restart_local_workers(store: Store, qid: str, n: int) -> int:
    """Start up to ``n`` workers on a queue whose workers ``sweep cancel`` stopped, when units are left in
    it (runs of the queue that were not cancelled): without them those runs would wait for nobody. The
    caller puts the queue's code snapshot on PYTHONPATH, as the launch did. How many were started.

    Never more live workers than the launch started: two ``sweep cancel`` at once each lost the same
    workers and each restarted them (twice the concurrency the user asked for). The count of live ones and
    the start are under one lock per queue."""
    qdir = store.meta / "queue" / qid
    with store.lock(f"queue-{qid}"):
        left = len(list((qdir / "todo").glob("*.json")))
        info = read_json(qdir / "workers.json") or {}
        old = [p for p in info.get("pids", []) if isinstance(p, int)]
        first = (info.get("concurrency") if isinstance(info.get("concurrency"), int) else len(old)) or n
        alive = sum(1 for p in old if is_local_worker(p))
        n = min(n, left, max(0, first - alive))
        if n <= 0:
            return 0
        threads = info.get("threads") if isinstance(info.get("threads"), int) else \
            max(1, (os.cpu_count() or 1) // max(1, first))
        pids = _start_workers(store, qdir, n, threads)
        write_json(qdir / "workers.json", {**info, "pids": old + pids, "concurrency": first})
    return n


def restarted(store: Store, qid: str) -> None:
    """The end of a cancel's restart of a queue's workers (see cancel_local)."""
    (store.meta / "queue" / qid / RESTARTING).unlink(missing_ok=True)


def queue_code_snapshot(store: Store, qid: str) -> str | None:
    """The code snapshot (hash) the runs left in a local queue were launched with, None without one."""
    for item in sorted((store.meta / "queue" / qid / "todo").glob("*.json")):
        for info in ((read_json(item) or {}).get("infos") or {}).values():
            if isinstance(info, dict) and isinstance(info.get("code_snapshot"), str):
                return info["code_snapshot"]
    return None


@contextlib.contextmanager
def _stdio_to_devnull() -> Iterator[None]:
    """Processes started inside inherit /dev/null as stdin/stdout/stderr, not ours.

    submitit's LocalExecutor starts its controllers with Popen's defaults; a worker
    holding the launching command's pipe makes ``sweep launch | tee``,
    ``$(sweep launch …)`` or a captured subprocess wait for the whole sweep. (The
    workers' own output goes to files in the submitit folder either way.)"""
    sys.stdout.flush()
    sys.stderr.flush()
    saved: list[int | None] = []
    for fd in (0, 1, 2):
        try:
            saved.append(os.dup(fd))
        except OSError:  # not open
            saved.append(None)
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        yield
    finally:
        for fd, old in zip((0, 1, 2), saved):
            if old is None:
                os.close(fd)
            else:
                os.dup2(old, fd)
                os.close(old)
        os.close(null)


def cancel_local(store: Store, runs: dict[str, str], wait_s: float = 10.0) -> dict[str, int]:
    """Stop local runs (run dir -> its ``local:<queue>`` job id): take their units out of
    their queue and interrupt the worker that claimed each (SIGINT, as submitit cancels a
    local job; SIGKILL if it is still there after ``wait_s``). Returns once they are gone,
    with how many workers each queue lost (see restart_local_workers: the queue's other
    runs need workers). Only the runs' own queues are touched: another spec sharing the
    tree keeps its workers."""
    by_queue: dict[str, set[str]] = {}
    for rel, job_id in runs.items():
        by_queue.setdefault(job_id.split(":", 1)[1], set()).add(rel)
    claimed_by: dict[int, Path] = {}  # worker pid -> the claimed file of the unit it runs
    queue_of: dict[int, str] = {}
    for qid, wanted in by_queue.items():
        qdir = store.meta / "queue" / qid
        for item in (qdir / "todo").glob("*.json"):
            if set((read_json(item) or {}).get("rel_dirs", [])) & wanted:
                item.unlink(missing_ok=True)
        # claimed units after the todo pass, so a unit claimed meanwhile is seen here;
        # a claimed file is named <unit>.<pid of the worker that runs it>.json
        for item in (qdir / "claimed").glob("*.json"):
            if set((read_json(item) or {}).get("rel_dirs", [])) & wanted:
                pid = item.name.split(".")[1]
                if pid.isdigit():
                    claimed_by[int(pid)] = item
                    queue_of[int(pid)] = qid
    for qid in set(queue_of.values()):  # the queue is not dead while its workers are restarted
        write_json(store.meta / "queue" / qid / RESTARTING, {"since": time.time()})
    # the worker still runs that unit (its claimed file goes when the unit ends): a worker on to its next
    # unit, which was not selected, is not signalled
    live = [pid for pid, item in claimed_by.items() if item.exists() and is_local_worker(pid)]
    stopped: dict[str, int] = {}
    for pid in live:
        stopped[queue_of[pid]] = stopped.get(queue_of[pid], 0) + 1
    controllers = {c for c in (parent_pid(pid) for pid in live) if c is not None and c > 1}
    groups = [pid for pid in live if leads_group(pid)]
    for pid in live:
        signal_worker(pid, signal.SIGINT)
    deadline = time.time() + wait_s
    while live and time.time() < deadline:
        time.sleep(0.1)
        live = [pid for pid in live if pid_alive(pid)]
    for pid in live:
        signal_worker(pid, signal.SIGKILL)
    for pid in groups:  # what the runs started and left behind in their worker's group (a subprocess
        with contextlib.suppress(ProcessLookupError, PermissionError):  # ignoring SIGINT)
            os.killpg(pid, signal.SIGKILL)
    # and their submitit controllers, which end once their task has: restart_local_workers counts the live
    # ones, and one still ending counted as a worker left the queue's other runs without any
    deadline = time.time() + 5.0
    while time.time() < deadline and any(is_local_worker(c) for c in controllers):
        time.sleep(0.05)
    for qid in set(queue_of.values()) - set(stopped):  # nothing to restart there
        restarted(store, qid)
    return stopped
