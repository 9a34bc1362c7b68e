"""`sweep sort CKPT 17 3 99 42`: output, and one clear line for each kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from launch.errors import CheckpointError, UserError
from launch.experiment import RunContext
from sortgpt.cli import sort_command
from sortgpt.naming import checkpoint_name
from sortgpt.train import greedy_sort, load_model, train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sortgpt.experiment import EXPERIMENT

    cfg = EXPERIMENT.defaults() | {
        "vocab_n": 16, "n_embd": 16, "n_layers": 1, "train_min_k": 2, "train_max_k": 4, "test_min_k": 5,
        "test_max_k": 6, "batch_size": 32, "max_iters": 60, "max_lr": 3e-3, "warmup_iters": 5,
        "eval_every": 1000, "eval_samples": 4, "save_every": 0, "checkpoint_iter": 0, "device": "cpu"}
    run_dir = tmp_path_factory.mktemp("sortrun")
    train(cfg, RunContext(run_dir=run_dir))
    return run_dir / checkpoint_name("Final", cfg, 60)


def invoke(*args: str):
    return CliRunner().invoke(sort_command, [str(a) for a in args])


def test_sort_prints_the_models_output_and_verdict(checkpoint: Path) -> None:
    result = invoke(checkpoint, 9, 3, 12, 0)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "input:    9 3 12 0"
    assert lines[2] == "expected: 0 3 9 12"
    # Whatever the (barely trained) model says, the verdict matches its own greedy output.
    model, _ = load_model(checkpoint)
    out = greedy_sort(model, torch.tensor([[9, 3, 12, 0, 16]]), 4, torch.device("cpu"))[0].tolist()
    assert lines[1] == "model:    " + " ".join(str(t) if t < 16 else "SEP" for t in out)
    right = sum(a == b for a, b in zip(out, [0, 3, 9, 12], strict=True))
    assert lines[3] == f"{'correct' if right == 4 else 'WRONG'} ({right}/4 positions right)"


@pytest.mark.parametrize(("args", "message"), [
    (["3", "16"], "16 is outside this model's vocabulary 0..15"),
    (["3", "-1"], "-1 is outside this model's vocabulary 0..15"),
    (["3", "5", "3"], "duplicate numbers (3)"),
    (["3", "x"], "'x' is not an integer"),
    ([str(i) for i in range(7)], "7 numbers is longer than this model takes (at most 6"),
])
def test_bad_lists_are_one_clear_user_error(checkpoint: Path, args: list[str], message: str) -> None:
    result = invoke(checkpoint, *args)
    assert isinstance(result.exception, UserError)
    assert message in str(result.exception) and "\n" not in str(result.exception)


def test_bad_checkpoints_are_one_clear_error(tmp_path: Path) -> None:
    result = invoke(tmp_path / "missing.pt", 1, 2)
    assert isinstance(result.exception, CheckpointError) and "not found" in str(result.exception)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    result = invoke(other, 1, 2)
    assert isinstance(result.exception, CheckpointError) and "model" in str(result.exception)


def test_through_the_sweep_cli_bad_input_exits_2_with_one_line(checkpoint: Path) -> None:
    import os
    import subprocess
    import sys

    main = "import sys; from launch.cli import main; sys.argv[0] = 'sweep'; main()"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    bad = subprocess.run([sys.executable, "-c", main, "sort", str(checkpoint), "3", "99"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: sort: 99 is outside this model's vocabulary 0..15"
    good = subprocess.run([sys.executable, "-c", main, "sort", str(checkpoint), "3", "1"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert good.returncode == 0 and good.stdout.startswith("input:    3 1\n")
