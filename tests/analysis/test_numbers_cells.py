"""Runs that differ in what they learn are never one number. Two specs in one table whose runs share
architecture, length configuration and train K but not their width (or train_min_k, or learning rate)
were averaged into one cell: 50.0 ± 56.6 % over n_runs 2, where one configuration reaches 90 % and the
other 10 %. Cells are split by every such parameter; a difference in bookkeeping (device) is not one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from launch.collect import PROVENANCE, write_table
from tests.helpers import sweep

BASE = {"n_layers": 1, "use_mlp": True, "use_layernorm": True, "no_pos_emb": False, "length_mode": "mix",
        "train_min_k": 2, "train_max_k": 4, "max_iters": 10, "batch_size": 8, "n_embd": 16, "max_lr": 1e-3,
        "eval_every": 5, "device": "cpu"}


def _run(spec: str, seed: int, config: dict, gen: float) -> tuple[dict, dict, list[dict]]:
    prov = {c: None for c in PROVENANCE} | {"spec": spec, "experiment": "sortgpt", "group": "g", "task": 0,
                                           "seed": seed, "run_key": f"{spec}{seed}".ljust(12, "0"),
                                           "run_dir": f"{spec}/seed{seed}", "started_at": 1.7e9,
                                           "ended_at": 1.7e9 + 1, "wall_s": 1.0, "state": "completed"}
    recs = [{"step": 10, "split": "train", "length": None, "time": 1.0, "metrics": {"loss": 0.1}},
            {"step": 10, "split": "test", "length": 4, "time": 1.0, "metrics": {"exact_match_acc": 1.0}},
            {"step": 10, "split": "gen", "length": 9, "time": 1.0, "metrics": {"exact_match_acc": gen}}]
    return prov, config, recs


def _table(tmp_path: Path, other: dict) -> Path:
    records = [_run("a", s, BASE, 0.9) for s in (1, 2)] + [_run("b", s, BASE | other, 0.1) for s in (1, 2)]
    out = tmp_path / "results.parquet"
    write_table(records, list(BASE), out)
    return out


def test_two_widths_in_one_table_are_two_cells(tmp_path: Path) -> None:
    out = _table(tmp_path, {"n_embd": 128})
    p = sweep("summary", out)
    assert "| layers | MLP | LayerNorm | length config | train K | n_embd | OOD exact match" in p.stdout, p.stdout
    assert "| 1 | yes | yes | mix | 4 | 16 | 90.0 ± 0.0 % | 2 |" in p.stdout, p.stdout
    assert "| 1 | yes | yes | mix | 4 | 128 | 10.0 ± 0.0 % | 2 |" in p.stdout, p.stdout

    ref = tmp_path / "ref"
    p = sweep("summary", out, "--format", "sort-llm", "-o", ref, check=False)
    assert p.returncode == 2 and not ref.exists(), p
    assert p.stderr.strip() == ("error: --format sort-llm: runs of one cell differ in n_embd (16, 128), which the "
                                "reference's summary.csv has no column for; summarise one configuration at a time "
                                "(or use --format md|csv)")

    p = sweep("plot", out, "-o", tmp_path / "plots")
    assert "note: sortgpt: runs differ in n_embd; the figures show the 2 runs with n_embd=" in p.stderr, p.stderr
    heat = pd.read_csv(tmp_path / "plots" / "sortgpt_heatmap.csv")
    assert heat["n_runs"].tolist() == [2] and heat["ood_exact_match_mean"].round(6).isin([0.9, 0.1]).all()


def test_a_train_min_k_or_learning_rate_splits_a_cell_too(tmp_path: Path) -> None:
    for other, column in (({"train_min_k": 3}, "train_min_k"), ({"max_lr": 3e-4}, "max_lr")):
        p = sweep("summary", _table(tmp_path, other), "--format", "csv")
        table = pd.read_csv(pd.io.common.StringIO(p.stdout))
        assert column in table.columns and sorted(table["n_runs"]) == [2, 2], p.stdout
        assert sorted(table["ood_exact_match_mean"].round(6)) == [0.1, 0.9]


def test_runs_differing_in_bookkeeping_only_stay_one_cell(tmp_path: Path) -> None:
    p = sweep("summary", _table(tmp_path, {"device": "cuda", "eval_every": 2}))
    assert "| 1 | yes | yes | mix | 4 | 50.0 ± 46.2 % | 4 |" in p.stdout, p.stdout


def test_a_float_parameter_is_labelled_exactly(tmp_path: Path) -> None:
    """Printed with 3 decimals, max_lr 1e-3 and 3e-4 were the labels 0.001 and 0.000 (min_lr: both 0.000)."""
    p = sweep("summary", _table(tmp_path, {"max_lr": 3e-4}))
    assert "| 1 | yes | yes | mix | 4 | 0.0003 | 10.0 ± 0.0 % | 2 |" in p.stdout, p.stdout
    assert "| 1 | yes | yes | mix | 4 | 0.001 | 90.0 ± 0.0 % | 2 |" in p.stdout, p.stdout
