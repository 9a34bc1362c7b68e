"""Issue 11: every number in the table comes from the run it is labelled with, from
bytes that were verified. Real files and real processes (local executor, real CLI)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

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
    assert p.returncode == 1 and p.stderr.count("this directory holds run") == 2, p.stderr
    rows = status_json(other, root)["runs"]
    assert all(r["state"] == "failed" and "this directory holds run" in r["reason"] for r in rows), rows


def test_a_job_never_takes_over_a_directory_of_another_run(tmp_path: Path) -> None:
    _, root = _launched(tmp_path)
    rel = "noop/x0/seed1"
    info = json.loads((root / rel / "run.json").read_text())
    before = {p.name: p.read_bytes() for p in (root / rel).iterdir()}
    intruder = {**info, "run_key": "0123456789ab", "config": {**info["config"], "steps": 7}}
    assert run_unit(root, [rel], {rel: intruder}) == [False]
    assert {p.name: p.read_bytes() for p in (root / rel).iterdir()} == before
    assert Store(root).state(rel)["state"] == "completed"


# -- 2. verified loads -----------------------------------------------------------------------------


def _flip_a_weight_byte(path: Path) -> None:
    """One exponent bit of a model weight: the file still unpickles, only the hash can tell."""
    import torch

    weights = torch.load(path, weights_only=True)["model"]
    name = max(weights, key=lambda k: weights[k].numel())
    data = bytearray(path.read_bytes())
    at = data.find(weights[name].contiguous().numpy().tobytes())
    assert at >= 0
    data[at + 4 * (weights[name].numel() // 2) + 3] ^= 0x01  # little-endian float32: byte 3 is sign/exponent
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_newest_resume_state_is_not_resumed_from(tmp_path: Path) -> None:
    import torch

    from launch import status as stt
    from launch.checkpoint import load_checkpoint
    from launch.runner import run_one
    from launch.tasks import Run
    from sortgpt.naming import checkpoint_name
    from sortgpt.train import train
    from tests.sortgpt.conftest import tiny_config

    torch.set_num_threads(1)
    cfg = tiny_config()
    straight = tmp_path / "straight"
    straight.mkdir()
    train(cfg, _ctx(straight))

    root, rel = tmp_path / "tree", "run"
    run_dir = root / rel
    run_dir.mkdir(parents=True)
    info = {"spec": "s", "experiment": "sortgpt", "group": "g", "task": 0, "seed": cfg["seed"], "rel_dir": rel,
            "run_key": "0123456789ab", "params": {}, "config": cfg}
    (run_dir / "run.json").write_text(json.dumps(info))

    def stop_at_25(step: int) -> None:
        if step == 25:
            raise KeyboardInterrupt  # as a kill would: the run never says completed

    try:
        train(cfg, _ctx(run_dir), on_step=stop_at_25)
    except KeyboardInterrupt:
        pass
    newest = run_dir / "resume_00000020.pt"
    _flip_a_weight_byte(newest)
    load_checkpoint(newest, verify=False)  # still loads: without the sidecar check it would be resumed from
    (run_dir / "state.json").write_text(json.dumps({"state": "running", "attempts": 1}))

    assert run_one(root, rel)  # the requeued attempt
    final = checkpoint_name("Final", cfg, cfg["max_iters"])
    a, b = load_checkpoint(straight / final)["model"], load_checkpoint(run_dir / final)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed from the damaged state"
    assert (run_dir / "resume_00000020.pt.corrupt").exists()
    log = (run_dir / "log.txt").read_text()
    assert "skipping resume state resume_00000020.pt" in log and "sha256" in log
    state = json.loads((run_dir / "state.json").read_text())
    assert state["state"] == "completed" and state["corrupt_resume_states"] == ["resume_00000020.pt"]
    run = Run(spec="s", experiment="sortgpt", group="g", task=0, seed=cfg["seed"], rel_dir=rel,
              run_key="0123456789ab", config=cfg, params={})
    [status], _ = stt.run_statuses(Store(root), [run], query=False)
    assert status.state == "completed" and "resume_00000020.pt failed verification" in status.reason


def _ctx(run_dir: Path):
    from launch.experiment import RunContext

    return RunContext(run_dir=run_dir)


# -- 4. non-finite values --------------------------------------------------------------------------


class NanLossExperiment:
    """Logs a training loss that becomes NaN at step 3 (as a diverging run does)."""

    name = "nan_loss"

    def defaults(self) -> dict:
        return {"seed": 0}

    def check(self, config: dict) -> list[str]:
        return []

    def run(self, config: dict, ctx) -> None:
        for step in range(1, 6):
            ctx.log(step, {"loss": float("nan") if step >= 3 else 1.0 / step}, split="train")
            ctx.log(step, {"loss": float("nan")}, split="val")  # only the training loss stops a run


NAN_LOSS = NanLossExperiment()


def _nan_run(root: Path, policy: bool | None) -> str:
    rel = "nan/seed0"
    (root / rel).mkdir(parents=True)
    info = {"spec": "s", "experiment": "tests.test_integrity:NAN_LOSS", "group": "g", "task": 0, "seed": 0,
            "rel_dir": rel, "run_key": "0123456789ab", "params": {}, "config": {"seed": 0}}
    if policy is not None:
        info["fail_on_nonfinite_loss"] = policy
    (root / rel / "run.json").write_text(json.dumps(info))
    return rel


def test_a_training_loss_that_becomes_nan_fails_the_run_with_its_step(tmp_path: Path) -> None:
    from launch import status as stt
    from launch.runner import run_one
    from launch.tasks import Run

    rel = _nan_run(tmp_path, None)  # default: on
    assert run_one(tmp_path, rel) is False
    state = json.loads((tmp_path / rel / "state.json").read_text())
    assert state["state"] == "failed"
    run = Run(spec="s", experiment="x", group="g", task=0, seed=0, rel_dir=rel, run_key="0123456789ab",
              config={"seed": 0}, params={})
    [status], _ = stt.run_statuses(Store(tmp_path), [run], query=False)
    assert status.state == "failed" and "training loss of nan/seed0 is nan at step 3" in status.reason
    steps = [json.loads(line)["step"] for line in (tmp_path / rel / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 3  # stopped there

    other = tmp_path / "off"
    rel = _nan_run(other, False)  # the policy key turned off: the run goes on (and says completed)
    assert run_one(other, rel) is True


def _sortgpt_run(root: Path, name: str, **overrides) -> str:
    from sortgpt.experiment import EXPERIMENT

    config = EXPERIMENT.defaults() | {"vocab_n": 16, "n_embd": 16, "n_layers": 1, "use_mlp": False,
                                      "train_min_k": 2, "train_max_k": 4, "test_min_k": 5, "test_max_k": 6,
                                      "max_iters": 30, "batch_size": 16, "max_lr": 1e-3, "min_lr": 1e-5,
                                      "warmup_iters": 2, "eval_every": 5, "eval_samples": 10,
                                      "checkpoint_iter": 0, "save_every": 10, "device": "cpu", "seed": 3} | overrides
    rel = f"pack/{name}"
    (root / rel).mkdir(parents=True)
    info = {"spec": "s", "experiment": "sortgpt", "group": "g", "task": 0, "seed": 3, "rel_dir": rel,
            "run_key": name.ljust(12, "0")[:12], "params": {}, "config": config}
    (root / rel / "run.json").write_text(json.dumps(info))
    return rel


def test_a_nan_loss_in_a_pack_fails_that_run_only(tmp_path: Path) -> None:
    """Two runs trained as one pack; one diverges (a learning rate of 1e30). It ends failed with its step;
    the other completes, with exactly the metrics it has when trained alone."""
    from launch.runner import run_one, run_pack

    good, bad = _sortgpt_run(tmp_path, "good"), _sortgpt_run(tmp_path, "bad", max_lr=1e30)
    assert run_pack(tmp_path, [good, bad]) == [True, False]
    state = json.loads((tmp_path / bad / "state.json").read_text())
    assert state["state"] == "failed" and "training loss of pack/bad is nan at step" in state["error"], state
    assert json.loads((tmp_path / good / "state.json").read_text())["state"] == "completed"
    assert list((tmp_path / good).glob("Final_*.pt")) and not list((tmp_path / bad).glob("Final_*.pt"))

    alone = tmp_path / "alone"
    assert run_one(alone, _sortgpt_run(alone, "good")) is True

    def records(run_dir: Path) -> list[tuple]:
        recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["split"], r["length"], sorted(r["metrics"])) for r in recs]

    assert records(tmp_path / good) == records(alone / "pack/good")
    packed = [json.loads(x)["metrics"].get("exact_match_acc")
              for x in (tmp_path / good / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(x)["metrics"].get("exact_match_acc")
              for x in (alone / "pack/good" / "metrics.jsonl").read_text().splitlines()]
    assert packed == single


def test_the_grid_size_is_refused_from_axis_lengths_alone() -> None:
    from launch.errors import SpecError
    from launch.spec import parse_spec

    axes = [{name: list(range(1000))} for name in ("x", "steps", "fail_at_step")]
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match="1,000,000,000 runs"):
        parse_spec({"experiment": "noop", "path": "{x}/{steps}/{fail_at_step}/{seed}", "axes": axes})
    assert time.perf_counter() - t0 < 1.0
    small = {"experiment": "noop", "path": "{x}/{seed}", "axes": [{"x": [1, 2, 3]}], "seeds": [1, 2]}
    with pytest.raises(SpecError, match="6 runs .* more than max_runs=5"):
        parse_spec({**small, "max_runs": 5})
    assert parse_spec({**small, "max_runs": 6}).seeds == [1, 2]


# -- 7. one line (or a per-run reason), never a traceback ----------------------------------------------


def test_files_of_the_wrong_shape_give_reasons_not_tracebacks(tmp_path: Path) -> None:
    """state.json fields of the wrong type, a metrics line without a split, a jobs file and a manifest
    whose entries have the wrong shape: status and collect say which run and why, without a traceback."""
    from launch.spec import load_spec
    from launch.tasks import expand

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("x: [0, 1]", "x: [0, 1, 2]"))
    root = tmp_path / "tree"
    runs = expand(load_spec(spec, root=root))
    for r in runs:
        d = root / r.rel_dir
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps(r.to_json()))
        (d / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "metrics": {"loss": 0.5}}) + "\n")
        (d / "state.json").write_text(json.dumps({"state": "completed"}))
    bad_state, no_split, _ = (root / r.rel_dir for r in runs)
    (bad_state / "state.json").write_text(json.dumps({"state": "completed", "requeues": "x", "updated_at": "soon"}))
    (no_split / "metrics.jsonl").write_text(json.dumps({"step": 1, "metrics": {"loss": 0.5}}) + "\n")
    (root / ".sweep" / "jobs").mkdir(parents=True)
    (root / ".sweep" / "jobs" / "spec.json").write_text(json.dumps({runs[2].rel_dir: ["not", "an", "id"]}))
    (root / ".sweep" / "manifests").mkdir(parents=True)
    (root / ".sweep" / "manifests" / "spec.json").write_text(json.dumps({"runs": ["not", "a", "mapping"]}))

    p = sweep("status", spec, "--root", root, "-v")
    assert "Traceback" not in p.stderr + p.stdout
    assert "reason: state.json is corrupt (requeues: must be an integer, got str 'x')" in p.stdout
    rows = {r["rel_dir"]: r for r in status_json(spec, root)["runs"]}
    assert rows[runs[1].rel_dir]["state"] == rows[runs[2].rel_dir]["state"] == "completed"

    p = sweep("collect", spec, "--root", root, "-o", tmp_path / "r.parquet", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"{runs[1].rel_dir}: metrics.jsonl: line 1: no split" in p.stderr
    assert "skipped 1 runs (corrupt state.json)" in p.stderr
    assert set(pd.read_parquet(tmp_path / "r.parquet")["run_dir"]) == {runs[2].rel_dir}


# -- 8. disk full ------------------------------------------------------------------------------------


def test_a_launch_on_a_full_disk_is_one_line_and_leaves_no_temp_files(tmp_path: Path) -> None:
    """A real full file system (a 64 KiB tmpfs, filled): one line naming the file and the cause."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    root = tmp_path / "tree"
    root.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(root)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        try:  # fill it up
            with open(root / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass
        spec = tmp_path / "spec.yaml"
        spec.write_text(SPEC)
        p = sweep("launch", spec, "--cluster", "local", "--root", root, check=False)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.strip() == f"error: {root}/.sweep/manifests/spec.json: No space left on device"
        assert not [q for q in root.rglob("*") if ".tmp" in q.name]
        assert not (root / ".sweep" / "manifests" / "spec.json").exists()
    finally:
        subprocess.run(["umount", str(root)])


def test_a_run_that_fills_the_disk_fails_naming_the_cause_and_leaves_no_temp_files(tmp_path: Path) -> None:
    """A real 1 MiB tmpfs; a run whose first checkpoint (~6 MB) cannot fit. torch.save says only
    "file write failed": the run's status reason must say the disk is full, and which file."""
    import os
    import subprocess

    from launch import status as stt
    from launch.runner import run_one
    from launch.tasks import Run

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    root = tmp_path / "tree"
    root.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        rel = _sortgpt_run(root, "big", n_embd=256, n_layers=2, use_mlp=True, max_iters=2, batch_size=4,
                           eval_every=100)
        assert run_one(root, rel) is False
        run = Run(spec="s", experiment="sortgpt", group="g", task=0, seed=3, rel_dir=rel, run_key="big000000000",
                  config={}, params={})
        [status], _ = stt.run_statuses(Store(root), [run], query=False)
        assert status.state == "failed"
        assert status.reason.startswith("no space left on device writing ") and "Final_" in status.reason, status
        assert not [q for q in root.rglob("*") if ".tmp" in q.name]
        assert not list((root / rel).glob("Final_*"))
    finally:
        subprocess.run(["umount", str(root)])


# max_iters 6000 (~30 s on one core): the requeue's SIGKILL comes KillWait (5 s, local-slurm.sh) after its
# SIGTERM, which submitit bypasses; at 2000 iterations a fast core finished the run before it came
SLURM_SPEC = """
experiment: sortgpt
group: "flip"
path: "{group}/task_{task:04d}/seed{seed}"
fixed: {vocab_n: 16, n_embd: 16, n_layers: 1, use_mlp: true, train_min_k: 2, train_max_k: 4, test_min_k: 5,
        test_max_k: 6, max_iters: 6000, batch_size: 16, max_lr: 3.0e-3, min_lr: 1.0e-5, warmup_iters: 10,
        eval_every: 500, eval_samples: 20, checkpoint_iter: 1001, save_every: 100, keep_resume: 2, device: cpu}
axes:
  - {length_mode: [mix]}
seeds: [7]
resources: {time_min: 10, cpus: 1}
"""


@pytest.mark.slurm
def test_requeue_on_slurm_falls_back_over_a_flipped_resume_state(slurm, tmp_path: Path) -> None:
    """The real SLURM: the job is requeued and held, one bit of its newest resume state flipped, then
    released; it resumes from the previous state and ends bit-identical to an uninterrupted twin."""
    import subprocess

    import torch

    from launch.checkpoint import load_checkpoint, resume_states
    from launch.store import read_jobs

    spec = tmp_path / "flip.yaml"
    spec.write_text(SLURM_SPEC)
    root, twin = tmp_path / "tree", tmp_path / "twin"
    sweep("launch", spec, "--cluster", "slurm", "--root", root)
    run_dir = root / "flip/task_0000/seed7"
    wait_for(lambda: len(resume_states(run_dir)) >= 2, timeout=120, interval=0.2, what="two resume states")
    job = next(iter(read_jobs(Store(root), "flip").values()))
    subprocess.check_call(["scontrol", "requeuehold", job])

    def held() -> bool:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
        return out.strip() == "PENDING"

    wait_for(held, timeout=60, interval=0.5, what="the job requeued and held")
    time.sleep(1)
    assert not list(run_dir.glob("Final_*.pt")), "the run finished before it could be requeued"
    newest = resume_states(run_dir)[-1]
    _flip_a_weight_byte(newest)
    subprocess.check_call(["scontrol", "release", job])
    sweep("launch", spec, "--cluster", "slurm", "--root", twin)
    for r in (root, twin):
        p = sweep("wait", spec, "--root", r, "--interval", "1", "--timeout", "300", check=False)
        assert p.returncode == 0, p.stdout + p.stderr

    final = next(run_dir.glob("Final_*.pt")).name
    a = load_checkpoint(run_dir / final)["model"]
    b = load_checkpoint(twin / "flip/task_0000/seed7" / final)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed from the damaged state"
    assert (run_dir / f"{newest.name}.corrupt").exists()
    assert f"skipping resume state {newest.name}" in (run_dir / "log.txt").read_text()
    [row] = status_json(spec, root)["runs"]
    assert row["state"] == "completed" and f"{newest.name} failed verification" in row["reason"]


# -- 8. symlinks -------------------------------------------------------------------------------------


def test_a_run_never_writes_through_a_symlink(tmp_path: Path) -> None:
    from launch import status as stt
    from launch.runner import run_one
    from launch.tasks import Run

    outside = tmp_path / "system-file"
    outside.write_text("precious\n")
    rel = "noop/seed0"
    d = tmp_path / "tree" / rel
    d.mkdir(parents=True)
    info = {"spec": "s", "experiment": "noop", "group": "g", "task": 0, "seed": 0, "rel_dir": rel,
            "run_key": "0123456789ab", "params": {}, "config": {"steps": 2, "step_sleep_s": 0.0, "fail_at_step": -1,
                                                                  "x": 0, "y": 0.0, "label": "a", "seed": 0,
                                                                  "lengths": [1]}}
    (d / "run.json").write_text(json.dumps(info))
    (d / "metrics.jsonl").symlink_to(outside)
    assert run_one(tmp_path / "tree", rel) is False
    assert outside.read_text() == "precious\n"
    run = Run(spec="s", experiment="noop", group="g", task=0, seed=0, rel_dir=rel, run_key="0123456789ab",
              config=info["config"], params={})
    [status], _ = stt.run_statuses(Store(tmp_path / "tree"), [run], query=False)
    assert status.state == "failed" and "metrics.jsonl is a symlink" in status.reason

    # a tree root that is itself a symlink (scratch space) runs as usual
    (d / "metrics.jsonl").unlink()
    (d / "state.json").unlink()
    linked = tmp_path / "linked"
    linked.symlink_to(tmp_path / "tree")
    assert run_one(linked, rel) is True
    assert len((d / "metrics.jsonl").read_text().splitlines()) == 4
