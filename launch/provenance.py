"""Where a result came from: the code's git commit and the host."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path


@functools.cache
def git_commit() -> str | None:
    """HEAD of the checkout this code runs from (None outside git), with ``+dirty``
    when tracked files differ — a result from uncommitted code should say so. Code run from a
    launch's snapshot (launch.snapshot) says the commit of the checkout it was taken from."""
    here = Path(__file__).resolve().parent
    try:
        marker = json.loads((here.parent / "SNAPSHOT.json").read_text())
        return marker.get("git_commit") if isinstance(marker, dict) else None
    except (OSError, ValueError):
        pass
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")
