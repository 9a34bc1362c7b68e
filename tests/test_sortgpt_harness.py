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
    out = sweep("launch", SPEC, "--cluster", "slurm", "--root", root).stdout
    assert "submitted 12 runs" in out
    p = sweep("wait", SPEC, "--root", root, "--interval", "2", "--timeout", "600", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = json.loads(sweep("status", SPEC, "--root", root, "--json", "-v").stdout)["runs"]
    assert {r["state"] for r in rows} == {"completed"} and all(r["step"] == r["total"] == 300 for r in rows)

    # the convention tree: one directory per seed, Checkpoint_ and Final_ files with sidecars
    run_dir = root / "ci/ci_sortgpt/task_0000/seed1337"
    names = sorted(p.name for p in run_dir.glob("*.pt"))
    finals = [n for n in names if n.startswith("Final_")]
    assert finals == ["Final_N32_d32_H1_L2_npos1_mlp1_ln1_lenmix_trainK2to6_testK7to10_nodup1_iters300.pt"]
    assert parse_checkpoint_name(finals[0])["step"] == 300
    assert any(n.startswith("Checkpoint_") and n.endswith("_iters151.pt") for n in names)
    assert (run_dir / (finals[0] + ".json")).exists()
    v = sweep("verify", SPEC, "--root", root, "-q")
    assert "verify passed: 48 checkpoint(s): 48 ok" in v.stdout  # 12 runs x (Checkpoint, Final, 2 resume)

    sweep("collect", SPEC, "--root", root, "-o", tmp_path / "r.parquet")
    df = pd.read_parquet(tmp_path / "r.parquet")
    assert df["run_key"].nunique() == 12
    final = df[(df.step == 300) & (df.split == "test")]
    per_run = final.groupby("run_key")["exact_match_acc"].mean()
    # chance of sorting K >= 2 distinct numbers from 32 by guessing is < 1e-3
    assert per_run.median() > 0.2, per_run.describe()
    assert set(df.loc[df.split == "gen", "length"]) == {7, 8, 9, 10}

    # and the model sorts from the command line
    s = sweep("sort", run_dir / finals[0], "5", "3", "9", "1")
    assert "1 3 5 9" in s.stdout
