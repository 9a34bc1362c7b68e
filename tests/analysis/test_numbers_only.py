"""`sweep plot --only` selects runs. On a column that varies within a run it kept only some records of
each run, and the figures still said "final checkpoint" and "mean over test K": `--only step=1` drew
step 1 as the final checkpoint, `--only length=9` one length as the mean over all."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tests.analysis.test_numbers_lengths import _table
from tests.helpers import sweep


def test_only_on_a_record_or_metric_column_is_refused(tmp_path: Path) -> None:
    out = _table(tmp_path, {9: 0.9, 10: 0.1})
    for expr, name in (("step=1", "step"), ("length=9", "length"), ("split=gen", "split"),
                       ("exact_match_acc=0.5", "exact_match_acc")):
        plots = tmp_path / name
        p = sweep("plot", out, "-o", plots, "--only", expr, check=False)
        assert p.returncode == 2 and not plots.exists(), p
        assert p.stderr.strip() == (f"error: --only: {name} varies within a run (a record or metric column); "
                                    "--only selects runs by their configuration (--step picks the step)")


def test_only_on_a_configuration_column_still_selects_runs(tmp_path: Path) -> None:
    out = _table(tmp_path, {9: 0.9, 10: 0.1})
    sweep("plot", out, "-o", tmp_path / "p", "--only", "seed=2,train_k=4")
    scatter = pd.read_csv(tmp_path / "p" / "sortgpt_id_vs_ood.csv")
    assert scatter["seed"].tolist() == [2] and scatter["step"].tolist() == [10]
    assert scatter["ood_exact_match"].round(6).tolist() == [0.5]
