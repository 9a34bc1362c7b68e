"""How a run ended, as the scheduler tells it: distinct states, and --retry by state.

The real test SLURM (tests/test_slurm.py) shows CANCELLED and a requeued job; it cannot show
OUT_OF_MEMORY (no cgroup plugin), PREEMPTED (no preemption configured) or NODE_FAIL without
downing the node other test sessions share, and TIMEOUT only a minute or more into a job. So
here a ``sacct`` on PATH answers with those words, in sacct's own output format."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch import launcher
from launch import status as stt
from launch.errors import UserError
from launch.spec import load_spec
from launch.store import Store, record_jobs
from launch.tasks import expand

SPEC = """
experiment: noop
path: "x{x}/seed{seed}"
axes:
  - {x: [0, 1]}
seeds: [1]
"""


def _tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, words: list[str]):
    """Two runs that said running, their jobs 77_0 and 77_1 ended as ``words`` say."""
    (tmp_path / "spec.yaml").write_text(SPEC)
    spec = load_spec(tmp_path / "spec.yaml", root=tmp_path / "tree")
    runs = expand(spec)
    store = Store(spec.root)
    for i, r in enumerate(runs):
        store.update_state(r, state="running", job_id=f"77_{i}")
    record_jobs(store, spec.name, {r.rel_dir: f"77_{i}" for i, r in enumerate(runs)})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lines = "".join(f"77_{i}|{w}\\n" for i, w in enumerate(words))
    (bin_dir / "sacct").write_text(f"#!/bin/sh\nprintf '{lines}'\n")
    (bin_dir / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    return spec, runs, store


@pytest.mark.parametrize(("word", "state"), [
    ("TIMEOUT", "timeout"), ("OUT_OF_MEMORY", "out_of_memory"), ("NODE_FAIL", "node_fail"),
    ("PREEMPTED", "preempted"), ("CANCELLED by 0", "cancelled"), ("FAILED", "failed"), ("BOOT_FAIL", "failed")])
def test_each_scheduler_end_is_its_own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, word: str, state: str):
    _, runs, store = _tree(tmp_path, monkeypatch, [word, "RUNNING"])
    statuses, warning = stt.run_statuses(store, runs)
    assert warning is None
    s = statuses[0]
    assert (s.state, s.scheduler_state, s.reason) == (state, word.split()[0], f"scheduler: {word.split()[0]}")
    assert statuses[1].state == "running"
    assert stt.counts(statuses)[state] == 1


def test_retry_takes_a_list_of_states(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec, runs, store = _tree(tmp_path, monkeypatch, ["NODE_FAIL", "OUT_OF_MEMORY"])
    p = launcher.plan(spec, runs, store, retry_failed=False, retry=["failed", "timeout", "node_fail"])
    assert [r.rel_dir for r in p.to_submit] == [runs[0].rel_dir]
    assert p.skipped == {"out_of_memory": 1}
    p = launcher.plan(spec, runs, store, retry_failed=True)  # the alias: every way of not completing
    assert len(p.to_submit) == 2
    assert launcher.plan(spec, runs, store, retry_failed=False).skipped == {"node_fail": 1, "out_of_memory": 1}
    with pytest.raises(UserError, match="--retry: unknown state 'oom'"):
        launcher.plan(spec, runs, store, retry_failed=False, retry=["oom"])


def test_a_local_run_finished_by_a_worker_that_then_exited_is_completed(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    """The local executor's twin of the sacct race: the run's files said running when read; its
    worker then finished it and exited (the queue was empty) before status looked for the worker."""
    from launch.store import write_json

    (tmp_path / "spec.yaml").write_text(SPEC)
    spec = load_spec(tmp_path / "spec.yaml", root=tmp_path / "tree")
    runs = expand(spec)
    store = Store(spec.root)
    (store.meta / "queue" / "q1").mkdir(parents=True)
    write_json(store.meta / "queue" / "q1" / "workers.json", {"pids": [2 ** 22 + 1]})  # no such process
    for r in runs:
        store.update_state(r, state="running", job_id="local:q1")
    real = stt.local_queue_alive

    def the_worker_finishes_then_exits(*args: object) -> bool | None:
        store.update_state(runs[0], state="completed")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(stt, "local_queue_alive", the_worker_finishes_then_exits)
    statuses, _ = stt.run_statuses(store, runs)
    assert [s.state for s in statuses] == ["completed", "failed"]
    assert statuses[1].reason == "local worker exited before the run finished"


def test_wait_and_status_failed_count_every_way_of_not_completing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import json
    import os

    from tests.helpers import sweep

    _tree(tmp_path, monkeypatch, ["NODE_FAIL", "COMPLETED"])
    Store(tmp_path / "tree").update_state("x1/seed1", state="completed")
    env = {"PATH": os.environ["PATH"]}
    p = sweep("wait", tmp_path / "spec.yaml", "--root", tmp_path / "tree", "--interval", "0.1", check=False, env=env)
    assert p.returncode == 1 and "1 runs did not complete (1 node fail)" in p.stderr, p.stderr
    rows = json.loads(sweep("status", tmp_path / "spec.yaml", "--root", tmp_path / "tree", "--failed", "--json",
                            env=env).stdout)["runs"]
    assert [(r["rel_dir"], r["state"], r["reason"]) for r in rows] == [("x0/seed1", "node_fail", "scheduler: NODE_FAIL")]


@pytest.mark.parametrize(("retry_on", "ends"), [(["preempted"], "node_fail"), (["node_fail", "preempted"], None)])
def test_a_node_failure_left_out_of_retry_on_ends_the_run_when_slurm_requeues_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retry_on: list[str], ends: str | None):
    """SLURM requeues a job whose node failed; the run's files still say running. Its next start asks
    `sacct -D` how the last run of the job ended: NODE_FAIL left out of retry_on ends the run node_fail
    (checked by hand on the real SLURM with `scontrol update nodename=... state=down`, which the shared
    test cluster cannot do to other sessions' jobs)."""
    from launch import runner

    (tmp_path / "spec.yaml").write_text(SPEC)
    spec = load_spec(tmp_path / "spec.yaml", root=tmp_path / "tree")
    run = expand(spec)[0]
    store = Store(spec.root)
    store.write_run_info(run.rel_dir, store.run_info(run, None, 3, retry_on=retry_on))
    store.update_state(run, state="running", job_id="91_0", attempts=1)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text("#!/bin/sh\nprintf 'NODE_FAIL\\nRUNNING\\n'\n")
    (bin_dir / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "91")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    started = runner._start(store, run.rel_dir)
    state = store.state(run)
    if ends is None:
        assert started is not None and state["state"] == "running" and state["requeues"] == 1, state
    else:
        assert started is None and state["state"] == ends, state
        s = stt.run_statuses(store, [run], query=False)[0][0]
        assert s.state == "node_fail" and "not requeued (retry_on: ['preempted'])" in s.reason
