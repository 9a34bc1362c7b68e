"""The shipped sortgpt specs expand to the seed-003 grid of issue 3 (and the CI demo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.spec import load_spec
from launch.tasks import expand
from sortgpt.experiment import EXPERIMENT

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
GRID = {
    # spec: (runs, tree prefix, group prefix, layernorm)
    "len_gen_dynamic_ln": (168, "with_layernorm/dynamic", "len_gen_k", True),
    "len_gen_fixed_ln": (84, "with_layernorm/fixed", "len_gen_single_k", True),
    "len_gen_dynamic_no_ln": (168, "without_layernorm/dynamic", "len_gen_no_ln_k", False),
    "len_gen_fixed_no_ln": (84, "without_layernorm/fixed", "len_gen_single_no_ln_k", False),
}


@pytest.mark.parametrize("name", sorted(GRID))
def test_grid_specs_expand_to_the_seed_003_grid(name: str) -> None:
    n_runs, tree, group_prefix, layernorm = GRID[name]
    runs = expand(load_spec(SWEEPS / f"{name}.yaml"))
    assert len(runs) == n_runs
    dynamic = "dynamic" in tree
    assert sorted({r.group for r in runs}) == sorted(f"{group_prefix}{k}" for k in range(4, 17, 2))
    assert {r.seed for r in runs} == {1337, 2337, 3337}
    for r in runs:
        c = r.config
        assert r.rel_dir == f"{tree}/{r.group}/task_{r.task:04d}/seed{r.seed}"
        assert r.group == f"{group_prefix}{c['train_max_k']}"
        assert c["train_min_k"] == (2 if dynamic else c["train_max_k"])
        assert c["use_layernorm"] is layernorm
        # The reference protocol, whatever the defaults say.
        assert (c["vocab_n"], c["n_embd"], c["n_heads"], c["no_pos_emb"], c["no_dup"]) == (128, 128, 1, True, True)
        assert (c["test_min_k"], c["test_max_k"], c["max_iters"], c["batch_size"]) == (17, 32, 40000, 4096)
        assert (c["max_lr"], c["min_lr"], c["warmup_iters"], c["checkpoint_iter"]) == (1e-4, 1e-6, 400, 20001)
        assert (c["eval_every"], c["eval_samples"], c["curriculum_warmup_iters"], c["curriculum_span_iters"]) == (
            250, 100, 0, 20000)
        # task numbering: n_layers {2, 1} x MLP {on, off} (x mode {mix, curriculum} when dynamic)
        modes = ["mix", "curriculum"] if dynamic else ["mix"]
        layers, rest = divmod(r.task, 2 * len(modes))
        mlp, mode = divmod(rest, len(modes))
        assert (c["n_layers"], c["use_mlp"], c["length_mode"]) == ([2, 1][layers], [True, False][mlp], modes[mode])
    assert max(r.task for r in runs) == (7 if dynamic else 3)


def test_defaults_are_the_protocol() -> None:
    # A run launched without a spec's overrides still follows issue 3.
    d = EXPERIMENT.defaults()
    assert {k: d[k] for k in ("vocab_n", "n_embd", "n_heads", "no_pos_emb", "no_dup", "test_min_k", "test_max_k")} == {
        "vocab_n": 128, "n_embd": 128, "n_heads": 1, "no_pos_emb": True, "no_dup": True, "test_min_k": 17,
        "test_max_k": 32}
    assert {k: d[k] for k in ("max_iters", "batch_size", "max_lr", "min_lr", "warmup_iters", "eval_every",
                              "eval_samples", "checkpoint_iter", "curriculum_warmup_iters",
                              "curriculum_span_iters")} == {
        "max_iters": 40000, "batch_size": 4096, "max_lr": 1e-4, "min_lr": 1e-6, "warmup_iters": 400,
        "eval_every": 250, "eval_samples": 100, "checkpoint_iter": 20001, "curriculum_warmup_iters": 0,
        "curriculum_span_iters": 20000}


def test_grid_specs_share_one_tree_without_collisions() -> None:
    dirs = [r.rel_dir for name in GRID for r in expand(load_spec(SWEEPS / f"{name}.yaml"))]
    assert len(dirs) == len(set(dirs)) == 504
    assert {load_spec(SWEEPS / f"{name}.yaml").root for name in GRID} == {Path("checkpoints")}


def test_ci_spec_is_small_and_covers_both_modes_fixed_k_and_a_no_layernorm_twin() -> None:
    runs = expand(load_spec(SWEEPS / "ci_sortgpt.yaml"))
    assert len(runs) == 24 and {r.seed for r in runs} == {1337, 2337}
    cells = {(r.config["use_layernorm"], r.config["n_layers"], r.config["train_min_k"], r.config["train_max_k"],
              r.config["length_mode"]) for r in runs}
    kinds = {(2, 4, "mix"), (2, 4, "curriculum"), (4, 4, "mix")}
    # every LayerNorm cell has its no-LayerNorm twin (the F2 contrast the demo shows)
    assert cells == {(ln, layers, *kind) for ln in (True, False) for layers in (1, 2) for kind in kinds}
    for r in runs:
        c = r.config
        assert EXPERIMENT.check(c) == []
        assert c["vocab_n"] == 64 and c["n_embd"] == 64 and c["batch_size"] == 128 and c["max_iters"] <= 1000
        assert (c["test_min_k"], c["test_max_k"]) == (9, 16) and c["device"] == "cpu"
        assert c["test_max_k"] >= 4 * c["train_max_k"]  # the paper's length ratio


REPRODUCE = ["reproduce_sortgpt_fixed_ln", "reproduce_sortgpt_fixed_no_ln", "reproduce_sortgpt_dynamic_ln",
             "reproduce_sortgpt_budget"]


def test_reproduce_spec_has_the_issue_15_cells() -> None:
    """The reduced protocol: LN x layers x MLP at >= 3 fixed train K with >= 3 seeds, mix and
    curriculum for L1 no-MLP LN, >= 4 budgets of its fixed cell, test K reaching 4x the
    smallest train K — and nothing of the full protocol's specs changed (tested above)."""
    from launch.spec_set import expand_set, load_spec_set

    runs = expand_set(load_spec_set(SWEEPS / "reproduce_sortgpt.yaml"))
    assert {r.spec for r in runs} == set(REPRODUCE)
    cells: dict[tuple, set[int]] = {}
    for r in runs:
        c = r.config
        assert EXPERIMENT.check(c) == []
        config = "fixed" if c["train_min_k"] == c["train_max_k"] else c["length_mode"]
        key = (c["use_layernorm"], c["n_layers"], c["use_mlp"], config, c["train_max_k"],
               c["max_iters"] * c["batch_size"])
        cells.setdefault(key, set()).add(r.seed)
        assert (c["vocab_n"], c["n_embd"], c["test_min_k"], c["test_max_k"]) == (64, 64, 9, 16)
    assert all(len(seeds) >= 3 for seeds in cells.values())
    grid_budget = 1250 * 256
    fixed_ks = {k for (_, _, _, config, k, b) in cells if config == "fixed" and b == grid_budget}
    assert len(fixed_ks) >= 3 and 16 >= 4 * min(fixed_ks)
    for ln in (True, False):
        for layers in (1, 2):
            for mlp in (True, False):
                assert all((ln, layers, mlp, "fixed", k, grid_budget) in cells for k in fixed_ks)
    for config in ("mix", "curriculum"):
        assert any(key[:4] == (True, 1, False, config) for key in cells)
    budgets = {b for (ln, layers, mlp, config, k, b) in cells if (ln, layers, mlp, config, k) == (True, 1, False,
                                                                                                 "fixed", 4)}
    assert len(budgets) >= 4 and grid_budget in budgets
