"""The ``coconut`` experiment family for the sweep harness (see launch/experiment.py)."""

from __future__ import annotations

from typing import Any

from coconut.model import FEEDBACK_MODES
from launch.experiment import RunContext


class CoconutExperiment:
    name = "coconut"

    def defaults(self) -> dict[str, Any]:
        return {
            "feedback_mode": "continuous",
            "model_name": "",            # "" -> coconut, pause-frozen, ... from feedback_mode
            # "" -> an inline GPT-2 config (n_layer x n_embd, n_head) trained from scratch; otherwise a hub
            # id or local path for from_pretrained (e.g. openai-community/gpt2, where the weights are cached)
            "base_model": "",
            "n_layer": 4,
            "n_embd": 256,
            "n_head": 4,
            "dropout": 0.1,
            # curriculum (ProsQA defaults of the reference)
            "c_thought": 1,
            "epochs_per_stage": 5,
            "max_latent_stage": 6,
            "pad_latent_to_max": True,
            "uniform_prob": 0.0,
            "num_epochs": 50,
            # optimisation: AdamW re-created every epoch, no schedule, no clipping
            "lr": 1e-4,
            "weight_decay": 0.01,
            "batch_size": 32,
            "grad_accum": 4,
            # data
            "train_size": 17886,         # the size of the real (unavailable) training split
            "train_path": "",            # "" -> generate train_size examples with coconut.generate
            "data_seed": 0,              # the generated training set: the same for every run of a sweep
            "data_dir": "",              # "" -> $COCONUT_DATA_DIR or shared/data/prosqa next to the repo
            "val_size": 0,               # 0 -> all 300 validation examples
            "test_at_end": False,        # accuracy of checkpoint_best on the 500 test examples at the end
            # evaluation and bookkeeping
            "max_new_tokens": 128,
            "eval_batch_size": 64,
            "keep_checkpoints": 0,       # 0 -> every checkpoint_<epoch> (run.py); N -> newest N + each stage's last
            "seed": 0,
            "device": "auto",
        }

    def check(self, config: dict[str, Any]) -> list[str]:
        problems = []
        if config["feedback_mode"] not in FEEDBACK_MODES:
            problems.append(f"feedback_mode: {config['feedback_mode']!r} is not one of {', '.join(FEEDBACK_MODES)}")
        if not config["base_model"] and config["n_embd"] % config["n_head"]:
            problems.append(f"n_embd: {config['n_embd']} is not divisible by n_head={config['n_head']}")
        for key in ("n_layer", "n_embd", "n_head", "c_thought", "epochs_per_stage", "num_epochs", "batch_size",
                    "grad_accum", "max_new_tokens", "eval_batch_size"):
            if config[key] < 1:
                problems.append(f"{key}: must be at least 1, got {config[key]}")
        for key in ("max_latent_stage", "train_size", "val_size", "keep_checkpoints"):
            if config[key] < 0:
                problems.append(f"{key}: must be >= 0, got {config[key]}")
        if not config["train_path"] and config["train_size"] < 1:
            problems.append("train_size: must be at least 1 when the training set is generated")
        if not 0.0 <= config["uniform_prob"] <= 1.0:
            problems.append(f"uniform_prob: must be in [0, 1], got {config['uniform_prob']}")
        if not 0.0 <= config["dropout"] < 1.0:
            problems.append(f"dropout: must be in [0, 1), got {config['dropout']}")
        if config["lr"] <= 0:
            problems.append(f"lr: must be positive, got {config['lr']}")
        if config["weight_decay"] < 0:
            problems.append(f"weight_decay: must be >= 0, got {config['weight_decay']}")
        return problems

    def total_steps(self, config: dict[str, Any]) -> int:
        return int(config["num_epochs"])

    def run(self, config: dict[str, Any], ctx: RunContext) -> None:
        from coconut.train import train  # torch/transformers only when a run starts
        from launch.device import resolve_device

        train(config, ctx, resolve_device(config["device"]))


EXPERIMENT = CoconutExperiment()
