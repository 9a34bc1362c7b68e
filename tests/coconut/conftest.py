"""Shared fixtures: one tiny training run (2 epochs: stage 0, then stage 1 with a latent) reused by the
training, loading and CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from coconut.experiment import EXPERIMENT
from launch.experiment import RunContext


def tiny_config(**overrides) -> dict:
    cfg = EXPERIMENT.defaults() | dict(
        feedback_mode="continuous", n_layer=1, n_embd=16, n_head=2, train_size=12, val_size=6, batch_size=4,
        grad_accum=2, epochs_per_stage=1, max_latent_stage=1, num_epochs=2, lr=1e-3, uniform_prob=0.3,
        max_new_tokens=4, eval_batch_size=4, device="cpu", seed=7,
    )
    cfg.update(overrides)
    assert EXPERIMENT.check(cfg) == []
    return cfg


@pytest.fixture(scope="session")
def make_config():
    """tiny_config as a fixture (test modules cannot import a conftest by name)."""
    return tiny_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """checkpoints-like tree: <root>/coconut/coconut/seed7 holding a finished 2-epoch run."""
    run_dir = tmp_path_factory.mktemp("tree") / "coconut" / "coconut" / "seed7"
    run_dir.mkdir(parents=True)
    EXPERIMENT.run(tiny_config(), RunContext(run_dir=run_dir))
    return run_dir
