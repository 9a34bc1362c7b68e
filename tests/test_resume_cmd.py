"""`sweep resume RUN_DIR --steps N [--lr X]`: a finished run continued as a new run beside it.

A tiny sortgpt parent (60 iterations, one torch thread) is trained through the real
CLI on the local executor; the children are made by the real CLI too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from launch.errors import CheckpointError
from tests.helpers import sweep, tree_snapshot, wait_for

SPEC = """
experiment: sortgpt
name: tiny
path: "{group}/task_{task:04d}/seed{seed}"
fixed: {vocab_n: 16, n_embd: 16, n_layers: 1, train_min_k: 2, train_max_k: 4, test_min_k: 5, test_max_k: 6,
        batch_size: 16, max_iters: 60, warmup_iters: 5, max_lr: 1.0e-2, min_lr: 1.0e-3, eval_every: 10,
        eval_samples: 8, checkpoint_iter: 21, save_every: 10, keep_resume: 2, device: cpu}
axes:
  - {use_mlp: [true]}
seeds: [1]
"""
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FINAL = "Final_N16_d16_H1_L1_npos1_mlp1_ln1_lenmix_trainK2to4_testK5to6_nodup1_iters{}.pt"


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 60-iteration run, trained by `sweep launch --cluster local`."""
    base = tmp_path_factory.mktemp("resume")
    (base / "tiny.yaml").write_text(SPEC)
    sweep("launch", "tiny.yaml", "--cluster", "local", "--root", "tree", "--concurrency", "1", cwd=base, env=ONE_THREAD)
    sweep("wait", "tiny.yaml", "--root", "tree", "--interval", "0.5", "--timeout", "120", cwd=base)
    run_dir = base / "tree" / "tiny" / "task_0000" / "seed1"
    assert json.loads((run_dir / "state.json").read_text())["state"] == "completed"
    return run_dir


def contents(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def records(run_dir: Path, split: str = "train") -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["split"] == split]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def resume(parent: Path, *args: str) -> Any:
    return sweep("resume", parent.name, *args, cwd=parent.parent, env=ONE_THREAD)


def test_child_continues_from_the_parent_and_leaves_it_unchanged(parent: Path) -> None:
    before, before_stat = contents(parent), tree_snapshot(parent)
    out = resume(parent, "--steps", "20").stdout
    child = parent.with_name("seed1_resume20")
    assert f"from {parent.name} at step 60" in out and "completed" in out

    assert contents(parent) == before and tree_snapshot(parent) == before_stat  # parent untouched

    info = json.loads((child / "run.json").read_text())
    parent_info = json.loads((parent / "run.json").read_text())
    assert info["parent"]["run_dir"] == parent_info["rel_dir"] == "tiny/task_0000/seed1"
    assert info["parent"]["run_key"] == parent_info["run_key"] != info["run_key"]
    assert info["parent"]["step"] == 60 and info["parent"]["resume_state"] == "resume_00000060.pt"
    assert info["rel_dir"] == "tiny/task_0000/seed1_resume20"
    # extended config: 20 more iterations at the parent's final learning rate (min_lr), flat
    assert info["config"] == parent_info["config"] | {"max_iters": 80, "max_lr": 1e-3, "min_lr": 1e-3}
    assert json.loads((child / "state.json").read_text())["state"] == "completed"
    assert (child / FINAL.format(80)).is_file() and not (child / FINAL.format(60)).exists()

    # history: the parent's records, then new ones numbered on from step 60
    parent_train, child_train = records(parent), records(child)
    assert child_train[:len(parent_train)] == parent_train
    new = child_train[len(parent_train):]
    assert [r["step"] for r in new] == [61, 71]
    assert all(r["metrics"]["lr"] == pytest.approx(1e-3) for r in new)
    # the first new loss is near the trained parent's last, far from a fresh model's first
    fresh, last, first = (parent_train[0]["metrics"]["loss"], parent_train[-1]["metrics"]["loss"],
                          new[0]["metrics"]["loss"])
    assert fresh - last > 0.5, "the parent did not learn enough for this test to mean anything"
    assert abs(first - last) < abs(first - fresh) / 2
    # the child's final evaluation exists (teacher-forced at 80, autoregressive at 80)
    assert {r["step"] for r in records(child, "test_ar")} == {60, 80}

    sweep("verify", child, cwd=parent.parent)
    # a finished child cannot be made again; it can be extended in turn
    again = sweep("resume", parent.name, "--steps", "20", cwd=parent.parent, check=False)
    assert again.returncode == 2 and "already exists and is completed" in again.stderr


def test_tiny_learning_rate_keeps_the_parents_weights(parent: Path) -> None:
    """With --lr 1e-9 the child's final weights are the parent's final weights (up to
    20 Adam steps of 1e-9): the child starts from them, not from a fresh init."""
    resume(parent, "--steps", "20", "--lr", "1e-9")
    child = parent.with_name("seed1_resume20_lr1e-09")
    info = json.loads((child / "run.json").read_text())
    assert info["config"]["max_lr"] == info["config"]["min_lr"] == 1e-9 and info["parent"]["lr"] == 1e-9
    start, end = weights(parent / FINAL.format(60)), weights(child / FINAL.format(80))
    for name, tensor in start.items():
        torch.testing.assert_close(end[name], tensor, atol=1e-6, rtol=0)
    # and the parent's weights are far from where training started (seed 1's init)
    from sortgpt.model import GPT
    from sortgpt.train import model_config

    torch.manual_seed(1)
    init = GPT(model_config(info["config"])).state_dict()
    assert max((start[n] - init[n]).abs().max().item() for n in start) > 1e-2


def test_submitted_to_the_local_executor(parent: Path) -> None:
    out = resume(parent, "--steps", "10", "--cluster", "local").stdout
    child = parent.with_name("seed1_resume10")
    assert "submitted" in out and "local:" in out
    wait_for(lambda: json.loads((child / "state.json").read_text()).get("state") in ("completed", "failed"),
             timeout=120, what="the submitted extension")
    assert json.loads((child / "state.json").read_text())["state"] == "completed"
    assert [r["step"] for r in records(child)][-1] == 61 and (child / FINAL.format(70)).is_file()


def test_an_unfinished_child_is_continued_by_the_same_command(parent: Path) -> None:
    """A child killed mid-way (here: its state says failed) is picked up again, not refused."""
    resume(parent, "--steps", "5", "--cluster", "local")
    child = parent.with_name("seed1_resume5")
    wait_for(lambda: json.loads((child / "state.json").read_text()).get("state") == "completed", timeout=120,
             what="the first attempt")
    state = json.loads((child / "state.json").read_text())
    (child / "state.json").write_text(json.dumps(state | {"state": "failed"}))
    out = resume(parent, "--steps", "5").stdout
    assert out.startswith("continuing") and "already finished (65 iterations)" in out


def test_sortgpt_resume_check_accepts_only_the_extendable_fields(parent: Path, tmp_path: Path) -> None:
    from sortgpt.train import load_resume_state

    run = tmp_path / "copy"
    shutil.copytree(parent, run)
    cfg = json.loads((run / "run.json").read_text())["config"]
    extended = cfg | {"max_iters": 90, "max_lr": 5e-4, "min_lr": 5e-4}
    assert load_resume_state(run, extended)["step"] == 60
    with pytest.raises(CheckpointError, match="n_embd: saved 16, now 32"):
        load_resume_state(run, extended | {"n_embd": 32})
    # an unfinished state may not change max_iters (that would be a different run)
    for p in run.glob("resume_00000060.pt*"):
        p.unlink()
    with pytest.raises(CheckpointError, match="max_iters: saved 60, now 90"):
        load_resume_state(run, extended)


def test_extend_hook_decides_the_schedule() -> None:
    from launch.errors import UserError
    from sortgpt.experiment import EXPERIMENT

    cfg = EXPERIMENT.defaults()
    assert EXPERIMENT.extend(cfg, 1000, None) == cfg | {"max_iters": 41000, "max_lr": 1e-6, "min_lr": 1e-6}
    assert EXPERIMENT.extend(cfg, 10, 3e-4)["max_lr"] == 3e-4
    with pytest.raises(UserError, match="pass --lr"):
        EXPERIMENT.extend(cfg | {"min_lr": 0.0}, 10, None)
    with pytest.raises(UserError, match="warm-up"):
        EXPERIMENT.extend(cfg | {"warmup_iters": 50, "max_iters": 10}, 10, None)
