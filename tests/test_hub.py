"""`sweep upload` / `sweep download`: the dry run, and a round trip through a local folder.

The Hub itself cannot be reached here; its code path is exercised only as far as
its offline error (one line, exit 2, nothing left behind).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import sweep, tree_snapshot

SPEC = """
experiment: sortgpt
name: tiny_hub
description: "Two seeds of a tiny sorter (test)."
path: "{group}/task_{task:04d}/seed{seed}"
fixed: {vocab_n: 16, n_embd: 16, n_layers: 1, train_min_k: 2, train_max_k: 3, test_min_k: 4, test_max_k: 4,
        batch_size: 8, max_iters: 20, warmup_iters: 2, max_lr: 1.0e-3, eval_every: 10, eval_samples: 4,
        checkpoint_iter: 11, save_every: 5, keep_resume: 2, device: cpu}
axes:
  - {use_mlp: [true]}
seeds: [1, 2]
"""
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RUN = "tiny_hub/task_0000/seed1"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tree where seed 1 completed and seed 2 was never launched."""
    base = tmp_path_factory.mktemp("hub")
    (base / "spec.yaml").write_text(SPEC)
    sweep("launch", "spec.yaml", "--cluster", "local", "--root", "tree", "--only", "seed=1", cwd=base, env=ONE_THREAD)
    sweep("wait", "spec.yaml", "--root", "tree", "--only", "seed=1", "--interval", "0.5", "--timeout", "120", cwd=base)
    assert list((base / "tree" / RUN).glob("resume_*.pt"))  # there are resume states to leave out
    return base


def files(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def expected_selection(tree: Path) -> set[str]:
    run = tree / RUN
    keep = {f"{RUN}/{p.name}" for p in run.iterdir()
            if p.name in ("run.json", "state.json", "metrics.jsonl")
            or (p.name.startswith(("Final_", "Checkpoint_")) and p.name.endswith((".pt", ".pt.json")))}
    return keep | {"specs/tiny_hub.yaml", "README.md"}


def test_dry_run_lists_files_and_card_and_writes_nothing(base: Path) -> None:
    before = tree_snapshot(base)
    out = sweep("upload", "spec.yaml", "--root", "tree", "--repo", "someone/tiny-hub", "--dry-run", cwd=base).stdout
    assert tree_snapshot(base) == before
    listed = {line.split()[-1] for line in out.splitlines() if line.startswith("  ") and "/" in line}
    assert listed | {"README.md"} == expected_selection(base / "tree")
    assert "resume_" not in out.split("--- README.md ---")[0] and ".sweep" not in out
    card = out.split("--- README.md ---\n")[1].split("--- end of README.md ---")[0]
    assert "Two seeds of a tiny sorter" in card
    assert "**1 completed run(s)** of the 2 the spec" in card and "1 not started" in card
    assert "| `max_iters` | `20` |" in card and "- `use_mlp`: true" in card
    assert 'hf_hub_download("someone/tiny-hub", "tiny_hub/task_0000/seed1/Final_' in card
    assert "dry run: would upload 9 files" in out


def test_round_trip_through_a_local_folder_then_verify_and_collect(base: Path, tmp_path: Path) -> None:
    tree = base / "tree"
    tree_before = files(tree)
    repo = tmp_path / "repo"
    out = sweep("upload", base / "spec.yaml", "--root", tree, "--repo", f"file://{repo}").stdout
    assert "uploaded 9 files" in out
    assert files(tree) == tree_before  # the tree is only read
    uploaded = files(repo)
    assert set(uploaded) == expected_selection(tree)
    for rel, digest in uploaded.items():  # byte copies of the tree's files
        if rel.startswith(RUN):
            assert tree_before[rel] == digest

    # download into a fresh folder: same files; sweep verify checks them against the sidecars
    down = tmp_path / "down"
    out = sweep("download", "--repo", str(repo), "--to", down).stdout
    assert f"downloaded 9 files to {down}" in out
    assert files(down) == uploaded
    verified = sweep("verify", down).stdout
    assert "verify passed: 2 checkpoint(s): 2 ok" in verified
    by_spec = sweep("verify", down / "specs" / "tiny_hub.yaml", "--root", down).stdout  # the uploaded spec's runs
    assert "verify passed: 2 checkpoint(s): 2 ok" in by_spec
    # the downloaded tree is a tree root again: collect reads it with the uploaded spec
    sweep("collect", down / "specs" / "tiny_hub.yaml", "--root", down, "-o", tmp_path / "r.parquet")
    table = pd.read_parquet(tmp_path / "r.parquet")
    assert set(table["run_dir"]) == {RUN} and set(table["state"]) == {"completed"}

    # a damaged download is caught by verify (exit 1), so the check above means something
    final = next(down.glob(f"{RUN}/Final_*.pt"))
    data = bytearray(final.read_bytes())
    data[len(data) // 2] ^= 0xFF
    final.write_bytes(bytes(data))
    bad = sweep("verify", down, check=False)
    assert "verify FAILED: 2 checkpoint(s): 1 ok, 1 mismatched" in bad.stdout
    # (its exit code, 1, is asserted in tests/test_bad_input.py)


def test_a_second_upload_updates_the_folder_and_a_download_needs_an_empty_target(base: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sweep("upload", "spec.yaml", "--root", "tree", "--repo", str(repo), cwd=base)
    sweep("upload", "spec.yaml", "--root", "tree", "--repo", str(repo), cwd=base)  # same files again: fine
    assert set(files(repo)) == expected_selection(base / "tree")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    before = tree_snapshot(tmp_path)
    p = sweep("download", "--repo", str(repo), "--to", tmp_path / "full", check=False)
    assert p.returncode == 2 and "not an empty folder" in p.stderr and tree_snapshot(tmp_path) == before


def test_hub_errors_are_one_line_and_leave_nothing(base: Path, tmp_path: Path) -> None:
    """The real huggingface_hub path, offline: a clear line, exit 2, no folder left."""
    offline = {"HF_HUB_OFFLINE": "1"}
    before = tree_snapshot(tmp_path)
    p = sweep("download", "--repo", "someone/not-here", "--to", tmp_path / "d", env=offline, check=False)
    assert p.returncode == 2 and p.stderr.startswith("error: download of someone/not-here failed")
    assert len(p.stderr.strip().splitlines()) == 1 and tree_snapshot(tmp_path) == before
    p = sweep("upload", "spec.yaml", "--root", "tree", "--repo", "someone/not-here", env=offline, cwd=base,
              check=False)
    assert p.returncode == 2 and p.stderr.startswith("error: upload to someone/not-here failed")
    assert json.loads((base / "tree" / RUN / "state.json").read_text())["state"] == "completed"


def test_a_damaged_download_is_refused_and_nothing_is_kept(base: Path, tmp_path: Path) -> None:
    """Issue 11: download checks every checkpoint against its sidecar's sha256 before keeping any."""
    repo = tmp_path / "repo"
    sweep("upload", "spec.yaml", "--root", "tree", "--repo", str(repo), cwd=base)
    final = next(repo.glob(f"{RUN}/Final_*.pt"))
    data = bytearray(final.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size: only the hash tells
    final.write_bytes(bytes(data))
    before = tree_snapshot(tmp_path)
    p = sweep("download", "--repo", str(repo), "--to", tmp_path / "down", check=False)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{RUN}/Final_" in lines[0] and "sha256" in lines[0] and "nothing was kept" in lines[0]
    assert tree_snapshot(tmp_path) == before


def test_symlinks_out_of_the_tree_are_never_published_or_downloaded(base: Path, tmp_path: Path) -> None:
    """Issue 11: a link in a run directory to a file outside it (a system file) is not uploaded, and a
    source folder's link out of itself is not downloaded; a tree whose root is itself a symlink works."""
    secret = tmp_path / "secret.pt"
    secret.write_text("not for the world")
    link = base / "tree" / RUN / "leak.pt"
    link.symlink_to(secret)
    linked_root = tmp_path / "linked-tree"
    linked_root.symlink_to(base / "tree")  # the common HPC setup: the tree root is a link to scratch
    try:
        repo = tmp_path / "repo"
        out = sweep("upload", base / "spec.yaml", "--root", linked_root, "--repo", str(repo)).stdout
        assert "uploaded 9 files" in out and not (repo / RUN / "leak.pt").exists()
        (repo / RUN / "leak2.pt").symlink_to(secret)
        down = tmp_path / "down"
        sweep("download", "--repo", str(repo), "--to", down)
        assert not (down / RUN / "leak2.pt").exists() and (down / RUN / "metrics.jsonl").exists()
    finally:
        link.unlink()
