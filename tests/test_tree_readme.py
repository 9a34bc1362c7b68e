"""checkpoints/README.md documents the tree; this keeps it true to the code."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from launch import store
from launch.checkpoint import save_checkpoint
from launch.collect import PROVENANCE, RECORD
from launch.experiment import METRICS_FILE, PROGRESS_FILE
from sortgpt.experiment import EXPERIMENT as SORTGPT
from sortgpt.naming import checkpoint_name, parse_checkpoint_name

README = (Path(__file__).resolve().parent.parent / "checkpoints" / "README.md").read_text()


def test_run_files_are_documented():
    for name in (store.RUN_FILE, store.STATE_FILE, store.LOG_FILE, METRICS_FILE, PROGRESS_FILE):
        assert f"`{name}`" in README, name
    for state in (store.SUBMITTED, store.RUNNING, store.REQUEUED, store.COMPLETED, store.FAILED, store.CANCELLED):
        assert state in README


def test_sidecar_fields_are_documented(tmp_path: Path):
    meta = save_checkpoint({"w": torch.zeros(2)}, tmp_path / "x.pt", sidecar={"config": {}, "step": 1})
    for key in meta:
        assert f"`{key}`" in README, key


def test_parquet_columns_are_documented():
    for col in PROVENANCE + RECORD:
        assert f"`{col}`" in README, col


def test_sortgpt_example_name_is_what_the_code_writes():
    example = re.search(r"`(Final_N128\S+?\.pt)`", README).group(1)
    cfg = {**SORTGPT.defaults(), "n_layers": 2, "use_mlp": False, "train_min_k": 2, "train_max_k": 8}
    assert checkpoint_name("Final", cfg, 40000) == example
    assert parse_checkpoint_name(example)["step"] == 40000


def test_sortgpt_checkpoint_contents_are_documented():
    from sortgpt.model import GPT
    from sortgpt.train import checkpoint_payload, model_config

    cfg = {**SORTGPT.defaults(), "vocab_n": 8, "n_embd": 8, "n_layers": 1, "train_max_k": 4, "test_max_k": 4}
    payload = checkpoint_payload(GPT(model_config(cfg)), cfg, 1)
    section = README.split("### sortgpt")[1].split("### coconut")[0]
    holds = section[section.index("Each holds"):].split("\n\n")[0]
    documented = set(re.findall(r"`([a-z_]+)`", holds))
    # Checkpoint_ adds the optimizer state (train.py), Best_ its metric (update_best)
    assert documented == set(payload) | {"optimizer", "best_metric"}
