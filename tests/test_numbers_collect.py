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


def test_a_logged_nan_and_a_metric_not_logged_stay_apart_in_the_file(tmp_path: Path) -> None:
    """A diverged run measured NaN; a record without the metric measured nothing: the Parquet keeps them
    apart (pandas alone would make both NaN, and a later NaN re-log would look like nothing logged)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    nan_rec = {"step": 1, "split": "val", "length": 1, "time": 1.0, "metrics": {"accuracy": float("nan")}}
    no_acc = {"step": 1, "split": "val", "length": 2, "time": 1.0, "metrics": {"loss": 0.5}}
    spec, root, _ = _tree(tmp_path, [[nan_rec, no_acc], [_val(1, 0.25), _val(2, -0.0)]])
    out = tmp_path / "r.parquet"
    sweep("collect", spec, "--root", root, "-o", out)
    acc = pq.read_table(out).column("accuracy")
    assert acc.null_count == 1
    assert pc.sum(pc.is_nan(acc)).as_py() == 1
    assert sorted(v for v in acc.to_pylist() if v is not None and v == v) == [-0.0, 0.25]


def test_another_runs_metrics_behind_a_symlink_are_not_collected_as_this_runs(tmp_path: Path) -> None:
    spec, root, dirs = _tree(tmp_path, [[_val(1, 0.5)], [_val(1, 0.75)]])
    own = root / dirs[0] / "metrics.jsonl"
    own.unlink()
    own.symlink_to(root / dirs[1] / "metrics.jsonl")
    out = tmp_path / "r.parquet"
    p = sweep("collect", spec, "--root", root, "-o", out, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"error: {dirs[0]}: not merged: metrics.jsonl is a symbolic link (to {root / dirs[1]}/metrics.jsonl)" \
        in p.stderr
    df = pd.read_parquet(out)
    assert df["run_dir"].tolist() == [dirs[1]] and df["accuracy"].tolist() == [0.75]


def test_a_symlinked_state_or_run_file_is_not_read_as_this_runs(tmp_path: Path) -> None:
    spec, root, dirs = _tree(tmp_path, [[_val(1, 0.5)], [_val(1, 0.75)]])
    for name, d in (("state.json", dirs[0]), ("run.json", dirs[1])):
        other = tmp_path / f"other-{name}"
        other.write_text((root / d / name).read_text())
        (root / d / name).unlink()
        (root / d / name).symlink_to(other)
    p = sweep("collect", spec, "--root", root, "-o", tmp_path / "r.parquet", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"{dirs[0]}: state.json: a symbolic link, not a file the harness wrote" in p.stderr
    assert f"error: {dirs[1]}: not merged: run.json is corrupt" in p.stderr
    assert len(pd.read_parquet(tmp_path / "r.parquet")) == 0


@pytest.mark.parametrize("state", [None, "{}"])
def test_a_run_that_trained_but_lost_its_state_is_not_called_not_started(tmp_path: Path, state: str | None) -> None:
    spec, root, dirs = _tree(tmp_path, [[_val(1, 0.5)], [_val(1, 0.75)]])
    if state is None:
        (root / dirs[0] / "state.json").unlink()
    else:
        (root / dirs[0] / "state.json").write_text(state)
    p = sweep("collect", spec, "--root", root, "-o", tmp_path / "r.parquet", check=False)
    assert p.returncode == 1, p.stderr
    assert "not started" not in p.stderr
    what = "missing" if state is None else "empty"
    assert f"{dirs[0]}: state.json is {what} beside its metrics.jsonl: cannot tell whether the run completed" \
        in p.stderr


@pytest.mark.parametrize("content, says", [
    ("", "completed, but its metrics.jsonl holds no records"),
    (None, "completed, but it has no metrics.jsonl"),
])
def test_a_completed_run_without_records_is_not_counted_as_merged(tmp_path: Path, content: str | None,
                                                                   says: str) -> None:
    spec, root, dirs = _tree(tmp_path, [[_val(1, 0.5)], [_val(1, 0.75)]])
    if content is None:
        (root / dirs[0] / "metrics.jsonl").unlink()
    else:
        (root / dirs[0] / "metrics.jsonl").write_text(content)
    p = sweep("collect", spec, "--root", root, "-o", tmp_path / "r.parquet", check=False)
    assert p.returncode == 1, p.stderr
    assert f"{dirs[0]}: {says}" in p.stderr
    assert "from 1 of 2 runs" in p.stdout


@pytest.mark.parametrize("field, value, says", [
    ("step", 2**63, "step 9223372036854775808 is out of range"),
    ("length", True, "length must be an integer or null, got True"),
    ("length", "2", "length must be an integer or null, got '2'"),
    ("length", 2.7, "length must be an integer or null, got 2.7"),
    ("time", "yesterday", "time must be a number of seconds, got 'yesterday'"),
])
def test_a_record_field_the_table_cannot_hold_names_its_run(tmp_path: Path, field: str, value: object,
                                                            says: str) -> None:
    """One such record used to fail the whole collect with a traceback naming no run."""
    spec, root, dirs = _tree(tmp_path, [[_val(1, 0.5), _val(2, 0.5) | {field: value}], [_val(1, 0.75)]])
    p = sweep("collect", spec, "--root", root, "-o", tmp_path / "r.parquet", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"{dirs[0]}: metrics.jsonl: line 2: {says}" in p.stderr
    assert pd.read_parquet(tmp_path / "r.parquet")["accuracy"].tolist() == [0.75]


def test_two_specs_naming_different_runs_in_one_directory_are_refused(tmp_path: Path) -> None:
    spec, root, dirs = _tree(tmp_path, [[_val(1, 0.5)], [_val(1, 0.75)]])
    other = tmp_path / "other.yaml"
    other.write_text(SPEC.replace("steps: 1", "steps: 5") + "name: other\n")
    out = tmp_path / "r.parquet"
    for order in ((spec, other), (other, spec)):
        p = sweep("collect", *order, "--root", root, "-o", out, check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert f"{dirs[0]}: spec " in p.stderr and "name one of them" in p.stderr
        assert not out.exists()
