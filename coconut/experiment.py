"""The ``coconut`` experiment family for the sweep harness (see launch/experiment.py)."""

from __future__ import annotations

from typing import Any

from coconut.generate import DEFAULT_NAMES, DEFAULT_SIZE, NAME_SETS, GraphSize
from coconut.model import FEEDBACK_MODES
from launch.experiment import RunContext


class CoconutExperiment:
    name = "coconut"
    # Knobs added after coconut trees were launched, with the value that behaves as before: a run that
    # keeps it keeps its run key (launch/experiment.py, later_params).
    later_params = {"graph_names": DEFAULT_NAMES, "lr_schedule": "constant"}

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
            # "constant": the reference. "cosine": lr * (1 + cos(pi * t / T)) / 2 at optimizer step t of the
            # run's T (not the paper's protocol: a from-scratch model at CPU scale; REPRODUCTION.md)
            "lr_schedule": "constant",
            "weight_decay": 0.01,
            "batch_size": 32,
            "grad_accum": 4,
            # data
            "train_size": 17886,         # the size of the real (unavailable) training split
            "train_path": "",            # "" -> generate train_size examples with coconut.generate
            "data_seed": 0,              # the generated training set: the same for every run of a sweep
            "data_dir": "",              # "" -> $COCONUT_DATA_DIR or shared/data/prosqa next to the repo
            "val_size": 0,               # 0 -> all 300 validation examples
            # ProsQA-mini: the generator's size knobs (coconut.generate.GraphSize; the defaults are the
            # real splits' calibration): nodes grown per graph, and the root -> target path length
            # (= the number of reasoning steps). Smaller graphs make shorter questions.
            "graph_min_nodes": DEFAULT_SIZE.min_nodes,
            "graph_max_nodes": DEFAULT_SIZE.max_nodes,
            "graph_min_path": DEFAULT_SIZE.min_path,
            "graph_max_path": DEFAULT_SIZE.max_path,
            # The names of generated graphs (coconut.generate.NAME_SETS): "prosqa", the real splits'
            # made-up multi-token concepts ("wumpus" = 2-3 GPT-2 tokens); "single_token", common words
            # and first names that are one GPT-2 token each (same graphs, other names).
            "graph_names": DEFAULT_NAMES,
            # "real": validate on the real 300 / test on the real 500 (full-size graphs). "generated":
            # 300 validation and 500 test examples from the generator with the run's graph size and their
            # own seeds (data_seed, 1) and (data_seed, 2), with every training question excluded (and the
            # validation questions from test): a model trained on mini graphs is scored on mini graphs.
            "eval_data": "real",
            # Restrict GPT-2's BPE to the ~100 tokens ProsQA uses (coconut.data.CompactTokenizer): the
            # same text in and out, a 110-row embedding/head instead of 50,257. From scratch only.
            "compact_vocab": False,
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
        if config["lr_schedule"] not in ("constant", "cosine"):
            problems.append(f"lr_schedule: must be 'constant' or 'cosine', got {config['lr_schedule']!r}")
        if config["weight_decay"] < 0:
            problems.append(f"weight_decay: must be >= 0, got {config['weight_decay']}")
        if config["eval_data"] not in ("real", "generated"):
            problems.append(f"eval_data: must be 'real' or 'generated', got {config['eval_data']!r}")
        if config["compact_vocab"] and config["base_model"]:
            problems.append(f"compact_vocab: only for a model trained from scratch (base_model: \"\"); "
                            f"{config['base_model']!r} has GPT-2's 50,257-row embedding")
        if not isinstance(config["graph_names"], str) or config["graph_names"] not in NAME_SETS:
            problems.append(f"graph_names: {config['graph_names']!r} is not one of {', '.join(NAME_SETS)}")
        elif config["graph_names"] != "prosqa" and config["eval_data"] == "real":
            problems.append(f"graph_names: {config['graph_names']!r} names only generated data; the real "
                            "validation and test splits use the prosqa names (set eval_data: generated)")
        ints = ("graph_min_nodes", "graph_max_nodes", "graph_min_path", "graph_max_path")
        for key in ints:
            if not isinstance(config[key], int) or isinstance(config[key], bool):
                problems.append(f"{key}: must be an integer, got {config[key]!r}")
        if all(isinstance(config[k], int) for k in ints):
            size = GraphSize(config["graph_min_nodes"], config["graph_max_nodes"], config["graph_min_path"],
                             config["graph_max_path"])
            problems += size.problems(prefix="graph_")
        return problems

    def total_steps(self, config: dict[str, Any]) -> int:
        return int(config["num_epochs"])

    def run(self, config: dict[str, Any], ctx: RunContext) -> None:
        from coconut.train import train  # torch/transformers only when a run starts
        from launch.device import resolve_device

        train(config, ctx, resolve_device(config["device"]))


EXPERIMENT = CoconutExperiment()
