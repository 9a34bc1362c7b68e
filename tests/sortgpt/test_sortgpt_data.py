"""Data invariants, the length schedule, the learning-rate schedule, loss masking."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from sortgpt.data import (
    curriculum_max_k,
    loss_mask,
    pick_train_k,
    prediction_positions,
    sample_batch,
    sorted_half_loss,
    sorted_targets,
    train_k_range,
)
from sortgpt.experiment import EXPERIMENT
from sortgpt.train import eval_ks, lr_at


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("k", [1, 2, 7, 16, 32])
def test_batches_are_distinct_numbers_sep_then_sorted(k: int) -> None:
    batch = sample_batch(500, k, 128, True, gen(k))
    assert batch.shape == (500, 2 * k + 1) and batch.dtype == torch.long
    numbers, sep, tail = batch[:, :k], batch[:, k], batch[:, k + 1:]
    assert (sep == 128).all()  # SEP = vocab_n, exactly once, right after the numbers
    assert ((numbers >= 0) & (numbers < 128)).all()
    assert all(len(set(row.tolist())) == k for row in numbers)
    torch.testing.assert_close(tail, numbers.sort(dim=1).values)
    torch.testing.assert_close(sorted_targets(batch, k), tail)


def test_numbers_are_uniform_and_in_random_order() -> None:
    batch = sample_batch(4000, 4, 16, True, gen(1))
    counts = torch.bincount(batch[:, :4].flatten(), minlength=16).float()
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()
    already_sorted = (batch[:, :4] == batch[:, 5:]).all(dim=1).float().mean().item()
    assert already_sorted < 3 / math.factorial(4)  # ~1/24 if the order is random


def test_with_duplicates_allowed_targets_are_still_sorted() -> None:
    batch = sample_batch(2000, 8, 4, False, gen(2))  # K > vocab: duplicates are certain
    torch.testing.assert_close(batch[:, 9:], batch[:, :8].sort(dim=1).values)
    with pytest.raises(ValueError):
        sample_batch(2, 8, 4, True, gen(2))


def test_same_generator_state_same_batch() -> None:
    assert torch.equal(sample_batch(8, 5, 32, True, gen(7)), sample_batch(8, 5, 32, True, gen(7)))
    assert not torch.equal(sample_batch(8, 5, 32, True, gen(7)), sample_batch(8, 5, 32, True, gen(8)))


def test_curriculum_formula_at_chosen_iterations() -> None:
    # min + round(frac * (max - min)), frac = clamp((iter - warmup) / span, 0, 1)
    assert curriculum_max_k(0, 2, 16, 0, 20000) == 2
    assert curriculum_max_k(10000, 2, 16, 0, 20000) == 9
    assert curriculum_max_k(5000, 2, 16, 0, 20000) == 6  # 2 + round(3.5): Python rounds half to even
    assert curriculum_max_k(20000, 2, 16, 0, 20000) == 16
    assert curriculum_max_k(39999, 2, 16, 0, 20000) == 16
    assert curriculum_max_k(999, 2, 16, 1000, 20000) == 2  # still warming up
    assert curriculum_max_k(11000, 2, 16, 1000, 20000) == 9
    assert curriculum_max_k(123, 4, 4, 0, 20000) == 4


def test_length_modes_draw_uniformly_from_their_range() -> None:
    mix = EXPERIMENT.defaults() | {"train_min_k": 2, "train_max_k": 6}
    g = gen(3)
    counts = Counter(pick_train_k(0, mix, g) for _ in range(5000))
    assert sorted(counts) == [2, 3, 4, 5, 6] and min(counts.values()) > 800
    cur = mix | {"length_mode": "curriculum", "curriculum_span_iters": 100}
    assert train_k_range(0, cur) == (2, 2) and train_k_range(50, cur) == (2, 4) and train_k_range(100, cur) == (2, 6)
    assert {pick_train_k(50, cur, g) for _ in range(500)} == {2, 3, 4}
    fixed = mix | {"train_min_k": 8, "train_max_k": 8}
    assert {pick_train_k(i, fixed, g) for i in range(50)} == {8}


def test_learning_rate_schedule_at_chosen_iterations() -> None:
    cfg = EXPERIMENT.defaults()  # warm-up 400, 1e-4 -> 1e-6 at 40,000
    assert lr_at(0, cfg) == pytest.approx(1e-4 / 401)
    assert lr_at(199, cfg) == pytest.approx(1e-4 * 200 / 401)
    assert lr_at(400, cfg) == pytest.approx(1e-4)
    assert lr_at(20200, cfg) == pytest.approx((1e-4 + 1e-6) / 2)  # cosine midpoint
    assert lr_at(40000, cfg) == pytest.approx(1e-6)
    assert 1e-6 < lr_at(39999, cfg) < 1.001e-6
    lrs = [lr_at(i, cfg) for i in range(400, 40000, 97)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_eval_lengths() -> None:
    cfg = EXPERIMENT.defaults() | {"train_min_k": 2, "train_max_k": 8}
    assert eval_ks(cfg) == (list(range(2, 9)), list(range(17, 33)))
    assert eval_ks(cfg | {"test_min_k": 5}) == (list(range(2, 9)), list(range(9, 33)))


@pytest.mark.parametrize("k", [1, 3, 6])
def test_loss_scores_exactly_the_sorted_half(k: int) -> None:
    T = 2 * k + 1
    mask = loss_mask(k)
    assert mask.tolist() == [False] * k + [True] * k + [False]  # positions K .. T-2
    assert prediction_positions(k) == slice(k, T - 1)
    batch = sample_batch(5, k, 10, True, gen(k))
    logits = torch.randn(5, T, 11, requires_grad=True)
    loss = sorted_half_loss(logits, batch, k)
    # Same value as cross-entropy of the masked positions against the next tokens.
    manual = torch.nn.functional.cross_entropy(logits[:, mask].reshape(-1, 11), batch[:, 1:][:, mask[:-1]].flatten())
    torch.testing.assert_close(loss, manual)
    # The slice form (what training passes) agrees with the full form.
    torch.testing.assert_close(sorted_half_loss(logits[:, mask], batch, k), loss)
    # No gradient reaches any unscored position.
    loss.backward()
    grad_seen = logits.grad.abs().sum(dim=(0, 2)) > 0
    assert grad_seen.tolist() == mask.tolist()
