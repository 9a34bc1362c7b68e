"""Issue 11: every number in the table comes from the run it is labelled with, from
bytes that were verified. Real files and real processes (local executor, real CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from launch.runner import run_unit
from launch.store import Store
from tests.helpers import finished, status_json, sweep, wait_for

SPEC = """
experiment: noop
path: "noop/x{x}/seed{seed}"
fixed: {steps: 3}
axes:
  - {x: [0, 1]}
seeds: [1]
"""


def _launched(tmp_path: Path) -> tuple[Path, Path]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "1")
    wait_for(lambda: finished(spec, root), timeout=120, what="2 noop runs")
    return spec, root


# -- 1. attribution by identity ------------------------------------------------------------------


def test_an_edited_spec_never_gets_the_launched_runs_rows(tmp_path: Path) -> None:
    spec, root = _launched(tmp_path)
    out = tmp_path / "ok.parquet"
    sweep("collect", spec, "--root", root, "-o", out)
    assert len(pd.read_parquet(out)) > 0

    # the same paths now expand to other configurations (steps 3 -> 5: other run keys)
    spec.write_text(SPEC.replace("steps: 3", "steps: 5"))
    edited = tmp_path / "edited.parquet"
    p = sweep("collect", spec, "--root", root, "-o", edited, check=False)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.count("not merged: wrong run") == 2, p.stderr
    assert len(pd.read_parquet(edited)) == 0  # no row carries the wrong labels

    rows = status_json(spec, root)["runs"]
    assert [r["state"] for r in rows] == ["failed", "failed"]
    assert all(r["reason"].startswith("wrong run: the manifest records run") for r in rows), rows


def test_a_directory_of_another_spec_is_not_attributed_by_run_json(tmp_path: Path) -> None:
    spec, root = _launched(tmp_path)
    other = tmp_path / "other.yaml"  # another spec (own manifest) with the same template
    other.write_text(SPEC.replace("steps: 3", "steps: 4"))
    p = sweep("collect", other, "--root", root, "-o", tmp_path / "o.parquet", check=False)
    assert p.returncode == 1 and p.stderr.count("run.json records run") == 2, p.stderr
    rows = status_json(other, root)["runs"]
    assert all(r["state"] == "failed" and "run.json records run" in r["reason"] for r in rows), rows


def test_a_job_never_takes_over_a_directory_of_another_run(tmp_path: Path) -> None:
    _, root = _launched(tmp_path)
    rel = "noop/x0/seed1"
    info = json.loads((root / rel / "run.json").read_text())
    before = {p.name: p.read_bytes() for p in (root / rel).iterdir()}
    intruder = {**info, "run_key": "0123456789ab", "config": {**info["config"], "steps": 7}}
    assert run_unit(root, [rel], {rel: intruder}) == [False]
    assert {p.name: p.read_bytes() for p in (root / rel).iterdir()} == before
    assert Store(root).state(rel)["state"] == "completed"
