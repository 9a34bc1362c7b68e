"""`sweep summary`: numbers equal a hand computation; n_runs counts runs, not rows."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from analysis.cli import summary_command
from tests.analysis.hand import coconut_best, smallest_train_k, sortgpt_cells


def summary_csv(path: Path, *extra: str, experiment: str = "sortgpt") -> pd.DataFrame:
    result = CliRunner().invoke(summary_command, [str(path), "--format", "csv", "--experiment", experiment, *extra])
    assert result.exit_code == 0, result.output
    return pd.read_csv(io.StringIO(result.stdout), dtype={"min_train_k_95": str})


def by_cell(table: pd.DataFrame) -> dict[tuple, pd.Series]:
    return {(int(r.n_layers), bool(r.use_mlp), bool(r.use_layernorm), r.length_config, int(r.train_k)): r
            for _, r in table.iterrows()}


def assert_matches_hand(table: pd.DataFrame, expected: dict[tuple, tuple[float, float, int]]) -> None:
    got = by_cell(table)
    assert got.keys() == expected.keys()
    for cell, (mean, std, n_runs) in expected.items():
        row = got[cell]
        assert row["ood_exact_match_mean"] == pytest.approx(mean, abs=1e-12), cell
        if math.isnan(std):
            assert math.isnan(row["ood_exact_match_std"]), cell
        else:
            assert row["ood_exact_match_std"] == pytest.approx(std, abs=1e-12), cell
        assert row["n_runs"] == n_runs, cell


def test_summary_equals_hand_computation(results_parquet: Path):
    expected = sortgpt_cells(results_parquet)
    if not expected:
        pytest.skip("no sortgpt runs in this results file")
    table = summary_csv(results_parquet)
    assert_matches_hand(table, expected)
    thresholds = smallest_train_k(expected)
    for _, row in table.iterrows():
        key = (int(row.n_layers), bool(row.use_mlp), bool(row.use_layernorm), row.length_config)
        assert row["min_train_k_95"] == thresholds[key], key


def test_summary_at_an_earlier_step(results_parquet: Path):
    table = pd.read_parquet(results_parquet)
    steps = sorted(table.loc[(table["experiment"] == "sortgpt") & (table["split"] == "gen"), "step"].unique())
    if len(steps) < 2:
        pytest.skip("needs a sortgpt sweep evaluated at two steps at least")
    step = int(steps[-2])
    assert_matches_hand(summary_csv(results_parquet, "--step", str(step)), sortgpt_cells(results_parquet, step))


def test_reached_and_never_both_occur_in_synthetic_sweep(synthetic_results: Path):
    """Guards the threshold test above against a sweep where every answer is 'never'."""
    values = set(summary_csv(synthetic_results)["min_train_k_95"])
    assert "never" in values and values - {"never"}


def test_rerun_rows_do_not_inflate_n_runs(results_parquet: Path, tmp_path: Path):
    """Every record of one run logged a second time (later time, same values) changes nothing."""
    table = pd.read_parquet(results_parquet)
    sortgpt = table[table["experiment"] == "sortgpt"]
    if sortgpt.empty:
        pytest.skip("no sortgpt runs in this results file")
    rerun_key = sortgpt["run_key"].iloc[0]
    again = table[table["run_key"] == rerun_key].assign(time=lambda t: t["time"] + 3600.0)
    doubled = tmp_path / "doubled.parquet"
    pd.concat([table, again], ignore_index=True).to_parquet(doubled, index=False)
    assert len(pd.read_parquet(doubled)) > len(table)  # the rows really are there twice

    before, after = summary_csv(results_parquet), summary_csv(doubled)
    pd.testing.assert_frame_equal(before, after)
    runs_per_cell = sortgpt.groupby(["n_layers", "use_mlp", "use_layernorm", "length_mode", "train_min_k",
                                     "train_max_k"])["run_key"].nunique()
    assert after["n_runs"].sum() == runs_per_cell.sum() == sortgpt["run_key"].nunique()


def test_synthetic_rerun_cell_counts_runs(synthetic_results: Path):
    """The synthetic sweep holds one run's records twice; its cell still counts 2 runs (2 seeds)."""
    from tests.analysis.conftest import RERUN_DUPLICATED

    table = pd.read_parquet(synthetic_results)
    group, task, seed = RERUN_DUPLICATED
    rerun = table[(table["group"] == group) & (table["task"] == task) & (table["seed"] == seed)]
    assert rerun.duplicated(["step", "split", "length"]).sum() == len(rerun) // 2 > 0
    row = rerun.iloc[0]
    config = "fixed" if row["train_min_k"] == row["train_max_k"] else row["length_mode"]
    cell = (int(row["n_layers"]), bool(row["use_mlp"]), bool(row["use_layernorm"]), config, int(row["train_max_k"]))
    assert by_cell(summary_csv(synthetic_results))[cell]["n_runs"] == 2


def test_a_later_rerun_record_replaces_the_earlier_one(synthetic_results: Path, tmp_path: Path):
    """A rerun that logged a different value for the same record: the later one counts, once."""
    table = pd.read_parquet(synthetic_results)
    run_key = table.loc[(table["experiment"] == "sortgpt") & (table["state"] == "completed"), "run_key"].iloc[0]
    gen = table[(table["run_key"] == run_key) & (table["split"] == "gen")]
    final = gen[gen["step"] == gen["step"].max()]
    redone = final.assign(time=final["time"] + 60.0, exact_match_acc=1.0)
    changed = tmp_path / "redone.parquet"
    pd.concat([table, redone], ignore_index=True).to_parquet(changed, index=False)

    expected = sortgpt_cells(changed)
    assert_matches_hand(summary_csv(changed), expected)
    row = final.iloc[0]
    config = "fixed" if row["train_min_k"] == row["train_max_k"] else row["length_mode"]
    cell = (int(row["n_layers"]), bool(row["use_mlp"]), bool(row["use_layernorm"]), config, int(row["train_max_k"]))
    assert expected[cell] != sortgpt_cells(synthetic_results)[cell]  # the test data really changed it


def test_markdown_lists_every_cell_and_threshold(synthetic_results: Path):
    result = CliRunner().invoke(summary_command, [str(synthetic_results)])
    assert result.exit_code == 0, result.output
    expected = sortgpt_cells(synthetic_results)
    text = result.stdout
    sortgpt_part = text.split("## sortgpt: smallest")[0]
    rows = [line for line in sortgpt_part.splitlines() if line.startswith("| ") and "train K" not in line]
    assert len(rows) == len(expected)
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        key = (int(cells[0]), cells[1] == "yes", cells[2] == "yes", cells[3], int(cells[4]))
        mean, std, n_runs = expected[key]
        spread = "n/a" if math.isnan(std) else f"{100 * std:.1f}"
        assert cells[5] == f"{100 * mean:.1f} ± {spread} %"
        assert cells[6] == str(n_runs)
    assert "## coconut: best validation epoch per feedback mode" in text


def test_coconut_best_epochs_equal_hand_computation(results_parquet: Path):
    expected = coconut_best(results_parquet)
    if not expected:
        pytest.skip("no coconut runs in this results file")
    table = summary_csv(results_parquet, experiment="coconut")
    assert set(table["feedback_mode"]) == set(expected)
    for _, row in table.iterrows():
        best_acc, best_epoch, n_runs = expected[row["feedback_mode"]]
        assert row["best_val_accuracy_mean"] == pytest.approx(best_acc, abs=1e-12)
        assert row["best_epoch_mean"] == pytest.approx(best_epoch)
        assert row["n_runs"] == n_runs
