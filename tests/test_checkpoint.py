"""The checkpoint layer: atomic saves, sidecars, safe loads, RNG state, resume states, devices."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import launch.checkpoint as ckpt
import launch.device as device_mod
from launch.checkpoint import (
    check_config_match,
    latest_resume_state,
    load_checkpoint,
    load_latest_resume_state,
    prune_resume_states,
    resume_state_path,
    resume_states,
    rng_state,
    save_checkpoint,
    set_rng_state,
    sha256_file,
)
from launch.device import resolve_device
from launch.errors import CheckpointError, UserError

LAUNCH_DIR = Path(ckpt.__file__).resolve().parent


def small_state(step: int = 7) -> dict:
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "best_metric": 0.25, "config": {"n_embd": 4, "layers": [1, 2], "use_mlp": True, "name": None}}


# -- save / load ----------------------------------------------------------------


def test_round_trip_keeps_every_value(tmp_path: Path) -> None:
    state = small_state()
    save_checkpoint(state, tmp_path / "ck.pt")
    loaded = load_checkpoint(tmp_path / "ck.pt", require=("model", "optimizer", "step"))
    assert loaded["step"] == 7 and loaded["best_metric"] == 0.25 and loaded["config"] == state["config"]
    assert loaded["model"].keys() == state["model"].keys()
    for name, tensor in state["model"].items():
        assert torch.equal(loaded["model"][name], tensor)
    restored = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=1e-3)
    restored.load_state_dict(loaded["optimizer"])  # optimizer state is usable, not just present
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])


def test_sidecar_records_hash_size_and_provenance(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ck.pt"  # parent is created
    meta = save_checkpoint(small_state(), path, sidecar={"config": {"lr": 0.1}, "metrics": {"acc": 0.5}, "step": 7})
    on_disk = json.loads((tmp_path / "sub" / "ck.pt.json").read_text())
    assert on_disk == meta
    assert meta["config"] == {"lr": 0.1} and meta["metrics"] == {"acc": 0.5} and meta["step"] == 7
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_file(path)
    assert meta["size"] == path.stat().st_size
    assert meta["torch_version"] == torch.__version__
    created = dt.datetime.fromisoformat(meta["created_at"])
    assert created.utcoffset() == dt.timedelta(0)
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=LAUNCH_DIR, capture_output=True, text=True)
    assert meta["git_commit"] == (git.stdout.strip() if git.returncode == 0 else None)
    assert isinstance(meta["host"], str) and meta["host"]
    # No temp files are left behind by a successful save.
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck.pt", "ck.pt.json"]


def test_overwrite_updates_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    first = save_checkpoint({"step": 1, "w": torch.zeros(10)}, path)
    second = save_checkpoint({"step": 2, "w": torch.ones(10)}, path)
    assert first["sha256"] != second["sha256"]
    assert json.loads((tmp_path / "ck.pt.json").read_text())["sha256"] == sha256_file(path) == second["sha256"]
    assert load_checkpoint(path)["step"] == 2


@dataclasses.dataclass
class TinyConfig:
    n_embd: int = 4


@pytest.mark.parametrize(
    ("state", "where", "hint"),
    [
        ({"config": TinyConfig()}, "state['config']", "dataclasses.asdict"),
        ({"rng": {"numpy": [1, np.arange(3)]}}, "state['rng']['numpy'][1]", "torch.from_numpy"),
        ({"metrics": {"acc": np.float64(0.5)}}, "state['metrics']['acc']", ".item()"),
        ({"model": torch.nn.Linear(2, 2)}, "state['model']", "state_dict"),
        ({"fn": len}, "state['fn']", ""),
    ],
)
def test_non_plain_state_is_refused_with_its_key_path(tmp_path: Path, state: dict, where: str, hint: str) -> None:
    with pytest.raises(TypeError) as excinfo:
        save_checkpoint(state, tmp_path / "ck.pt")
    assert str(excinfo.value).startswith(where + " is a ")
    assert hint in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temp file


def test_not_found_lists_the_checkpoints_that_are_there(tmp_path: Path) -> None:
    save_checkpoint({"step": 1}, tmp_path / "resume_00000100.pt")
    save_checkpoint({"step": 2}, tmp_path / "final.pt")
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(tmp_path / "best.pt")
    message = str(excinfo.value)
    assert "best.pt not found" in message and "final.pt, resume_00000100.pt" in message
    assert "\n" not in message

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no .pt files"):
        load_checkpoint(tmp_path / "empty" / "x.pt")
    with pytest.raises(CheckpointError, match=r"directory .*nowhere does not exist"):
        load_checkpoint(tmp_path / "nowhere" / "x.pt")


def test_truncated_and_empty_files_are_reported_as_such(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint({"w": torch.randn(1000)}, good)
    data = good.read_bytes()
    for name, content in [("half.pt", data[: len(data) // 2]), ("most.pt", data[:-30]), ("empty.pt", b"")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as excinfo:
            load_checkpoint(tmp_path / name)
        message = str(excinfo.value)
        assert name in message and ("truncated" in message or "corrupt" in message), message
        assert "\n" not in message and "Traceback" not in message


def test_text_and_json_files_are_not_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "config.pt").write_text('{"n_embd": 128}\n')
    (tmp_path / "notes.pt").write_text("trained for 3 days\n")
    (tmp_path / "noise.pt").write_bytes(bytes(range(7, 71)))
    with pytest.raises(CheckpointError, match=r"config.pt is not a torch checkpoint \(it is a JSON file"):
        load_checkpoint(tmp_path / "config.pt")
    with pytest.raises(CheckpointError, match=r"notes.pt is not a torch checkpoint \(it is a text file"):
        load_checkpoint(tmp_path / "notes.pt")
    with pytest.raises(CheckpointError, match=r"noise.pt is not a torch checkpoint \(unknown format"):
        load_checkpoint(tmp_path / "noise.pt")


class Malicious:
    """Unpickling this runs a shell command: what a checkpoint from an untrusted source can do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_objects_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch_file, bare_file = tmp_path / "evil.pt", tmp_path / "evil_bare.pt"
    torch.save({"model": {"w": torch.ones(2)}, "payload": Malicious(marker)}, torch_file)
    bare_file.write_bytes(pickle.dumps({"payload": Malicious(marker)}))

    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(torch_file)
    assert str(excinfo.value).startswith(f"refusing to load {torch_file}: it holds pickled Python objects, "
                                         "not plain data")
    with pytest.raises(CheckpointError, match="refusing to load .*evil_bare.pt"):
        load_checkpoint(bare_file)
    assert not marker.exists()

    # The file really is malicious: an unsafe load runs the payload.
    torch.load(torch_file, weights_only=False)
    assert marker.exists()


def test_required_key_missing_and_non_dict(tmp_path: Path) -> None:
    save_checkpoint({"step": 3, "optimizer": {}}, tmp_path / "ck.pt")
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(tmp_path / "ck.pt", require=("step", "model"))
    assert "does not contain model state (key 'model')" in str(excinfo.value)
    assert "step, optimizer" in str(excinfo.value)
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="holds a torch.Tensor, not a dict"):
        load_checkpoint(tmp_path / "tensor.pt")


def test_check_config_match_names_fields_and_values() -> None:
    saved = {"n_embd": 128, "layers": [1, 2], "lr": 0.1, "seed": 1}
    check_config_match(saved, {"n_embd": 128, "layers": (1, 2), "lr": 0.1, "seed": 1})  # tuple == list
    check_config_match(saved, {"n_embd": 128, "seed": 2}, fields=["n_embd"])  # other fields ignored
    with pytest.raises(CheckpointError) as excinfo:
        check_config_match(saved, {"n_embd": 64, "layers": [1, 2], "lr": 0.1, "seed": 1, "extra": "x"},
                           path="run/resume_00000100.pt")
    message = str(excinfo.value)
    assert message.startswith("run/resume_00000100.pt was saved with a different config")
    assert "n_embd: saved 128, now 64" in message and "extra: saved (absent), now 'x'" in message
    assert "lr" not in message and "seed" not in message


# -- atomicity under SIGKILL ------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    import launch.checkpoint as ckpt

    mode, run_dir = sys.argv[1], Path(sys.argv[2])
    big = lambda step: {"step": step, "w": torch.full((2_000_000,), float(step))}  # 8 MB

    if mode == "mid-write":
        ckpt.save_checkpoint(big(0), run_dir / "ck.pt", sidecar={"step": 0})
        real_save = torch.save

        class StallingFile:
            # Writes through, then stalls halfway: the parent kills us mid-write.
            def __init__(self, f):
                self.f, self.written = f, 0
            def write(self, data):
                n = self.f.write(data)
                self.written += len(data)
                if self.written > 4_000_000:
                    self.f.flush()
                    print("MID", flush=True)
                    time.sleep(60)
                return n
            def flush(self):
                self.f.flush()

        torch.save = lambda obj, f: real_save(obj, StallingFile(f))
        ckpt.save_checkpoint(big(1), run_dir / "ck.pt", sidecar={"step": 1})
        print("NOT KILLED", flush=True)
    else:  # loop: a training loop saving resume states as fast as it can
        for step in range(1, 10_000):
            ckpt.save_checkpoint(big(step), ckpt.resume_state_path(run_dir, step), sidecar={"step": step})
            ckpt.prune_resume_states(run_dir, keep_last=2)
            print("SAVED", step, flush=True)
    """
)


def _run_child_until(tmp_path: Path, mode: str, line_wanted: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    child = subprocess.Popen([sys.executable, str(script), mode, str(run_dir)], stdout=subprocess.PIPE,
                             text=True)
    try:
        for line in child.stdout:
            if line.strip() == line_wanted:
                break
        else:
            pytest.fail(f"child exited ({child.wait()}) before printing {line_wanted!r}")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL


def test_kill_in_the_middle_of_a_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    _run_child_until(tmp_path, "mid-write", "MID")
    run_dir = tmp_path / "run"
    # The half-written data is only in a temp file; the final name holds the previous save, whole.
    leftovers = [p.name for p in run_dir.iterdir() if p.name not in ("ck.pt", "ck.pt.json")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".ck.pt.tmp."), leftovers
    state = load_checkpoint(run_dir / "ck.pt", require=("step", "w"))
    assert state["step"] == 0 and torch.all(state["w"] == 0)
    assert json.loads((run_dir / "ck.pt.json").read_text())["sha256"] == sha256_file(run_dir / "ck.pt")


def test_kill_during_a_save_loop_leaves_only_whole_checkpoints(tmp_path: Path) -> None:
    _run_child_until(tmp_path, "loop", "SAVED 3")  # killed wherever the next save happens to be
    run_dir = tmp_path / "run"
    finals = resume_states(run_dir)
    assert finals, "no resume state survived"
    for path in finals:  # every file under a final name loads, whatever moment the kill hit
        step = load_checkpoint(path, require=("step", "w"))["step"]
        assert path == resume_state_path(run_dir, step)
        sidecar = path.with_name(path.name + ".json")
        if sidecar.exists():  # a kill between the rename and the sidecar leaves none, never a stale one
            assert json.loads(sidecar.read_text())["sha256"] == sha256_file(path)
    # the newest is resumed from when its sidecar was written; a kill before that leaves it
    # unverifiable, so the one before it is used (issue 11: only verified bytes are resumed from)
    verified = [p for p in finals if p.with_name(p.name + ".json").exists()]
    found = load_latest_resume_state(run_dir)
    assert found is not None and found[0] == verified[-1] and found[1]["step"] >= 2


# -- RNG state ----------------------------------------------------------------------


def _draws(sampler: torch.Generator) -> tuple:
    return (
        [random.random() for _ in range(3)], random.gauss(0, 1),
        np.random.rand(3).tolist(), float(np.random.standard_normal()),
        torch.rand(3).tolist(), torch.randint(0, 1000, (3,), generator=sampler).tolist(),
    )


def test_rng_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    sampler = torch.Generator().manual_seed(4)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()  # ... and in NumPy's
    save_checkpoint({"rng": rng_state({"sampler": sampler})}, tmp_path / "ck.pt")
    expected = _draws(sampler)

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    sampler.manual_seed(99)
    assert _draws(sampler) != expected  # the state really was disturbed

    set_rng_state(load_checkpoint(tmp_path / "ck.pt")["rng"], {"sampler": sampler})
    assert _draws(sampler) == expected


def test_set_rng_state_names_a_missing_generator() -> None:
    state = rng_state({"sampler": torch.Generator()})
    with pytest.raises(CheckpointError, match="no generator 'shuffle' .*saved generators: sampler"):
        set_rng_state(state, {"shuffle": torch.Generator()})


# -- resume states --------------------------------------------------------------------


def test_resume_states_sorted_by_step_and_pruned_keeping_the_newest(tmp_path: Path) -> None:
    for step in (900, 50, 12000, 300):
        save_checkpoint({"step": step}, resume_state_path(tmp_path, step))
    (tmp_path / "resume_latest.pt").write_bytes(b"")  # not a step: ignored
    (tmp_path / "final.pt").write_bytes(b"")
    assert [p.name for p in resume_states(tmp_path)] == [
        "resume_00000050.pt", "resume_00000300.pt", "resume_00000900.pt", "resume_00012000.pt"]

    stale = tmp_path / ".resume_00000100.pt.tmp.1.abcd"  # left by a killed save
    stale.write_bytes(b"x" * 10)
    os.utime(stale, (0, 0))
    deleted = prune_resume_states(tmp_path, keep_last=2)
    assert [p.name for p in deleted] == ["resume_00000050.pt", "resume_00000300.pt"]
    assert [p.name for p in resume_states(tmp_path)] == ["resume_00000900.pt", "resume_00012000.pt"]
    assert not (tmp_path / "resume_00000050.pt.json").exists() and not stale.exists()
    assert (tmp_path / "resume_00000900.pt.json").exists()

    prune_resume_states(tmp_path, keep_last=0)  # never deletes the newest
    assert [p.name for p in resume_states(tmp_path)] == ["resume_00012000.pt"]
    assert (tmp_path / "final.pt").exists()


def test_latest_resume_state_falls_back_over_a_corrupt_newest(tmp_path: Path, capsys) -> None:
    assert latest_resume_state(tmp_path) is None
    assert latest_resume_state(tmp_path / "missing") is None
    for step in (100, 200, 300):
        save_checkpoint({"step": step, "model": {"w": torch.randn(100)}}, resume_state_path(tmp_path, step))
    newest = resume_state_path(tmp_path, 300)
    newest.write_bytes(newest.read_bytes()[:500])  # as if killed by a non-atomic writer

    assert latest_resume_state(tmp_path, require=("model",)) == resume_state_path(tmp_path, 200)
    err = capsys.readouterr().err
    assert "resume_00000300.pt" in err and "truncated" in err
    # Moved aside, so pruning can never keep it in place of a good state.
    assert [p.name for p in resume_states(tmp_path)] == ["resume_00000100.pt", "resume_00000200.pt"]
    assert (tmp_path / "resume_00000300.pt.corrupt").exists()
    path, state = load_latest_resume_state(tmp_path)
    assert path.name == "resume_00000200.pt" and state["step"] == 200


# -- devices ------------------------------------------------------------------------------


def test_resolve_device_without_a_gpu(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_warned_cpu_fallback", False)
    assert resolve_device("cpu") == "cpu"
    assert capsys.readouterr().err == ""
    assert resolve_device("auto") == "cpu"
    assert resolve_device("auto") == "cpu"
    assert capsys.readouterr().err.count("no GPU is visible") == 1  # warned once
    for requested in ("cuda", "cuda:1"):
        with pytest.raises(UserError) as excinfo:
            resolve_device(requested)
        assert str(excinfo.value) == (f"CUDA was asked for (device={requested}) but no GPU is visible; "
                                      "use --device auto to fall back to CPU")
    for bad in ("gpu", "cuda:x", "", "CPU0"):
        with pytest.raises(UserError, match=f"unknown device {bad!r}"):
            resolve_device(bad)


def test_resolve_device_with_a_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(UserError, match=r"device=cuda:2 asked for GPU 2 but only 2 GPUs are visible"):
        resolve_device("cuda:2")
