"""Telling a run's own process from a later one that got its pid (every local unit runs in a process of
its own now, so pids of the local executor's processes are reused within a sweep)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from launch.local_procs import process_started_at
from launch.status import _died_here, _runs_here


def test_a_pid_taken_by_a_later_process_is_not_the_runs_process():
    # a live process that looks like a local worker (its command line names submitit)
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "submitit"])
    try:
        time.sleep(0.2)
        started = process_started_at(p.pid)
        assert started is not None and abs(started - time.time()) < 5
        mine = {"pid": p.pid, "host": socket.gethostname(), "attempt_started_at": time.time()}
        assert _runs_here(mine) and not _died_here(mine)
        # the run's attempt began an hour before this process: the run's own process is gone, its pid reused
        reused = {**mine, "attempt_started_at": time.time() - 3600}
        assert _died_here(reused) and not _runs_here(reused)
    finally:
        p.kill()
        p.wait()
    assert _died_here(mine) and not _runs_here(mine)  # and gone


def test_a_queue_whose_workers_cancel_is_restarting_is_alive(tmp_path):
    """Between `sweep cancel` stopping a queue's workers and starting new ones the queue looked dead: `sweep
    wait` returned and its runs showed failed. The cancel's marker keeps it alive, for a minute at most."""
    import json
    import os

    from launch.local_procs import RESTARTING, local_queue_alive
    from launch.store import Store

    qdir = tmp_path / ".sweep" / "queue" / "q1"
    (qdir / "claimed").mkdir(parents=True)
    (qdir / "workers.json").write_text(json.dumps({"pids": [], "concurrency": 1}))  # no worker left
    store = Store(tmp_path)
    assert local_queue_alive(store, "local:q1") is False
    (qdir / RESTARTING).write_text("{}")
    assert local_queue_alive(store, "local:q1") is True
    old = time.time() - 120  # a cancel that died two minutes ago does not keep it alive
    os.utime(qdir / RESTARTING, (old, old))
    assert local_queue_alive(store, "local:q1") is False
