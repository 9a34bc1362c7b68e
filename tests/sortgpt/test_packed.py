"""Packed runs (sortgpt/packed.py): a pack trains every run as train.py would, on CPU.

The batched model against the single model, the stacked AdamW against
torch.optim.AdamW, the K buckets, then whole runs: a pack of runs with different
seeds, K ranges, length modes and lengths against the same runs one by one
(step by step), a pack interrupted and resumed (by the pack and by train.py),
and the harness launching a `pack: 3` spec on the local executor.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from launch.checkpoint import load_checkpoint
from launch.experiment import RunContext
from sortgpt import packed
from sortgpt.experiment import EXPERIMENT
from sortgpt.model import GPT, GPTConfig
from sortgpt.naming import checkpoint_name
from sortgpt.packed import Layout, StackedAdamW, pack_key, packed_forward, plan_buckets, train_pack
from sortgpt.train import train
from tests.helpers import sweep
from tests.sortgpt.conftest import tiny_config


class Interrupt(Exception):
    pass


def records(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec.pop("time")
        out.append(rec)
    return out


def shape(recs: list[dict[str, Any]]) -> list[tuple]:
    """What must be equal between a packed and a single run: every record's step,
    split, length and metric names, in order."""
    return [(r["step"], r["split"], r["length"], tuple(r["metrics"])) for r in recs]


def max_metric_diff(a: list[dict[str, Any]], b: list[dict[str, Any]], split: str | None = None) -> float:
    return max(abs(x["metrics"][k] - y["metrics"][k]) for x, y in zip(a, b)
               if split is None or x["split"] == split for k in x["metrics"])


def final_state(run_dir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    return load_checkpoint(run_dir / checkpoint_name("Final", cfg, cfg["max_iters"]))


def pack_configs(**common: Any) -> list[dict[str, Any]]:
    """Three runs of one architecture: different seeds, K ranges (so their Ks
    differ within a step), length modes and lengths."""
    return [
        tiny_config(seed=11, **common),
        tiny_config(seed=22, train_min_k=3, train_max_k=5, test_min_k=6, test_max_k=7, **common),
        tiny_config(seed=33, length_mode="curriculum", curriculum_span_iters=15, max_iters=30,
                    checkpoint_iter=11, **common),
    ]


def dirs(root: Path, name: str, n: int) -> list[Path]:
    out = [root / f"{name}{i}" for i in range(n)]
    for d in out:
        d.mkdir(parents=True, exist_ok=True)
    return out


# -- pieces ------------------------------------------------------------------------

@pytest.mark.parametrize("arch", [
    {},
    {"use_mlp": False},
    {"use_layernorm": False, "n_layers": 2},
    {"no_pos_emb": False, "n_heads": 2},
])
def test_packed_forward_equals_the_model(arch: dict[str, Any]) -> None:
    config = GPTConfig(vocab_size=17, n_embd=16, max_seq_len=13, **({"n_layers": 1} | arch))
    models = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        model = GPT(config)
        with torch.no_grad():  # non-trivial norms and biases, so that a mix-up shows
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(torch.randn_like(p) * 0.1)
        models.append(model)
    layout = Layout(models[0])
    rows = torch.stack([layout.flatten(m) for m in models])
    idx = torch.randint(0, 17, (3, 5, 13))
    for positions in (None, slice(6, 12), slice(-1, None)):
        packed = packed_forward(layout.unflatten(rows), idx, config, positions)
        for i, model in enumerate(models):
            torch.testing.assert_close(packed[i], model(idx[i], positions=positions), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "per-parameter-loop"])
def test_stacked_adamw_is_torch_adamw_per_row(fused: bool) -> None:
    torch.manual_seed(0)
    R, P = 3, 40
    start = torch.randn(R, P)
    lrs_per_step = [[1e-3 * (s + 1), 3e-3, 1e-4 / (s + 1)] for s in range(6)]
    for decay in ([0.0, 0.0], [0.1, 0.0]):
        group_of_column = (torch.arange(P) >= 25).long()  # two parameter groups, as make_optimizer's
        weights = start.clone().requires_grad_(True)
        stacked = StackedAdamW(weights, (0.9, 0.95), 1e-8, decay, group_of_column, fused=fused)
        singles = [start[r].clone().requires_grad_(True) for r in range(R)]
        parts = [(w[:25], w[25:]) for w in singles]  # views would not be leaves: use split leaves
        leaves = [[p.detach().clone().requires_grad_(True) for p in pair] for pair in parts]
        optims = [torch.optim.AdamW([{"params": [a], "weight_decay": decay[0]},
                                     {"params": [b], "weight_decay": decay[1]}], lr=1.0, betas=(0.9, 0.95), eps=1e-8,
                                    fused=fused)
                  for a, b in leaves]
        for lrs in lrs_per_step:
            grad = torch.randn(R, P)
            weights.grad = grad.clone()
            stacked.step(weights, lrs)
            for r, (opt, (a, b)) in enumerate(zip(optims, leaves)):
                a.grad, b.grad = grad[r, :25].clone(), grad[r, 25:].clone()
                for g in opt.param_groups:
                    g["lr"] = lrs[r]
                opt.step()
        for r, (a, b) in enumerate(leaves):
            # Same operations in the same order: bit-identical, not just close.
            assert torch.equal(weights.detach()[r], torch.cat([a.detach(), b.detach()])), (decay, r)
            assert torch.equal(stacked.exp_avg[r], torch.cat([optims[r].state[a]["exp_avg"],
                                                               optims[r].state[b]["exp_avg"]]))
            assert torch.equal(stacked.exp_avg_sq[r], torch.cat([optims[r].state[a]["exp_avg_sq"],
                                                                  optims[r].state[b]["exp_avg_sq"]]))


def bucket_cost(ks: list[int], buckets: list[list[int]], overhead: float, batch: int) -> float:
    return sum(overhead + len(b) * batch * (2 * max(ks[i] for i in b) + 1) for b in buckets)


def test_buckets_cover_every_run_once_at_least_cost() -> None:
    ks = [4, 2, 16, 4, 9, 2, 3]
    distinct = sorted(set(ks))
    exact = plan_buckets(ks, overhead_tokens=0, batch_size=8)  # launches free: one bucket per K
    assert sorted(tuple(sorted({ks[i] for i in b})) for b in exact) == [(k,) for k in distinct]
    merged = plan_buckets(ks, overhead_tokens=1e12, batch_size=8)  # launches dear: one padded bucket
    assert [sorted(b) for b in merged] == [list(range(len(ks)))]
    for overhead in (10, 100, 300, 1000):
        plan = plan_buckets(ks, overhead_tokens=overhead, batch_size=8)
        assert sorted(i for b in plan for i in b) == list(range(len(ks)))
        # no split of the sorted Ks into contiguous ranges is cheaper (brute force over all 2^(m-1))
        cheapest = float("inf")
        for cuts in itertools.product([False, True], repeat=len(distinct) - 1):
            groups, current = [], [distinct[0]]
            for k, cut in zip(distinct[1:], cuts):
                if cut:
                    groups.append(current)
                    current = []
                current.append(k)
            groups.append(current)
            split = [[i for i, k in enumerate(ks) if k in g] for g in groups]
            cheapest = min(cheapest, bucket_cost(ks, split, overhead, 8))
        assert bucket_cost(ks, plan, overhead, 8) == cheapest, overhead


def test_attention_split_over_large_batches_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    config = GPTConfig(vocab_size=17, n_embd=16, n_layers=1)
    torch.manual_seed(0)
    models = [GPT(config), GPT(config)]
    layout = Layout(models[0])
    rows = torch.stack([layout.flatten(m) for m in models])
    idx = torch.randint(0, 17, (2, 5, 9))
    whole = packed_forward(layout.unflatten(rows), idx, config)
    monkeypatch.setattr(packed, "MAX_ATTENTION_BATCH", 3)  # 10 sequences: 4 calls
    torch.testing.assert_close(packed_forward(layout.unflatten(rows), idx, config), whole, rtol=0, atol=1e-7)


def test_pack_key_groups_by_architecture() -> None:
    a = tiny_config(seed=1)
    assert pack_key(a) == pack_key(tiny_config(seed=2, train_max_k=3, length_mode="curriculum", max_iters=7))
    assert pack_key(a) != pack_key(tiny_config(use_mlp=False))
    assert pack_key(a) != pack_key(tiny_config(batch_size=8))
    # with a positional table, its size (the longest K) must match too
    assert pack_key(tiny_config(no_pos_emb=False)) != pack_key(tiny_config(no_pos_emb=False, test_max_k=7))
    assert EXPERIMENT.pack_key(a) == pack_key(a) and EXPERIMENT.pack_size_auto >= 1


# -- whole runs --------------------------------------------------------------------

@pytest.mark.parametrize("overhead, extra", [(None, {}), (0.0, {}),
                                             (None, {"data_stream": "reference", "eval_every": 3}),
                                             (None, {"adamw_impl": "fused_on_gpu"})],
                         ids=["padded-buckets", "one-bucket-per-K", "reference-stream", "unfused-adamw"])
def test_pack_matches_single_runs_step_by_step(tmp_path: Path, overhead: float | None, extra: dict) -> None:
    # eval_every 1: every step logs its training loss, so losses compare step by step.
    cfgs = [c | {"eval_every": 1} | extra for c in pack_configs()]
    single_dirs, packed_dirs = dirs(tmp_path, "single", 3), dirs(tmp_path, "packed", 3)
    for cfg, d in zip(cfgs, single_dirs):
        train(cfg, RunContext(run_dir=d))
    train_pack(cfgs, [RunContext(run_dir=d) for d in packed_dirs], overhead_tokens=overhead)

    worst_loss = 0.0
    for cfg, s, p in zip(cfgs, single_dirs, packed_dirs):
        a, b = records(s), records(p)
        assert shape(a) == shape(b)
        train_steps = [r["step"] for r in a if r["split"] == "train"]
        assert train_steps == list(range(1, cfg["max_iters"] + 1, cfg["eval_every"]))
        # Same K and learning rate every step (same streams), same loss up to float summation order.
        for x, y in zip(a, b):
            if x["split"] == "train":
                assert {k: x["metrics"][k] for k in ("K_mean", "lr")} == {k: y["metrics"][k] for k in ("K_mean", "lr")}
        worst_loss = max(worst_loss, max_metric_diff(a, b, "train"))
        assert max_metric_diff(a, b) < 1e-4
        # accuracies are counts: equal unless a near-tie argmax flipped somewhere
        assert sum(x["metrics"]["exact_match_acc"] != y["metrics"]["exact_match_acc"] for x, y in zip(a, b)) <= 2
        # Same files, same checkpoint formats, close weights.
        assert sorted(f.name for f in s.iterdir()) == sorted(f.name for f in p.iterdir())
        one, packed = final_state(s, cfg), final_state(p, cfg)
        assert one.keys() == packed.keys() and one["config"] == packed["config"]
        assert one["model_config"] == packed["model_config"]
        for name, tensor in one["model"].items():
            torch.testing.assert_close(packed["model"][name], tensor, rtol=0, atol=2e-5)
        resume_one = load_checkpoint(s / f"resume_{cfg['max_iters']:08d}.pt")
        resume_packed = load_checkpoint(p / f"resume_{cfg['max_iters']:08d}.pt")
        assert resume_one.keys() == resume_packed.keys() and resume_packed["finished"]
        opt_one, opt_packed = resume_one["optimizer"], resume_packed["optimizer"]
        assert opt_one["param_groups"] == opt_packed["param_groups"]
        assert opt_one["state"].keys() == opt_packed["state"].keys()
        for i, st in opt_one["state"].items():
            assert torch.equal(st["step"], opt_packed["state"][i]["step"])
            torch.testing.assert_close(opt_packed["state"][i]["exp_avg"], st["exp_avg"], rtol=1e-3, atol=1e-6)
        assert resume_one["rng"]["generators"].keys() == resume_packed["rng"]["generators"].keys()
        for name, state in resume_one["rng"]["generators"].items():
            assert torch.equal(state, resume_packed["rng"]["generators"][name])  # same draws, same stream state
    print(f"max abs train-loss difference, pack vs single ({overhead=}): {worst_loss:.3g}")
    assert worst_loss < 1e-5


def test_pack_resumes_after_interruption_by_either_path(tmp_path: Path) -> None:
    cfgs = pack_configs()
    whole, broken = dirs(tmp_path, "whole", 3), dirs(tmp_path, "broken", 3)
    train_pack(cfgs, [RunContext(run_dir=d) for d in whole])

    def interrupt(iteration: int) -> None:
        if iteration == 15:  # resume states exist at 10
            raise Interrupt

    with pytest.raises(Interrupt):
        train_pack(cfgs, [RunContext(run_dir=d) for d in broken], on_step=interrupt)
    assert all(r["step"] <= 15 for r in records(broken[0]))
    # a copy of the interrupted run 0 is resumed by the single-run loop instead
    by_single = tmp_path / "by_single"
    shutil.copytree(broken[0], by_single)

    train_pack(cfgs, [RunContext(run_dir=d) for d in broken])
    for cfg, w, b in zip(cfgs, whole, broken):
        assert records(w) == records(b)  # bit-identical on CPU, records and all
        for name, tensor in final_state(w, cfg)["model"].items():
            assert torch.equal(final_state(b, cfg)["model"][name], tensor), name

    train(cfgs[0], RunContext(run_dir=by_single))
    assert shape(records(by_single)) == shape(records(whole[0]))
    assert max_metric_diff(records(by_single), records(whole[0]), "train") < 1e-5
    for name, tensor in final_state(whole[0], cfgs[0])["model"].items():
        torch.testing.assert_close(final_state(by_single, cfgs[0])["model"][name], tensor, rtol=0, atol=2e-5)


SPEC = """
experiment: sortgpt
group: "k{train_max_k}"
path: "packed/{group}/task_{task:04d}/seed{seed}"
fixed: {vocab_n: 16, n_embd: 16, n_layers: 1, train_min_k: 2, test_min_k: 5, test_max_k: 6, batch_size: 16,
        max_iters: 20, warmup_iters: 5, max_lr: 1.0e-3, eval_every: 10, eval_samples: 8, checkpoint_iter: 11,
        save_every: 10, keep_resume: 2, device: cpu}
axes:
  - {train_max_k: [3, 4], group: true}
  - {length_mode: [mix, curriculum]}
seeds: [1, 2, 3]
pack: PACK
"""


def test_harness_launches_packs_with_per_run_directories(tmp_path: Path) -> None:
    trees = {}
    for pack in ("3", "1"):
        spec = tmp_path / f"pack{pack}.yaml"
        spec.write_text(SPEC.replace("PACK", pack))
        root = tmp_path / f"tree{pack}"
        out = sweep("launch", spec, "--cluster", "local", "--root", root, "--concurrency", "2").stdout
        assert "submitted 12 runs" in out
        sweep("wait", spec, "--root", root, "--interval", "0.5", "--timeout", "240")
        trees[pack] = root
        if pack == "3":
            logs = sorted(root.rglob("log.txt"))
            assert len(logs) == 12 and all("(pack of 3)" in p.read_text() for p in logs)
    files = {pack: sorted(str(p.relative_to(root)) for p in root.rglob("*")
                          if p.is_file() and "/seed" in str(p.relative_to(root)))
             for pack, root in trees.items()}
    assert files["3"] == files["1"] and len(files["3"]) > 12
    for metrics in (trees["3"] / p for p in files["3"] if p.endswith("metrics.jsonl")):
        other = trees["1"] / metrics.relative_to(trees["3"])
        assert shape(records(metrics.parent)) == shape(records(other.parent))
        assert max_metric_diff(records(metrics.parent), records(other.parent), "train") < 1e-5


def test_compiled_pack_matches_the_eager_pack(tmp_path: Path) -> None:
    """SORTGPT_COMPILE=1 (torch.compile of the batched trunk, dynamic shapes so a
    new K does not recompile) changes no run's numbers beyond float rounding."""
    cfgs = [c | {"eval_every": 1, "max_iters": 12, "checkpoint_iter": 5} for c in pack_configs()]
    eager, compiled = dirs(tmp_path, "eager", 3), dirs(tmp_path, "compiled", 3)
    train_pack(cfgs, [RunContext(run_dir=d) for d in eager], compile_model=False)
    train_pack(cfgs, [RunContext(run_dir=d) for d in compiled], compile_model=True)
    for a, b in zip(eager, compiled):
        ra, rb = records(a), records(b)
        assert shape(ra) == shape(rb)
        assert max_metric_diff(ra, rb, "train") < 1e-5


def test_compile_setting_names_a_torch_compile_mode() -> None:
    assert [packed.compile_mode_of(s) for s in (False, "", "0", True, "1", "reduce-overhead")] == \
        [None, None, None, "default", "default", "reduce-overhead"]
    with pytest.raises(packed.UserError, match="SORTGPT_COMPILE='fast'"):
        packed.compile_mode_of("fast")
