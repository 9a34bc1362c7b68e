"""Checkpoint names in the reference convention."""

from __future__ import annotations

import pytest

from sortgpt.experiment import EXPERIMENT
from sortgpt.naming import checkpoint_name, parse_checkpoint_name


def test_reference_names() -> None:
    cfg = EXPERIMENT.defaults()
    assert checkpoint_name("Final", cfg, 40000) == (
        "Final_N128_d128_H1_L2_npos1_mlp1_ln1_lenmix_trainK2to8_testK17to32_nodup1_iters40000.pt")
    fixed = cfg | {"n_layers": 1, "use_mlp": False, "use_layernorm": False, "train_min_k": 4, "train_max_k": 4,
                   "length_mode": "mix"}
    assert checkpoint_name("Checkpoint", fixed, 20001) == (
        "Checkpoint_N128_d128_H1_L1_npos1_mlp0_ln0_lenmix_trainK4to4_testK17to32_nodup1_iters20001.pt")
    curriculum = cfg | {"length_mode": "curriculum", "no_pos_emb": False, "no_dup": False, "train_max_k": 16}
    assert "_npos0_" in checkpoint_name("Final", curriculum, 5)
    assert "_lencurriculum_trainK2to16_" in checkpoint_name("Final", curriculum, 5)
    assert checkpoint_name("Final", curriculum, 5).endswith("_nodup0_iters5.pt")


def test_names_parse_back() -> None:
    cfg = EXPERIMENT.defaults() | {"length_mode": "curriculum", "use_mlp": False, "train_max_k": 12}
    parsed = parse_checkpoint_name(checkpoint_name("Checkpoint", cfg, 20001))
    assert parsed is not None
    assert parsed.pop("kind") == "Checkpoint" and parsed.pop("step") == 20001
    assert parsed == {k: cfg[k] for k in parsed}
    assert parse_checkpoint_name("resume_00001000.pt") is None


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        checkpoint_name("Latest", EXPERIMENT.defaults(), 1)
