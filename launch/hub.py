"""``sweep upload`` / ``sweep download``: share a sweep's finished runs.

What goes up, for every *completed* run of the spec, at its place in the tree
(``<run dir>/...``, so a download is a tree root again):

* ``run.json`` (identity, resolved config), ``state.json`` (provenance: commit,
  host, times — what ``sweep collect`` reads) and ``metrics.jsonl``;
* every checkpoint (a file with a ``<file>.json`` sidecar, or a ``*.pt``) and its
  sidecar, so ``sweep verify`` can check each download against its sha256.

Not: resume states (``resume_*.pt``: optimizer and RNG state, only useful to the
machine that trains), logs, progress files, temp files, and the harness's
``.sweep/`` folder. Beside the runs: ``specs/<spec>.yaml`` (the spec itself) and
``README.md``, a model card generated from the spec (grid, counts, how to load).

``--repo`` is a Hugging Face Hub repo id (``owner/name``), or a local folder
(``file:///path``, or a path starting with ``/``, ``./``, ``../`` or ``~``) that
receives the same files — the round trip the tests run, and a way to stage an
upload. ``huggingface_hub`` is imported only for the Hub (the ``hub`` extra).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from launch import store as st
from launch.errors import UserError
from launch.experiment import METRICS_FILE
from launch.spec import Spec
from launch.store import Store, human_size
from launch.tasks import Run

RUN_FILES = (st.RUN_FILE, st.STATE_FILE, METRICS_FILE)
CARD = "README.md"
SPECS_DIR = "specs"
CARD_MAX_RUN_ROWS = 200
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass
class UploadPlan:
    spec: Spec
    runs: list[Run]                    # all runs of the spec (after --only)
    uploaded: list[Run]                # the completed ones
    states: dict[str, int]             # state -> count, over all runs
    files: list[tuple[str, Path]] = field(default_factory=list)  # (path in repo, local file)
    card: str = ""

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for _, p in self.files) + len(self.card.encode())


# -- what goes up ---------------------------------------------------------------


def run_files(run_dir: Path) -> list[Path]:
    """The shareable files of one run directory (see the module docstring), sorted."""
    from launch.checkpoint import RESUME_PREFIX, SIDECAR_SUFFIX  # (torch is imported with them)

    chosen: set[Path] = {run_dir / name for name in RUN_FILES if (run_dir / name).is_file()}
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts) or ".tmp" in path.name:
            continue
        if not inside(path, run_dir):  # a symlink out of the run: never published
            continue
        name = path.name
        if name.startswith(RESUME_PREFIX) or name.endswith(".corrupt"):
            continue
        sidecar = path.with_name(name + SIDECAR_SUFFIX)
        if sidecar.is_file() or path.suffix == ".pt":
            chosen.add(path)
            if sidecar.is_file():
                chosen.add(sidecar)
    return sorted(chosen)


def plan_upload(spec: Spec, runs: list[Run], repo: str) -> UploadPlan:
    store = Store(spec.root)
    states: dict[str, int] = {}
    uploaded = []
    for r in runs:
        state = store.state(r).get("state") or "not started"
        states[state] = states.get(state, 0) + 1
        if state == st.COMPLETED:
            uploaded.append(r)
    if not uploaded:
        found = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        raise UserError(f"no completed run of spec {spec.name} under {spec.root} ({found}): nothing to upload")
    plan = UploadPlan(spec=spec, runs=runs, uploaded=uploaded, states=states)
    for r in uploaded:
        d = store.run_dir(r)
        plan.files += [(f"{r.rel_dir}/{p.relative_to(d).as_posix()}", p) for p in run_files(d)]
    spec_file = Path(spec.file)
    plan.files.append((f"{SPECS_DIR}/{spec.name}.yaml", spec_file))
    plan.card = model_card(plan, repo)
    return plan


def model_card(plan: UploadPlan, repo: str) -> str:
    spec = plan.spec
    try:
        description = (yaml.safe_load(Path(spec.file).read_text()) or {}).get("description")
    except (OSError, yaml.YAMLError, AttributeError):
        description = None
    counts = ", ".join(f"{n} {s}" for s, n in sorted(plan.states.items()))
    checkpoints = [rel for rel, p in plan.files
                   if not rel.endswith(".json") and p.name not in RUN_FILES and not rel.startswith(SPECS_DIR)]
    first_run = [rel for rel in checkpoints if rel.startswith(plan.uploaded[0].rel_dir + "/")]
    example = first_run[-1] if first_run else f"{plan.uploaded[0].rel_dir}/<checkpoint>"  # Final_ > Checkpoint_
    fixed = "\n".join(f"| `{k}` | `{_value(v)}` |" for k, v in spec.fixed.items()) or "| (none) | |"
    axes = "\n".join(
        f"- `{', '.join(a.params)}`{' (group axis)' if a.group else ''}: "
        + ", ".join(" / ".join(map(_value, point)) for point in a.values) for a in spec.axes) or "- (none)"
    rows = []
    for r in plan.uploaded[:CARD_MAX_RUN_ROWS]:
        params = ", ".join(f"{k}={_value(v)}" for k, v in r.params.items()) or "-"
        rows.append(f"| `{r.rel_dir}` | {r.group} | {r.task} | {r.seed} | {params} | `{r.run_key}` |")
    more = len(plan.uploaded) - CARD_MAX_RUN_ROWS
    if more > 0:
        rows.append(f"| … and {more} more | | | | | |")
    shown_repo = repo if _REPO_ID.match(repo) else "<owner>/<name>"
    return f"""---
tags:
- sweep
- {spec.experiment_name}
---

# {spec.name}

{description or f"Runs of the `{spec.experiment_name}` sweep `{spec.name}`."}

Uploaded by `sweep upload`: **{len(plan.uploaded)} completed run(s)** of the {len(plan.runs)} the spec
defines ({counts}); only completed runs are here. {len(checkpoints)} checkpoint files,
{len(plan.files) + 1} files in all. The spec is in `{SPECS_DIR}/{spec.name}.yaml`.

## Grid

Experiment `{spec.experiment_name}`; group `{spec.group_template}`; run directory `{spec.path_template}`
(`task_XXXX` = index of the configuration inside its group, seeds innermost).

| fixed parameter | value |
|---|---|
{fixed}

Axes (cross product, first outermost):

{axes}

Seeds: {", ".join(map(str, spec.seeds))}

## Files

Each run directory holds `run.json` (resolved config, run key), `state.json` (code commit, host,
times), `metrics.jsonl` (one JSON record per logged step/split/length) and its checkpoints, each
with a `<file>.json` sidecar recording its sha256, size, step and config. Resume states
(optimizer and RNG state) are not uploaded.

| run directory | group | task | seed | parameters | run key |
|---|---|---|---|---|---|
{chr(10).join(rows)}

## Loading

Every checkpoint holds plain data (tensors, numbers, strings, lists, dicts):

```python
import torch
from huggingface_hub import hf_hub_download

path = hf_hub_download("{shown_repo}", "{example}")
ckpt = torch.load(path, weights_only=True, map_location="cpu")
```

Or the whole tree, checked against the sidecars, with the `sweep` tool:

```
sweep download --repo {shown_repo} --to {spec.name}
sweep verify {spec.name}
```
"""


def _value(v: Any) -> str:
    """A config value as the spec's YAML/JSON would write it (true, not True)."""
    return v if isinstance(v, str) else json.dumps(v)


# -- where it goes ---------------------------------------------------------------


def local_folder(repo: str) -> Path | None:
    """The folder ``--repo`` names, or None for a Hub repo id; UserError if it is neither."""
    if repo.startswith("file://"):
        path = repo[len("file://"):]
        if not path:
            raise UserError(f"--repo {repo!r}: file:// needs a folder path, e.g. file:///tmp/repo")
        return Path(path)
    if repo.startswith(("/", "./", "../", "~")) or repo in (".", ".."):
        return Path(repo).expanduser()
    if not _REPO_ID.match(repo) or ".." in repo or len(repo) > 96:
        raise UserError(f"--repo {repo!r} is neither a Hub repo id (owner/name) nor a local folder "
                        "(file:///path, ./path or /path)")
    return None


def _copy(src: Path, dst: Path) -> None:
    """Copy through a temp file + rename, so a killed copy leaves no half file under the real name."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp.{uuid.uuid4().hex[:8]}")
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def upload_to_folder(plan: UploadPlan, folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--repo {folder}: exists and is not a folder")
    if folder.resolve() == plan.spec.root.resolve():
        raise UserError(f"--repo {folder} is the tree itself; upload to another folder")
    for rel, src in plan.files:
        _copy(src, folder / rel)
    tmp = folder / f".{CARD}.tmp"
    tmp.write_text(plan.card)
    os.replace(tmp, folder / CARD)


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise UserError("the Hub needs huggingface_hub: pip install 'sweep[hub]'") from None
    return huggingface_hub


def _hub_error(action: str, repo: str, e: Exception) -> UserError:
    text = " ".join(str(e).split()) or type(e).__name__
    return UserError(f"{action} {repo} failed: {type(e).__name__}: {text[:300]}")


def upload_to_hub(plan: UploadPlan, repo_id: str, private: bool) -> str:
    """One commit with every file and the card; returns the commit URL."""
    hub = _hub()
    api = hub.HfApi()
    ops = [hub.CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(src)) for rel, src in plan.files]
    ops.append(hub.CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=plan.card.encode()))
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.create_commit(repo_id, ops, repo_type="model",
                                 commit_message=f"sweep upload {plan.spec.name}: {len(plan.uploaded)} runs")
    except Exception as e:  # network, auth, quota…: one line, not a traceback
        raise _hub_error("upload to", repo_id, e) from None
    return str(getattr(info, "commit_url", repo_id))


def inside(path: Path, tree: Path) -> bool:
    """Whether ``path``, with every symlink followed, stays inside ``tree`` (itself resolved, so a
    tree whose root is a symlink, common on clusters, is fine; a link out of it is not)."""
    try:
        return path.resolve().is_relative_to(tree.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def download_from_folder(folder: Path, to: Path) -> int:
    if not folder.is_dir():
        raise UserError(f"--repo {folder}: no such folder")
    files = [p for p in sorted(folder.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
             and inside(p, folder)]
    if not files:
        raise UserError(f"--repo {folder}: the folder is empty")
    for src in files:
        _copy(src, to / src.relative_to(folder))
    return len(files)


def download_from_hub(repo_id: str, to: Path) -> int:
    hub = _hub()
    existed = to.exists()  # (empty: checked by the caller)
    try:
        hub.snapshot_download(repo_id, repo_type="model", local_dir=str(to))
    except Exception as e:  # not found, offline, auth…: one line, not a traceback
        if existed:  # leave the folder as it was: empty
            for child in to.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            shutil.rmtree(to, ignore_errors=True)
        raise _hub_error("download of", repo_id, e) from None
    return sum(1 for p in to.rglob("*") if p.is_file() and ".cache" not in p.relative_to(to).parts)


# -- commands ---------------------------------------------------------------------




@click.command("upload")
@click.argument("spec_path", metavar="SPEC")
@click.option("--repo", required=True, help="Hub repo id (owner/name), or a local folder (file:///path, ./path).")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Tree root (default: the spec's root, usually ./checkpoints).")
@click.option("--only", default=None, metavar="EXPR", help="Upload only runs matching EXPR (as in sweep launch).")
@click.option("--dry-run", is_flag=True, help="List the files and print the model card; upload nothing.")
@click.option("--private", is_flag=True, help="Hub: create the repo private.")
def upload_command(spec_path: str, repo: str, root: str | None, only: str | None, dry_run: bool,
                   private: bool) -> None:
    """Upload the completed runs of SPEC (weights, sidecars, run.json, state.json,
    metrics.jsonl; not resume states) and a generated model card to a Hub repo or a folder."""
    from launch.spec import load_spec
    from launch.tasks import expand, parse_only, select

    folder = local_folder(repo)
    spec = load_spec(spec_path, root=root)
    runs = expand(spec)
    runs = select(runs, parse_only(only, runs))
    if not runs:
        raise UserError(f"--only {only!r} matches no run of {spec_path}")
    plan = plan_upload(spec, runs, repo)
    what = f"{len(plan.files) + 1} files ({human_size(plan.size)}) of {len(plan.uploaded)} completed runs"
    if dry_run:
        for rel, src in plan.files:
            click.echo(f"  {human_size(src.stat().st_size):>10}  {rel}")
        click.echo(f"  {human_size(len(plan.card.encode())):>10}  {CARD} (generated, below)")
        click.echo(f"--- {CARD} ---\n{plan.card}--- end of {CARD} ---")
        click.echo(f"dry run: would upload {what} to {repo}")
        return
    if folder is not None:
        upload_to_folder(plan, folder)
        click.echo(f"uploaded {what} to {folder}")
    else:
        url = upload_to_hub(plan, repo, private)
        click.echo(f"uploaded {what} to {repo} ({url})")


@click.command("download")
@click.option("--repo", required=True, help="Hub repo id (owner/name), or a local folder (file:///path, ./path).")
@click.option("--to", "to", type=click.Path(path_type=Path), default=None,
              help="Folder to download into (default: ./<repo name>); must not exist or be empty.")
def download_command(repo: str, to: Path | None) -> None:
    """Download a tree uploaded by `sweep upload` (then check it with `sweep verify`)."""
    folder = local_folder(repo)
    if to is None:
        to = Path((folder.resolve().name if folder is not None else repo.rstrip("/").split("/")[-1]) or "download")
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise UserError(f"--to {to}: exists and is not an empty folder; choose another")
    existed = to.exists()
    if folder is not None:
        if folder.is_dir() and to.resolve().is_relative_to(folder.resolve()):
            raise UserError(f"--to {to} is inside the source folder {folder}")
        n = download_from_folder(folder, to)
    else:
        n = download_from_hub(repo, to)
    bad = damaged_files(to)
    if bad:  # nothing unverified is kept: the folder is left as it was
        _discard(to, existed)
        path, problem = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserError(f"download of {repo}: {path.relative_to(to)}: {problem}{more}; nothing was kept")
    click.echo(f"downloaded {n} files to {to}, every checkpoint matching its sidecar's sha256")


def damaged_files(tree: Path) -> list[tuple[Path, str]]:
    """Files under ``tree`` whose bytes differ from what their sidecar recorded (size, sha256)."""
    from launch.checkpoint import SIDECAR_SUFFIX, read_sidecar, sidecar_mismatch
    from launch.errors import CheckpointError

    bad = []
    for sidecar in sorted(tree.rglob(f"*{SIDECAR_SUFFIX}")):
        path = sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)])
        if not path.is_file() or ".cache" in sidecar.relative_to(tree).parts:
            continue
        try:
            meta = read_sidecar(path)
        except CheckpointError as e:
            bad.append((path, str(e)))
            continue
        if meta and "sha256" in meta:
            problem = sidecar_mismatch(path, meta)
            if problem:
                bad.append((path, problem))
    return bad


def _discard(to: Path, existed: bool) -> None:
    if existed:  # it was empty
        for child in to.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        shutil.rmtree(to, ignore_errors=True)
