"""``sweep verify``: check that the checkpoints under some paths are intact.

For every ``*.pt`` file: if it has a sidecar (``<file>.json``), its size and
sha256 must match what was recorded when it was saved, and the sidecar must
describe this file (its recorded name; in a run directory, the run key and
config of the run in ``run.json``); and it must load with ``weights_only=True``. A sidecar whose checkpoint is gone is reported too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from launch.checkpoint import SIDECAR_SUFFIX, load_checkpoint, read_sidecar, sidecar_mismatch
from launch.errors import CheckpointError
from launch.store import RUN_FILE, human_size, read_json

OK, MISSING, MISMATCHED, UNLOADABLE, UNVERIFIED = "ok", "missing", "mismatched", "unloadable", "unverified"
BAD_STATUSES = (MISSING, MISMATCHED, UNLOADABLE)


@dataclass
class VerifiedFile:
    path: Path
    status: str  # ok | missing | mismatched | unloadable | unverified
    detail: str = ""
    size: int | None = None


@dataclass
class VerifyReport:
    files: list[VerifiedFile] = field(default_factory=list)

    def with_status(self, status: str) -> list[VerifiedFile]:
        return [f for f in self.files if f.status == status]

    @property
    def ok(self) -> list[VerifiedFile]:
        return self.with_status(OK)

    @property
    def missing(self) -> list[VerifiedFile]:
        return self.with_status(MISSING)

    @property
    def mismatched(self) -> list[VerifiedFile]:
        return self.with_status(MISMATCHED)

    @property
    def unloadable(self) -> list[VerifiedFile]:
        return self.with_status(UNLOADABLE)

    @property
    def unverified(self) -> list[VerifiedFile]:
        """Loadable, but with no sidecar to check them against."""
        return self.with_status(UNVERIFIED)

    @property
    def bad(self) -> list[VerifiedFile]:
        return [f for f in self.files if f.status in BAD_STATUSES]

    def summary(self) -> str:
        counts = ", ".join(f"{len(self.with_status(s))} {s}" for s in (OK, MISMATCHED, MISSING, UNLOADABLE, UNVERIFIED))
        verdict = "FAILED" if self.bad else "passed"
        return f"verify {verdict}: {len(self.files)} checkpoint(s): {counts}"


def verify_paths(paths: Iterable[str | Path]) -> VerifyReport:
    """Check every checkpoint in ``paths`` (directories are walked for ``*.pt``
    files and orphaned ``*.pt.json`` sidecars; files are taken as given)."""
    # Keyed by resolved path so overlapping arguments check a file once;
    # the value is the path as the user wrote it, for display.
    checkpoints: dict[Path, Path] = {}
    sidecars: dict[Path, Path] = {}
    for path in map(Path, paths):
        if path.is_dir():
            for found in sorted(path.rglob("*.pt")):
                if found.is_file():
                    checkpoints.setdefault(found.resolve(), found)
            for sidecar in sorted(path.rglob(f"*{SIDECAR_SUFFIX}")):
                if _is_sidecar(sidecar):
                    sidecars.setdefault(sidecar.resolve(), sidecar)
        elif path.name.endswith(f".pt{SIDECAR_SUFFIX}"):
            sidecars.setdefault(path.resolve(), path)
        else:
            checkpoints.setdefault(path.resolve(), path)

    report = VerifyReport()
    for checkpoint in checkpoints.values():
        report.files.append(verify_file(checkpoint))
    for resolved, sidecar in sidecars.items():
        checkpoint = sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)])
        if resolved.with_name(checkpoint.name) in checkpoints:
            continue
        if checkpoint.exists():
            report.files.append(verify_file(checkpoint))
        else:
            report.files.append(VerifiedFile(checkpoint, MISSING, f"sidecar {sidecar.name} exists, the file does not"))
    return report


_NOT_SIDECARS = {"run.json", "state.json", "progress.json", "noop_state.json", "corruption.json"}


def _is_sidecar(path: Path) -> bool:
    """``x.pt.json``, or any other ``<file>.json`` that records a sha256 (coconut's
    ``checkpoint_<epoch>.json``): the harness's own JSON files are not."""
    if path.name.endswith(f".pt{SIDECAR_SUFFIX}"):
        return True
    if path.name in _NOT_SIDECARS or path.parent.name == ".sweep" or ".sweep" in path.parts:
        return False
    try:
        with open(path) as f:
            head = f.read(65536)
        return '"sha256"' in head
    except OSError:
        return False


def verify_file(path: Path) -> VerifiedFile:
    """Size and hash against the sidecar (when there is one), that the sidecar describes this
    file of this run, then a safe load."""
    if not path.is_file():
        return VerifiedFile(path, MISSING, "no such file")
    size = path.stat().st_size
    try:
        meta = read_sidecar(path)
    except CheckpointError as e:
        return VerifiedFile(path, MISMATCHED, str(e), size)
    if meta is not None:
        problem = sidecar_mismatch(path, meta) or _not_this_file(path, meta)
        if problem:
            return VerifiedFile(path, MISMATCHED, problem, size)
    try:
        # mmap: verifying must not need the RAM to hold the largest checkpoint; hashed above already
        load_checkpoint(path, mmap=True, verify=False)
    except CheckpointError as e:
        return VerifiedFile(path, UNLOADABLE, str(e), size)
    if meta is None:
        return VerifiedFile(path, UNVERIFIED, "loads, but has no sidecar to check it against", size)
    return VerifiedFile(path, OK, "", size)


# config fields that may differ between a checkpoint's sidecar and its run (a requeued job can land on
# another device)
_FREE_FIELDS = {"device"}


def _not_this_file(path: Path, meta: dict[str, Any]) -> str | None:
    """Why the sidecar ``meta`` does not describe ``path`` — another file's name, or, in a run
    directory, another run's key or config — or None when it does."""
    recorded = meta.get("file")
    if recorded is not None and recorded != path.name:
        return f"its sidecar describes {recorded!r}, not this file (copied or renamed?)"
    info = read_json(path.parent / RUN_FILE)
    if not info or info.get("_corrupt"):
        return None
    parent = info.get("parent") if isinstance(info.get("parent"), dict) else {}
    if parent.get("resume_state") == path.name:  # `sweep resume` copied the parent's state here as is
        return None
    key = meta.get("run_key")
    if key is not None and key != info.get("run_key"):
        return f"its sidecar records run {key}, this directory holds run {info.get('run_key')}"
    saved, config = meta.get("config"), info.get("config")
    if isinstance(saved, dict) and isinstance(config, dict):
        differ = sorted(k for k in (set(saved) & set(config)) - _FREE_FIELDS if saved[k] != config[k])
        if differ:
            shown = ", ".join(f"{k} {saved[k]!r} (run: {config[k]!r})" for k in differ[:3])
            return f"its sidecar records another config than this run's: {shown}"
    return None


def format_report(report: VerifyReport) -> str:
    rows = [(f.status, human_size(f.size), _shown(f.path), f.detail) for f in report.files]
    header = ("STATUS", "SIZE", "PATH", "DETAIL")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
             for row in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)




def _shown(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


def _spec_run_dirs(spec_file: Path, root: str | None) -> list[Path]:
    """The existing run directories of a spec (a spec names its tree; verify walks its runs), all its
    parts' for a composite spec."""
    from launch.spec_set import expand_set, load_spec_set
    from launch.store import Store

    sset = load_spec_set(spec_file, root=root)
    store = Store(sset.root)
    return [d for d in (store.run_dir(r) for r in expand_set(sset)) if d.is_dir()]


@click.command("verify")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--root", default=None, help="Tree root for SPEC arguments (default: the spec's).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the bad files and the summary.")
def verify_command(paths: tuple[Path, ...], root: str | None, quiet: bool) -> None:
    """Check checkpoints under PATHS (directories, files, or specs: their run
    directories): size and sha256 against each file's sidecar, and a safe
    (weights-only) load. Exits 1 when any checkpoint is missing, modified or
    unloadable."""
    targets: list[Path] = []
    for p in paths:
        if p.is_file() and p.suffix in (".yaml", ".yml"):
            targets += _spec_run_dirs(p, root)
        else:
            targets.append(p)
    report = verify_paths(targets)
    shown = VerifyReport(report.bad) if quiet else report
    if shown.files:
        click.echo(format_report(shown))
    click.echo(report.summary())
    if report.bad:
        click.get_current_context().exit(1)
