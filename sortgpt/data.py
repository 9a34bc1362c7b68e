"""Sorting data: batches, the training-length schedule, and which positions are scored.

A sequence for list length K is ``x_1 … x_K  SEP  sorted(x)_1 … sorted(x)_K``:
T = 2K + 1 tokens, numbers in 0..vocab_n−1, SEP = vocab_n, no BOS. The loss
only scores the sorted half: the prediction made at position K (the SEP) is the
smallest number, …, the prediction at T−2 is the largest. Fresh data every step;
all sequences in one step share K, so a batch is a dense (B, T) tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_batch(
    batch_size: int, k: int, vocab_n: int, no_dup: bool, generator: torch.Generator
) -> torch.Tensor:
    """(batch_size, 2k+1) token ids, drawn with ``generator`` on its device."""
    device = generator.device
    if no_dup:
        if k > vocab_n:
            raise ValueError(f"cannot draw {k} distinct numbers from a vocabulary of {vocab_n}")
        # The top-k of i.i.d. uniform scores is a uniformly random k-subset, and
        # topk returns it in score order, i.e. a uniformly random order.
        scores = torch.rand(batch_size, vocab_n, generator=generator, device=device)
        numbers = scores.topk(k, dim=1).indices
    else:
        numbers = torch.randint(0, vocab_n, (batch_size, k), generator=generator, device=device)
    sep = torch.full((batch_size, 1), vocab_n, dtype=torch.long, device=device)
    return torch.cat([numbers, sep, numbers.sort(dim=1).values], dim=1)


def curriculum_max_k(
    step: int, min_k: int, max_k: int, warmup_iters: int, span_iters: int
) -> int:
    """Largest K the curriculum allows at iteration ``step`` (0-based):
    ``min + round(frac·(max−min))``, frac = clamp((step − warmup) / span, 0, 1)."""
    frac = min(1.0, max(0, step - warmup_iters) / max(1, span_iters))
    return max(min_k, min(max_k, min_k + round(frac * (max_k - min_k))))


def train_k_range(step: int, cfg: dict) -> tuple[int, int]:
    """The inclusive range K is drawn from at iteration ``step`` for a run config."""
    lo, hi = int(cfg["train_min_k"]), int(cfg["train_max_k"])
    if cfg["length_mode"] == "curriculum":
        hi = curriculum_max_k(step, lo, hi, int(cfg["curriculum_warmup_iters"]),
                              int(cfg["curriculum_span_iters"]))
    elif cfg["length_mode"] != "mix":
        raise ValueError(f"unknown length_mode {cfg['length_mode']!r}")
    return lo, hi


def pick_train_k(step: int, cfg: dict, generator: torch.Generator) -> int:
    """K for one training step: uniform over :func:`train_k_range` (a CPU generator,
    so that picking K never waits on the GPU)."""
    lo, hi = train_k_range(step, cfg)
    return int(torch.randint(lo, hi + 1, (1,), generator=generator).item())


# -- which positions are scored ---------------------------------------------

def prediction_positions(k: int) -> slice:
    """Positions whose next-token prediction is scored: K … T−2 (K of them)."""
    return slice(k, 2 * k)


def sorted_targets(batch: torch.Tensor, k: int) -> torch.Tensor:
    """The tokens those positions must predict: K+1 … T−1, the sorted half."""
    return batch[:, k + 1:]


def loss_mask(k: int) -> torch.Tensor:
    """Boolean (T,) mask over full-sequence prediction positions, True where scored."""
    mask = torch.zeros(2 * k + 1, dtype=torch.bool)
    mask[prediction_positions(k)] = True
    return mask


def sorted_half_loss(logits: torch.Tensor, batch: torch.Tensor, k: int) -> torch.Tensor:
    """Mean cross-entropy over the K scored predictions of every sequence.
    ``logits`` are either full-sequence (B, T, V) or already the scored slice (B, K, V)."""
    if logits.shape[1] == batch.shape[1]:
        logits = logits[:, prediction_positions(k)]
    targets = sorted_targets(batch, k)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
