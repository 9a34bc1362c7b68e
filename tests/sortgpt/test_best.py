"""Save policy "best": the best in-distribution exact match so far, tracked in the resume
state and (with save_best) kept as one Best_ checkpoint — by the single and the packed path."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from launch.checkpoint import latest_resume_state
from launch.experiment import RunContext
from sortgpt.experiment import EXPERIMENT
from sortgpt.naming import parse_checkpoint_name
from tests.sortgpt.conftest import tiny_config


def best_from_metrics(run_dir: Path) -> tuple[float, int]:
    by_step: dict[int, list[float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["split"] == "test":
            by_step.setdefault(rec["step"], []).append(rec["metrics"]["exact_match_acc"])
    means = {step: sum(v) / len(v) for step, v in by_step.items()}
    best = max(means.values())
    return best, min(s for s, m in means.items() if m == best)


def check_run(run_dir: Path) -> None:
    metric, step = best_from_metrics(run_dir)
    state = torch.load(latest_resume_state(run_dir), weights_only=True)
    assert state["best"] == {"metric": metric, "step": step}
    best_files = list(run_dir.glob("Best_*.pt"))
    assert len(best_files) == 1 and parse_checkpoint_name(best_files[0].name)["step"] == step
    assert torch.load(best_files[0], weights_only=True)["best_metric"] == metric


def test_best_single_run(tmp_path: Path):
    cfg = tiny_config(save_best=True, max_lr=3e-3, max_iters=60)
    EXPERIMENT.run(cfg, RunContext(run_dir=tmp_path))
    check_run(tmp_path)


def test_best_packed_runs_match_single(tmp_path: Path):
    cfgs = [tiny_config(save_best=True, max_lr=3e-3, max_iters=60, seed=s) for s in (1, 2)]
    ctxs = [RunContext(run_dir=tmp_path / f"p{i}") for i in range(2)]
    for c in ctxs:
        c.run_dir.mkdir()
    EXPERIMENT.run_pack(cfgs, ctxs)
    for c in ctxs:
        check_run(c.run_dir)
    single = tmp_path / "single"
    single.mkdir()
    EXPERIMENT.run(cfgs[1], RunContext(run_dir=single))
    assert [p.name for p in single.glob("Best_*.pt")] == [p.name for p in ctxs[1].run_dir.glob("Best_*.pt")]
