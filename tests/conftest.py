"""Shared fixtures: spec files and the real local SLURM."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import SLURM_SCRIPT, TEST_MAX_ARRAY_SIZE


@pytest.fixture
def write_spec(tmp_path: Path):
    def _write(text: str, name: str = "spec.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return _write


def _slurm_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the local SLURM needs root (tests/conftest.py starts launch/local-slurm.sh)"
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        return "SLURM is not installed and apt-get is unavailable"
    return None


@pytest.fixture(scope="session")
def slurm():
    """A real single-node SLURM with accounting, started for this test session.

    Several pytest sessions may share the machine's one cluster (developers run
    test files side by side): each holds a shared lock while it uses it, and only
    the last one out stops it."""
    reason = _slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "LOCAL_SLURM_MAX_ARRAY_SIZE": TEST_MAX_ARRAY_SIZE, "LOCAL_SLURM_CPUS": "4"}
    users = open("/tmp/sweep-test-slurm.users", "a")  # noqa: SIM115 - held for the whole session
    with open("/tmp/sweep-test-slurm.start", "a") as start_lock:
        fcntl.flock(start_lock, fcntl.LOCK_EX)
        fcntl.flock(users, fcntl.LOCK_SH)
        p = subprocess.run(["bash", str(SLURM_SCRIPT), "start"], capture_output=True, text=True, env=env,
                           timeout=900)
        fcntl.flock(start_lock, fcntl.LOCK_UN)
    if p.returncode != 0:
        users.close()
        if os.environ.get("CI"):
            raise AssertionError(f"local SLURM failed to start in CI:\n{p.stderr[-3000:]}")
        pytest.skip(f"local SLURM could not start: {p.stderr.strip().splitlines()[-1:]}")
    yield env
    try:
        fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else is using it
    except BlockingIOError:
        users.close()
        return
    subprocess.run(["bash", str(SLURM_SCRIPT), "stop"], capture_output=True, text=True, env=env, timeout=300)
    users.close()
