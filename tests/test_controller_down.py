"""The SLURM controller down, on the real cluster: clients are pointed at a controller port nothing
listens on (SLURM_CONF, a copy of the cluster's slurm.conf), so sbatch, scancel and scontrol fail as
they do when slurmctld is stopped, while the shared cluster keeps running for other test sessions.

`launch` and `cancel` end with one line and exit 3 after one `scontrol ping`, without calling
sbatch or scancel (each retries for ~9 s, submitit on top); `status` exits 3 when the states of
SLURM runs are from disk alone."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import counts, sweep, tree_snapshot, wait_for

pytestmark = pytest.mark.slurm

LONG = """
experiment: noop
group: "long"
path: "{group}/task_{task:04d}/seed{seed}"
fixed: {steps: 400, step_sleep_s: 0.25}
axes:
  - {x: [3]}
seeds: [11]
resources: {time_min: 10, cpus: 1}
"""


def _one_running_run(tmp_path: Path) -> tuple[Path, Path]:
    """(spec, tree root) of the LONG spec launched on the real SLURM, its one run running."""
    spec = tmp_path / "long.yaml"
    spec.write_text(LONG)
    root = tmp_path / "tree"
    sweep("launch", spec, "--cluster", "slurm", "--root", root)
    state = root / "long/task_0000/seed11/state.json"

    def started() -> bool:  # the scheduler says running a moment before the job has written its state
        return counts(spec, root)["running"] == 1 and state.exists() and '"running"' in state.read_text()

    wait_for(started, timeout=60, what="the run to start and write its state")
    return spec, root


def _down_env(tmp_path: Path) -> dict[str, str]:
    """Environment whose SLURM clients see the controller down; sbatch/scancel calls are logged."""
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    down = tmp_path / "slurm-down.conf"
    down.write_text(re.sub(r"(?m)^SlurmctldPort=\d+", "SlurmctldPort=6999", conf))
    shims = tmp_path / "bin"
    shims.mkdir()
    for tool in ("sbatch", "scancel"):
        real = shutil.which(tool)
        (shims / tool).write_text(f'#!/bin/sh\necho {tool} >> {tmp_path}/calls\nexec {real} "$@"\n')
        (shims / tool).chmod(0o755)
    for tool in ("scontrol", "squeue"):  # their pids: none may outlive the command that started it
        real = shutil.which(tool)
        (shims / tool).write_text(f'#!/bin/sh\necho $$ >> {tmp_path}/queries\nexec {real} "$@"\n')
        (shims / tool).chmod(0o755)
    return {"SLURM_CONF": str(down), "PATH": f"{shims}:{os.environ['PATH']}"}


def _left_running(tmp_path: Path) -> list[str]:
    """The scontrol/squeue processes a command started that still run after it ended (they wait out the
    down controller's timeouts for tens of seconds: launch asks the cluster's limits in the background)."""
    queries = tmp_path / "queries"
    pids = queries.read_text().split() if queries.exists() else []
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()
            and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]


def test_launch_and_cancel_end_with_one_line_when_the_controller_is_down(slurm, tmp_path: Path):
    spec, root = _one_running_run(tmp_path)
    env = _down_env(tmp_path)

    state = root / "long/task_0000/seed11/state.json"
    before, state_before = tree_snapshot(root / ".sweep"), json.loads(state.read_text())["state"]
    p = sweep("cancel", spec, "--root", root, env=env, check=False)
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "SLURM controller does not answer" in p.stderr and "nothing cancelled" in p.stderr
    assert json.loads(state.read_text())["state"] == state_before == "running"  # not marked cancelled
    assert tree_snapshot(root / ".sweep") == before

    other = tmp_path / "other.yaml"
    other.write_text(LONG.replace("x: [3]", "x: [4]").replace('"long"', '"other"'))
    p = sweep("launch", other, "--cluster", "slurm", "--root", root, env=env, check=False)
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1 and "nothing submitted" in p.stderr, p.stderr
    assert tree_snapshot(root / ".sweep") == before  # no manifest, no jobs file, no submitit pickles
    assert (tmp_path / "queries").exists() and _left_running(tmp_path) == []

    # the dry run still shows the plan, with a warning
    p = sweep("launch", other, "--cluster", "slurm", "--root", root, "--dry-run", env=env)
    assert "does not answer" in p.stdout and "would submit 1 runs" in p.stdout
    assert not (tmp_path / "calls").exists(), (tmp_path / "calls").read_text()  # neither sbatch nor scancel ran

    # the controller back: the run is still running, and cancel works
    assert counts(spec, root)["running"] == 1
    assert "cancelled 1 runs" in sweep("cancel", spec, "--root", root).stdout


def test_status_exits_3_when_the_states_are_from_disk_alone(slurm, tmp_path: Path):
    spec, root = _one_running_run(tmp_path)
    assert sweep("status", spec, "--root", root).returncode == 0
    shims = tmp_path / "bin"
    shims.mkdir()
    for tool in ("sacct", "squeue"):  # slurmdbd and slurmctld both down, as the clients see it
        (shims / tool).write_text("#!/bin/sh\necho 'error: Unable to contact slurm controller' >&2\nexit 1\n")
        (shims / tool).chmod(0o755)
    p = sweep("status", spec, "--root", root, "--json", env={"PATH": f"{shims}:{os.environ['PATH']}"}, check=False)
    assert p.returncode == 3, (p.returncode, p.stderr)
    assert "from disk alone" in p.stderr
    assert json.loads(p.stdout)["counts"]["long"]["running"] == 1
    assert "3 the scheduler" in sweep("status", "--help").stdout
    sweep("cancel", spec, "--root", root)
