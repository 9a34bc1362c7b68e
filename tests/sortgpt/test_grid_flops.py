"""bench/sortgpt_grid_flops.py counts what the model computes: its matmul FLOPs
equal torch's own FlopCounterMode on the real model (attention, which the CPU
kernel does not report, is added on top: causal half of QKᵀ and AV)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sortgpt.data import prediction_positions, sample_batch
from sortgpt.experiment import EXPERIMENT
from sortgpt.model import GPT
from sortgpt.train import model_config

_path = Path(__file__).resolve().parents[2] / "bench" / "sortgpt_grid_flops.py"
_spec = importlib.util.spec_from_file_location("sortgpt_grid_flops", _path)
assert _spec is not None and _spec.loader is not None
grid_flops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grid_flops)


@pytest.mark.parametrize("n_layers,use_mlp", [(1, False), (2, True)])
def test_forward_flops_match_torch_flop_counter(n_layers: int, use_mlp: bool) -> None:
    cfg = EXPERIMENT.defaults() | {"n_layers": n_layers, "use_mlp": use_mlp}
    model = GPT(model_config(cfg))
    k, batch = 8, 4
    tokens = sample_batch(batch, k, int(cfg["vocab_n"]), True, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(tokens, positions=prediction_positions(k))
    T, C = 2 * k + 1, int(cfg["n_embd"])
    attention = batch * n_layers * 4 * C * T * (T + 1) // 2
    assert batch * grid_flops.forward_flops(cfg, T, k) == counter.get_total_flops() + attention


def test_fixed_run_is_its_steps_times_one_step() -> None:
    cfg = EXPERIMENT.defaults() | {"train_min_k": 4, "train_max_k": 4, "length_mode": "mix", "max_iters": 10,
                                   "eval_every": 5}
    train, _ = grid_flops.run_flops(cfg)
    assert train == 10 * 3 * int(cfg["batch_size"]) * grid_flops.forward_flops(cfg, 9, 4)
