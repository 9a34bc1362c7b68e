"""`sweep plot`: every figure renders from a results file, as a real PNG with its CSV beside it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from analysis.cli import plot_command
from tests.analysis.hand import sortgpt_cells

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def rendered(results_parquet: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("plots")
    result = CliRunner().invoke(plot_command, [str(results_parquet), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.stderr


def expected_stems(path: Path) -> set[str]:
    """The figure names the results call for, worked out from the table itself."""
    table = pd.read_parquet(path)
    stems: set[str] = set()
    sortgpt = table[table["experiment"] == "sortgpt"]
    if len(sortgpt):
        for use_ln in sortgpt["use_layernorm"].astype(bool).unique():
            stems.add("sortgpt_ood_vs_k_" + ("layernorm" if use_ln else "no_layernorm"))
        stems |= {"sortgpt_heatmap", "sortgpt_id_vs_ood"}
        for n_layers, use_mlp, use_ln in sortgpt[["n_layers", "use_mlp", "use_layernorm"]].drop_duplicates() \
                .itertuples(index=False):
            layers = f"{int(n_layers)}_layer{'s' if int(n_layers) != 1 else ''}"
            stems.add(f"sortgpt_training_{layers}_{'mlp' if use_mlp else 'no_mlp'}_"
                      f"{'layernorm' if use_ln else 'no_layernorm'}")
    if (table["experiment"] == "coconut").any():
        stems |= {"coconut_val_accuracy", "coconut_loss", "coconut_best_epoch"}
    return stems


def test_every_figure_is_a_readable_png_with_csv_beside(rendered: tuple[Path, str], results_parquet: Path):
    out, _ = rendered
    expected = expected_stems(results_parquet)
    assert expected, "the results file holds no sortgpt or coconut records"
    assert {p.stem for p in out.glob("*.png")} == expected
    for stem in expected:
        png = out / f"{stem}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC, png
        with Image.open(png) as image:
            image.load()
            width, height = image.size
            colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert 500 <= width <= 4000 and 150 <= height <= 3000  # a 2-row table is short, f"{png.name}: {width}x{height}"
        assert colours is None or len(colours) > 20, f"{png.name} looks blank"
        csv = out / f"{stem}.csv"
        assert csv.exists(), f"no CSV beside {png.name}"
        assert len(pd.read_csv(csv)) > 0, f"{csv.name} is empty"


def test_figure_data_matches_hand_computation(rendered: tuple[Path, str], results_parquet: Path):
    """The heatmap's CSV holds the same cell means as a hand computation; the scatter one point per run."""
    out, _ = rendered
    expected = sortgpt_cells(results_parquet)
    if not expected:
        pytest.skip("no sortgpt runs in this results file")
    heatmap = pd.read_csv(out / "sortgpt_heatmap.csv")
    got = {(int(r.n_layers), bool(r.use_mlp), bool(r.use_layernorm), r.length_config, int(r.train_k)):
           r.ood_exact_match_mean for r in heatmap.itertuples(index=False)}
    assert got.keys() == expected.keys()
    for cell, (mean, _, _) in expected.items():
        assert got[cell] == pytest.approx(mean, abs=1e-12), cell
    scatter = pd.read_csv(out / "sortgpt_id_vs_ood.csv")
    assert len(scatter) == scatter["run_key"].nunique() == sum(n for _, _, n in expected.values())


def test_ood_curves_have_every_test_k(rendered: tuple[Path, str], results_parquet: Path):
    out, _ = rendered
    table = pd.read_parquet(results_parquet)
    gen_ks = set(table.loc[(table["experiment"] == "sortgpt") & (table["split"] == "gen"), "length"].dropna())
    if not gen_ks:
        pytest.skip("no sortgpt runs in this results file")
    curves = pd.concat(pd.read_csv(p) for p in out.glob("sortgpt_ood_vs_k_*.csv"))
    assert set(curves["test_k"]) == gen_ks
    assert curves["exact_match_mean"].between(0, 1).all()


def test_partial_sweep_is_reported_and_still_plotted(synthetic_results: Path, tmp_path: Path):
    """The synthetic sweep has a run still running (stopped at step 50 of 100) and a
    (group, task, seed) never started: both are named on stderr, the figures still come."""
    from analysis.cli import summary_command
    from tests.analysis.conftest import NEVER_STARTED, RUNNING_RUN

    table = pd.read_parquet(synthetic_results)
    running = table[(table["group"] == RUNNING_RUN[0]) & (table["task"] == RUNNING_RUN[1])
                    & (table["seed"] == RUNNING_RUN[2])].iloc[0]
    only = f"n_layers={running['n_layers']},use_mlp={running['use_mlp']},use_layernorm={running['use_layernorm']}"
    result = CliRunner().invoke(plot_command, [str(synthetic_results), "-o", str(tmp_path), "--only", only])
    assert result.exit_code == 0, result.output
    assert f"{running['run_dir']}: state running, last step 50 < 100 reached in group {RUNNING_RUN[0]}" \
        in result.stderr
    scatter = pd.read_csv(tmp_path / "sortgpt_id_vs_ood.csv").set_index("run_key")
    assert scatter.loc[running["run_key"], "step"] == 50  # its own last evaluation
    assert set(scatter.drop(index=running["run_key"])["step"]) == {100}

    result = CliRunner().invoke(summary_command, [str(synthetic_results)])
    assert result.exit_code == 0
    group, task, seed = NEVER_STARTED
    assert f"note: sortgpt spec len_gen: no records for group {group} task {task} seed {seed}" in result.stderr
    assert running["run_dir"] in result.stderr


def test_only_restricts_every_figure_to_the_selection(synthetic_results: Path, tmp_path: Path):
    result = CliRunner().invoke(plot_command, [str(synthetic_results), "-o", str(tmp_path),
                                               "--only", "n_layers=1,use_mlp=false"])
    assert result.exit_code == 0, result.output
    training = sorted(p.name for p in tmp_path.glob("sortgpt_training_*.png"))
    assert training == ["sortgpt_training_1_layer_no_mlp_layernorm.png",
                        "sortgpt_training_1_layer_no_mlp_no_layernorm.png"]
    scatter = pd.read_csv(tmp_path / "sortgpt_id_vs_ood.csv")
    assert (scatter["n_layers"] == 1).all() and (~scatter["use_mlp"]).all()
    assert scatter["run_key"].nunique() == len(scatter) > 0
    # --only selected sortgpt architectures: no coconut run matches, so no coconut figures
    assert not list(tmp_path.glob("coconut_*"))


def test_step_chooses_the_evaluation_shown(results_parquet: Path, tmp_path: Path):
    table = pd.read_parquet(results_parquet)
    steps = sorted(table.loc[(table["experiment"] == "sortgpt") & (table["split"] == "gen"), "step"].unique())
    if len(steps) < 2:
        pytest.skip("needs a sortgpt sweep evaluated at two steps at least")
    step = int(steps[-2])
    # One architecture is enough here (and keeps the test quick).
    first = table[table["experiment"] == "sortgpt"].iloc[0]
    arch = (int(first["n_layers"]), bool(first["use_mlp"]), bool(first["use_layernorm"]))
    only = f"experiment=sortgpt,n_layers={arch[0]},use_mlp={arch[1]},use_layernorm={arch[2]}"
    result = CliRunner().invoke(plot_command, [str(results_parquet), "-o", str(tmp_path), "--step", str(step),
                                               "--only", only])
    assert result.exit_code == 0, result.output
    scatter = pd.read_csv(tmp_path / "sortgpt_id_vs_ood.csv")
    assert set(scatter["step"]) == {step}
    expected = {cell: v for cell, v in sortgpt_cells(results_parquet, step=step).items() if cell[:3] == arch}
    heatmap = pd.read_csv(tmp_path / "sortgpt_heatmap.csv")
    assert len(heatmap) == len(expected) > 0
    for r in heatmap.itertuples(index=False):
        cell = (int(r.n_layers), bool(r.use_mlp), bool(r.use_layernorm), r.length_config, int(r.train_k))
        assert r.ood_exact_match_mean == pytest.approx(expected[cell][0], abs=1e-12)
