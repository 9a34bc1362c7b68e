"""The harness on a REAL single-node SLURM (launch/local-slurm.sh): job arrays,
status from sacct, cancel, preemption/requeue with resume, requeue limits, collect.

The cluster runs with MaxArraySize=5 so a small grid needs several arrays.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from launch.store import Store, read_jobs
from tests.helpers import counts, finished, status_json, sweep, wait_for

pytestmark = pytest.mark.slurm

GRID = """
experiment: noop
group: "g{x}"
path: "{group}/task_{task:04d}/seed{seed}"
fixed: {steps: 3, step_sleep_s: 0.1}
axes:
  - {x: [0, 1], group: true}
  - {label: [a, b, c, d]}
seeds: [5]
resources: {time_min: 5, cpus: 1}
"""

LONG = """
experiment: noop
group: "long"
path: "{group}/task_{task:04d}/seed{seed}"
fixed: {steps: 60, step_sleep_s: 0.25}
axes:
  - {x: [3]}
seeds: [11]
max_requeues: {max_requeues}
resources: {time_min: 10, cpus: 1, signal_delay_s: 30}
"""


def metrics(run_dir: Path) -> list[tuple]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r["length"], json.dumps(r["metrics"], sort_keys=True)) for r in recs]


def test_job_arrays_status_relaunch_collect(slurm, tmp_path: Path):
    spec = tmp_path / "grid.yaml"
    spec.write_text(GRID)
    root = tmp_path / "tree"
    dry = sweep("launch", spec, "--cluster", "slurm", "--root", root, "--dry-run", "--throttle", "3").stdout
    assert "job arrays (MaxArraySize 5): #0: 5 elements (offset 0), #1: 3 elements (offset 5)" in dry
    assert "#SBATCH --array=0-4%3" in dry
    assert not root.exists()

    out = sweep("launch", spec, "--cluster", "slurm", "--root", root, "--throttle", "3").stdout
    assert "submitted 8 runs in 8 jobs to 2 job array(s)" in out
    jobs = read_jobs(Store(root), "grid")
    masters = {j.split("_")[0] for j in jobs.values()}
    assert len(masters) == 2 and sorted(int(j.split("_")[1]) for j in jobs.values()) == [0, 0, 1, 1, 2, 2, 3, 4]

    c = wait_for(lambda: finished(spec, root), timeout=180, what="8 SLURM runs")
    assert c["completed"] == 8, c
    # sacct agrees (it lags squeue by a few seconds)
    wait_for(lambda: subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", ",".join(sorted(masters))],
                                    capture_output=True, text=True).stdout.split().count("COMPLETED") == 8,
             timeout=30, what="sacct to report 8 COMPLETED")
    rows = json.loads(sweep("status", spec, "--root", root, "--json", "-v").stdout)["runs"]
    assert all(r["job_id"] in jobs.values() and r["step"] == 3 for r in rows)

    out = sweep("launch", spec, "--cluster", "slurm", "--root", root).stdout
    assert "nothing to submit: 8 completed" in out

    sweep("collect", spec, "--root", root, "-o", tmp_path / "r.parquet")
    df = pd.read_parquet(tmp_path / "r.parquet")
    assert df["run_key"].nunique() == 8 and set(df["job_id"]) == set(jobs.values())
    assert (df["wall_s"] > 0).all()


def test_cancel_then_retry(slurm, tmp_path: Path):
    spec = tmp_path / "long.yaml"
    spec.write_text(LONG.replace("{max_requeues}", "3").replace("steps: 60", "steps: 400"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "slurm", "--root", root)
    wait_for(lambda: counts(spec, root)["running"] == 1, timeout=60, what="the run to start")
    out = sweep("cancel", spec, "--root", root).stdout
    assert "cancelled 1 runs" in out
    c = wait_for(lambda: finished(spec, root), timeout=60, what="cancellation")
    assert c["cancelled"] == 1 and c["failed"] == 0, c
    out = sweep("launch", spec, "--cluster", "slurm", "--root", root).stdout
    assert "nothing to submit: 1 cancelled (use --retry cancelled to resubmit them)" in out, out
    out = sweep("launch", spec, "--cluster", "slurm", "--root", root, "--retry", "failed,timeout").stdout
    assert "nothing to submit" in out
    out = sweep("launch", spec, "--cluster", "slurm", "--root", root, "--retry-failed").stdout
    assert "submitted 1 runs" in out
    wait_for(lambda: counts(spec, root)["running"] == 1, timeout=60, what="the retried run to start")
    # cancelled by hand, not by sweep cancel: the scheduler's word says so
    subprocess.check_call(["scancel", next(iter(read_jobs(Store(root), "long").values()))])
    c = wait_for(lambda: finished(spec, root), timeout=60, what="scancel")
    assert c["cancelled"] == 1, c
    row = status_json(spec, root)["runs"][0]
    assert row["scheduler_state"] == "CANCELLED" and row["reason"] == "scheduler: CANCELLED", row
    out = sweep("launch", spec, "--cluster", "slurm", "--root", root, "--retry", "cancelled").stdout
    assert "submitted 1 runs" in out
    wait_for(lambda: counts(spec, root)["running"] == 1, timeout=60, what="the run retried again to start")
    sweep("cancel", spec, "--root", root)


def _preempt_once(spec: Path, root: Path, how: str) -> None:
    run_dir = root / "long/task_0000/seed11"  # created by the job when it starts
    wait_for(lambda: (run_dir / "noop_state.json").exists()
             and json.loads((run_dir / "noop_state.json").read_text())["step"] >= 4,
             timeout=90, what="the run to get going")
    job_id = next(iter(read_jobs(Store(root), "long").values()))
    if how == "preempt":  # what submitit's own _interrupt does: SIGTERM then USR2 -> checkpoint + requeue
        subprocess.check_call(["scancel", job_id, "--signal", "SIGTERM"])
        subprocess.check_call(["scancel", job_id, "--signal", "USR2"])
    else:  # the admin's requeue: the job is killed with no warning and queued again
        subprocess.check_call(["scontrol", "requeue", job_id])


def _assert_requeued_while_pending_again(spec: Path, root: Path) -> None:
    """After `scontrol requeue` the job is PENDING again (after a few seconds of REQUEUED) while
    the run's files still say running: status says requeued (it said pending, with a stale step)."""
    job = next(iter(read_jobs(Store(root), "long").values()))

    def sacct() -> str:
        return subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job], capture_output=True,
                              text=True).stdout.strip()

    wait_for(lambda: sacct() == "PENDING", timeout=60, interval=0.2, what="the requeued job to be pending")
    row = status_json(spec, root)["runs"][0]
    if sacct() == "PENDING":  # still, after status asked: what status saw was the pending job
        assert row["state"] == "requeued" and row["scheduler_state"] == "PENDING", row


@pytest.mark.parametrize("how", ["preempt", "scontrol_requeue"])
def test_requeue_resumes_and_matches_uninterrupted_twin(slurm, tmp_path: Path, how: str):
    spec = tmp_path / "long.yaml"
    spec.write_text(LONG.replace("{max_requeues}", "3"))
    twin_root, root = tmp_path / "twin", tmp_path / "tree"
    sweep("launch", spec, "--cluster", "local", "--root", twin_root)
    sweep("launch", spec, "--cluster", "slurm", "--root", root)
    _preempt_once(spec, root, how)
    if how == "scontrol_requeue":
        _assert_requeued_while_pending_again(spec, root)
    c = wait_for(lambda: finished(spec, root), timeout=180, what="the requeued run to finish")
    assert c["completed"] == 1, c
    wait_for(lambda: finished(spec, twin_root), timeout=60, what="the twin")
    run_dir, twin_dir = root / "long/task_0000/seed11", twin_root / "long/task_0000/seed11"
    state = json.loads((run_dir / "state.json").read_text())
    assert state["requeues"] == 1 and state["attempts"] == 2, state
    assert "noop: resuming at step" in (run_dir / "log.txt").read_text()
    # same records, same numbers, no duplicates from the steps logged after the last save
    assert metrics(run_dir) == metrics(twin_dir)
    assert json.loads((run_dir / "noop_state.json").read_text()) == \
        json.loads((twin_dir / "noop_state.json").read_text())


def test_requeued_more_than_allowed_ends_failed(slurm, tmp_path: Path):
    spec = tmp_path / "long.yaml"
    spec.write_text(LONG.replace("{max_requeues}", "0"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "slurm", "--root", root)
    _preempt_once(spec, root, "preempt")
    c = wait_for(lambda: finished(spec, root), timeout=120, what="the run to give up")
    assert c["failed"] == 1
    rows = json.loads(sweep("status", spec, "--root", root, "--json", "--failed").stdout)["runs"]
    assert "more than max_requeues=0" in rows[0]["reason"]


def test_status_falls_back_to_squeue_then_disk(slurm, tmp_path: Path):
    """Accounting down: squeue answers (one call). Scheduler unreachable: disk alone, with a warning."""
    import os

    spec = tmp_path / "long.yaml"
    spec.write_text(LONG.replace("{max_requeues}", "3").replace("steps: 60", "steps: 400"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "slurm", "--root", root)
    wait_for(lambda: counts(spec, root)["running"] == 1, timeout=60, what="the run to start")
    shims = tmp_path / "bin"
    shims.mkdir()
    # a broken sacct in front of the real binaries (slurmdbd down looks like this to the client)
    (shims / "sacct").write_text("#!/bin/sh\necho 'sacct: error: Problem talking to the database' >&2\nexit 1\n")
    (shims / "sacct").chmod(0o755)
    env = {"PATH": f"{shims}:{os.environ['PATH']}"}
    p = sweep("status", spec, "--root", root, "--json", env=env)
    assert "used squeue" in p.stderr
    assert json.loads(p.stdout)["counts"]["long"]["running"] == 1
    # no scheduler at all: disk state, and a warning that says so
    for tool in ("squeue",):
        (shims / tool).write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller' >&2\n"
                                  "exit 1\n")
        (shims / tool).chmod(0o755)
    p = sweep("status", spec, "--root", root, "--json", env=env, check=False)
    assert p.returncode == 3  # states from disk alone: a distinct exit code
    assert "scheduler unreachable" in p.stderr and "from disk alone" in p.stderr
    assert json.loads(p.stdout)["counts"]["long"]["running"] == 1
    sweep("cancel", spec, "--root", root)


@pytest.mark.parametrize("command", ["status", "launch"])
def test_a_run_that_ends_while_sacct_is_slow_is_completed_not_retrained(slurm, tmp_path: Path, command: str):
    """The files read before the scheduler answered say running; the job has ended by the time
    sacct answers (a loaded slurmdbd). The run completed: status says so, and --retry-failed
    submits nothing (it used to report "job completed without completing the run" and retrain)."""
    import os
    import shutil

    spec = tmp_path / "long.yaml"
    spec.write_text(LONG.replace("{max_requeues}", "3").replace("steps: 60, step_sleep_s: 0.25",
                                                              "steps: 30, step_sleep_s: 0.25"))
    root = tmp_path / "tree"
    run_dir = root / "long/task_0000/seed11"
    sweep("launch", spec, "--cluster", "slurm", "--root", root)
    wait_for(lambda: counts(spec, root)["running"] == 1, timeout=60, what="the run to start")
    job = next(iter(read_jobs(Store(root), "long").values()))
    shims = tmp_path / "bin"
    shims.mkdir()
    # a slow sacct: it notes what the run's files say when it is called (after status read them),
    # then answers only once the job has ended
    (shims / "sacct").write_text(f"""#!/bin/sh
cp {run_dir}/state.json {tmp_path}/seen_by_sacct.json
i=0
while [ $i -lt 600 ] && ! {shutil.which("sacct")} -X -n -P -o State -j {job.split("_")[0]} | grep -q COMPLETED; do
  sleep 0.2; i=$((i + 1))
done
exec {shutil.which("sacct")} "$@"
""")
    (shims / "sacct").chmod(0o755)
    env = {"PATH": f"{shims}:{os.environ['PATH']}"}
    if command == "status":
        c = json.loads(sweep("status", spec, "--root", root, "--json", env=env).stdout)["counts"]["long"]
        assert c["completed"] == 1 and c["failed"] == 0, c
    else:
        out = sweep("launch", spec, "--cluster", "slurm", "--root", root, "--retry-failed", env=env).stdout
        assert "nothing to submit: 1 completed" in out, out
    # the race happened: the run was still running when the scheduler was asked
    assert json.loads((tmp_path / "seen_by_sacct.json").read_text())["state"] == "running"
    state = json.loads((run_dir / "state.json").read_text())
    assert state["state"] == "completed" and state["attempts"] == 1, state


@pytest.mark.slow
def test_a_one_minute_job_runs_to_the_end(slurm, tmp_path: Path):
    """--time 1 and 6 s of work: the signal lead follows the limit (15 s). SLURM checks time limits
    every 30 s and sends the warning up to that much early, so the signal may come as early as 15 s
    in (a 32 s run was signalled in CI: SLURM's documented slack, not a fault). submitit's fixed
    90 s lead is longer than the limit, so the job was signalled at its start and, with
    max_requeues 0, failed."""
    spec = tmp_path / "long.yaml"
    spec.write_text(LONG.replace("{max_requeues}", "0").replace("steps: 60, step_sleep_s: 0.25",
                                                              "steps: 6, step_sleep_s: 1.0")
                    .replace(", signal_delay_s: 30", ""))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "slurm", "--root", root, "--time", "1")
    c = wait_for(lambda: finished(spec, root), timeout=120, what="the one-minute job")
    assert c["completed"] == 1, c
    state = json.loads((root / "long/task_0000/seed11/state.json").read_text())
    assert state["attempts"] == 1 and state.get("requeues", 0) == 0, state


@pytest.mark.slow
def test_time_limit_signal_requeues_and_resumes(slurm, tmp_path: Path):
    """A 2-minute job whose run needs longer: SLURM's USR2 before the limit -> checkpoint,
    requeue, resume; the result equals an uninterrupted twin's."""
    spec = tmp_path / "long.yaml"
    # 150 s of work under a 120 s limit: the job must be signalled (USR2 60 s before the end,
    # SLURM may send it up to a minute early) or it would be killed at the limit
    spec.write_text(LONG.replace("{max_requeues}", "3").replace("steps: 60, step_sleep_s: 0.25",
                                                              "steps: 150, step_sleep_s: 1.0")
                    .replace("time_min: 10, cpus: 1, signal_delay_s: 30", "time_min: 2, cpus: 1, signal_delay_s: 60"))
    twin_root, root = tmp_path / "twin", tmp_path / "tree"
    sweep("launch", spec, "--cluster", "slurm", "--root", root)
    sweep("launch", spec, "--cluster", "local", "--root", twin_root)
    c = wait_for(lambda: finished(spec, root), timeout=600, interval=2, what="the timed-out run to finish")
    assert c["completed"] == 1, c
    wait_for(lambda: finished(spec, twin_root), timeout=120, what="the twin")
    run_dir, twin_dir = root / "long/task_0000/seed11", twin_root / "long/task_0000/seed11"
    state = json.loads((run_dir / "state.json").read_text())
    assert state.get("requeues", 0) >= 1, state
    assert metrics(run_dir) == metrics(twin_dir)


def test_sbatch_refusing_the_launch_is_one_line_and_leaves_no_manifest(slurm, tmp_path: Path):
    spec = tmp_path / "grid.yaml"
    spec.write_text(GRID)
    root = tmp_path / "tree"
    p = sweep("launch", spec, "--cluster", "slurm", "--root", root, "--constraint", "nosuchfeature", check=False)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sbatch failed:") and "feature" in lines[0], p.stderr
    # nothing was launched: editing the grid is not a renumbering
    spec.write_text(GRID.replace("label: [a, b", "label: [z, a, b"))
    out = sweep("launch", spec, "--cluster", "slurm", "--root", root, "--dry-run").stdout
    assert "would submit 10 runs" in out


@pytest.mark.parametrize("only", [None, "x=0,label=a"])  # job arrays, and a single job
def test_a_refused_sbatch_leaves_no_submitit_files(slurm, tmp_path: Path, only: str | None):
    """submitit pickles every element of an array (and writes the sbatch script) before sbatch
    runs; a refused submission used to leave them all behind (up to MaxArraySize per array)."""
    spec = tmp_path / "grid.yaml"
    spec.write_text(GRID)
    root = tmp_path / "tree"
    p = sweep("launch", spec, "--cluster", "slurm", "--root", root, "--constraint", "nosuchfeature",
              *(["--only", only] if only else []), check=False)
    assert p.returncode == 2 and "Invalid feature specification" in p.stderr, p.stderr
    assert sorted(f.name for f in (root / ".sweep" / "submitit").iterdir()) == []


def test_the_cluster_limits_are_checked_before_submitting(slurm, tmp_path: Path):
    """A partition the cluster lacks, a time over the partition's MaxTime (SLURM would leave the jobs
    pending for good), more jobs than MaxJobCount leaves room for: one line each, in --dry-run and
    in launch, before anything is submitted or written."""
    import os
    import shutil

    spec = tmp_path / "grid.yaml"
    spec.write_text(GRID)
    root = tmp_path / "tree"
    for dry in (["--dry-run"], []):
        p = sweep("launch", spec, "--cluster", "slurm", "--root", root, "--partition", "nosuchpartition", *dry,
                  check=False)
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
        assert p.stderr.startswith("error: sweep launch: --partition: no partition 'nosuchpartition' on this "
                                   "cluster (partitions: debug"), p.stderr
    part = f"short{os.getpid()}"
    subprocess.check_call(["scontrol", "create", f"PartitionName={part}", "Nodes=localhost", "MaxTime=5"])
    try:
        spec.write_text(GRID.replace("time_min: 5", f"time_min: 10, partition: {part}"))
        for dry in (["--dry-run"], []):
            p = sweep("launch", spec, "--cluster", "slurm", "--root", root, *dry, check=False)
            assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
            assert p.stderr == (f"error: {spec}: resources.time_min: 10 min is more than partition {part}'s MaxTime "
                                "(5 min): SLURM would refuse the jobs or leave them pending for good\n")
        out = sweep("launch", spec, "--cluster", "slurm", "--root", root, "--dry-run", "--time", "5").stdout
        assert f"cluster: partition {part} (MaxTime 5 min); MaxJobCount 100000" in out
    finally:
        subprocess.run(["scontrol", "delete", f"PartitionName={part}"])
    assert not root.exists()
    # MaxJobCount: the real controller with a limit 3 above the job records it holds now
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "scontrol").write_text(f"""#!/bin/sh
if [ "$1 $2" = "show config" ]; then
  n=$(squeue -h -r -t all -o %i | wc -l)
  {shutil.which("scontrol")} show config | sed "s/^MaxJobCount .*/MaxJobCount = $((n + 3))/"
else
  exec {shutil.which("scontrol")} "$@"
fi
""")
    (shims / "scontrol").chmod(0o755)
    env = {"PATH": f"{shims}:{os.environ['PATH']}"}
    spec.write_text(GRID)
    for dry in (["--dry-run"], []):
        p = sweep("launch", spec, "--cluster", "slurm", "--root", root, *dry, check=False, env=env)
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
        assert "error: sweep launch: MaxJobCount: 8 jobs to submit, but the cluster's MaxJobCount" in p.stderr
        assert "leaves room for 3" in p.stderr and "pack: N" in p.stderr
    assert read_jobs(Store(root), "grid") == {} and not (root / ".sweep" / "manifests").exists()
    out = sweep("launch", spec, "--cluster", "slurm", "--root", root, "--only", "x=0,label=a", env=env).stdout
    assert "submitted 1 runs" in out


def test_the_users_submit_limit_is_checked_before_submitting(slurm, tmp_path: Path):
    """MaxSubmitJobs (the user's association; a QOS's MaxSubmitJobsPerUser alike), which the test
    cluster enforces: a launch over it is refused with one line before sbatch refuses it part-way."""
    import getpass

    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    if "limits" not in next((x for x in config.splitlines() if x.startswith("AccountingStorageEnforce")), ""):
        pytest.skip("this local SLURM predates AccountingStorageEnforce=limits: launch/local-slurm.sh restart")
    user = getpass.getuser()
    mine = len(subprocess.run(["squeue", "-h", "-r", "-u", user, "-o", "%i"], capture_output=True,
                              text=True).stdout.split())
    spec = tmp_path / "grid.yaml"
    spec.write_text(GRID)
    root = tmp_path / "tree"
    subprocess.check_call(["sacctmgr", "-i", "modify", "user", user, "set", f"MaxSubmitJobs={mine + 3}"],
                          stdout=subprocess.DEVNULL)
    try:
        for dry in (["--dry-run"], []):
            p = sweep("launch", spec, "--cluster", "slurm", "--root", root, *dry, check=False)
            assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
            head = f"error: sweep launch: MaxSubmitJobs: 8 jobs to submit, but user {user}'s MaxSubmitJobs {mine + 3} "
            assert p.stderr.startswith(head + "leaves room for "), p.stderr
            # 3, or a few more where jobs of earlier tests ended meanwhile
            assert int(p.stderr[len(head + "leaves room for "):].split()[0]) < 8, p.stderr
        assert read_jobs(Store(root), "grid") == {}
        out = sweep("launch", spec, "--cluster", "slurm", "--root", root, "--only", "x=0,label=a").stdout
        assert "submitted 1 runs" in out
    finally:
        subprocess.check_call(["sacctmgr", "-i", "modify", "user", user, "set", "MaxSubmitJobs=-1"],
                              stdout=subprocess.DEVNULL)


def test_logs_of_a_job_that_died_before_its_run_started(slurm, tmp_path: Path):
    spec = tmp_path / "grid.yaml"
    spec.write_text(GRID)
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "slurm", "--root", root, "--only", "x=0,label=a",
          "--setup", "echo 'module: cuda/99.1 not found' >&2; exit 3")
    wait_for(lambda: counts(spec, root)["failed"] == 1, timeout=120, what="the job to fail")
    rel = json.loads(sweep("status", spec, "--root", root, "--json", "--failed").stdout)["runs"][0]["rel_dir"]
    assert not (root / rel).exists()  # the run never started: no run directory
    out = sweep("logs", root / rel).stdout
    assert "module: cuda/99.1 not found" in out


def test_ctrl_c_between_job_arrays_loses_no_submitted_run(slurm, tmp_path: Path):
    import os
    import signal
    import sys
    import time

    name = f"ctrlc_{os.getpid()}"  # the job name: sacct finds every array of this launch by it
    spec = tmp_path / f"{name}.yaml"  # 40 runs = 8 job arrays of MaxArraySize 5
    spec.write_text(GRID.replace("label: [a, b, c, d]", "label: [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, "
                                 "s, t]").replace("steps: 3, step_sleep_s: 0.1", "steps: 1, step_sleep_s: 0.0"))
    root = tmp_path / "tree"
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 2))
    p = subprocess.Popen([sys.executable, "-m", "launch.cli", "launch", str(spec), "--cluster", "slurm", "--root",
                          str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: p.poll() is not None or subprocess.run(["squeue", "-h", "--name", name, "-o", "%i"],
                                                            capture_output=True, text=True).stdout.strip(),
             timeout=120, interval=0.02, what="SLURM to hold a first array")
    if p.poll() is None:
        p.send_signal(signal.SIGINT)  # Ctrl-C while the later arrays are being submitted
    p.communicate(timeout=120)
    sweep("launch", spec, "--cluster", "slurm", "--root", root)  # submits what the first one did not
    c = wait_for(lambda: finished(spec, root), timeout=300, what="40 runs")
    assert c["completed"] == 40
    # SLURM ran 40 array elements under this name: no run was submitted twice
    wait_for(lambda: len(subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "--name", name, "-S", since],
                                        capture_output=True, text=True).stdout.split()) >= 40,
             timeout=60, what="sacct to list 40 array elements")
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID", "--name", name, "-S", since],
                         capture_output=True, text=True).stdout.split()
    assert len(out) == 40 and all("[" not in j for j in out), out


def test_cancel_writes_nothing_for_runs_that_never_started(slurm, tmp_path: Path):
    """Four of five runs still queued (--throttle 1): `sweep cancel` makes no directory for them, only
    one file for the spec (.sweep/cancelled/<spec>.json); status shows all five cancelled, and
    --retry cancelled submits them again."""
    spec = tmp_path / "long.yaml"
    spec.write_text(LONG.replace("{max_requeues}", "3").replace("steps: 60", "steps: 400")
                    .replace("x: [3]", "x: [1, 2, 3, 4, 5]"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "slurm", "--root", root, "--throttle", "1")
    wait_for(lambda: counts(spec, root)["running"] == 1, timeout=60, what="one run to start")
    assert counts(spec, root)["pending"] == 4
    out = sweep("cancel", spec, "--root", root).stdout
    assert "cancelled 5 runs" in out, out
    started = [p.parent for p in root.glob("long/*/seed11/state.json")]
    assert len(started) == 1 and len(list(root.glob("long/*"))) == 1  # no directory for the four
    cancelled = json.loads((root / ".sweep/cancelled/long.json").read_text())
    assert len(cancelled) == 4 and started[0].relative_to(root).as_posix() not in cancelled
    c = wait_for(lambda: finished(spec, root), timeout=60, what="cancellation")
    assert c["cancelled"] == 5, c
    rows = status_json(spec, root)["runs"]
    assert sum(r["reason"] == "cancelled by sweep cancel before it started" for r in rows) == 4, rows
    out = sweep("launch", spec, "--cluster", "slurm", "--root", root).stdout
    assert "nothing to submit: 5 cancelled" in out, out
    out = sweep("launch", spec, "--cluster", "slurm", "--root", root, "--retry", "cancelled", "--throttle", "1").stdout
    assert "submitted 5 runs" in out, out
    c = counts(spec, root)
    assert c["cancelled"] == 0 and c["pending"] + c["running"] == 5, c
    sweep("cancel", spec, "--root", root)


def test_a_preemption_left_out_of_retry_on_ends_preempted_not_requeued(slurm, tmp_path: Path):
    """retry_on: [node_fail]: a preemption (submitit's SIGTERM + USR2 well before the time limit) ends the run
    `preempted` instead of requeueing it; --retry preempted resubmits it. (The default, [node_fail, preempted],
    requeues it: test_requeue_resumes_and_matches_uninterrupted_twin.)"""
    spec = tmp_path / "long.yaml"
    spec.write_text(LONG.replace("{max_requeues}", "3") + "retry_on: [node_fail]\n")
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "slurm", "--root", root)
    _preempt_once(spec, root, "preempt")
    c = wait_for(lambda: finished(spec, root), timeout=120, what="the preempted run to end")
    assert c["preempted"] == 1, c
    state = json.loads((root / "long/task_0000/seed11/state.json").read_text())
    assert state["state"] == "preempted" and state.get("requeues", 0) == 0 and state["attempts"] == 1, state
    row = status_json(spec, root)["runs"][0]
    assert row["state"] == "preempted" and "not requeued (retry_on: ['node_fail'])" in row["reason"], row
    assert "nothing to submit: 1 preempted (use --retry preempted" in \
        sweep("launch", spec, "--cluster", "slurm", "--root", root).stdout
    assert "submitted 1 runs" in sweep("launch", spec, "--cluster", "slurm", "--root", root, "--retry",
                                       "preempted").stdout
    c = wait_for(lambda: finished(spec, root), timeout=180, what="the resubmitted run to finish")
    assert c["completed"] == 1, c


def test_queued_and_requeued_jobs_run_the_code_snapshot_taken_at_launch(slurm, tmp_path: Path):
    """The code is edited right after launch, while the job waits (a 4 s setup line) and before it is
    requeued: both attempts run the snapshot in .sweep/code/<hash>/, which provenance names
    (state.json, run.json, the Parquet); --no-snapshot runs the live, edited code."""
    import shutil

    from tests.helpers import REPO

    checkout = tmp_path / "checkout"  # the checkout a researcher edits: the launch package from here
    shutil.copytree(REPO / "launch", checkout / "launch", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": str(checkout)}
    spec = tmp_path / "long.yaml"
    spec.write_text(LONG.replace("{max_requeues}", "3").replace("signal_delay_s: 30",
                                                                "signal_delay_s: 30, setup: ['sleep 4']"))
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "slurm", "--root", root, cwd=tmp_path, env=env)
    noop = checkout / "launch" / "noop.py"
    noop.write_text(noop.read_text().replace('"noop: resuming at step', '"EDITED: resuming at step')
                    .replace('"noop: done after', '"EDITED: done after'))
    assert counts(spec, root)["running"] == 0  # still in its setup: nothing imported yet
    _preempt_once(spec, root, "scontrol_requeue")
    c = wait_for(lambda: finished(spec, root), timeout=180, what="the requeued run to finish")
    assert c["completed"] == 1, c
    run_dir = root / "long/task_0000/seed11"
    log = (run_dir / "log.txt").read_text()
    assert "noop: resuming at step" in log and "noop: done after" in log and "EDITED" not in log, log
    snapshots = [p.name for p in (root / ".sweep" / "code").iterdir()]
    assert len(snapshots) == 1, snapshots
    state = json.loads((run_dir / "state.json").read_text())
    assert state["attempts"] == 2 and state["code_snapshot"] == snapshots[0], state
    assert json.loads((run_dir / "run.json").read_text())["code_snapshot"] == snapshots[0]
    snap = root / ".sweep" / "code" / snapshots[0]
    assert "EDITED" not in (snap / "launch" / "noop.py").read_text() and (snap / "SNAPSHOT.json").exists()
    sweep("collect", spec, "--root", root, "-o", tmp_path / "r.parquet", cwd=tmp_path, env=env)
    assert set(pd.read_parquet(tmp_path / "r.parquet")["code_snapshot"]) == {snapshots[0]}

    live = tmp_path / "live.yaml"
    live.write_text(LONG.replace("{max_requeues}", "3").replace("x: [3]", "x: [4]").replace("steps: 60", "steps: 4")
                    .replace('"long"', '"live"'))
    sweep("launch", live, "--cluster", "slurm", "--root", root, "--no-snapshot", cwd=tmp_path, env=env)
    wait_for(lambda: finished(live, root), timeout=120, what="the --no-snapshot run")
    live_dir = root / "live/task_0000/seed11"
    assert "EDITED: done after" in (live_dir / "log.txt").read_text()
    assert json.loads((live_dir / "state.json").read_text()).get("code_snapshot") is None
    assert len(list((root / ".sweep" / "code").iterdir())) == 1

