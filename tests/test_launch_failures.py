"""Launch bookkeeping when a submission fails part-way: sbatch refusing the k-th job array
(a per-user job limit, the controller going away) or Ctrl-C between arrays.

The real SLURM cannot be made to refuse only the second array without changing the shared
test cluster's limits, so a backend that accepts the first array and then fails stands in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from launch import launcher
from launch.errors import UserError
from launch.executors import Submitted
from launch.spec import load_spec
from launch.store import Store, read_jobs
from launch.tasks import expand

SPEC = """
experiment: noop
path: "x{x}/seed{seed}"
axes:
  - {x: [0, 1, 2, 3, 4, 5, 6]}
seeds: [1]
"""


def _failing_after(n_arrays: int) -> type:
    class Backend:
        def __init__(self, store: Store, params: dict[str, Any]):
            pass

        def submit(self, units: list[list[str]], array_size: int, infos: Any = None, accepted: Any = None):
            for i in range(n_arrays):
                chunk = units[i * array_size:(i + 1) * array_size]
                accepted([Submitted(u, f"{100 + i}_{j}") for j, u in enumerate(chunk)])
            raise UserError("sbatch failed: QOSMaxSubmitJobPerUserLimit")

    return Backend


def _launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n_arrays: int, text: str = SPEC):
    (tmp_path / "spec.yaml").write_text(text)
    spec = load_spec(tmp_path / "spec.yaml", root=tmp_path / "tree")
    runs = expand(spec)
    monkeypatch.setattr(launcher, "SlurmBackend", _failing_after(n_arrays))
    monkeypatch.setattr(launcher, "max_array_size", lambda: 5)
    monkeypatch.setattr(launcher, "controller_problem", lambda: None)  # the backend above stands for SLURM
    monkeypatch.setattr(launcher, "cluster_limits", lambda qos=None: None)
    with pytest.raises(UserError, match="QOSMaxSubmitJobPerUserLimit"):
        launcher.launch(spec, runs, "slurm", echo=lambda *_: None)
    return spec, runs, Store(spec.root)


def test_the_arrays_submitted_before_a_failure_are_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec, runs, store = _launch(tmp_path, monkeypatch, n_arrays=1)
    assert read_jobs(store, spec.name) == {r.rel_dir: f"100_{i}" for i, r in enumerate(runs[:5])}
    # a relaunch submits only the two runs that never reached the scheduler
    p = launcher.plan(spec, runs, store, retry_failed=False, query=False)
    assert [r.rel_dir for r in p.to_submit] == [r.rel_dir for r in runs[5:]]
    # and the manifest protects the submitted runs from a renumbering edit
    with pytest.raises(UserError, match="would change runs already launched"):
        store.check_manifest(spec.name, expand(load_spec(_write(tmp_path, SPEC + "fixed: {steps: 2}\n"),
                                                         root=store.root)))


def test_a_launch_that_submitted_nothing_leaves_no_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec, runs, store = _launch(tmp_path, monkeypatch, n_arrays=0)
    assert read_jobs(store, spec.name) == {}
    assert not store.manifest_path(spec.name).exists()
    # so the spec may still be edited freely: nothing was launched
    store.check_manifest(spec.name, expand(load_spec(_write(tmp_path, SPEC + "fixed: {steps: 2}\n"),
                                                     root=store.root)))


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "edited.yaml"
    p.write_text(text.replace('path: "x', 'name: spec\npath: "x'))
    return p


def test_retry_rechecks_each_runs_own_files_under_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A run reported failed whose job then finishes it before the retry is decided (its state.json
    says completed by then) is not resubmitted: launch re-reads the run's files under the lock."""
    (tmp_path / "spec.yaml").write_text(SPEC)
    spec = load_spec(tmp_path / "spec.yaml", root=tmp_path / "tree")
    runs = expand(spec)
    store = Store(spec.root)
    for r in runs[:2]:
        store.update_state(r, state="failed", error="killed")
    real = launcher.stt.run_statuses

    def status_then_the_run_finishes(*args: Any, **kwargs: Any):
        out = real(*args, **kwargs)
        store.update_state(runs[0], state="completed")  # lands after the status read
        return out

    monkeypatch.setattr(launcher.stt, "run_statuses", status_then_the_run_finishes)
    p = launcher.plan(spec, runs, store, retry_failed=True, query=False)
    assert [r.rel_dir for r in p.to_submit] == [r.rel_dir for r in runs[1:]]
    assert p.skipped == {"completed": 1}


def test_record_jobs_appends_each_array_once_and_a_launch_folds_them_into_one_file(tmp_path: Path):
    """Recording 50 arrays of 1,000 ids writes each id once (a line per array), not the whole growing
    file per array (quadratic: 50 rewrites of up to 50,000 ids); the launch then folds the log in."""
    from launch.store import Store, compact_jobs, jobs_log_path, jobs_path, read_jobs, record_jobs

    store = Store(tmp_path)
    for a in range(50):
        record_jobs(store, "big", {f"r{a}_{i}": f"{100 + a}_{i}" for i in range(1000)})
        assert not jobs_path(store, "big").exists()
    log = jobs_log_path(store, "big")
    assert len(log.read_text().splitlines()) == 50
    assert log.stat().st_size < 50 * 1000 * 30  # each id written once
    record_jobs(store, "big", {"r0_0": "999_0"})  # a later submission of a run wins
    jobs = read_jobs(store, "big")
    assert len(jobs) == 50_000 and jobs["r0_0"] == "999_0" and jobs["r49_999"] == "149_999"
    compact_jobs(store, "big")
    assert not log.exists() and read_jobs(store, "big") == jobs
