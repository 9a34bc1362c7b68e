"""`sweep summary --format sort-llm` (issue 13): the sort-llm reference's summary.csv and
min_k_thresholds.csv (its plot_all_final.py: write_csv, write_thresholds), and
`--at-step last-eval`, the reference's last evaluation step instead of sweep's extra final one."""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from analysis.cli import summary_command
from analysis.load import last_eval_step

MAX_ITERS, EVAL_EVERY = 100, 25  # the reference's last evaluation: step 76; sweep's final: 100
GEN_K = (9, 10)


def gen_values(n_layers: int, kmax: int, fixed: bool, seed: int, step: int) -> tuple[float, float]:
    """Exact match at gen K 9 and 10 for one run: reaches 0.95 at train K 8 for the 1-layer
    dynamic runs only; the last-eval step is 0.1 lower than the final one."""
    base = {(1, 8, False): 0.97, (1, 4, False): 0.5, (1, 8, True): 0.9, (1, 4, True): 0.2}.get(
        (n_layers, kmax, fixed), 0.1)
    base -= 0.1 if step != MAX_ITERS else 0.0
    return base + 0.01 * (seed % 3), base + 0.02 * (seed % 3)


def results(tmp_path: Path) -> Path:
    rows = []
    for n_layers in (1, 2):
        for kmax in (4, 8):
            for fixed in (False, True):
                for seed in (0, 1, 2):
                    run_key = f"L{n_layers}k{kmax}f{int(fixed)}s{seed}"
                    config = {"n_layers": n_layers, "use_mlp": False, "use_layernorm": True, "no_pos_emb": True,
                              "length_mode": "mix", "train_min_k": kmax if fixed else 2, "train_max_k": kmax,
                              "max_iters": MAX_ITERS, "eval_every": EVAL_EVERY}
                    for step in (1, 26, 51, 76, 100):
                        for split, ks in (("test", (kmax,)), ("gen", GEN_K)):
                            values = gen_values(n_layers, kmax, fixed, seed, step) if split == "gen" else (1.0,)
                            for k, em in zip(ks, values):
                                rows.append({"experiment": "sortgpt", "spec": "s", "group": f"k{kmax}",
                                             "task": n_layers * 2 + int(fixed), "seed": seed, "run_key": run_key,
                                             "run_dir": run_key, "state": "completed", "step": step,
                                             "split": split, "length": k, "time": float(step), **config,
                                             "exact_match_acc": em, "loss": 1.0 - em})
    frame = pd.DataFrame(rows)
    for c in ("task", "seed", "step", "length"):
        frame[c] = frame[c].astype("Int64")
    path = tmp_path / "results.parquet"
    frame.to_parquet(path)
    return path


def expected_summary(step: int) -> str:
    """Written out as the reference computes it: np.mean/np.std (population) of per-run
    mean gen exact match, 4 decimals, keys sorted (curriculum < fixed < mix)."""
    lines = ["n_layers,use_mlp,use_layernorm,length_mode,training,train_max_k,mean_gen_em,std_gen_em,n_runs"]
    for n_layers in (1, 2):
        for fixed in (True, False):  # "fixed" sorts before "mix"
            for kmax in (4, 8):
                scores = [statistics.fmean(gen_values(n_layers, kmax, fixed, seed, step)) for seed in (0, 1, 2)]
                mode, training = ("fixed", "fixed") if fixed else ("mix", "dynamic")
                lines.append(f"{n_layers},0,1,{mode},{training},{kmax},{statistics.fmean(scores):.4f},"
                             f"{statistics.pstdev(scores):.4f},3")
    return "\n".join(lines) + "\n"


def run(*args: str):
    return CliRunner().invoke(summary_command, [str(a) for a in args])


def test_summary_and_thresholds_in_the_reference_format(tmp_path: Path) -> None:
    path = results(tmp_path)
    result = run(path, "--format", "sort-llm", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "summary.csv").read_text() == expected_summary(MAX_ITERS)
    assert (tmp_path / "out" / "min_k_thresholds.csv").read_text() == (
        "n_layers,use_mlp,use_layernorm,length_mode,training,min_k_at_0.95\n"
        "1,False,True,fixed,fixed,\n"
        "1,False,True,mix,dynamic,8\n"
        "2,False,True,fixed,fixed,\n"
        "2,False,True,mix,dynamic,\n")


def test_at_the_reference_last_evaluation_step(tmp_path: Path) -> None:
    assert last_eval_step(40000, 250) == 39751 and last_eval_step(100, 25) == 76 and last_eval_step(101, 25) == 101
    path = results(tmp_path)
    result = run(path, "--format", "sort-llm", "--at-step", "last-eval", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "summary.csv").read_text() == expected_summary(76)
    # at 76 the 1-layer dynamic K 8 cell is 0.87-0.89: no cell reaches 0.95
    assert (tmp_path / "out" / "min_k_thresholds.csv").read_text().splitlines()[2] == "1,False,True,mix,dynamic,"
    # the default summary takes the same step with the same option
    markdown = run(path, "--at-step", "last-eval")
    assert markdown.exit_code == 0 and "the reference's last evaluation step" in markdown.output


@pytest.mark.parametrize(("args", "message"), [
    (["--step", "51", "--at-step", "last-eval"], "--step 51 and --at-step last-eval: choose one"),
    (["--experiment", "coconut"], "--format sort-llm: summarises sortgpt results only"),
    (["--step", "7"], "--step 7: no test/gen records at that step"),
])
def test_bad_requests_write_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    path = results(tmp_path)
    result = run(path, "--format", "sort-llm", "-o", tmp_path / "out", *args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: ") and message in result.output
    assert not (tmp_path / "out").exists()


def test_last_eval_needs_records_there(tmp_path: Path) -> None:
    path = results(tmp_path)
    frame = pd.read_parquet(path)
    frame[frame["step"] == MAX_ITERS].to_parquet(path)  # final checkpoints only, as `sweep evaluate` writes
    result = run(path, "--format", "sort-llm", "--at-step", "last-eval", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "no run has test/gen records at the reference's last evaluation" in result.output
    assert not (tmp_path / "out").exists()
