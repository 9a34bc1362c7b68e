"""A run's OOD score is a mean over its test lengths: over fewer lengths (one missing at the final step,
or NaN there) it is another number, not comparable with its siblings'. Such a score is left out, with a
note naming the run — before, it was averaged in silently (e.g. 70 % where the whole runs give 50 %)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from launch.collect import PROVENANCE, write_table
from tests.helpers import sweep

CONFIG = {"n_layers": 1, "use_mlp": True, "use_layernorm": True, "no_pos_emb": False, "length_mode": "mix",
          "train_min_k": 4, "train_max_k": 4, "max_iters": 10, "batch_size": 8, "eval_every": 5}


def _prov(seed: int) -> dict:
    return {c: None for c in PROVENANCE} | {"spec": "s", "experiment": "sortgpt", "group": "g", "task": 0,
                                           "seed": seed, "run_key": f"run{seed}".ljust(12, "0"),
                                           "run_dir": f"g/task_0000/seed{seed}", "started_at": 1.7e9,
                                           "ended_at": 1.7e9 + 1, "wall_s": 1.0, "state": "completed"}


def _evals(step: int, gen: dict[int, float]) -> list[dict]:
    recs = [{"step": step, "split": "train", "length": None, "time": float(step), "metrics": {"loss": 0.1}},
            {"step": step, "split": "test", "length": 4, "time": float(step), "metrics": {"exact_match_acc": 1.0}}]
    return recs + [{"step": step, "split": "gen", "length": k, "time": float(step),
                    "metrics": {"exact_match_acc": v}} for k, v in gen.items()]


def _table(tmp_path: Path, last_of_seed_2: dict[int, float]) -> Path:
    """Two seeds of one configuration, evaluated at steps 1, 6 (the reference's last) and 10 (final);
    seed 2's records at both later steps are ``last_of_seed_2``."""
    whole = {9: 0.5, 10: 0.5}
    records = [(_prov(1), CONFIG, _evals(1, whole) + _evals(6, whole) + _evals(10, whole)),
               (_prov(2), CONFIG, _evals(1, whole) + _evals(6, last_of_seed_2) + _evals(10, last_of_seed_2))]
    out = tmp_path / "results.parquet"
    write_table(records, list(CONFIG), out)
    return out


def _check(tmp_path: Path, last_of_seed_2: dict[int, float]) -> None:
    out = _table(tmp_path, last_of_seed_2)
    for at in ("final", "last-eval"):
        p = sweep("summary", out, "--at-step", at)
        assert "| 1 | yes | yes | fixed | 4 | 50.0 ± n/a % | 1 |" in p.stdout, p.stdout
        step = 10 if at == "final" else 6
        assert (f"note: g/task_0000/seed2: gen at step {step}: exact_match_acc missing or NaN at length 10; its gen "
                "score is left out") in p.stderr, p.stderr
    sweep("summary", out, "--format", "sort-llm", "-o", tmp_path / "ref")
    assert (tmp_path / "ref" / "summary.csv").read_text().splitlines()[1] == "1,1,1,fixed,fixed,4,0.5000,0.0000,1"
    sweep("plot", out, "-o", tmp_path / "plots")
    per_k = pd.read_csv(tmp_path / "plots" / "sortgpt_ood_vs_k_layernorm.csv")
    assert per_k.set_index("test_k")["n_runs"].to_dict() == {9: 1, 10: 1}


def test_a_length_missing_at_the_final_step_leaves_that_runs_score_out(tmp_path: Path) -> None:
    _check(tmp_path, {9: 0.9})


def test_a_nan_at_one_length_leaves_that_runs_score_out(tmp_path: Path) -> None:
    _check(tmp_path, {9: 0.9, 10: math.nan})


def test_whole_runs_are_all_counted(tmp_path: Path) -> None:
    out = _table(tmp_path, {9: 0.9, 10: 0.1})
    p = sweep("summary", out)
    assert "| 1 | yes | yes | fixed | 4 | 50.0 ± 0.0 % | 2 |" in p.stdout and "left out" not in p.stderr, p
