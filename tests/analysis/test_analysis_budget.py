"""A budget curve beside a grid: runs of one cell at several training budgets
(max_iters x batch_size) are never merged into one cell, and `sweep plot` draws
OOD exact match against budget from the same Parquet."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from analysis.cli import plot_command, summary_command
from tests.analysis.hand import sortgpt_cells

CELL = {"n_layers": 1, "use_mlp": False, "use_layernorm": True}  # fixed K 4 of the synthetic grid
EXTRA_BUDGETS = {25: 0.2, 50: 0.6}  # max_iters -> the OOD exact match those runs score


@pytest.fixture(scope="module")
def with_budget_curve(synthetic_results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic grid plus copies of one fixed-K cell's runs trained for fewer
    iterations (new run keys, their own scores)."""
    frame = pd.read_parquet(synthetic_results)
    cell = ((frame["experiment"] == "sortgpt") & (frame["train_min_k"] == 4) & (frame["train_max_k"] == 4)
            & (frame["state"] == "completed"))
    for name, value in CELL.items():
        cell &= frame[name] == value
    base = frame[cell]
    assert base["run_key"].nunique() >= 2
    extra = []
    for max_iters, score in EXTRA_BUDGETS.items():
        runs = base[base["step"] <= max_iters].copy()  # a shorter run has fewer evaluations
        runs["run_key"] = runs["run_key"] + f"-i{max_iters}"
        runs["run_dir"] = runs["run_dir"] + f"-i{max_iters}"
        runs["max_iters"] = max_iters
        runs.loc[runs["split"] == "gen", "exact_match_acc"] = score
        extra.append(runs)
    path = tmp_path_factory.mktemp("budget") / "results.parquet"
    pd.concat([frame, *extra], ignore_index=True).to_parquet(path)
    return path


def test_budgets_are_separate_cells(with_budget_curve: Path, synthetic_results: Path):
    result = CliRunner().invoke(summary_command, [str(with_budget_curve), "--format", "csv",
                                                  "--experiment", "sortgpt"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout))
    assert "budget" in table.columns
    mine = table[(table["n_layers"] == 1) & ~table["use_mlp"] & table["use_layernorm"]
                 & (table["length_config"] == "fixed") & (table["train_k"] == 4)].set_index("budget")
    batch = 8  # the synthetic grid's batch_size
    for max_iters, score in EXTRA_BUDGETS.items():
        assert mine.loc[max_iters * batch, "ood_exact_match_mean"] == pytest.approx(score)
    # The grid's own runs keep exactly the numbers they have without the curve.
    (mean, _, n_runs), = [v for k, v in sortgpt_cells(synthetic_results).items()
                          if k == (1, False, True, "fixed", 4)]
    grid_budget = int(mine.index.max())
    assert mine.loc[grid_budget, "ood_exact_match_mean"] == pytest.approx(mean, abs=1e-12)
    assert mine.loc[grid_budget, "n_runs"] == n_runs
    # Every other cell has the grid's budget only.
    assert set(table["budget"]) == {grid_budget, *(i * batch for i in EXTRA_BUDGETS)}


def test_plot_draws_the_budget_curve(with_budget_curve: Path, tmp_path: Path):
    out = tmp_path / "plots"
    result = CliRunner().invoke(plot_command, [str(with_budget_curve), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "other training budgets are shown in sortgpt_budget only" in result.output
    # a shorter budget is not "behind" the longer runs of its group
    assert "reached in group len_gen_k4" not in result.output
    curve = pd.read_csv(out / "sortgpt_budget.csv")
    assert len(curve) == 1 + len(EXTRA_BUDGETS)  # one cell, three budgets
    by_budget = curve.set_index("budget")["ood_exact_match_mean"]
    for max_iters, score in EXTRA_BUDGETS.items():
        assert by_budget[max_iters * 8] == pytest.approx(score)
    # The grid's figures show the grid's budget only: the heatmap's cell is the grid's mean.
    heat = pd.read_csv(out / "sortgpt_heatmap.csv")
    assert "budget" not in heat.columns
    assert (out / "sortgpt_budget.png").stat().st_size > 0


def test_no_budget_figure_for_a_single_budget(synthetic_results: Path, tmp_path: Path):
    out = tmp_path / "plots"
    result = CliRunner().invoke(plot_command, [str(synthetic_results), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert not (out / "sortgpt_budget.png").exists()
