"""Runs of one feedback mode that differ in another parameter (two learning rates; two graph depths when
reproduce_coconut.yaml and reproduce_coconut_depth3.yaml are collected into one file) were averaged into one
"mean ± std" per mode — 60 % for runs at 90 % and 30 % — printed next to the paper's figure. `sweep summary`
and `sweep plot` now split the mode by such parameters (``continuous (lr=0.001)``); the paper-comparison
table, one row per mode, refuses with exit 2. Tables are built by hand with pyarrow."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from analysis.cli import plot_command, summary_command
from tests.analysis.records import coconut_run, write_records

# lr -> seed -> validation accuracy per epoch (1, 2, 3)
VAL = {1e-4: {0: [0.5, 0.9, 0.8], 1: [0.6, 0.7, 0.8]},
       1e-3: {0: [0.1, 0.3, 0.2], 1: [0.2, 0.1, 0.4]}}


@pytest.fixture
def two_lrs(tmp_path: Path) -> Path:
    # The two configurations also differ in device, model_name and test_at_end: none of them is a configuration
    # (how a run is labelled, where it ran, whether the test split is evaluated), so none splits a row.
    rows = []
    for lr, seeds in VAL.items():
        other = {} if lr == 1e-4 else {"device": "cuda", "model_name": "coconut-b", "test_at_end": False}
        for seed, val in seeds.items():
            rows += coconut_run(f"lr{lr}/s{seed}", seed, val, lr=lr, **other)
    return write_records(tmp_path / "r.parquet", rows)


def summary(path: Path, *extra: str) -> tuple[str, str]:
    result = CliRunner().invoke(summary_command, [str(path), *extra])
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def test_summary_splits_a_mode_by_the_parameter_its_runs_differ_in(two_lrs: Path) -> None:
    text, _ = summary(two_lrs)
    rows = [line for line in text.splitlines() if line.startswith("| continuous")]
    # lr 1e-4: best 0.9 (epoch 2) and 0.8 (epoch 3), final 0.8 both; lr 1e-3: best 0.3 (2) and 0.4 (3), final 0.2, 0.4.
    assert rows == ["| continuous (lr=0.0001) | 85.0 ± 7.1 % | 2.5 | 80.0 % | 2 |",
                    "| continuous (lr=0.001) | 35.0 ± 7.1 % | 2.5 | 30.0 % | 2 |"], text
    csv, _ = summary(two_lrs, "--format", "csv")
    table = pd.read_csv(io.StringIO(csv))
    assert list(table.columns[:2]) == ["feedback_mode", "lr"]
    by_lr = table.set_index("lr")
    assert by_lr.loc[1e-4, "best_val_accuracy_mean"] == pytest.approx(0.85)
    assert by_lr.loc[1e-3, "final_val_accuracy_mean"] == pytest.approx(0.3)
    assert list(by_lr["n_runs"]) == [2, 2]


def test_runs_differing_only_in_bookkeeping_are_one_row(tmp_path: Path) -> None:
    rows = coconut_run("a", 0, VAL[1e-4][0]) + coconut_run("b", 1, VAL[1e-4][1], device="cuda", test_at_end=False,
                                                           model_name="mine")
    text, _ = summary(write_records(tmp_path / "r.parquet", rows))
    assert "| continuous | 85.0 ± 7.1 % | 2.5 | 80.0 % | 2 |" in text, text


def test_plots_draw_a_curve_per_configuration(two_lrs: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(plot_command, [str(two_lrs), "-o", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    curve = pd.read_csv(tmp_path / "plots" / "coconut_val_accuracy.csv").set_index(["lr", "epoch"])
    assert curve.loc[(1e-4, 2), "accuracy_mean"] == pytest.approx((0.9 + 0.7) / 2)
    assert curve.loc[(1e-3, 2), "accuracy_mean"] == pytest.approx((0.3 + 0.1) / 2)
    assert set(curve["n_runs"]) == {2}
    best = pd.read_csv(tmp_path / "plots" / "coconut_best_epoch.csv").set_index("lr")
    assert best.loc[1e-3, "best_val_accuracy_mean"] == pytest.approx(0.35)
    loss = pd.read_csv(tmp_path / "plots" / "coconut_loss.csv")
    assert set(loss["lr"]) == {1e-4, 1e-3} and set(loss["n_runs"]) == {2}


def test_paper_table_refuses_runs_of_two_configurations(two_lrs: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "analysis.coconut_table", str(two_lrs)], capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == "", p
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(
        "error: runs of one feedback mode differ in lr (0.0001, 0.001); this table has one row per mode"), p.stderr


def test_a_setting_only_some_runs_have_still_splits_a_mode(tmp_path: Path) -> None:
    """Two tables concatenated, from before and after a parameter existed (`lr_schedule`: the newer runs say
    cosine, the older ones have no such column): a column missing on some runs was not counted as a setting,
    so the two kinds of runs were averaged into one row. A run without the parameter is its own value."""
    rows = coconut_run("old/s0", 0, VAL[1e-4][0]) + coconut_run("old/s1", 1, VAL[1e-4][1]) \
        + coconut_run("new/s0", 0, VAL[1e-3][0], lr_schedule="cosine") \
        + coconut_run("new/s1", 1, VAL[1e-3][1], lr_schedule="cosine")
    text, _ = summary(write_records(tmp_path / "r.parquet", rows))
    lines = [line for line in text.splitlines() if line.startswith("| continuous")]
    assert len(lines) == 2 and any("85.0 ± 7.1 %" in line for line in lines) \
        and any("cosine" in line and "35.0 ± 7.1 %" in line for line in lines), text
