"""Code that does not move under queued jobs: a launch's code snapshot.

At launch the sources of the installed packages a job imports (``launch`` and every package
an experiment or command entry point names: the experiment families, analysis) are copied
into ``<root>/.sweep/code/<hash>/``, named by a hash of their content, so identical launches
share one snapshot. Every job of the launch (and every requeue of it: the sbatch script is
the same) puts the snapshot first on its ``PYTHONPATH``, so editing the checkout while the
sweep waits in the queue changes nothing it runs. ``SNAPSHOT.json`` in the snapshot records
its hash and the checkout's commit; a job reads it for its provenance.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

from launch.provenance import git_commit
from launch.store import Store

MARKER = "SNAPSHOT.json"
GROUPS = ("sweep.experiments", "sweep.commands")


def packages() -> dict[str, Path]:
    """Top-level package name -> its source directory, for ``launch`` and every entry point's package."""
    names = {"launch"} | {ep.value.split(":")[0].split(".")[0] for g in GROUPS for ep in entry_points(group=g)}
    found = {}
    for name in sorted(names):
        spec = importlib.util.find_spec(name)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if locations:
            found[name] = Path(locations[0])
    return found


def _files(pkgs: dict[str, Path]) -> list[tuple[str, Path]]:
    """(path inside the snapshot, source file) of every file of the packages, caches left out."""
    out = []
    for name, src in pkgs.items():
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            for f in sorted(filenames):
                if f.endswith((".pyc", ".pyo")) or f.startswith("."):
                    continue
                path = Path(dirpath) / f
                out.append((f"{name}/{path.relative_to(src).as_posix()}", path))
    return out


def content_hash(files: list[tuple[str, Path]]) -> str:
    h = hashlib.sha256()
    for rel, path in files:
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def snapshot_dir(store: Store, digest: str) -> Path:
    return store.meta / "code" / digest


def plan_snapshot(store: Store) -> tuple[str, Path]:
    """The hash and directory the launch's snapshot has (or would have); writes nothing."""
    digest = content_hash(_files(packages()))
    return digest, snapshot_dir(store, digest).absolute()


def make_snapshot(store: Store) -> tuple[str, Path]:
    """Copy the packages' sources into ``.sweep/code/<hash>/`` unless that snapshot exists; (hash, dir).

    Written into a temporary directory and renamed, so a snapshot is whole or absent."""
    files = _files(packages())
    digest = content_hash(files)
    dest = snapshot_dir(store, digest).absolute()
    if (dest / MARKER).exists():
        return digest, dest
    tmp = dest.parent / f".tmp-{digest}-{os.getpid()}"
    try:
        for rel, src in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / rel)
        (tmp / MARKER).write_text(json.dumps({"hash": digest, "git_commit": git_commit(),
                                              "created_at": time.time(), "files": len(files)}))
        try:
            os.rename(tmp, dest)
        except OSError:  # another launch made the same snapshot meanwhile
            if not (dest / MARKER).exists():
                raise
    except OSError as e:  # name the snapshot being written, not the source file
        raise OSError(e.errno, e.strerror, str(dest)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            dest.parent.rmdir()  # only when empty: no snapshot was made
    return digest, dest


def setup_line(path: Path) -> str:
    """The sbatch setup line that runs the job (and its requeues) from the snapshot."""
    return f'export PYTHONPATH="{path}${{PYTHONPATH:+:$PYTHONPATH}}"'


@contextlib.contextmanager
def python_path(path: Path | None) -> Iterator[None]:
    """``path`` first on PYTHONPATH for the processes started inside (the local executor's workers)."""
    if path is None:
        yield
        return
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = f"{path}{os.pathsep}{old}" if old else str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def running_snapshot() -> dict[str, object] | None:
    """The snapshot this process's code comes from (its SNAPSHOT.json), None when it runs a checkout."""
    marker = Path(__file__).resolve().parent.parent / MARKER
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
