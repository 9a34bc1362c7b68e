"""``lr_schedule``: "constant" is the reference (the rate never changes; run keys of trees launched before
the knob unchanged, tests/coconut/test_prosqa_mini.py); "cosine" decays the rate over the run's optimizer
steps, continues on the same curve after a resume, and refuses a resume with another num_epochs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coconut.experiment import EXPERIMENT
from coconut.train import scheduled_lr
from launch.checkpoint import CheckpointError
from launch.experiment import RunContext


def test_the_cosine_rate_starts_at_lr_and_decays_towards_zero() -> None:
    assert scheduled_lr(2e-3, 0, 100) == 2e-3
    assert scheduled_lr(2e-3, 50, 100) == pytest.approx(1e-3)
    assert 0 < scheduled_lr(2e-3, 99, 100) < 2e-6


class _Stop(Exception):
    pass


_ADAMW = torch.optim.AdamW  # the real one: each test's recording class is built on it, not on the last test's


def _rates(monkeypatch: pytest.MonkeyPatch, config: dict, run_dir: Path, stop_at: int | None = None) -> list[float]:
    """The rate of every optimizer step of a run (``stop_at``: raise at that step, as a kill would)."""
    seen: list[float] = []

    class Recording(_ADAMW):  # type: ignore[misc, valid-type]
        def step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if stop_at is not None and len(seen) == stop_at:
                raise _Stop
            seen.append(self.param_groups[0]["lr"])
            return super().step(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    run_dir.mkdir(exist_ok=True)
    EXPERIMENT.run(config, RunContext(run_dir=run_dir))
    return seen


def test_constant_keeps_the_rate_and_cosine_follows_the_curve(make_config, monkeypatch, tmp_path: Path) -> None:
    # 12 examples in batches of 4 with grad_accum 2: 2 optimizer steps an epoch, 4 in the run
    constant = _rates(monkeypatch, make_config(), tmp_path / "constant")
    assert constant == [1e-3] * 4
    cosine = _rates(monkeypatch, make_config(lr_schedule="cosine"), tmp_path / "cosine")
    assert cosine == pytest.approx([scheduled_lr(1e-3, t, 4) for t in range(4)])
    assert cosine[0] == 1e-3 and cosine[-1] < cosine[1] < 1e-3


def test_a_resumed_cosine_run_continues_on_the_same_curve(make_config, monkeypatch, tmp_path: Path) -> None:
    config = make_config(lr_schedule="cosine")
    whole = _rates(monkeypatch, config, tmp_path / "whole")
    with pytest.raises(_Stop):  # killed at the first step of epoch 2, after epoch 1's resume state
        _rates(monkeypatch, config, tmp_path / "killed", stop_at=2)
    assert _rates(monkeypatch, config, tmp_path / "killed") == pytest.approx(whole[2:])


def test_a_cosine_run_does_not_resume_with_another_length(make_config, monkeypatch, tmp_path: Path) -> None:
    _rates(monkeypatch, make_config(lr_schedule="cosine", num_epochs=1), tmp_path / "run")
    with pytest.raises(CheckpointError, match="num_epochs"):
        _rates(monkeypatch, make_config(lr_schedule="cosine", num_epochs=2), tmp_path / "run")
    _rates(monkeypatch, make_config(num_epochs=1), tmp_path / "constant")  # constant: more epochs resume
    assert len(_rates(monkeypatch, make_config(num_epochs=2), tmp_path / "constant")) == 2


def test_an_unknown_schedule_is_refused() -> None:
    assert EXPERIMENT.check(EXPERIMENT.defaults() | {"lr_schedule": "linear"}) == \
        ["lr_schedule: must be 'constant' or 'cosine', got 'linear'"]
