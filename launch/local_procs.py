"""Whether the processes of a local queue still run: what ``sweep status`` asks of this machine.

Apart from :mod:`launch.executors` so that ``sweep status`` does not import submitit (a quarter of its
import time) to read a pid file.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from launch.store import read_json

# how long a local queue may lack its workers.json: the launch writes it once its workers have started
QUEUE_STARTUP_S = 60.0
# in a queue's folder while `sweep cancel` stops some of its workers and starts others: alive meanwhile
RESTARTING = "restarting.json"

if TYPE_CHECKING:
    from launch.store import Store


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine runs (a zombie, finished but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    return not fields or fields[0] != "Z"


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (the state first, then the parent's pid, ...;
    field 3 of proc(5) is index 0 here); None when it cannot be read (gone, or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()  # the name, in parentheses, may hold spaces
    except (OSError, ValueError):
        return None


def local_queue_alive(store: Store, job_id: str) -> bool | None:
    """Whether any worker of a local queue still runs (None if the queue is unknown).

    A worker is two processes: submitit's controller (its pid in workers.json) and the task it starts,
    which claims and runs the units (its pid in the names of the units it claimed, ``<unit>.<pid>.json``).
    A controller killed alone (the OOM killer, ``kill -9`` of the job id) leaves its task running the
    queue: calling the queue dead then made its runs "failed" while they ran, and ``--retry-failed`` ran
    each of them a second time beside the first."""
    qdir = store.meta / "queue" / job_id.split(":", 1)[1]
    try:  # between stopping workers and starting new ones the queue looked dead: `sweep wait` returned and
        if time.time() - os.stat(qdir / RESTARTING).st_mtime < QUEUE_STARTUP_S:  # --retry-failed ran its
            return True  # queued runs a second time beside the restarted workers
    except OSError:
        pass
    info = read_json(qdir / "workers.json")
    known = bool(info) and not info.get("_corrupt")  # type: ignore[union-attr]
    if known and any(is_local_worker(pid) for pid in info.get("pids", []) if isinstance(pid, int)):  # type: ignore[union-attr]
        return True
    try:
        names = os.listdir(qdir / "claimed")
    except OSError:
        names = []
    tasks = {int(p) for p in (n.split(".")[1] for n in names if n.count(".") == 2) if p.isdigit()}
    if any(is_local_worker(pid) for pid in tasks):
        return True
    if known:
        return False
    # workers.json missing or unreadable: a launch between making its queue and writing that file, or the
    # file lost. Unknown only for a while after the queue was last changed: for ever, its runs showed
    # pending and `sweep wait` never returned
    try:
        age = time.time() - os.stat(qdir).st_mtime
    except FileNotFoundError:  # the queue's folder is gone: nothing will run its units
        return False
    except OSError:
        return None
    return None if age < QUEUE_STARTUP_S else False


def process_started_at(pid: int) -> float | None:
    """When a process of this machine started (epoch seconds, to the clock tick); None when unknown."""
    fields, boot = _stat_fields(pid), _boot_time()
    try:  # field 22: the start time, in clock ticks after boot
        return None if fields is None or boot is None else boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@functools.lru_cache(maxsize=1)
def _boot_time() -> int | None:
    try:
        return next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def parent_pid(pid: int) -> int | None:
    """The parent of a process of this machine (None when unknown: gone, or no /proc)."""
    fields = _stat_fields(pid)
    try:
        return None if fields is None else int(fields[1])
    except (ValueError, IndexError):
        return None


def signal_worker(pid: int, sig: int) -> None:
    """Signal a local worker's task and the child running its unit: the task leads a process group of its
    own (LocalWorker calls setsid), which the child shares. A process that leads no group gets ``sig`` alone."""
    try:
        if leads_group(pid):
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def leads_group(pid: int) -> bool:
    """Whether ``pid`` leads its process group (a local worker's task does, see signal_worker)."""
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def is_local_worker(pid: int) -> bool:
    """A live process that is a submitit job (so a recycled pid is never signalled, nor taken for a worker)."""
    if not pid_alive(pid):
        return False
    try:
        return b"submitit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc (macOS): trust the pid
    except OSError:
        return False
