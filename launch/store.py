"""The on-disk store: the tree of run directories and the harness's own files.

Layout under the tree root::

    <root>/.sweep/manifests/<spec>.json   run dir -> run key, written at first launch
    <root>/.sweep/locks/<spec>.lock       held while launching (one submit per run)
    <root>/.sweep/submitit/               submitit's folder (pickles, stdout/stderr)
    <root>/<run dir>/run.json             identity + resolved config (plain JSON)
    <root>/<run dir>/state.json           state, job id, attempts, times, error tail
    <root>/<run dir>/progress.json        step / total, updated while running
    <root>/<run dir>/metrics.jsonl        one JSON record per ctx.log call
    <root>/<run dir>/log.txt              the run's stdout/stderr, all attempts

Every JSON file is written atomically (temp file + rename), so readers never see
half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from launch.errors import UserError
from launch.tasks import Run

META = ".sweep"
RUN_FILE = "run.json"
STATE_FILE = "state.json"
LOG_FILE = "log.txt"

# states written to disk by the launcher and the task runner
SUBMITTED = "submitted"  # handed to the scheduler; the scheduler says pending/running
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
REQUEUED = "requeued"
CANCELLED = "cancelled"  # by sweep cancel
ENDED = (COMPLETED, FAILED, CANCELLED)


def write_json(path: Path | str, data: Any) -> None:
    # plain os calls and compact JSON (the C encoder; indent= is ~10x slower): at
    # 10,000 runs a launch writes 20,000 of these
    path = os.fspath(path)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """A harness JSON file (always an object); None when missing, ``{"_corrupt": True}`` when unreadable."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"_corrupt": True}
    return data if isinstance(data, dict) else {"_corrupt": True}


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)

    # -- harness files -----------------------------------------------------
    @property
    def meta(self) -> Path:
        return self.root / META

    def manifest_path(self, spec: str) -> Path:
        return self.meta / "manifests" / f"{spec}.json"

    def submitit_dir(self) -> Path:
        return self.meta / "submitit"

    @contextlib.contextmanager
    def lock(self, spec: str, timeout_s: float = 120.0) -> Iterator[None]:
        """Exclusive lock per spec, so two launches at once submit each run once."""
        path = self.meta / "locks" / f"{spec}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            deadline = time.time() + timeout_s
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.time() > deadline:
                        raise UserError(f"another 'sweep launch' of {spec} holds {path}; try again later") from None
                    time.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def read_manifest(self, spec: str) -> dict[str, Any] | None:
        return read_json(self.manifest_path(spec))

    def check_manifest(self, spec: str, runs: list[Run]) -> None:
        """Refuse a relaunch that would renumber or change runs already launched."""
        old = self.read_manifest(spec)
        if not old:
            return
        if old.get("_corrupt"):
            raise UserError(f"{self.manifest_path(spec)}: manifest is corrupt; move it away to relaunch")
        by_dir = {r.rel_dir: r for r in runs}
        differ = []
        for rel, entry in old.get("runs", {}).items():
            r = by_dir.get(rel)
            if r is not None and r.run_key != entry["run_key"]:
                changed = sorted(k for k in set(r.config) | set(entry.get("config", {}))
                                 if r.config.get(k) != entry.get("config", {}).get(k))
                differ.append(f"{rel} ({', '.join(changed) or 'config'})")
        if differ:
            more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
            raise UserError(f"spec {spec} would change runs already launched: {'; '.join(differ[:3])}{more}. "
                            f"Append new axis values at the end, or use a new spec name/path")

    def write_manifest(self, spec: str, spec_file: str, runs: list[Run], old: dict[str, Any] | None) -> None:
        """Add ``runs`` to the manifest whose current content (read under the spec's lock) is ``old``."""
        old = old or {}
        entries = dict(old.get("runs", {}))
        for r in runs:
            entries[r.rel_dir] = {"run_key": r.run_key, "group": r.group, "task": r.task, "seed": r.seed,
                                  "config": r.config}
        path = self.manifest_path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"spec": spec, "spec_file": spec_file, "updated_at": time.time(), "runs": entries})

    # -- run directories -----------------------------------------------------
    def run_dir(self, run: Run | str) -> Path:
        return self.root / (run.rel_dir if isinstance(run, Run) else run)

    def check_run_dir(self, run: Run) -> None:
        """A run directory already used by a different config (another spec sharing the tree)."""
        info = read_json(self.run_dir(run) / RUN_FILE)
        if info and not info.get("_corrupt") and info.get("run_key") != run.run_key:
            raise UserError(f"{self.run_dir(run)} already holds run {info.get('run_key')} of spec "
                            f"{info.get('spec')!r}, not {run.run_key}: two specs map to one directory")

    def check_other_specs(self, spec: str, runs: list[Run]) -> None:
        """A run directory another spec of the tree has launched a different run into, whether
        or not that run has started (its run.json is written only when it starts)."""
        by_dir = {r.rel_dir: r for r in runs}
        for path in sorted((self.meta / "manifests").glob("*.json")):
            if path.stem == spec:
                continue
            for rel, entry in ((read_json(path) or {}).get("runs") or {}).items():
                r = by_dir.get(rel)
                if r is not None and isinstance(entry, dict) and entry.get("run_key") != r.run_key:
                    raise UserError(f"{self.run_dir(r)} is run {entry.get('run_key')} of spec {path.stem!r}, "
                                    f"not {r.run_key}: two specs map to one directory")

    @staticmethod
    def run_info(run: Run, wandb: dict[str, Any] | None, max_requeues: int) -> dict[str, Any]:
        """What run.json holds: identity, resolved config, and how the job should treat it."""
        return {**run.to_json(), "wandb": wandb, "max_requeues": max_requeues}

    def write_run_info(self, rel_dir: str, info: dict[str, Any]) -> None:
        """Create the run directory with its run.json. Done by the job when it first
        starts (the launcher hands it the info), so a launch of 10,000 runs writes
        10,000 fewer files; the manifest already records every config."""
        d = self.run_dir(rel_dir)
        if read_json(d / RUN_FILE) == info:
            return
        os.makedirs(d, exist_ok=True)
        write_json(d / RUN_FILE, info)

    def state(self, run: Run | str) -> dict[str, Any]:
        return read_json(self.run_dir(run) / STATE_FILE) or {}

    def update_state(self, run: Run | str, base: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the run's state (``base``: the state the caller just read)."""
        path = self.run_dir(run) / STATE_FILE
        st = dict(base) if base is not None else (read_json(path) or {})
        if st.get("_corrupt"):
            st = {}
        st.update(fields, updated_at=time.time())
        try:
            write_json(path, st)
        except FileNotFoundError:  # e.g. cancelling a run that never started: no directory yet
            os.makedirs(path.parent, exist_ok=True)
            write_json(path, st)
        return st


def human_size(size: int | None) -> str:
    """1536 -> '1.5 KiB' (for listings)."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def jobs_path(store: Store, spec: str) -> Path:
    return store.meta / "jobs" / f"{spec}.json"


def read_jobs(store: Store, spec: str) -> dict[str, str]:
    """run dir -> job id of its latest submission (one file per spec, so status reads one file)."""
    data = read_json(jobs_path(store, spec))
    return {} if not data or data.get("_corrupt") else data


def record_jobs(store: Store, spec: str, jobs: dict[str, str]) -> None:
    path = jobs_path(store, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {**read_jobs(store, spec), **jobs})
