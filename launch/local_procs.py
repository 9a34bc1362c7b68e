"""Whether the processes of a local queue still run: what ``sweep status`` asks of this machine.

Apart from :mod:`launch.executors` so that ``sweep status`` does not import submitit (a quarter of its
import time) to read a pid file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from launch.store import read_json

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
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def local_queue_alive(store: Store, job_id: str) -> bool | None:
    """Whether any worker of a local queue still runs (None if the queue is unknown)."""
    qid = job_id.split(":", 1)[1]
    info = read_json(store.meta / "queue" / qid / "workers.json")
    if not info or info.get("_corrupt"):
        return None
    return any(is_local_worker(pid) for pid in info.get("pids", []))


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
