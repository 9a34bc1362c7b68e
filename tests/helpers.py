"""Helpers for the harness tests: the real CLI in a subprocess, waiting, snapshots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SLURM_SCRIPT = REPO / "launch" / "local-slurm.sh"
# small on purpose: a CI-sized grid then needs several job arrays (chunking is tested for real)
TEST_MAX_ARRAY_SIZE = "5"


def sweep(*args: str, cwd: Path | None = None, check: bool = True, timeout: float = 300,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `sweep` CLI in a subprocess."""
    p = subprocess.run([sys.executable, "-m", "launch.cli", *map(str, args)], cwd=cwd, capture_output=True,
                       text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"sweep {' '.join(map(str, args))} exited {p.returncode}\n"
                             f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.5, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def tree_snapshot(path: Path) -> dict[str, tuple[int, float]]:
    """Every file under path with size and mtime: to assert that nothing was written."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime)
            for p in path.rglob("*")}




def status_json(spec: Path, root: Path) -> dict:
    """`sweep status --json -v` of one spec: {"counts": {spec: {...}}, "runs": [...]}."""
    return json.loads(sweep("status", spec, "--root", root, "--json", "-v").stdout)


def counts(spec: Path, root: Path) -> dict:
    """Run counts by state of the one spec in SPEC."""
    return next(iter(status_json(spec, root)["counts"].values()))


def finished(spec: Path, root: Path) -> dict | None:
    """The counts once nothing is pending, running, requeued or unsubmitted; else None (for wait_for)."""
    c = counts(spec, root)
    return c if not (c["pending"] or c["running"] or c["requeued"] or c["not_submitted"]) else None
