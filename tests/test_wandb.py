"""W&B: disabled unless a spec asks; offline mode writes a local run with our names."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import sweep, wait_for

SPEC = """
experiment: noop
group: "wb{x}"
path: "{group}/task_{task:04d}/seed{seed}"
fixed: {steps: 2, lengths: [3]}
axes:
  - {x: [0], group: true}
  - {y: [0.25]}
seeds: [1]
"""


def _finish(spec: Path, root: Path) -> None:
    sweep("launch", spec, "--cluster", "local", "--root", root)
    sweep("wait", spec, "--root", root, "--interval", "0.5", "--timeout", "120")


def test_offline_mode_logs_locally(tmp_path: Path):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC + "wandb: {project: sweep-test, mode: offline, tags: [tag-alpha]}\n")
    root = tmp_path / "tree"
    _finish(spec, root)
    run_dir = root / "wb0/task_0000/seed1"
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(run_dir.rglob("*"))
    info = json.loads((run_dir / "run.json").read_text())
    # the W&B run id is the run key, so a resumed run continues the same W&B run
    assert runs[0].name.endswith(info["run_key"])
    files = list(runs[0].glob("*.wandb"))
    assert files and files[0].stat().st_size > 0
    blob = files[0].read_bytes()
    for key in (b"train/value", b"val/K3/accuracy", b"wb0"):  # metric names and the group
        assert key in blob, key
    assert b"tag-alpha" in blob  # the spec's tags
    # the run's hyperparameters go with it (W&B's config record holds them as JSON values)
    # (config items are key + JSON value: y's 0.25 and the spec's name as the JSON string "s")
    assert b"steps" in blob and b"0.25" in blob and b'"s"' in blob
    # charts plot against the training iteration: MetricRecord{glob_name: "*", step_metric: "iter"}
    # in its protobuf bytes (field 2 "*", field 4 "iter")
    assert b'\x12\x01*"\x04iter' in blob


def test_disabled_by_default(tmp_path: Path):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    root = tmp_path / "tree"
    _finish(spec, root)
    wait_for(lambda: (root / "wb0/task_0000/seed1/metrics.jsonl").exists(), timeout=10)
    assert not (root / "wb0/task_0000/seed1/wandb").exists()
