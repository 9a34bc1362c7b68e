"""Checkpoint file names in the reference convention, so users can match our
files with the published ones, e.g.
``Final_N128_d128_H1_L2_npos1_mlp1_ln1_lenmix_trainK2to8_testK17to32_nodup1_iters40000.pt``."""

from __future__ import annotations

import re
from typing import Any

KINDS = ("Checkpoint", "Final", "Best")  # Best: the weights of the best evaluation so far (save_best)


def checkpoint_name(kind: str, cfg: dict[str, Any], step: int) -> str:
    """``kind`` is "Checkpoint" (intermediate) or "Final"; ``step`` = iterations done."""
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}, not {kind!r}")
    return (
        f"{kind}_N{int(cfg['vocab_n'])}_d{int(cfg['n_embd'])}_H{int(cfg['n_heads'])}"
        f"_L{int(cfg['n_layers'])}_npos{int(bool(cfg['no_pos_emb']))}"
        f"_mlp{int(bool(cfg['use_mlp']))}_ln{int(bool(cfg['use_layernorm']))}"
        f"_len{cfg['length_mode']}_trainK{int(cfg['train_min_k'])}to{int(cfg['train_max_k'])}"
        f"_testK{int(cfg['test_min_k'])}to{int(cfg['test_max_k'])}"
        f"_nodup{int(bool(cfg['no_dup']))}_iters{int(step)}.pt"
    )


_NAME = re.compile(
    r"^(?P<kind>Checkpoint|Final|Best)_N(?P<vocab_n>\d+)_d(?P<n_embd>\d+)_H(?P<n_heads>\d+)_L(?P<n_layers>\d+)"
    r"_npos(?P<no_pos_emb>[01])_mlp(?P<use_mlp>[01])_ln(?P<use_layernorm>[01])_len(?P<length_mode>[a-z]+)"
    r"_trainK(?P<train_min_k>\d+)to(?P<train_max_k>\d+)_testK(?P<test_min_k>\d+)to(?P<test_max_k>\d+)"
    r"_nodup(?P<no_dup>[01])_iters(?P<step>\d+)\.pt$"
)


def parse_checkpoint_name(name: str) -> dict[str, Any] | None:
    """Inverse of :func:`checkpoint_name` (None if ``name`` is not in the convention)."""
    m = _NAME.match(name)
    if m is None:
        return None
    out: dict[str, Any] = {}
    for key, value in m.groupdict().items():
        if key in ("kind", "length_mode"):
            out[key] = value
        elif key in ("no_pos_emb", "use_mlp", "use_layernorm", "no_dup"):
            out[key] = value == "1"
        else:
            out[key] = int(value)
    return out
