"""`sweep collect` writes its table a row group at a time (issue 12: the whole table is never in memory).
The file must be the one a single DataFrame of every row gives: same columns, types, pandas metadata, rows
in the same order — whatever the row groups' size, and whichever rows of a column hold which types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from launch import collect


def _records() -> tuple[list[tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]], list[str]]:
    """Runs whose column types change from row group to row group: ints then None (float64 as a
    whole), bools with None, text and numbers (text), a parameter only late runs have, a metric first
    logged late, lengths null and not, times int and float."""
    records = []
    for i in range(40):
        prov = {"spec": "s", "experiment": "e", "group": f"g{i % 3}", "task": i % 5, "seed": i % 2,
                "run_key": f"k{i:03d}", "run_dir": f"g/t{i}", "job_id": None if i < 10 else f"7_{i}",
                "git_commit": "abc", "code_snapshot": None, "host": "node",
                "started_at": 1_700_000_000 + i if i % 2 else 1.7e9 + i + 0.5, "ended_at": 1.7e9 + i + 1,
                "wall_s": None if i < 20 else 1.0, "state": "completed"}
        config = {"n": i if i < 30 else None, "flag": [True, False, None][i % 3], "mix": 3 if i < 35 else "a",
                  "lengths": [1, i], "step": i, **({"late": 0.5} if i > 33 else {})}
        recs = [{"step": s, "split": "train" if s == 0 else "val", "length": None if s == 0 else s,
                 "time": 100 + s if i < 20 else 100.5 + s,
                 "metrics": {"loss": 1.0 / (s + 1), **({"acc": 0.5} if i > 25 else {}), **({"n": s} if s else {})}}
                for s in range(3)]
        records.append((prov, config, recs))
    return records, ["n", "flag", "mix", "lengths", "step", "late"]


def test_row_groups_give_the_table_of_one_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records, cols = _records()
    whole, groups = tmp_path / "whole.parquet", tmp_path / "groups.parquet"
    assert collect.write_table(records, cols, whole) == 120
    monkeypatch.setattr(collect, "CHUNK_ROWS", 7)  # a row group every 3 runs: each sees other types
    assert collect.write_table(records, cols, groups) == 120
    assert pq.ParquetFile(whole).metadata.num_row_groups == 1
    assert pq.ParquetFile(groups).metadata.num_row_groups > 10
    a, b = pq.read_table(whole), pq.read_table(groups)
    assert a.schema.equals(b.schema, check_metadata=True)
    assert a.equals(b)
    df = a.to_pandas()
    assert list(df.columns[-4:]) == ["late", "loss", "metric_n", "acc"]  # metrics after config, first seen first
    assert str(df["n"].dtype) == "float64" and df["n"].isna().sum() == 30  # ints and None: floats with nulls
    assert df["mix"].tolist()[::3][-6:] == ["3", "a", "a", "a", "a", "a"]  # two types: text
    assert df["config_step"].tolist()[::3] == list(range(40))


def test_a_metric_named_like_a_clashing_metrics_column_keeps_its_own(tmp_path: Path) -> None:
    """A metric ``x`` beside a config parameter ``x`` is ``metric_x``; a metric really named ``metric_x``
    then gets a column of its own (they once shared one, and the second emptied the first)."""
    prov = {"spec": "s", "experiment": "e", "group": "g", "task": 0, "seed": 0, "run_key": "k", "run_dir": "d",
            "job_id": None, "git_commit": None, "code_snapshot": None, "host": None, "started_at": None,
            "ended_at": None, "wall_s": None, "state": "completed"}
    recs = [{"step": 1, "split": "val", "metrics": {"x": 0.25}},
            {"step": 2, "split": "val", "metrics": {"metric_x": 0.75, "x": 0.5}}]
    out = tmp_path / "r.parquet"
    collect.write_table([(prov, {"x": 1}, recs)], ["x"], out)
    df = pq.read_table(out).to_pandas()
    assert df["metric_x"].tolist() == [0.25, 0.5]
    assert df["metric_metric_x"].isna().tolist() == [True, False] and df["metric_metric_x"][1] == 0.75
