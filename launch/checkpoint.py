"""Checkpoints that survive: atomic saves, a metadata sidecar, safe and clear loads.

One file on purpose (~600 lines): saving, the sidecar, verifying and loading share one
format and one set of failure rules (torn writes, disk full, corrupt files, symlinks),
and every family and command loads through it; split, the rules would drift apart.

A checkpoint is a ``torch.save`` file holding *plain data only* (tensors,
numbers, strings, lists, tuples, dicts), so ``torch.load(weights_only=True)``
reads it without running any pickled code. Next to it, ``<path>.json`` records
what it is (the caller's config/metrics/step) and how to check it (sha256,
size, torch version, code commit, host, time).

Saving is atomic: a kill at any moment (SLURM preemption, time limit, OOM
killer) leaves either the previous file or the new one under the final name,
never half of one. Loading turns every way a file can be wrong into one
:class:`~launch.errors.CheckpointError` line instead of a pickle traceback.

Resume convention used by experiments: ``resume_<step:08d>.pt`` in the run
directory, holding the full training state (model, optimizer, scheduler, rng,
step, best metric, config as a dict). :func:`latest_resume_state` finds the
newest one that loads.
"""

from __future__ import annotations

import datetime as _dt
import errno
import functools
import hashlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from launch.errors import CheckpointError

RESUME_PREFIX = "resume_"
SIDECAR_SUFFIX = ".json"

# What torch.load(weights_only=True) can read back. Exact types on purpose:
# np.float64 is a float subclass and an IntEnum an int subclass, and both
# pickle as Python objects that weights_only refuses.
_PLAIN_SCALARS = (int, float, bool, complex, str, bytes, type(None), torch.dtype, torch.device)
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
_PLAIN_MAPPINGS = (dict, OrderedDict)
_PLAIN_SEQUENCES = (list, tuple, torch.Size)

# First bytes of the two formats torch.save writes: a zip archive (default
# since torch 1.6), or the legacy pickle stream that starts with a magic number.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


# -- saving -------------------------------------------------------------------


def save_checkpoint(state: dict[str, Any], path: str | Path, *, sidecar: dict[str, Any] | None = None) -> dict:
    """Write ``state`` to ``path`` atomically, then ``<path>.json`` describing it.

    Returns the sidecar dict: the caller's ``sidecar`` fields (config, metrics,
    step…), ``run_key`` (in a run directory: from its run.json), plus ``sha256``, ``size``, ``torch_version``, ``git_commit``,
    ``host`` and ``created_at``. Raises TypeError, naming the key path, if
    ``state`` holds anything but plain data.
    """
    path = Path(path)
    check_plain_data(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_atomically(path, lambda f: torch.save(state, f), replace=False)
    try:
        digest, size = sha256_file(tmp), tmp.stat().st_size
        # Drop the old sidecar before the new file takes the name: a kill
        # between the two steps then leaves a checkpoint without a sidecar
        # ("unverified"), never one with a stale hash ("mismatched").
        _sidecar_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)

    meta = dict(sidecar or {})
    run_key = _run_key_of(path.parent)
    if run_key is not None:
        meta.setdefault("run_key", run_key)
    meta.update(
        file=path.name,
        sha256=digest,
        size=size,
        torch_version=torch.__version__,
        git_commit=code_git_commit(),
        host=socket.gethostname(),
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    text = json.dumps(meta, indent=2, default=_json_default) + "\n"
    _write_atomically(_sidecar_path(path), lambda f: f.write(text.encode()))
    return meta


def _run_key_of(run_dir: Path) -> str | None:
    """The run key in ``run_dir/run.json`` (a run directory of the harness), else None."""
    try:
        key = json.loads((run_dir / "run.json").read_text()).get("run_key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def check_plain_data(obj: Any, where: str = "state") -> None:
    """Raise TypeError naming the key path of the first non-plain object."""
    kind = type(obj)
    if kind in _PLAIN_SCALARS or kind in _PLAIN_TENSORS:
        return
    if kind in _PLAIN_MAPPINGS:
        for key, value in obj.items():
            if type(key) not in _PLAIN_SCALARS and type(key) is not tuple:
                raise TypeError(f"{where}: key {key!r} is a {_type_name(key)}; checkpoint keys must be "
                                "str, int, float, bool or None")
            check_plain_data(value, f"{where}[{key!r}]")
        return
    if kind in _PLAIN_SEQUENCES:
        for i, value in enumerate(obj):
            check_plain_data(value, f"{where}[{i}]")
        return
    hint = ""
    if isinstance(obj, (np.ndarray, np.generic)):
        hint = " (convert NumPy values with torch.from_numpy(...) or .item())"
    elif hasattr(obj, "__dataclass_fields__"):
        hint = " (store dataclasses as dicts: dataclasses.asdict(...))"
    elif isinstance(obj, torch.nn.Module):
        hint = " (save module.state_dict(), not the module)"
    elif isinstance(obj, Path):
        hint = " (store paths as str)"
    raise TypeError(f"{where} is a {_type_name(obj)}, not plain data: checkpoints hold only tensors, "
                    f"numbers, strings, bools, None and lists/tuples/dicts of those{hint}")


def _write_atomically(path: Path, write, replace: bool = True) -> Path:
    """Write through a unique temp file in the same directory (same file
    system, so os.replace is atomic), fsync it, and move it to ``path``.
    With ``replace=False`` return the temp file for the caller to move."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
    except BaseException as e:
        full = _disk_full(path.parent, e)  # asked before the temp file's space is given back
        tmp.unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        raise
    if replace:
        _fsync_dir(path.parent)
    return tmp


def _disk_full(directory: Path, e: BaseException) -> bool:
    """Whether a failed write failed for lack of space. torch.save reports a full disk as
    ``RuntimeError: ... file write failed``, which names neither the cause nor the file."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(e, Exception):
        return False
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where dirs cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (torch.Tensor, np.ndarray, np.generic)):
        return obj.tolist()
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    return str(obj)


def _type_name(obj: Any) -> str:
    kind = type(obj)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


@functools.cache
def code_git_commit() -> str | None:
    """The commit of the code that is running (the checkout holding ``launch/``)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip() if out.returncode == 0 else ""
    return commit or None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The sidecar of checkpoint ``path``, or None when it has none.
    Raises CheckpointError when the sidecar exists but is not a JSON object."""
    sidecar = _sidecar_path(Path(path))
    try:
        meta = json.loads(sidecar.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"sidecar {sidecar} is unreadable: {_one_line(e)}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"sidecar {sidecar} is not a JSON object")
    return meta


# -- loading ------------------------------------------------------------------

# What the keys experiments require are, for the error message.
_KEY_MEANING = {"model": "model state", "optimizer": "optimizer state", "scheduler": "scheduler state",
                "rng": "RNG state", "step": "the training step", "config": "the run's config"}


def load_checkpoint(path: str | Path, *, map_location: Any = "cpu", require: Iterable[str] = (),
                    mmap: bool = False, verify: bool = True, require_sidecar: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (or any plain-data
    ``torch.save`` file) with ``weights_only=True``.

    Before anything is unpickled the file is checked against its sidecar
    (size, then sha256; ``verify=False`` only for callers that just did so):
    bytes that differ from what was saved are refused. A file without a sidecar
    loads (a checkpoint from elsewhere) unless ``require_sidecar``.

    Every failure is one CheckpointError line: not found, empty/truncated,
    changed since saved, corrupt, not a torch file, holding pickled objects,
    not a dict, or missing a key named in ``require``. ``mmap=True`` maps tensor
    storage instead of reading it (zip-format files only; others are read normally).
    """
    path = Path(path)
    _check_exists(path)
    if verify:
        check_against_sidecar(path, require_sidecar=require_sidecar)
    head = _read_head(path)
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): truncated, e.g. killed while saving")
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt (its zip directory is missing or "
                                  f"damaged; {path.stat().st_size} bytes)")
        mmap_ok = mmap
    elif head.startswith(_LEGACY_MAGIC):
        mmap_ok = False  # torch can only mmap the zip format
    elif head.startswith(b"\x80"):
        raise CheckpointError(f"refusing to load {path}: it is a bare Python pickle, not a torch checkpoint, "
                              "and may hold arbitrary objects")
    else:
        raise CheckpointError(f"{path} is not a torch checkpoint{_describe_foreign(head)}")

    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap_ok)
    except Exception as e:  # every failure becomes one clear line
        raise _load_error(path, e) from None

    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {_type_name(state)}, not a dict of state")
    for key in require:
        if key not in state:
            what = _KEY_MEANING.get(key, "required state")
            have = ", ".join(map(str, list(state)[:12])) or "nothing"
            raise CheckpointError(f"{path} does not contain {what} (key {key!r}); it has: {have}")
    return state


def sidecar_mismatch(path: Path, meta: dict[str, Any]) -> str | None:
    """How the bytes of ``path`` differ from what its sidecar ``meta`` recorded
    (size first: free; then sha256), or None when they agree."""
    size, recorded_size, recorded_hash = path.stat().st_size, meta.get("size"), meta.get("sha256")
    if recorded_size is not None and recorded_size != size:
        return f"it is {size} bytes, its sidecar records {recorded_size} (truncated or changed since it was saved)"
    if recorded_hash is not None:
        actual = sha256_file(path)
        if actual != recorded_hash:
            return (f"its sha256 is {actual[:12]}…, its sidecar records {str(recorded_hash)[:12]}… "
                    "(changed since it was saved)")
    return None


def check_against_sidecar(path: str | Path, *, require_sidecar: bool = False) -> dict[str, Any] | None:
    """Raise CheckpointError when ``path`` does not match its sidecar (or, with
    ``require_sidecar``, has none); returns the sidecar (None when there is none)."""
    path = Path(path)
    meta = read_sidecar(path)
    if meta is None:
        if require_sidecar:
            raise CheckpointError(f"checkpoint {path} has no sidecar {path.name}{SIDECAR_SUFFIX} to verify it "
                                  "against (killed between the save and its sidecar?)")
        return None
    try:
        problem = sidecar_mismatch(path, meta)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {_one_line(e)}") from None
    if problem:
        raise CheckpointError(f"refusing checkpoint {path}: {problem}")
    return meta


def _check_exists(path: Path) -> None:
    if path.is_file():
        return
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    parent = path.parent
    if not parent.is_dir():
        raise CheckpointError(f"checkpoint {path} not found: directory {parent} does not exist")
    present = sorted(p.name for p in parent.glob("*.pt"))
    if present:
        shown = ", ".join(present[:10]) + (f" (+{len(present) - 10} more)" if len(present) > 10 else "")
        raise CheckpointError(f"checkpoint {path} not found; {parent} has: {shown}")
    raise CheckpointError(f"checkpoint {path} not found; {parent} has no .pt files")


def _read_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(64)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {_one_line(e)}") from None


def _describe_foreign(head: bytes) -> str:
    # The head may end inside a multi-byte character: ignore that tail only.
    text = head.decode("utf-8", errors="replace").rstrip("\ufffd")
    if not text or not all(ch.isprintable() or ch in "\t\r\n" for ch in text):
        return f" (unknown format, starts with bytes {head[:8].hex(' ')})"
    stripped = text.lstrip()
    kind = "JSON" if stripped[:1] in "{[" else "text"
    snippet = " ".join(stripped.split())[:40]
    return f" (it is a {kind} file starting {snippet!r})"


def _load_error(path: Path, e: Exception) -> CheckpointError:
    message = str(e)
    if "weights only load failed" in message.lower() or type(e).__name__ == "UnpicklingError":
        blocked = re.search(r"GLOBAL ([\w.]+)", message)
        if blocked:
            return CheckpointError(f"refusing to load {path}: it holds pickled Python objects, not plain data "
                                   f"(found {blocked.group(1)})")
        return CheckpointError(f"checkpoint {path} is corrupt: its pickle stream cannot be read as plain data "
                               f"({_last_line(message)})")
    return CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {_one_line(e)})")


def _one_line(e: BaseException | str) -> str:
    text = " ".join(str(e).split())
    if not text:
        return type(e).__name__
    return text[:200] + ("…" if len(text) > 200 else "")


def _last_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip() and "documentation" not in line]
    return _one_line(lines[-1] if lines else message)


def check_config_match(saved: dict[str, Any], current: dict[str, Any], fields: Iterable[str] | None = None,
                       path: str | Path = "checkpoint") -> None:
    """Raise CheckpointError when ``saved`` and ``current`` differ on ``fields``
    (default: every key of either), naming each field and both values."""
    names = list(fields) if fields is not None else sorted(set(saved) | set(current))
    missing = object()
    diffs = []
    for name in names:
        old, new = saved.get(name, missing), current.get(name, missing)
        if _normalize(old) != _normalize(new):
            shown_old = "(absent)" if old is missing else repr(old)
            shown_new = "(absent)" if new is missing else repr(new)
            diffs.append(f"{name}: saved {shown_old}, now {shown_new}")
    if diffs:
        raise CheckpointError(f"{path} was saved with a different config: " + "; ".join(diffs))


def _normalize(value: Any) -> Any:
    """Tuples and lists compare equal (JSON and YAML turn one into the other)."""
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    return value


# -- random number generators ---------------------------------------------------


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG a training loop draws from, as plain data: Python ``random``,
    NumPy's global RNG, torch CPU, torch CUDA (all devices, when available),
    and the named ``generators`` (e.g. a data sampler's)."""
    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": _plain_numpy_state(np_state),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: gen.get_state() for name, gen in (generators or {}).items()},
    }
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore what :func:`rng_state` captured. CUDA states are restored for
    the devices present (a run resumed on CPU simply has none to restore)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    torch.set_rng_state(_byte_tensor(state["torch"]))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(_byte_tensor(cuda_state), device)
    saved = state.get("generators") or {}
    for name, gen in (generators or {}).items():
        if name not in saved:
            have = ", ".join(saved) or "none"
            raise CheckpointError(f"RNG state has no generator {name!r} (saved generators: {have})")
        gen.set_state(_byte_tensor(saved[name]))


def _plain_numpy_state(np_state: dict[str, Any]) -> dict[str, Any]:
    """NumPy's state dict with arrays as int64 tensors and scalars as Python numbers."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, np.ndarray):
            return torch.from_numpy(value.astype(np.int64))
        if isinstance(value, np.generic):
            return value.item()
        return value

    return plain(np_state)


def _numpy_state_from_plain(state: dict[str, Any]) -> dict[str, Any]:
    def restore(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: restore(v) for k, v in value.items()}
        if isinstance(value, torch.Tensor):
            return value.cpu().numpy().astype(np.uint32)
        return value

    return restore(state)


def _byte_tensor(value: Any) -> torch.Tensor:
    """torch RNG setters want a CPU uint8 tensor (a load with map_location="cuda" moves it)."""
    return torch.as_tensor(value, dtype=torch.uint8).cpu()


# -- resume states ------------------------------------------------------------


def resume_state_path(run_dir: str | Path, step: int, prefix: str = RESUME_PREFIX) -> Path:
    return Path(run_dir) / f"{prefix}{int(step):08d}.pt"


def resume_states(run_dir: str | Path, prefix: str = RESUME_PREFIX) -> list[Path]:
    """``<prefix><step>.pt`` files in ``run_dir``, oldest step first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.glob(f"{prefix}*.pt"):
        step = path.name[len(prefix):-len(".pt")]
        if step.isdigit():
            found.append((int(step), path))
    return [path for _, path in sorted(found)]


def prune_resume_states(run_dir: str | Path, keep_last: int, prefix: str = RESUME_PREFIX) -> list[Path]:
    """Delete all but the ``keep_last`` newest resume states (and their
    sidecars), never the newest one; also temp files left by killed saves.
    Returns the deleted checkpoints."""
    states = resume_states(run_dir, prefix)
    doomed = states[: max(0, len(states) - max(1, keep_last))]
    for path in doomed:
        path.unlink(missing_ok=True)
        _sidecar_path(path).unlink(missing_ok=True)
    if states:
        _remove_stale_temp_files(Path(run_dir), prefix, newer_than=states[-1])
    return doomed


def _remove_stale_temp_files(run_dir: Path, prefix: str, newer_than: Path) -> None:
    """Temp files of saves that were killed (a requeued job leaves them behind:
    they can be as large as a checkpoint). Only those older than the newest
    complete checkpoint and not ours, so a save in progress is left alone."""
    try:
        cutoff = newer_than.stat().st_mtime
    except OSError:
        return
    own = f".tmp.{os.getpid()}."
    for tmp in run_dir.glob(f".{prefix}*.pt.tmp.*"):
        try:
            if own not in tmp.name and tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except OSError:
            pass


def load_latest_resume_state(run_dir: str | Path, *, prefix: str = RESUME_PREFIX, require: Iterable[str] = (),
                             map_location: Any = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest resume state that is verified and loads, with its contents; None if there is none.

    Each state is checked against its sidecar (size + sha256) before it is
    unpickled; one without a sidecar is not trusted either. A newest file that
    fails (damaged on disk, changed since saved, written by a process killed
    while saving without the atomic path) is reported on stderr (the run's log),
    renamed to ``<name>.corrupt`` — so pruning never keeps it in place of a good
    one — and recorded in the run's ``state.json`` (``corrupt_resume_states``,
    shown by ``sweep status``); then the previous state is tried.
    """
    require = tuple(require)
    for path in reversed(resume_states(run_dir, prefix)):
        try:
            return path, load_checkpoint(path, map_location=map_location, require=require, require_sidecar=True)
        except CheckpointError as e:
            _set_aside(Path(run_dir), path, str(e))
    return None


def _set_aside(run_dir: Path, path: Path, why: str) -> None:
    """Rename a refused resume state ``<name>.corrupt`` (dropping its sidecar), say so on stderr and in
    the run's state.json."""
    aside = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, aside)
        _sidecar_path(path).unlink(missing_ok=True)
        moved = f"; moved to {aside.name}"
    except OSError:
        moved = ""
    print(f"warning: skipping resume state {path.name}: {why}{moved}; trying the previous one", file=sys.stderr)
    _record_in_state(run_dir, path.name)


def _record_in_state(run_dir: Path, name: str) -> None:
    """Add ``name`` to ``corrupt_resume_states`` in the run's state.json (when it is a run directory)."""
    from launch.store import STATE_FILE, Store, read_json  # the harness's store: only in a run directory

    state = read_json(run_dir / STATE_FILE)
    if not state or state.get("_corrupt"):
        return
    seen = state.get("corrupt_resume_states")
    names = [n for n in seen if isinstance(n, str)] if isinstance(seen, list) else []
    if name in names:  # another rank of the same job set it aside already
        return
    try:
        Store(run_dir.parent).update_state(run_dir.name, base=state, corrupt_resume_states=[*names, name])
    except OSError:
        pass


def latest_resume_state(run_dir: str | Path, *, prefix: str = RESUME_PREFIX,
                        require: Iterable[str] = ()) -> Path | None:
    """Path of the newest resume state that loads (see :func:`load_latest_resume_state`)."""
    found = load_latest_resume_state(run_dir, prefix=prefix, require=require)
    return found[0] if found else None
