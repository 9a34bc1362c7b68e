"""A metric logged as NaN (a run that diverged) is stored as NaN, one a record did not log as null. Merging
a record logged twice kept "the latest non-missing value" and skipped NaN: a rerun that diverged showed the
discarded attempt's number, and nothing flagged it. The final val accuracy of a coconut run whose last epoch
is NaN was an earlier epoch's. Tables are built by hand with pyarrow (explicit nulls and NaNs)."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from analysis.cli import summary_command
from analysis.load import at_step, read_results
from tests.analysis.records import coconut_run, write_records

NAN = float("nan")


def test_a_later_logged_nan_wins_and_a_metric_not_logged_keeps_the_earlier_value(tmp_path: Path) -> None:
    base = {"spec": "s", "experiment": "noop", "group": "g", "task": 0, "seed": 0, "run_key": "k", "run_dir": "x/s0",
            "state": "completed", "step": 3, "split": "val"}
    # (length, time, accuracy, loss); None: not logged. Times 1.0 are the first attempt, 2.0 the rerun's.
    logged = [(1, 1.0, 1.0, 0.5), (1, 2.0, NAN, None),    # the rerun diverged; it did not log loss
              (2, 1.0, 0.5, 0.7), (2, 2.0, 0.25, 0.6),    # an ordinary rerun
              (3, 1.0, NAN, 0.9), (3, 2.0, 0.75, None),   # diverged, then a later number
              (4, 1.0, NAN, 0.1), (4, 2.0, None, 0.2)]    # the later record did not log accuracy: NaN stays
    path = write_records(tmp_path / "r.parquet", [base | {"length": k, "time": t, "accuracy": a, "loss": loss}
                                                  for k, t, a, loss in logged])
    column = pq.read_table(path).column("accuracy")
    assert column.null_count == 1  # the file itself tells the two apart
    frame = read_results(path)
    got = frame.set_index("length")[["accuracy", "loss"]]
    assert len(frame) == 4
    assert math.isnan(got.loc[1, "accuracy"]) and got.loc[1, "loss"] == 0.5
    assert tuple(got.loc[2]) == (0.25, 0.6)
    assert tuple(got.loc[3]) == (0.75, 0.9)
    assert math.isnan(got.loc[4, "accuracy"]) and got.loc[4, "loss"] == 0.2
    chosen, notes = at_step(frame, ("val",), None, "accuracy")
    assert chosen.empty  # a mean over the lengths that are numbers would be one over fewer lengths
    assert notes == ["x/s0: val at step 3: accuracy missing or NaN at length 1, 4; its val score is left out "
                     "(a mean over fewer lengths is not comparable)"]


def test_coconut_final_val_accuracy_of_a_run_whose_last_epoch_is_nan_is_nan(tmp_path: Path) -> None:
    rows = coconut_run("c/s0", 0, [0.5, 0.7, NAN]) + coconut_run("c/s1", 1, [0.6, 0.8, 0.9])
    path = write_records(tmp_path / "r.parquet", rows)
    result = CliRunner().invoke(summary_command, [str(path)])
    assert result.exit_code == 0, result.output
    # best: 0.7 (epoch 2) and 0.9 (epoch 3), over the epochs that have a number; final: NaN, not s0's 0.7.
    assert "| continuous | 80.0 ± 14.1 % | 2.5 | NaN | 2 |" in result.stdout, result.stdout
    assert ("note: coconut run c/s0: validation accuracy is NaN at its last epoch (3); its final val accuracy "
            "is NaN") in result.stderr, result.stderr
    result = CliRunner().invoke(summary_command, [str(path), "--format", "csv"])
    table = pd.read_csv(io.StringIO(result.stdout))
    assert math.isnan(table.loc[0, "final_val_accuracy_mean"]) and table.loc[0, "n_runs"] == 2
    assert table.loc[0, "best_val_accuracy_mean"] == pytest.approx(0.8)


def test_paper_table_leaves_out_a_run_whose_rerun_logged_a_nan_test_accuracy(tmp_path: Path) -> None:
    diverged = coconut_run("c/s0", 0, [0.5, 0.7, 0.6])
    rerun = diverged[-1] | {"time": 200.0, "accuracy": NAN, "well_formed": None}  # test record logged again
    path = write_records(tmp_path / "r.parquet", diverged + [rerun] + coconut_run("c/s1", 1, [0.6, 0.8, 0.9]))
    p = subprocess.run([sys.executable, "-m", "analysis.coconut_table", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "| continuous | 1 | 90.0 ± n/a % | 90.0 ± n/a % | 100.0 % |" in p.stdout, p.stdout  # s1 only
    assert "note: coconut run c/s0: test accuracy is NaN; left out" in p.stderr, p.stderr
