"""Numbers that `sweep collect` must never change on their way into the table: a metric that is not a
number is a corrupt record (the run is skipped, named with its line), never a NaN nobody sees."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from launch import collect
from tests.helpers import sweep

SPEC = """
experiment: noop
path: "noop/x{x}/seed{seed}"
fixed: {steps: 1}
axes:
  - {x: [0, 1]}
seeds: [1]
"""


def _tree(tmp_path: Path, metrics: list[list[dict]]) -> tuple[Path, Path, list[str]]:
    """Run directories as a finished run leaves them (run.json, state.json, metrics.jsonl)."""
    from launch.spec import load_spec
    from launch.tasks import expand

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    root = tmp_path / "tree"
    runs = expand(load_spec(spec, root=root))
    for r, recs in zip(runs, metrics, strict=True):
        d = root / r.rel_dir
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps(r.to_json()))
        (d / "state.json").write_text(json.dumps({"state": "completed"}))
        (d / "metrics.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in recs))
    return spec, root, [r.rel_dir for r in runs]


def _val(length: int, accuracy: object) -> dict:
    return {"step": 1, "split": "val", "length": length, "time": 1.0, "metrics": {"accuracy": accuracy}}


def test_a_metric_that_is_not_a_number_is_a_corrupt_line_not_a_silent_nan(tmp_path: Path) -> None:
    spec, root, dirs = _tree(tmp_path, [[_val(1, 0.9), _val(2, "oops")], [_val(1, 0.5), _val(2, [0.5])]])
    out = tmp_path / "r.parquet"
    p = sweep("collect", spec, "--root", root, "-o", out, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"{dirs[0]}: metrics.jsonl: line 2: metric 'accuracy' must be a number, got 'oops'" in p.stderr
    assert f"{dirs[1]}: metrics.jsonl: line 2: metric 'accuracy' must be a number, got [0.5]" in p.stderr
    assert len(pd.read_parquet(out)) == 0


def test_numbers_and_nulls_of_a_metric_are_kept_as_logged(tmp_path: Path) -> None:
    spec, root, _ = _tree(tmp_path, [[_val(1, 1), _val(2, None)], [_val(1, 0.25), _val(2, True)]])
    out = tmp_path / "r.parquet"
    sweep("collect", spec, "--root", root, "-o", out)
    df = pd.read_parquet(out).sort_values(["x", "length"])
    assert df["accuracy"].dtype == "float64"
    assert df["accuracy"].tolist()[:1] == [1.0] and pd.isna(df["accuracy"].tolist()[1])
    assert df["accuracy"].tolist()[2:] == [0.25, 1.0]


def test_a_run_extended_by_sweep_resume_is_named_not_silently_absent(tmp_path: Path) -> None:
    """The child `sweep resume` writes beside a run (<dir>_resume<N>, run.json naming its parent's run key)
    is not a run of the spec: collect leaves it out of the table, but says so."""
    spec, root, dirs = _tree(tmp_path, [[_val(1, 0.5)], [_val(1, 0.5)]])
    parent_info = json.loads((root / dirs[0] / "run.json").read_text())
    child = root / f"{dirs[0]}_resume20"
    child.mkdir()
    (child / "run.json").write_text(json.dumps(parent_info | {"run_key": "c" * 12, "parent": {
        "run_dir": dirs[0], "run_key": parent_info["run_key"], "step": 1}}))
    (child / "state.json").write_text(json.dumps({"state": "completed"}))
    (root / f"{dirs[1]}_resume5").mkdir()  # not a child of dirs[1]: no run.json naming it
    p = sweep("collect", spec, "--root", root, "-o", tmp_path / "r.parquet")
    assert p.stderr.strip() == (f"warning: {dirs[0]}: extended by sweep resume as {child.name} (completed): not a "
                                "run of the spec, so not in the table"), p.stderr
    assert set(pd.read_parquet(tmp_path / "r.parquet")["run_dir"]) == set(dirs)


@pytest.mark.parametrize("change, says", [
    ("rewrite", "its first 2 records were rewritten while sweep collect read them"),
    ("takeover", "run.json no longer names run"),
    ("shrink", "holds 1 records, 2 a moment ago"),
    ("append", None),  # a run still writing adds records: the first pass's two are collected, unchanged
])
def test_files_changed_between_collects_two_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   change: str, says: str | None) -> None:
    """collect reads each run twice (the table is never whole in memory). A relaunch or resume that rewrote
    a run's records, or took its directory, between the passes must stop it with one line and no table:
    else the second pass's numbers would go out under the labels the first pass read (issue 12)."""
    from launch.spec import load_spec
    from launch.store import Store
    from launch.tasks import expand

    spec, root, dirs = _tree(tmp_path, [[_val(1, 0.5), _val(2, 0.25)], [_val(1, 0.75), _val(2, 0.125)]])
    runs = expand(load_spec(spec, root=root))
    metrics, info = root / dirs[1] / "metrics.jsonl", root / dirs[1] / "run.json"
    start = collect.TableBuilder.start

    def between_the_passes(self: collect.TableBuilder, *a: object, **k: object) -> None:
        if change == "rewrite":  # same count, same length of text, another number
            metrics.write_text(metrics.read_text().replace("0.125", "0.875"))
        elif change == "takeover":
            info.write_text(json.dumps(json.loads(info.read_text()) | {"run_key": "f" * 12}))
        elif change == "shrink":
            metrics.write_text(metrics.read_text().splitlines(keepends=True)[0])
        else:
            metrics.write_text(metrics.read_text() + json.dumps(_val(3, 0.0)) + "\n")
        start(self, *a, **k)

    monkeypatch.setattr(collect.TableBuilder, "start", between_the_passes)
    out = tmp_path / "r.parquet"
    if says is None:
        assert collect.collect(runs, Store(root), out).rows == 4
        df = pd.read_parquet(out)
        assert sorted(df["accuracy"]) == [0.125, 0.25, 0.5, 0.75]
        return
    with pytest.raises(collect.CollectRace, match=says):
        collect.collect(runs, Store(root), out)
    assert not out.exists() and not list(tmp_path.glob(".r.parquet*"))
