"""The CI-sized sortgpt grid (the README demo's spec) through the harness on the real SLURM:
job arrays -> checkpoints in the convention tree -> verify -> collect -> learning shows."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sortgpt.naming import parse_checkpoint_name
from tests.helpers import REPO, sweep

SPEC = REPO / "sweeps" / "ci_sortgpt.yaml"


@pytest.mark.slurm
def test_ci_sortgpt_grid_on_slurm(slurm, tmp_path: Path):
    root = tmp_path / "checkpoints"
    # The LayerNorm half of the demo grid (its no-LayerNorm twin runs the same code path).
    only = ("--only", "use_layernorm=true")
    out = sweep("launch", SPEC, "--cluster", "slurm", "--root", root, *only).stdout
    assert "submitted 12 runs" in out
    p = sweep("wait", SPEC, "--root", root, "--interval", "2", "--timeout", "900", *only, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = json.loads(sweep("status", SPEC, "--root", root, "--json", "-v", *only).stdout)["runs"]
    assert {r["state"] for r in rows} == {"completed"} and all(r["step"] == r["total"] == 1000 for r in rows)

    # the convention tree: one directory per seed, Checkpoint_ and Final_ files with sidecars
    run_dir = root / "ci/ci_sortgpt/task_0000/seed1337"
    names = sorted(p.name for p in run_dir.glob("*.pt"))
    finals = [n for n in names if n.startswith("Final_")]
    assert finals == ["Final_N64_d64_H1_L2_npos1_mlp0_ln1_lenmix_trainK2to4_testK9to16_nodup1_iters1000.pt"]
    assert parse_checkpoint_name(finals[0])["step"] == 1000
    assert any(n.startswith("Checkpoint_") and n.endswith("_iters501.pt") for n in names)
    assert (run_dir / (finals[0] + ".json")).exists()
    v = sweep("verify", root, "-q")
    assert "verify passed: 48 checkpoint(s): 48 ok" in v.stdout  # 12 runs x (Checkpoint, Final, 2 resume)

    sweep("collect", SPEC, "--root", root, "-o", tmp_path / "r.parquet", *only)
    df = pd.read_parquet(tmp_path / "r.parquet")
    assert df["run_key"].nunique() == 12
    final = df[(df.step == 1000) & (df.split == "test")]
    per_run = final.groupby("run_key")["exact_match_acc"].mean()
    # chance of sorting K >= 2 distinct numbers from 64 by guessing is < 1e-3
    assert per_run.median() > 0.5, per_run.describe()
    assert set(df.loc[df.split == "gen", "length"]) == set(range(9, 17))

    # and the model sorts from the command line
    s = sweep("sort", run_dir / finals[0], "5", "3", "9", "1")
    assert "1 3 5 9" in s.stdout


PREEMPT_SPEC = """
experiment: sortgpt
group: "pre"
path: "{group}/task_{task:04d}/seed{seed}"
fixed: {vocab_n: 16, n_embd: 16, n_layers: 1, use_mlp: true, train_min_k: 2, train_max_k: 4, test_min_k: 5,
        test_max_k: 6, max_iters: 2000, batch_size: 16, max_lr: 3.0e-3, min_lr: 1.0e-5, warmup_iters: 10,
        eval_every: 500, eval_samples: 20, checkpoint_iter: 1001, save_every: 100, keep_resume: 2, device: cpu}
axes:
  - {length_mode: [curriculum]}
seeds: [7]
resources: {time_min: 10, cpus: 1, signal_delay_s: 30}
"""


@pytest.mark.slurm
@pytest.mark.parametrize("pack", [1, 2], ids=["one-run-per-task", "packed"])
def test_preempted_sortgpt_run_ends_bit_identical_to_uninterrupted_twin(slurm, tmp_path: Path, pack: int):
    """A preempted array task (one run, or a pack of two trained as one batched
    model) requeues, resumes every run from its resume state, and ends with the
    weights and metrics of an uninterrupted twin, bit for bit; status and collect
    still see one row per run."""
    import subprocess
    import time

    import torch

    from launch.store import Store, read_jobs
    from tests.helpers import wait_for

    seeds = [7, 8][:pack]
    spec = tmp_path / "pre.yaml"
    spec.write_text(PREEMPT_SPEC.replace("seeds: [7]", f"seeds: {seeds}\npack: {pack}"))
    root, twin = tmp_path / "tree", tmp_path / "twin"
    sweep("launch", spec, "--cluster", "slurm", "--root", root)
    run_dirs = [root / f"pre/task_0000/seed{seed}" for seed in seeds]
    # preempt once a resume state exists and training is under way past it
    wait_for(lambda: all(list(d.glob("resume_*.pt")) for d in run_dirs), timeout=120, interval=0.2,
             what="resume states")
    time.sleep(0.5)
    assert not list(run_dirs[0].glob("Final_*.pt")), "the run finished before it could be preempted"
    jobs = read_jobs(Store(root), "pre")
    assert len(set(jobs.values())) == 1  # the pack's runs share one array task
    job = next(iter(jobs.values()))
    subprocess.check_call(["scancel", job, "--signal", "SIGTERM"])
    subprocess.check_call(["scancel", job, "--signal", "USR2"])
    # the twin runs under SLURM too: same thread count (cpus: 1), so the same float reductions
    sweep("launch", spec, "--cluster", "slurm", "--root", twin)
    for r in (root, twin):
        p = sweep("wait", spec, "--root", r, "--interval", "1", "--timeout", "300", check=False)
        assert p.returncode == 0, p.stdout + p.stderr

    def records(d: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(x).items() if k != "time"}
                for x in (d / "metrics.jsonl").read_text().splitlines()]

    for run_dir, seed in zip(run_dirs, seeds):
        state = json.loads((run_dir / "state.json").read_text())
        assert state["requeues"] == 1 and state["attempts"] == 2, state
        twin_dir = twin / f"pre/task_0000/seed{seed}"
        final = next(run_dir.glob("Final_*.pt")).name
        a = torch.load(run_dir / final, weights_only=True)["model"]
        b = torch.load(twin_dir / final, weights_only=True)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert records(run_dir) == records(twin_dir)
    rows = json.loads(sweep("status", spec, "--root", root, "--json", "-v").stdout)["runs"]
    assert sorted((r["seed"], r["state"], r["step"]) for r in rows) == [(s, "completed", 2000) for s in seeds]
    sweep("collect", spec, "--root", root, "-o", tmp_path / "r.parquet")
    assert pd.read_parquet(tmp_path / "r.parquet")["seed"].nunique() == pack
