from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sortgpt.experiment import EXPERIMENT


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """A run small enough for a unit test: d 16, vocab 16, K 2–4, a few dozen steps."""
    cfg = EXPERIMENT.defaults() | {
        "vocab_n": 16, "n_embd": 16, "n_layers": 1, "train_min_k": 2, "train_max_k": 4,
        "test_min_k": 5, "test_max_k": 6, "batch_size": 16, "max_iters": 40, "warmup_iters": 5,
        "max_lr": 1e-3, "eval_every": 10, "eval_samples": 8, "checkpoint_iter": 21, "save_every": 10,
        "keep_resume": 2, "device": "cpu",
    }
    cfg.update(overrides)
    assert EXPERIMENT.check(cfg) == [], EXPERIMENT.check(cfg)
    return cfg


@pytest.fixture
def tiny() -> dict[str, Any]:
    return tiny_config()


@pytest.fixture
def make_config() -> Callable[..., dict[str, Any]]:
    return tiny_config


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These models are tiny: a second intra-op thread only adds synchronisation,
    and on a busy 2-core machine it makes every step wait for a descheduled thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
