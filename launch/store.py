"""The on-disk store: the tree of run directories and the harness's own files.

Layout under the tree root::

    <root>/.sweep/manifests/<spec>.json   run dir -> run key, written at first launch
    <root>/.sweep/locks/<spec>.lock       held while launching (one submit per run)
    <root>/.sweep/submitit/               submitit's folder (pickles, stdout/stderr)
    <root>/.sweep/jobs/<spec>.json        run dir -> job id of its latest submission
    <root>/.sweep/cancelled/<spec>.json   run dir -> job id, for runs `sweep cancel` stopped before
                                          they started (they have no directory of their own)
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
import errno
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
# the scheduler ended the job and the spec's retry_on did not have it requeued (the job wrote it)
PREEMPTED = "preempted"
NODE_FAIL = "node_fail"
ENDED = (COMPLETED, FAILED, CANCELLED, PREEMPTED, NODE_FAIL)


def write_json(path: Path | str, data: Any) -> None:
    # plain os calls and compact JSON (the C encoder; indent= is ~10x slower): at
    # 10,000 runs a launch writes 20,000 of these
    path = os.fspath(path)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(data, sort_keys=True, default=str))
        os.replace(tmp, path)
    except BaseException as e:  # e.g. no space left on device: no temp file is left behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a failed write names no file: say which
            raise OSError(e.errno, e.strerror, path) from None
        raise


def read_bytes(path: Path | str) -> bytes:
    """A file's bytes through plain os calls: a third of ``open().read()``'s time on the small files
    ``sweep status`` reads per run (no file object, no text wrapper). A symlink is refused (OSError
    ELOOP): the harness never writes one (it replaces files, it does not write through links), so a
    link is a file some other run or person put there, not this run's."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        data = os.read(fd, 65536)
        if len(data) < 65536:  # a regular file's read is short only at its end
            return data
        chunks = [data]
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_json(path: Path | str) -> dict[str, Any] | None:
    """A harness JSON file (always an object); None when missing, ``{"_corrupt": True}`` when unreadable."""
    try:
        data = json.loads(read_bytes(path).decode("utf-8"))  # as open(encoding="utf-8"): a BOM is corrupt
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"_corrupt": True}
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symlink: not a file the harness wrote (see read_bytes)
            return {"_corrupt": True, "_why": "a symbolic link, not a file the harness wrote"}
        raise
    return data if isinstance(data, dict) else {"_corrupt": True}


def run_path(root: Path | None, rel_dir: str) -> str:
    """``str((root or Path()) / rel_dir)``, without pathlib for the run directories expand() makes (no
    empty or ``.`` component): pathlib's join was a fifth of ``status -v`` at 50,000 runs."""
    if "//" in rel_dir or rel_dir.startswith(("/", "./")) or rel_dir.endswith(("/", "/.")) or "/./" in rel_dir \
            or rel_dir in ("", "."):
        return str((root or Path()) / rel_dir)
    head = str(root or Path())
    return rel_dir if head == "." else f"{head}{'' if head.endswith('/') else '/'}{rel_dir}"


def may_have_files(rel_dir: str, tops: set[str] | None) -> bool:
    """Whether the run directory ``rel_dir`` can exist, given the root's names (``Store.top_dirs``)."""
    top = rel_dir.split("/", 1)[0]
    return tops is None or top.casefold() in tops or top in ("", ".", "..")


# the type of each state.json field (None is always allowed); a field of another type makes the
# file corrupt: readers report it instead of failing on it
_NUMBER = (int, float)
STATE_FIELDS: dict[str, Any] = {
    "state": str, "job_id": str, "attempts": int, "requeues": int, "host": str, "pid": int, "git_commit": str,
    "started_at": _NUMBER, "attempt_started_at": _NUMBER, "ended_at": _NUMBER, "wall_s": _NUMBER,
    "updated_at": _NUMBER, "submitted_at": _NUMBER, "error": str, "cluster": str, "run_key": str, "code_snapshot": str,
    "corrupt_resume_states": list,
}


def state_problem(state: dict[str, Any]) -> str | None:
    """The first field of a state.json that has the wrong type, as ``field: problem``; None when fine."""
    for name, value in state.items():  # the common case first: the file's own fields, all fine
        kind = STATE_FIELDS.get(name)
        if kind is not None and value is not None and (value.__class__ is bool or not isinstance(value, kind)):
            break
    else:
        return None
    for name, kind in STATE_FIELDS.items():  # the first wrong one in STATE_FIELDS order
        value = state.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            want = "a number" if kind is _NUMBER else {str: "a string", int: "an integer", list: "a list"}[kind]
            return f"{name}: must be {want}, got {type(value).__name__} {value!r}"[:160]
    return None


def read_state(path: Path | str) -> dict[str, Any] | None:
    """A state.json: None when missing; ``{"_corrupt": True, "_why": ...}`` when unreadable or when a
    field has the wrong type."""
    data = read_json(path)
    if data is None or data.get("_corrupt"):
        return data
    problem = state_problem(data)
    return {"_corrupt": True, "_why": problem} if problem else data


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
        with open(path, "a") as f:  # not "w": taking a lock writes nothing (its mtime stays)
            deadline = time.time() + timeout_s
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.time() > deadline:
                        raise UserError(f"another 'sweep launch' or 'sweep cancel' of {spec} holds {path}; try again "
                                        "later") from None
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
        problem = "not JSON" if old.get("_corrupt") else manifest_problem(old)
        if problem:
            raise UserError(f"{self.manifest_path(spec)}: {problem}: the manifest is corrupt; move it away to "
                            "relaunch")
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
        info = read_json(self.run_file(run, RUN_FILE))
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
            entries = (read_json(path) or {}).get("runs")
            for rel, entry in (entries if isinstance(entries, dict) else {}).items():
                r = by_dir.get(rel)
                if r is not None and isinstance(entry, dict) and entry.get("run_key") != r.run_key:
                    raise UserError(f"{self.run_dir(r)} is run {entry.get('run_key')} of spec {path.stem!r}, "
                                    f"not {r.run_key}: two specs map to one directory")

    @staticmethod
    def run_info(run: Run, wandb: dict[str, Any] | None, max_requeues: int,
                 fail_on_nonfinite_loss: bool = True, retry_on: list[str] | tuple[str, ...] | None = None,
                 code: str | None = None) -> dict[str, Any]:
        """What run.json holds: identity, resolved config, and how the job should treat it
        (``retry_on``: the scheduler's ends it requeues itself; ``code``: the launch's code snapshot)."""
        info = {**run.to_json(), "wandb": wandb, "max_requeues": max_requeues,
                "fail_on_nonfinite_loss": fail_on_nonfinite_loss}
        if retry_on is not None:
            info["retry_on"] = list(retry_on)
        if code is not None:
            info["code_snapshot"] = code
        return info

    def write_run_info(self, rel_dir: str, info: dict[str, Any]) -> bool:
        """Create the run directory with its run.json. Done by the job when it first
        starts (the launcher hands it the info), so a launch of 10,000 runs writes
        10,000 fewer files; the manifest already records every config.

        False (and nothing written) when the directory already holds another run
        (a different run key): a job never takes over a directory it does not own."""
        d = self.run_dir(rel_dir)
        old = read_json(d / RUN_FILE)
        if old == info:
            return True
        if old and not old.get("_corrupt") and old.get("run_key") != info.get("run_key"):
            return False
        os.makedirs(d, exist_ok=True)
        write_json(d / RUN_FILE, info)
        return True

    def manifest_runs(self, spec: str) -> dict[str, Any]:
        """The spec's manifest entries (run dir -> {run_key, ...}); {} when there is none. An entry
        of the wrong shape stays in (identity checks then report it); a ``runs`` that is not a
        mapping counts as none."""
        runs = (self.read_manifest(spec) or {}).get("runs")
        return runs if isinstance(runs, dict) else {}

    def identity_problem(self, run: Run, manifest: dict[str, Any], info: dict[str, Any] | None) -> str | None:
        """Why the files in ``run``'s directory are not ``run``'s own, or None when they are.

        ``manifest``: the spec's manifest entries; ``info``: the directory's run.json
        (None when absent). Files are attributed to a run only when the run key that
        the directory and the manifest record is the run key of ``run``."""
        entry = manifest.get(run.rel_dir)
        if entry is not None:
            recorded = entry.get("run_key") if isinstance(entry, dict) else None
            if recorded != run.run_key:
                return (f"wrong run: the manifest records run {recorded} in {run.rel_dir}, not {run.run_key} "
                        "(spec changed after launch?)")
        if info is None:
            return None
        if info.get("_corrupt") or not isinstance(info.get("run_key"), str):
            return f"{RUN_FILE} is corrupt (cannot tell which run wrote this directory)"
        if info["run_key"] != run.run_key:
            spec = f" of spec {info['spec']!r}" if info.get("spec") else ""
            return f"wrong run: this directory holds run {info['run_key']}{spec}, not {run.run_key}"
        return None

    def top_dirs(self) -> set[str] | None:
        """The names in the tree's root (None if it cannot be listed): a run whose first directory is not
        among them has no files, and is not looked for (a fresh launch of 10,000 runs opened 30,000
        missing files)."""
        try:  # case-folded: on macOS and Windows ``G0/`` is the directory a run names ``g0/``
            return {name.casefold() for name in os.listdir(self.root)}
        except OSError:
            return None

    def run_file(self, run: Run | str, name: str) -> str:
        """``str(self.run_dir(run) / name)`` without pathlib (a launch of 10,000 runs makes 20,000)."""
        return f"{run_path(self.root, run.rel_dir if isinstance(run, Run) else run)}/{name}"

    def state(self, run: Run | str) -> dict[str, Any]:
        return read_state(self.run_file(run, STATE_FILE)) or {}

    def update_state(self, run: Run | str, base: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the run's state (``base``: the state the caller just read)."""
        path = self.run_dir(run) / STATE_FILE
        st = dict(base) if base is not None else (read_state(path) or {})
        if st.get("_corrupt"):
            st = {}
        st.update(fields, updated_at=time.time())
        try:
            write_json(path, st)
        except FileNotFoundError:  # e.g. cancelling a run that never started: no directory yet
            os.makedirs(path.parent, exist_ok=True)
            write_json(path, st)
        return st


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """Where a manifest is not the shape the launcher writes (``runs.<dir>.run_key`` a string)."""
    runs = manifest.get("runs", {})
    if not isinstance(runs, dict):
        return f"runs: must be a mapping of run directories, got {type(runs).__name__}"
    for rel, entry in runs.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("run_key"), str):
            return f"runs.{rel}: must be a mapping with a run_key string"
    return None


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


def jobs_log_path(store: Store, spec: str) -> Path:
    return store.meta / "jobs" / f"{spec}.log"


def read_jobs(store: Store, spec: str) -> dict[str, str]:
    """run dir -> job id of its latest submission: the spec's jobs file, then the arrays a launch has
    appended to its log since (see :func:`record_jobs`), later entries winning."""
    data = read_json(jobs_path(store, spec))
    out = {} if not data or data.get("_corrupt") else \
        {rel: job for rel, job in data.items() if isinstance(job, str)}  # entries of another shape: ignored
    try:
        with open(jobs_log_path(store, spec)) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:  # a line cut short by a kill: that array's record is lost
                    continue
                if isinstance(entry, dict):
                    out.update((rel, job) for rel, job in entry.items() if isinstance(job, str))
    except FileNotFoundError:
        pass
    return out


def record_jobs(store: Store, spec: str, jobs: dict[str, str]) -> None:
    """Record the job ids of one accepted array: one line appended to the spec's jobs log, so a launch
    of N arrays writes each id once (rewriting the jobs file per array was quadratic in the grid)."""
    path = jobs_log_path(store, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(jobs, separators=(",", ":")) + "\n")


def compact_jobs(store: Store, spec: str) -> None:
    """Fold the jobs log into the jobs file (once per launch, under the spec's lock)."""
    log = jobs_log_path(store, spec)
    if not log.exists():
        return
    write_json(jobs_path(store, spec), read_jobs(store, spec))
    log.unlink()


def cancelled_path(store: Store, spec: str) -> Path:
    return store.meta / "cancelled" / f"{spec}.json"


def read_cancelled(store: Store, spec: str) -> dict[str, str]:
    """run dir -> the job id ``sweep cancel`` cancelled before the run started. The entry holds only
    while that job is the run's latest submission (a relaunch records another job id)."""
    data = read_json(cancelled_path(store, spec))
    if not data or data.get("_corrupt"):
        return {}
    return {rel: job for rel, job in data.items() if isinstance(job, str)}


def record_cancelled(store: Store, spec: str, jobs: dict[str, str]) -> None:
    """Note runs cancelled before they started: one file per spec, not a directory per run."""
    if not jobs:
        return
    path = cancelled_path(store, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {**read_cancelled(store, spec), **jobs})
