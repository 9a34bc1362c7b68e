"""The harness end to end on the local executor, with the noop experiment."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pandas as pd

from launch.executors import pid_alive, restart_local_workers
from launch.local_procs import is_local_worker
from launch.store import Store
from tests.helpers import finished, status_json, sweep, tree_snapshot, wait_for

SPEC = """
experiment: noop
group: "g{x}"
path: "noop/{group}/task_{task:04d}/seed{seed}"
fixed: {steps: 4, step_sleep_s: 0.2}
axes:
  - {x: [0, 1], group: true}
  - {label: [a, b]}
  - {fail_at_step: [-1, 2]}
seeds: [1, 2]
"""


def completed_quick_sweep(tmp_path: Path) -> tuple[Path, Path]:
    """SPEC without sleeps or failing runs, launched locally and waited for: (spec, root)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("step_sleep_s: 0.2", "step_sleep_s: 0.0").replace("fail_at_step: [-1, 2]",
                                                                                 "fail_at_step: [-1]"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root)
    wait_for(lambda: finished(spec, root), timeout=120, what="runs")
    return spec, root


def test_local_launch_status_relaunch_retry_collect(tmp_path: Path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    root = tmp_path / "tree"

    # dry run: prints the plan, writes nothing
    before = tree_snapshot(tmp_path)
    out = sweep("launch", spec, "--cluster", "local", "--root", root, "--dry-run").stdout
    assert "would submit 16 runs as 16 jobs" in out
    assert tree_snapshot(tmp_path) == before

    out = sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "2").stdout
    assert "submitted 16 runs" in out
    counts = wait_for(lambda: finished(spec, root), timeout=180, what="16 local runs to finish")
    # half the tasks fail at step 2 on purpose
    assert counts["completed"] == 8 and counts["failed"] == 8
    rows = status_json(spec, root)["runs"]
    failed = [r for r in rows if r["state"] == "failed"]
    assert all("failing at step 2" in r["reason"] for r in failed)
    assert {r["task"] for r in failed} == {1, 3}

    # at most 2 runs at once: the attempt intervals never overlap more than twice
    store = Store(root)
    spans = []
    for r in rows:
        st = json.loads((store.run_dir(r["rel_dir"]) / "state.json").read_text())
        spans.append((st["attempt_started_at"], st["ended_at"]))
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    live = peak = 0
    for _, d in events:
        live += d
        peak = max(peak, live)
    assert peak <= 2

    # relaunch submits nothing that completed, and not the failed ones without --retry-failed
    out = sweep("launch", spec, "--cluster", "local", "--root", root).stdout
    assert "nothing to submit" in out and "8 completed" in out and "8 failed" in out

    # a completed run's files are untouched by the relaunch
    completed_dir = store.run_dir(next(r["rel_dir"] for r in rows if r["state"] == "completed"))
    snap = tree_snapshot(completed_dir)

    # fix the failing configuration? no: retry resubmits exactly the failed ones (they fail again)
    out = sweep("launch", spec, "--cluster", "local", "--root", root, "--retry-failed",
                "--only", "fail_at_step=2,x=0").stdout
    assert "submitted 4 runs" in out
    wait_for(lambda: finished(spec, root), timeout=120, what="retried runs")
    attempts = [json.loads((store.run_dir(r["rel_dir"]) / "state.json").read_text())["attempts"]
                for r in rows if r["state"] == "failed"]
    assert sorted(attempts) == [1] * 4 + [2] * 4
    assert tree_snapshot(completed_dir) == snap

    # collect: one row per metrics record of the completed runs; failed ones listed and skipped
    p = sweep("collect", spec, "--root", root, "-o", tmp_path / "r.parquet")
    assert "skipped 8 runs (not completed (failed))" in p.stderr
    df = pd.read_parquet(tmp_path / "r.parquet")
    assert df["run_key"].nunique() == 8
    # noop logs 1 train + 2 val records per step, 4 steps
    assert len(df) == 8 * 4 * 3
    assert set(df["split"]) == {"train", "val"}
    assert set(df.loc[df.split == "val", "length"]) == {1, 2}
    assert df["length"].dtype == "Int64"
    for col in ("spec", "group", "task", "seed", "job_id", "host", "started_at", "ended_at", "wall_s",
                "git_commit", "x", "label", "steps", "value", "loss", "accuracy"):
        assert col in df.columns, col
    # the metric matches what the run wrote
    one = df[(df.split == "train") & (df.step == 4)].iloc[0]
    recs = [json.loads(x) for x in (root / one.run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in recs if r["split"] == "train" and r["step"] == 4][0]
    assert one["value"] == last["metrics"]["value"]

    # DuckDB reads it too
    import duckdb

    n = duckdb.sql(f"select count(distinct run_key) from '{tmp_path / 'r.parquet'}'").fetchall()[0][0]
    assert n == 8


def test_manifest_refuses_renumbering(tmp_path: Path):
    spec, root = completed_quick_sweep(tmp_path)
    # inserting a value at the front renumbers tasks: refused, naming the tasks
    spec.write_text(spec.read_text().replace("label: [a, b]", "label: [z, a, b]"))
    # (the first launch's workers may still be writing their submitit logs as they exit:
    # compare everything else, and that no new local job was started)
    workers = root / ".sweep" / "submitit-local"

    def snapshot() -> tuple[dict, set[str]]:
        files = {k: v for k, v in tree_snapshot(root).items() if not k.startswith(".sweep/submitit-local/")}
        return files, {d.name for d in workers.iterdir()}

    before = snapshot()
    p = sweep("launch", spec, "--cluster", "local", "--root", root, check=False)
    assert p.returncode == 2
    assert "would change runs already launched" in p.stderr and "task_0000" in p.stderr
    assert "(label)" in p.stderr
    assert snapshot() == before
    # appending a value keeps the old numbering: accepted, only the new runs are submitted
    spec.write_text(spec.read_text().replace("label: [z, a, b]", "label: [a, b, c]"))
    out = sweep("launch", spec, "--cluster", "local", "--root", root).stdout
    assert "submitted 4 runs" in out and "8 completed" in out


def test_logs_and_sequential_packs(tmp_path: Path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("step_sleep_s: 0.2", "step_sleep_s: 0.0") + "pack: 3\n")
    root = tmp_path / "tree"
    out = sweep("launch", spec, "--cluster", "local", "--root", root, "--dry-run").stdout
    # 8 runs per group; units of 3 never cross a group: 3+3+2 per group
    assert "would submit 16 runs as 6 jobs" in out
    sweep("launch", spec, "--cluster", "local", "--root", root)
    wait_for(lambda: finished(spec, root), timeout=120, what="packed runs")
    rows = status_json(spec, root)["runs"]
    failed = next(r for r in rows if r["state"] == "failed")
    ok = next(r for r in rows if r["state"] == "completed")
    log = sweep("logs", root / ok["rel_dir"]).stdout
    assert "noop: done after 4 steps" in log
    log = sweep("logs", root / failed["rel_dir"]).stdout
    assert "RuntimeError: noop: failing at step 2" in log and "==> error" in log
    p = sweep("logs", tmp_path, check=False)
    assert p.returncode == 2 and "not a run directory" in p.stderr


def test_status_without_spec_reads_the_trees_manifests(tmp_path: Path):
    spec, root = completed_quick_sweep(tmp_path)
    out = sweep("status", "--root", root, cwd=tmp_path.parent).stdout
    assert out.strip() == "spec: 8 runs — 8 completed"
    p = sweep("status", "--root", tmp_path / "empty", check=False)
    assert p.returncode == 2 and "no launched spec found" in p.stderr


def test_two_launches_at_once_submit_each_run_once(tmp_path: Path):
    import subprocess
    import sys

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("step_sleep_s: 0.2", "step_sleep_s: 0.5").replace("fail_at_step: [-1, 2]",
                                                                                 "fail_at_step: [-1]"))
    root = tmp_path / "tree"
    cmd = [sys.executable, "-m", "launch.cli", "launch", str(spec), "--cluster", "local", "--root", str(root)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    submitted = sorted(int(o.split("submitted ")[1].split()[0]) if "submitted" in o else 0 for o in outs)
    # one launch took all 8 runs; the other, after the lock, found them pending
    assert submitted == [0, 8], outs
    assert any("nothing to submit" in o for o in outs), outs
    wait_for(lambda: finished(spec, root), timeout=120, what="runs")
    states = [json.loads((root / r["rel_dir"] / "state.json").read_text()) for r in status_json(spec, root)["runs"]]
    assert all(s["state"] == "completed" and s["attempts"] == 1 for s in states)


def _state(root: Path, rel_dir: str) -> dict:
    return json.loads((root / rel_dir / "state.json").read_text()) if (root / rel_dir / "state.json").exists() else {}


def _wait_until_one_runs(spec: Path, root: Path, what: str) -> None:
    wait_for(lambda: any(_state(root, r["rel_dir"]).get("state") == "running" for r in status_json(spec, root)["runs"])
             or None, timeout=60, what=what)


def _running(spec: Path, root: Path) -> list[dict] | None:
    rows = status_json(spec, root)["runs"]
    return rows if all(_state(root, r["rel_dir"]).get("state") == "running" for r in rows) else None


LONG = SPEC.replace("fixed: {steps: 4, step_sleep_s: 0.2}", "fixed: {steps: 600, step_sleep_s: 0.05}") \
    .replace("  - {x: [0, 1], group: true}\n", "").replace("  - {label: [a, b]}\n", "") \
    .replace("fail_at_step: [-1, 2]", "fail_at_step: [-1]")  # 2 runs of 30 s


def test_launch_with_its_output_captured_returns_at_once(tmp_path: Path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG)
    root = tmp_path / "tree"
    # `sweep` runs with stdout/stderr on pipes (as in `sweep launch | tee` or `$(sweep launch)`): the
    # workers must not hold them, or the launch returns only when the sweep has finished
    out = sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "2").stdout
    assert "submitted 2 runs" in out
    assert finished(spec, root) is None, "the launch returned only after its runs had finished"
    sweep("cancel", spec, "--root", root)


def test_cancel_stops_the_local_runs_of_its_spec_only(tmp_path: Path):
    a = tmp_path / "a.yaml"
    a.write_text(LONG)
    b = tmp_path / "b.yaml"  # another spec in the same tree, with its own local queue
    b.write_text(a.read_text().replace("noop/", "other/").replace("steps: 600", "steps: 200")
                 .replace("seeds: [1, 2]", "seeds: [1]"))
    root = tmp_path / "tree"
    sweep("launch", a, "--cluster", "local", "--root", root, "--concurrency", "2")
    sweep("launch", b, "--cluster", "local", "--root", root, "--concurrency", "1")
    rows = wait_for(lambda: _running(a, root), timeout=60, what="a's runs to start")
    wait_for(lambda: _running(b, root), timeout=60, what="b's run to start")

    assert "cancelled 2 runs" in sweep("cancel", a, "--root", root).stdout
    # the runs' processes are gone: nothing writes to their directories any more
    for r in rows:
        assert not pid_alive(_state(root, r["rel_dir"])["pid"])
    snap = tree_snapshot(root / "noop")
    assert {r["state"] for r in status_json(a, root)["runs"]} == {"cancelled"}
    # b's run was left alone and completes
    assert wait_for(lambda: finished(b, root), timeout=120, what="b's run")["completed"] == 1
    assert tree_snapshot(root / "noop") == snap
    for r in status_json(a, root)["runs"]:
        st = _state(root, r["rel_dir"])
        assert st["state"] == "cancelled" and st["error"] == "cancelled by sweep cancel"
        assert r["step"] < r["total"]


def test_cancelling_the_running_runs_leaves_the_queues_other_runs_to_run(tmp_path: Path):
    """`sweep cancel --only` stops the workers running the runs it names; the queue's other runs get
    new workers (before, with every worker stopped, they waited for nobody and showed failed)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("steps: 600", "steps: 200").replace("axes:\n", "axes:\n  - {x: [0, 1], group: true}\n"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "2")

    def x0_running() -> list[dict] | None:
        rows = [r for r in status_json(spec, root)["runs"] if r["params"].get("x") == 0]
        return rows if all(_state(root, r["rel_dir"]).get("state") == "running" for r in rows) else None

    cancelled = wait_for(x0_running, timeout=60, what="the two x=0 runs to start")
    assert "cancelled 2 runs" in sweep("cancel", spec, "--root", root, "--only", "x=0").stdout
    # a second `sweep cancel` that had stopped the same workers at the same time restarts none: the queue
    # has its two live workers again (each cancel restarted them: four workers at --concurrency 2)
    (qdir,) = root.glob(".sweep/queue/*")
    assert restart_local_workers(Store(root), qdir.name, 2) == 0
    assert sum(is_local_worker(p) for p in json.loads((qdir / "workers.json").read_text())["pids"]) == 2
    done = wait_for(lambda: finished(spec, root), timeout=120, what="the x=1 runs")
    assert {k: n for k, n in done.items() if n} == {"cancelled": 2, "completed": 2}, done
    for r in status_json(spec, root)["runs"]:
        want = "cancelled" if r["rel_dir"] in {c["rel_dir"] for c in cancelled} else "completed"
        assert _state(root, r["rel_dir"])["state"] == want, r


def test_cancel_does_not_split_a_packed_job(tmp_path: Path):
    """With `pack: 2` two runs share a job: cancelling one of them would stop the other (or drop it, still
    queued), which --only did not select. Refused, nothing cancelled; the whole job can be cancelled."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("steps: 600", "steps: 200").replace("axes:\n", "axes:\n  - {x: [0, 1], group: true}\n")
                    + "pack: 2\n")
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "1")
    _wait_until_one_runs(spec, root, "the first packed job to start")
    for only in ("seed=1", "x=1,seed=2"):  # one run of the running job; one of the queued job
        p = sweep("cancel", spec, "--root", root, "--only", only, check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "runs in one job with" in p.stderr and "nothing cancelled" in p.stderr
    assert "cancelled" not in {r["state"] for r in status_json(spec, root)["runs"]}
    assert "cancelled 2 runs" in sweep("cancel", spec, "--root", root, "--only", "x=0").stdout
    done = wait_for(lambda: finished(spec, root), timeout=120, what="the x=1 job")
    assert {k: n for k, n in done.items() if n} == {"cancelled": 2, "completed": 2}, done


def test_a_killed_controller_leaves_its_task_running_and_its_runs_are_not_failed(tmp_path: Path):
    """A local worker is submitit's controller plus the task it starts; the task runs the units. Killing
    the controller alone (the OOM killer, `kill -9` of the job id) left the task running the queue while
    status called its runs failed, and `--retry-failed` then ran them a second time beside the first."""
    import os
    import signal

    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("steps: 600", "steps: 200"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "1")
    _wait_until_one_runs(spec, root, "the first run to start")
    (workers,) = root.glob(".sweep/queue/*/workers.json")
    (controller,) = json.loads(workers.read_text())["pids"]
    os.kill(controller, signal.SIGKILL)
    wait_for(lambda: not pid_alive(controller) or None, timeout=10, what="the controller to die")
    assert "failed" not in {r["state"] for r in status_json(spec, root)["runs"]}
    assert "nothing to submit" in sweep("launch", spec, "--cluster", "local", "--root", root,
                                        "--retry-failed").stdout
    done = wait_for(lambda: finished(spec, root), timeout=120, what="both runs")
    assert {k: n for k, n in done.items() if n} == {"completed": 2}, done
    assert all(_state(root, r["rel_dir"])["attempts"] == 1 for r in status_json(spec, root)["runs"])


def test_a_killed_local_worker_shows_failed_while_its_queue_goes_on(tmp_path: Path):
    import os
    import signal

    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG)
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "2")
    rows = wait_for(lambda: _running(spec, root), timeout=60, what="both runs to start")
    victim, other = rows
    os.kill(_state(root, victim["rel_dir"])["pid"], signal.SIGKILL)

    def victim_failed() -> list[dict] | None:
        now = status_json(spec, root)["runs"]
        return now if now[0]["state"] == "failed" else None

    now = wait_for(victim_failed, timeout=60, what="status to notice the killed run")
    assert "died" in now[0]["reason"]
    assert now[1]["state"] == "running"  # the other worker of the same queue still runs
    sweep("cancel", spec, "--root", root)


def test_collect_and_status_list_corrupt_runs_and_go_on(tmp_path: Path):
    spec, root = completed_quick_sweep(tmp_path)
    rows = status_json(spec, root)["runs"]
    dirs = [root / r["rel_dir"] for r in rows]
    with open(dirs[0] / "metrics.jsonl", "a") as f:  # a record cut short
        f.write('{"step": 5, "split": "tr')
    with open(dirs[1] / "metrics.jsonl", "a") as f:  # JSON, but not a record ctx.log writes
        f.write('{"step": 5, "split": "train", "metrics": null}\n')
    (dirs[2] / "state.json").write_text("[1, 2]")  # JSON, but not an object
    (dirs[3] / "state.json").write_text('{"state": "compl')

    p = sweep("collect", spec, "--root", root, "-o", tmp_path / "r.parquet", check=False)
    assert p.returncode == 1, p.stderr  # the table holds the rest; exit 1 says it is not whole (issue 11)
    # a record cut short at the end (a kill mid-write) costs that line only (issue 11)
    assert f"warning: {rows[0]['rel_dir']}/metrics.jsonl: dropped its last line, cut short" in p.stderr
    assert "skipped 1 runs (corrupt metrics.jsonl)" in p.stderr
    assert f"{rows[1]['rel_dir']}: metrics.jsonl: line 13: no metrics mapping" in p.stderr
    assert "skipped 2 runs (corrupt state.json)" in p.stderr
    assert "from 5 of 8 runs" in p.stdout
    table = pd.read_parquet(tmp_path / "r.parquet")
    assert set(table.loc[table.run_dir == rows[0]["rel_dir"], "step"]) == {1, 2, 3, 4}
    now = {r["rel_dir"]: r for r in status_json(spec, root)["runs"]}
    assert now[rows[2]["rel_dir"]]["reason"] == now[rows[3]["rel_dir"]]["reason"] == "state.json is corrupt"
    assert now[rows[1]["rel_dir"]]["state"] == "completed"


def test_status_from_another_directory_warns_that_the_relative_root_is_missing(tmp_path: Path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("root: tree\n" + SPEC.replace("step_sleep_s: 0.2", "step_sleep_s: 0.0"))
    sweep("launch", spec, "--cluster", "local", "--dry-run", cwd=tmp_path)  # a relative root, as in the README
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cmd in (["status"], ["wait"], ["collect", "-o", "r.parquet"]):
        p = sweep(cmd[0], spec, *cmd[1:], cwd=elsewhere)
        assert f"warning: tree root {elsewhere / 'tree'} does not exist" in p.stderr, p.stderr
    assert "warning" not in sweep("status", spec, "--root", tmp_path, cwd=elsewhere).stderr


def test_a_second_spec_cannot_claim_the_directories_of_runs_not_started_yet(tmp_path: Path):
    a = tmp_path / "a.yaml"
    a.write_text(LONG)
    b = tmp_path / "b.yaml"  # the same directories, another config
    b.write_text(LONG.replace("steps: 600", "steps: 3"))
    root = tmp_path / "tree"
    sweep("launch", a, "--cluster", "local", "--root", root, "--concurrency", "1")  # the 2nd run waits
    for args in ([], ["--dry-run"]):
        p = sweep("launch", b, "--cluster", "local", "--root", root, *args, check=False)
        assert p.returncode == 2, p.stderr
        assert "of spec 'a'" in p.stderr and "two specs map to one directory" in p.stderr, p.stderr
    assert not list((root / ".sweep").glob("*/b.*"))  # b wrote nothing: no manifest, jobs, lock
    sweep("cancel", a, "--root", root)


def test_wait_says_when_the_scheduler_cannot_be_asked(tmp_path: Path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    root = tmp_path / "tree"
    (root / ".sweep" / "jobs").mkdir(parents=True)  # one run handed to SLURM job 4242, not started
    (root / ".sweep" / "jobs" / "spec.json").write_text(json.dumps({"noop/g0/task_0000/seed1": "4242_0"}))
    no_slurm = {"PATH": str(tmp_path)}  # neither sacct nor squeue
    p = sweep("wait", spec, "--root", root, "--timeout", "0", "--interval", "0.1", env=no_slurm, check=False)
    assert p.returncode == 1
    assert "warning: scheduler unreachable" in p.stderr and "still active" in p.stderr, p.stderr


def test_slurm_dry_run_shows_fixed_parameters_time_signal_and_the_absolute_submitit_folder(tmp_path: Path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    before = tree_snapshot(tmp_path)
    out = sweep("launch", "spec.yaml", "--cluster", "slurm", "--root", "tree", "--time", "2", "--dry-run",
                cwd=tmp_path).stdout
    assert tree_snapshot(tmp_path) == before
    lines = out.splitlines()
    assert lines.count("fixed (every run): steps=4, step_sleep_s=0.2") == 1
    assert all("steps=" not in line for line in lines if line.startswith("  submit"))
    assert "time limit: 2 min per job; SLURM signals it 30 s before the limit (USR2: checkpoint and requeue)" in lines
    folder = tmp_path.resolve() / "tree" / ".sweep" / "submitit"
    assert f"submitit folder: {folder}" in lines
    # the script is the one the launch submits: submitit takes the folder absolute
    assert out.rstrip().endswith(f"-m submitit.core._submit {folder}")


def test_status_v_is_a_table_with_varying_params_run_dir_step_age_and_headline(tmp_path: Path):
    """`status -v` reads without TASK_MAPPING.md: a header, the parameters that vary (not the fixed
    ones), step/total, age, the spec's headline metric, and the run directory `sweep logs` takes.
    `headline:` is presentation: it changes no run key, so adding it to a launched spec is no change."""
    text = """
experiment: noop
group: "g{x}"
path: "{group}/task_{task:04d}/seed{seed}"
fixed: {steps: 3, step_sleep_s: 0.0}
axes:
  - {x: [0, 1], group: true}
  - {label: [a, b]}
seeds: [5]
"""
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root)
    sweep("wait", spec, "--root", root, "--timeout", "120")
    keys = {r["rel_dir"]: r["run_key"] for r in status_json(spec, root)["runs"]}
    spec.write_text(text + "headline: val/accuracy\n")
    assert "nothing to submit: 4 completed" in sweep("launch", spec, "--cluster", "local", "--root", root).stdout
    out = sweep("status", spec, "--root", root, "-v").stdout.splitlines()
    header = next(line for line in out if line.strip().startswith("state"))
    assert header.split() == ["state", "x", "label", "step", "age", "val/accuracy", "job", "run", "dir"], header
    assert "fixed (every run): steps=3, step_sleep_s=0.0" in out
    rows = [line.split() for line in out[out.index(header) + 1:]]
    assert len(rows) == 4 and all(r[0] == "completed" and r[3] == "3/3" for r in rows), rows
    # the noop run's last val records (step 3): accuracy min(1, 3/3/length) for lengths 1, 2 -> mean 0.75
    assert all(r[5] == "0.75" and r[6] == "@3" for r in rows), rows
    assert {(r[1], r[2]) for r in rows} == {("0", "a"), ("0", "b"), ("1", "a"), ("1", "b")}
    assert "==> " in sweep("logs", rows[0][-1]).stdout  # the run dir column is what `sweep logs` takes
    data = status_json(spec, root)["runs"]
    assert {r["rel_dir"]: r["run_key"] for r in data} == keys
    r = data[0]
    assert r["params"] == {"x": 0, "label": "a"} and r["headline"] == "val/accuracy"
    assert (r["headline_value"], r["headline_step"], r["step"], r["total"]) == (0.75, 3, 3, 3), r
    assert r["run_dir"] == str(root / r["rel_dir"]) and r["age_s"] is not None


def test_ctrl_c_in_the_launching_terminal_leaves_the_runs_running(tmp_path: Path):
    """Ctrl-C reaches every process of the terminal's foreground group. A launch followed by a wait (as
    `make reproduce-*` does) took the local workers down with the wait: the sweep then showed failed. Now
    Ctrl-C stops the waiting and the runs go on, as they do on SLURM (`sweep cancel` stops them)."""
    import os
    import signal
    import subprocess
    import sys

    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("steps: 600", "steps: 60"))  # 2 runs of 3 s
    root = tmp_path / "tree"
    cmd = f"{sys.executable} -m launch.cli launch {spec} --cluster local --root {root} --concurrency 2 && sleep 60"
    shell = subprocess.Popen(["bash", "-c", cmd], start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: _running(spec, root), timeout=60, what="both runs to start")
        os.killpg(shell.pid, signal.SIGINT)  # what the terminal does on Ctrl-C, to its foreground group
        shell.wait(timeout=10)
    finally:
        if shell.poll() is None:  # the test failed: leave nothing behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGKILL)
    done = wait_for(lambda: finished(spec, root), timeout=120, what="both runs")
    assert {k: n for k, n in done.items() if n} == {"completed": 2}, done


def test_a_run_that_kills_its_process_leaves_the_rest_of_the_queue_to_run(tmp_path: Path):
    """A run whose process dies (the out-of-memory killer, a segfault, `kill -9`) took its worker with it:
    at --concurrency 1 the queue's other runs then never ran and showed failed. Each unit now runs in a child
    of the worker: the dead run is failed with the reason, the next one runs."""
    import os
    import signal

    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("steps: 600", "steps: 60"))  # 2 runs of 3 s, one after the other
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "1")

    def one_running() -> dict | None:
        rows = [r for r in status_json(spec, root)["runs"] if _state(root, r["rel_dir"]).get("state") == "running"]
        return rows[0] if rows else None

    victim = wait_for(one_running, timeout=60, what="the first run to start")
    os.kill(_state(root, victim["rel_dir"])["pid"], signal.SIGKILL)
    done = wait_for(lambda: finished(spec, root), timeout=120, what="the queue")
    assert {k: n for k, n in done.items() if n} == {"failed": 1, "completed": 1}, done
    rows = {r["rel_dir"]: r for r in status_json(spec, root)["runs"]}
    assert rows[victim["rel_dir"]]["state"] == "failed"
    assert "died" in rows[victim["rel_dir"]]["reason"] and "SIGKILL" in rows[victim["rel_dir"]]["reason"]


def test_a_run_that_ends_while_cancel_stops_its_worker_keeps_its_end(tmp_path: Path, monkeypatch):
    """`sweep cancel` reads the states, stops the workers, then marks the runs cancelled. A run that
    completed in between (its last step done as the signal came) was marked cancelled over its completed
    state, and collect then left its numbers out. The state is read again before it is written."""
    from click.testing import CliRunner

    import launch.launcher
    from launch.cli import cli
    from launch.store import Store

    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("steps: 600", "steps: 200"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "2")
    rows = wait_for(lambda: _running(spec, root), timeout=60, what="both runs to start")
    real = launch.launcher.cancel_local

    def stop_then_one_had_completed(store, runs, wait_s=10.0):  # the race, made certain: the run's own
        stopped = real(store, runs, wait_s)  # completion lands just before its worker is stopped
        Store(root).update_state(rows[0]["rel_dir"], state="completed", ended_at=0.0)
        return stopped

    monkeypatch.setattr(launch.launcher, "cancel_local", stop_then_one_had_completed)
    out = CliRunner().invoke(cli, ["cancel", str(spec), "--root", str(root)])
    assert out.exit_code == 0, out.output
    assert "cancelled 1 runs" in out.output and "1 ended on their own meanwhile" in out.output
    assert _state(root, rows[0]["rel_dir"])["state"] == "completed"
    assert _state(root, rows[1]["rel_dir"])["state"] == "cancelled"


def test_a_queue_whose_workers_file_is_lost_is_not_pending_for_ever(tmp_path: Path):
    """With its workers.json missing (or corrupt) a local queue was "unknown" for ever: once its workers
    were gone its runs showed pending and `sweep wait` never returned. Unknown only for a while now; then
    the queue counts as dead and its runs as failed (`--retry-failed` runs them again)."""
    import os
    import signal
    import time

    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("steps: 600", "steps: 200"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "1")
    _wait_until_one_runs(spec, root, "the first run to start")
    (qdir,) = root.glob(".sweep/queue/*")
    (workers,) = qdir.glob("workers.json")
    (claimed,) = qdir.glob("claimed/*.json")
    os.kill(json.loads(workers.read_text())["pids"][0], signal.SIGKILL)  # the controller, then its task's group
    os.killpg(int(claimed.name.split(".")[1]), signal.SIGKILL)
    workers.unlink()
    assert {r["state"] for r in status_json(spec, root)["runs"]} <= {"running", "pending", "failed"}
    old = time.time() - 120  # the queue was last changed two minutes ago
    os.utime(qdir, (old, old))
    rows = status_json(spec, root)["runs"]
    assert [r["state"] for r in rows] == ["failed", "failed"], rows
    assert "nothing to submit" not in sweep("launch", spec, "--cluster", "local", "--root", root,
                                            "--retry-failed").stdout
    done = wait_for(lambda: finished(spec, root), timeout=120, what="the retried runs")
    assert {k: n for k, n in done.items() if n} == {"completed": 2}, done


def test_cancel_after_the_spec_was_edited_cancels_what_was_launched(tmp_path: Path):
    """An edit that changes launched runs (here every run's `steps`) made `sweep cancel` see none of its
    runs running: "cancelled 0 runs", exit 0, while the launched runs went on."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("steps: 600", "steps: 400"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "2")
    rows = wait_for(lambda: _running(spec, root), timeout=60, what="both runs to start")
    spec.write_text(LONG.replace("steps: 600", "steps: 300"))
    out = sweep("cancel", spec, "--root", root).stdout
    assert "cancelled 2 runs" in out and "2 of the runs are as launched, before the spec was edited" in out, out
    for r in rows:
        st = _state(root, r["rel_dir"])
        assert st["state"] == "cancelled" and not pid_alive(st["pid"]), st


def test_a_deleted_claimed_folder_does_not_stop_the_queue(tmp_path: Path):
    """With the queue's claimed/ folder deleted (a tidy-up by hand), every claim failed as if another worker
    had taken the unit: the worker spun at full CPU for ever and the queue's other runs never ran."""
    import shutil

    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("steps: 600", "steps: 40"))  # 2 runs of 2 s, one after the other
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "1")
    _wait_until_one_runs(spec, root, "the first run to start")
    (qdir,) = root.glob(".sweep/queue/*")
    shutil.rmtree(qdir / "claimed")
    done = wait_for(lambda: finished(spec, root), timeout=60, what="both runs")
    assert {k: n for k, n in done.items() if n} == {"completed": 2}, done


def test_cancel_says_when_the_queues_code_snapshot_is_gone(tmp_path: Path):
    """The workers `sweep cancel --only` restarts for a queue's other runs run the launch's code snapshot;
    with the snapshot deleted they ran the installed code without a word."""
    import shutil

    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("steps: 600", "steps: 100").replace("axes:\n", "axes:\n  - {x: [0, 1], group: true}\n"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "2")
    wait_for(lambda: all(_state(root, r["rel_dir"]).get("state") == "running"
                         for r in status_json(spec, root)["runs"] if r["params"].get("x") == 0) or None,
             timeout=60, what="the two x=0 runs to start")
    shutil.rmtree(root / ".sweep" / "code")
    p = sweep("cancel", spec, "--root", root, "--only", "x=0")
    assert "cancelled 2 runs" in p.stdout and "code snapshot of local queue" in p.stderr and "is gone" in p.stderr
    done = wait_for(lambda: finished(spec, root), timeout=120, what="the x=1 runs")
    assert {k: n for k, n in done.items() if n} == {"cancelled": 2, "completed": 2}, done
    assert all(_state(root, r["rel_dir"])["code_snapshot"] is None
               for r in status_json(spec, root)["runs"] if r["params"].get("x") == 1)


GRACEFUL = '''
from launch.noop import NoopExperiment


class Graceful(NoopExperiment):
    """Stops early on Ctrl-C and returns, as many training loops do."""

    name = "graceful"

    def run(self, config, ctx):
        try:
            super().run(config, ctx)
        except KeyboardInterrupt:
            print("interrupted: saving and stopping early")


EXPERIMENT = Graceful()
'''


def test_a_run_that_returns_on_the_cancels_interrupt_is_cancelled_not_completed(tmp_path: Path, monkeypatch):
    """An experiment that catches the KeyboardInterrupt of `sweep cancel` and returns ends `completed` by
    itself, after the cancel's signal; cancel kept that end (a run stopped at step 45 of 300 then stood as
    completed, its numbers in the table, and a relaunch had nothing to submit). Only an end written before
    the signal is kept."""
    (tmp_path / "graceful_exp.py").write_text(GRACEFUL)
    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("experiment: noop", 'experiment: "graceful_exp:EXPERIMENT"')
                    .replace("steps: 600", "steps: 400"))
    root = tmp_path / "tree"
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the experiment's module, for every sweep command
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "2")
    rows = wait_for(lambda: _running(spec, root), timeout=60, what="both runs to start")
    out = sweep("cancel", spec, "--root", root).stdout
    assert "cancelled 2 runs" in out and "ended on their own" not in out, out
    for r in rows:
        st = _state(root, r["rel_dir"])
        assert st["state"] == "cancelled", st
    assert "interrupted: saving and stopping early" in (root / rows[0]["rel_dir"] / "log.txt").read_text()


def test_a_worker_killed_alone_takes_the_run_it_was_running_with_it(tmp_path: Path):
    """Each unit runs in a child of its worker. A worker killed alone (kill -9, the OOM killer) left that child
    running the run on its own: `sweep cancel` could no longer reach it and its end overwrote "cancelled".
    The child now dies with its worker; the run shows failed (its process died) and can be retried."""
    import os
    import signal

    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("steps: 600", "steps: 400"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "1")
    _wait_until_one_runs(spec, root, "the first run to start")
    (claimed,) = root.glob(".sweep/queue/*/claimed/*.json")
    rel = json.loads(claimed.read_text())["rel_dirs"][0]
    child = _state(root, rel)["pid"]
    os.kill(int(claimed.name.split(".")[1]), signal.SIGKILL)  # the worker, not its group
    wait_for(lambda: not pid_alive(child) or None, timeout=10, what="the run's process to die with its worker")
    row = next(r for r in status_json(spec, root)["runs"] if r["rel_dir"] == rel)
    assert row["state"] == "failed" and ("died" in row["reason"] or "exited" in row["reason"]), row


def test_the_runs_of_a_job_after_one_that_killed_its_process_still_run(tmp_path: Path):
    """A job of several runs one after the other (`pack: 2` without a pack_key): when the run in progress
    killed its process, the job's later runs were skipped, showed pending, then "local worker exited". They
    now run in a new child; the dead run alone is failed."""
    import os
    import signal

    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("steps: 600", "steps: 60") + "pack: 2\n")  # one job: seed 1, then seed 2
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "1")
    _wait_until_one_runs(spec, root, "the job's first run to start")
    first = next(r for r in status_json(spec, root)["runs"] if _state(root, r["rel_dir"]).get("state") == "running")
    os.kill(_state(root, first["rel_dir"])["pid"], signal.SIGKILL)
    done = wait_for(lambda: finished(spec, root), timeout=60, what="the job")
    assert {k: n for k, n in done.items() if n} == {"failed": 1, "completed": 1}, done
    rows = {r["rel_dir"]: r for r in status_json(spec, root)["runs"]}
    assert rows[first["rel_dir"]]["state"] == "failed" and "SIGKILL" in rows[first["rel_dir"]]["reason"]


def test_cancel_after_a_seed_was_removed_from_the_spec_cancels_that_seeds_runs_too(tmp_path: Path):
    """The launched runs an edit removed from the spec (here seed 2) kept running after `sweep cancel`."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("steps: 600", "steps: 400"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "2")
    rows = wait_for(lambda: _running(spec, root), timeout=60, what="both runs to start")
    spec.write_text(LONG.replace("steps: 600", "steps: 400").replace("seeds: [1, 2]", "seeds: [1]"))
    out = sweep("cancel", spec, "--root", root).stdout
    assert "cancelled 2 runs" in out and "1 of the runs are as launched" in out, out
    for r in rows:
        st = _state(root, r["rel_dir"])
        assert st["state"] == "cancelled" and not pid_alive(st["pid"]), st


EXITER = '''
import os

from launch.noop import NoopExperiment


class Exiter(NoopExperiment):
    """Seed 1 ends its process with status 0 halfway (a library calling os._exit(0))."""

    name = "exiter"

    def run(self, config, ctx):
        if config["seed"] == 1:
            ctx.log(1, {"loss": 1.0}, split="train")
            os._exit(0)
        super().run(config, ctx)


EXPERIMENT = Exiter()
'''


def test_a_run_whose_process_exits_0_midway_is_failed_and_its_jobs_other_run_runs(tmp_path: Path, monkeypatch):
    """A child exiting with status 0 was taken for success without a look at its runs: the run stayed
    "running" for ever and the later run of its job (`pack: 2`, one after the other) never ran."""
    (tmp_path / "exiter_exp.py").write_text(EXITER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("experiment: noop", 'experiment: "exiter_exp:EXPERIMENT"')
                    .replace("steps: 600", "steps: 20") + "pack: 2\n")
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "1")
    done = wait_for(lambda: finished(spec, root), timeout=60, what="the job")
    assert {k: n for k, n in done.items() if n} == {"failed": 1, "completed": 1}, done
    rows = {r["seed"]: r for r in status_json(spec, root)["runs"]}
    assert rows[1]["state"] == "failed" and "exit code 0" in rows[1]["reason"], rows[1]


def test_a_claimed_file_names_only_the_unit_its_worker_runs_now(tmp_path: Path):
    """`sweep cancel` signals the worker a claimed file names. The files stayed after their units ended, so a
    cancel of a run whose unit had just ended (or ended oddly) interrupted that worker's next unit, which
    nobody had selected."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("steps: 600", "steps: 200").replace("seeds: [1, 2]", "seeds: [1, 2, 3]"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "1")
    (qdir,) = root.glob(".sweep/queue/*")
    first = wait_for(lambda: list(qdir.glob("claimed/*.json")) or None, timeout=60, what="a claim")[0]
    wait_for(lambda: not first.exists() or None, timeout=60, what="the first unit's claimed file to go")
    second = wait_for(lambda: list(qdir.glob("claimed/*.json")) or None, timeout=60, what="the next claim")
    assert len(second) == 1 and second[0].name != first.name
    sweep("cancel", spec, "--root", root)


def test_cancel_waits_for_the_specs_lock(tmp_path: Path):
    """Cancel now runs under the spec's lock, as launch does: a `launch --retry-failed` during a cancel's
    restart of a queue's workers took the runs waiting for those workers for failed and ran them twice."""
    import subprocess
    import sys
    import time

    spec = tmp_path / "spec.yaml"
    spec.write_text(LONG.replace("steps: 600", "steps: 400"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "2")
    rows = wait_for(lambda: _running(spec, root), timeout=60, what="both runs to start")
    with Store(root).lock("spec"):
        p = subprocess.Popen([sys.executable, "-m", "launch.cli", "cancel", str(spec), "--root", str(root)],
                             stdout=subprocess.PIPE, text=True)
        time.sleep(3)
        assert p.poll() is None and {_state(root, r["rel_dir"])["state"] for r in rows} == {"running"}
    assert p.wait(timeout=60) == 0 and "cancelled 2 runs" in p.stdout.read()
    assert {_state(root, r["rel_dir"])["state"] for r in rows} == {"cancelled"}
