"""`sweep status -v`'s headline value: the mean over lengths of the spec's headline metric at the last
step a run logged, read from the end of its metrics.jsonl. A wrong number here is read as a result."""

from __future__ import annotations

import json
import os
from pathlib import Path

from launch import status as stt
from launch.spec import load_spec
from launch.status import headline_value
from launch.store import Store, write_json
from launch.tasks import Run, expand
from tests.helpers import status_json

RUN = Run(spec="a", experiment="noop", group="a", task=0, seed=0, rel_dir="x1/s0", run_key="b55c5b25e206",
          config={}, params={"x": 1})


SPEC = """
name: a
experiment: noop
path: "x{x}/s{seed}"
headline: val/accuracy
fixed: {steps: 3, lengths: [1, 2, 4]}
axes: [{x: [1, 2]}]
seeds: [0]
"""


def completed_tree(tmp_path: Path) -> tuple[Path, Store, list[Run]]:
    """Two completed runs' files as the harness leaves them (run.json, state.json, progress.json, a
    manifest); each logs val/accuracy at steps 1..3 (x1: 0.1 * K at step 3, x2: 0.9)."""
    spec_path = tmp_path / "a.yaml"
    spec_path.write_text(SPEC)
    root = tmp_path / "tree"
    spec = load_spec(spec_path, root=root)
    runs, store = expand(spec), Store(root)
    for r in runs:
        d = store.run_dir(r)
        d.mkdir(parents=True)
        write_json(d / "run.json", store.run_info(r, None, 5))
        write_json(d / "state.json", {"state": "completed", "job_id": "local:1", "run_key": r.run_key})
        write_json(d / "progress.json", {"step": 3, "total": 3, "time": 1.0e9})
        write_metrics(root, [line for s in (1, 2, 3)
                             for line in val_step(s, {k: (0.1 * k if r.params["x"] == 1 else 0.9)
                                                      for k in (1, 2, 4)})], r)
    store.write_manifest(spec.name, str(spec_path), runs, None)
    return spec_path, store, runs


def statuses(store: Store, runs: list[Run]) -> dict[str, stt.RunStatus]:
    """`status -v`'s view of ``runs`` (no scheduler)."""
    out, _ = stt.run_statuses(store, runs, query=False, details=True, headlines={"a": "val/accuracy"})
    return {s.run.rel_dir: s for s in out}


def record(step: int, split: str, length: int | None, pad: int = 0, **metrics: float) -> str:
    """One metrics.jsonl line as ctx.log writes it; ``pad`` extra metrics make it long."""
    metrics = {**metrics, **{f"extra_{i}": 0.0 for i in range(pad)}}
    return json.dumps({"step": step, "split": split, "length": length, "time": 1.0e9 + step, "metrics": metrics})


def write_metrics(root: Path, lines: list[str], run: Run = RUN) -> Path:
    path = root / run.rel_dir / "metrics.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def val_step(step: int, accuracies: dict[int, float], pad: int = 0) -> list[str]:
    return [record(step, "train", None, loss=1.0 / step),
            *(record(step, "val", k, pad=pad, accuracy=a) for k, a in accuracies.items())]


def test_a_relogged_step_counts_each_length_once_with_its_last_value(tmp_path: Path):
    """A resumed attempt that logs step 3 again (the first attempt got as far as K=1, value 0.0):
    the copies are not extra lengths; the last value of each length counts, as in the analysis tables
    (analysis.load.drop_rerun_duplicates). Counting the copy gave (0.0 + 1.0 + 0.5 + 0.25) / 4 = 0.4375."""
    write_metrics(tmp_path, [*val_step(1, {1: 0.3, 2: 0.2, 4: 0.1}),
                             *val_step(3, {1: 0.0}),                   # attempt 1, killed mid-step
                             *val_step(3, {1: 1.0, 2: 0.5, 4: 0.25})])  # attempt 2, the whole step
    value, step = headline_value(Store(tmp_path), RUN, "val/accuracy")
    assert step == 3 and value == (1.0 + 0.5 + 0.25) / 3


def test_a_boolean_headline_counts_as_collect_stores_it(tmp_path: Path):
    """collect's table holds true/false as 1.0/0.0; status showed no value for the same records."""
    write_metrics(tmp_path, [record(3, "val", 1, solved=True), record(3, "val", 2, solved=False)])
    assert headline_value(Store(tmp_path), RUN, "val/solved") == (0.5, 3)


def test_a_relog_later_in_the_step_replaces_the_earlier_value_of_its_length(tmp_path: Path):
    """The later record of a length wins even when it comes after the step's other lengths."""
    write_metrics(tmp_path, [*val_step(2, {1: 0.9}), *val_step(3, {1: 0.2, 2: 0.4}), record(3, "val", 1, accuracy=0.6)])
    assert headline_value(Store(tmp_path), RUN, "val/accuracy") == ((0.6 + 0.4) / 2, 3)


def test_the_last_step_is_whole_when_its_records_are_longer_than_the_tail_read(tmp_path: Path):
    """Each val record ~36 KB: step 3's three lengths exceed the 64 KiB read from the end. All three
    are in the mean (it was 0.25: K=4 alone), and not step 2's values."""
    path = write_metrics(tmp_path, [*val_step(2, {1: 0.9, 2: 0.9, 4: 0.9}, pad=2000),
                                    *val_step(3, {1: 1.0, 2: 0.5, 4: 0.25}, pad=2000)])
    assert path.stat().st_size - path.read_bytes().index(b'"step": 3') > 65536
    assert headline_value(Store(tmp_path), RUN, "val/accuracy") == ((1.0 + 0.5 + 0.25) / 3, 3)


def test_reading_back_stops_at_the_file_start(tmp_path: Path):
    """No earlier step in the file at all: the whole file is read, and its first record counts."""
    write_metrics(tmp_path, val_step(1, {1: 0.5, 2: 0.25, 4: 0.0}, pad=2000))
    assert headline_value(Store(tmp_path), RUN, "val/accuracy") == (0.25, 1)


def test_a_tail_starting_mid_line_never_reads_the_torn_line_as_a_record(tmp_path: Path):
    """A process killed mid-write leaves a torn line; the next attempt appends to it. The whole line is
    no JSON, but its end alone is a record: a tail cut there must not count it (K=4, 0.0) in the mean."""
    relog = record(3, "val", 4, accuracy=0.0)
    torn = '{"step": 3, "split": "val", "len' + relog
    path = write_metrics(tmp_path, [*val_step(2, {1: 0.9}), torn, *val_step(3, {1: 1.0, 2: 0.5})])
    cut = path.stat().st_size - path.read_bytes().index(relog.encode())  # the tail starts at `relog`
    assert headline_value(Store(tmp_path), RUN, "val/accuracy", tail_bytes=cut) == (0.75, 3)


def test_the_common_case_reads_only_the_tail(tmp_path: Path, monkeypatch):
    """A last step well inside the tail: one read from the end, as before (status -v at 50,000 runs)."""
    write_metrics(tmp_path, [line for s in range(1, 40) for line in val_step(s, {1: 0.01 * s, 2: 0.02 * s}, pad=100)])
    reads: list[int] = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: reads.append(n) or real(fd, n, at))
    value, step = headline_value(Store(tmp_path), RUN, "val/accuracy")
    assert step == 39 and value is not None and abs(value - (0.39 + 0.78) / 2) < 1e-12 and reads == [65536]


def test_a_symlinked_metrics_file_shows_no_headline(tmp_path: Path):
    """The harness writes metrics.jsonl with O_NOFOLLOW: a symlink there is another run's file (or
    anyone's), never this run's numbers, so the headline is '-' as for an unreadable file."""
    other = tmp_path / "x2" / "s1" / "metrics.jsonl"
    other.parent.mkdir(parents=True)
    other.write_text("".join(line + "\n" for line in val_step(3, {1: 0.9, 2: 0.8})))
    (tmp_path / RUN.rel_dir).mkdir(parents=True)
    os.symlink("../../x2/s1/metrics.jsonl", tmp_path / RUN.rel_dir / "metrics.jsonl")
    assert headline_value(Store(tmp_path), RUN, "val/accuracy") == (None, None)


def test_a_symlinked_run_directory_is_still_read(tmp_path: Path):
    """Only the file itself must not be a link: a run directory moved elsewhere and linked back is the
    run's own (the harness writes through it too)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_metrics(elsewhere, val_step(3, {1: 1.0, 2: 0.5}))
    (tmp_path / "tree" / "x1").mkdir(parents=True)
    os.symlink(elsewhere / RUN.rel_dir, tmp_path / "tree" / RUN.rel_dir)
    assert headline_value(Store(tmp_path / "tree"), RUN, "val/accuracy") == (0.75, 3)


def test_status_v_shows_a_relogged_run_s_last_attempt(tmp_path: Path):
    """The reviewer's case through the CLI: x1's step 3 logged again by a resumed attempt."""
    spec_path, store, runs = completed_tree(tmp_path)
    write_metrics(store.root, [*val_step(2, {1: 0.5}), *val_step(3, {1: 0.0}),
                               *val_step(3, {1: 1.0, 2: 0.5, 4: 0.25})], runs[0])
    rows = {r["rel_dir"]: r for r in status_json(spec_path, store.root)["runs"]}
    assert (rows["x1/s0"]["headline_value"], rows["x1/s0"]["headline_step"]) == ((1.0 + 0.5 + 0.25) / 3, 3)
    assert rows["x2/s0"]["headline_value"] == 0.9


def test_a_run_json_of_another_run_shows_the_directory_foreign_not_its_number(tmp_path: Path):
    """x1's run.json and metrics.jsonl replaced by x2's, x1's state.json kept: state.json says x1, but
    the numbers are x2's. With the headline shown, run.json is checked (as collect does): the directory
    is reported as another run's, with no headline value, not as x1 with x2's 0.9."""
    _, store, runs = completed_tree(tmp_path)
    x1, x2 = store.run_dir(runs[0]), store.run_dir(runs[1])
    for name in ("run.json", "metrics.jsonl"):
        (x1 / name).write_bytes((x2 / name).read_bytes())
    s = statuses(store, runs)["x1/s0"]
    assert s.state == stt.FAILED and s.headline_value is None, s
    assert s.reason == f"wrong run: this directory holds run {runs[1].run_key} of spec 'a', not {runs[0].run_key}"
    assert statuses(store, runs)["x2/s0"].headline_value == 0.9


def test_a_run_json_written_otherwise_is_parsed_not_refused(tmp_path: Path):
    """The run key is looked for as write_json writes it; a run.json laid out otherwise (indented) is
    the run's own all the same, and a corrupt one makes the directory foreign, as on the slow path."""
    _, store, runs = completed_tree(tmp_path)
    info = json.loads((store.run_dir(runs[0]) / "run.json").read_text())
    (store.run_dir(runs[0]) / "run.json").write_text(json.dumps(info, indent=4))
    (store.run_dir(runs[1]) / "run.json").write_text("{not json")
    got = statuses(store, runs)
    assert got["x1/s0"].state == stt.COMPLETED and abs(got["x1/s0"].headline_value - 0.7 / 3) < 1e-12
    assert got["x2/s0"].state == stt.FAILED and got["x2/s0"].headline_value is None
    assert got["x2/s0"].reason == "run.json is corrupt (cannot tell which run wrote this directory)"


def test_status_v_of_a_symlinked_metrics_file_shows_no_number(tmp_path: Path):
    """The reviewer's case: x1's metrics.jsonl a link to x2's. x1 stays completed (its own state) with
    no headline value, not x2's 0.9."""
    _, store, runs = completed_tree(tmp_path)
    (store.run_dir(runs[0]) / "metrics.jsonl").unlink()
    os.symlink("../../x2/s0/metrics.jsonl", store.run_dir(runs[0]) / "metrics.jsonl")
    got = statuses(store, runs)
    assert got["x1/s0"].state == stt.COMPLETED and got["x1/s0"].headline_value is None
    assert got["x2/s0"].headline_value == 0.9
