"""``data_stream: reference`` and ``adamw_impl: fused`` (issue 13): a run that replays the sort-llm
reference's random stream, checked against that loop written out here from the reference's
description — its module tree for the init draws, one global generator for K, the batches and the
scheduled evaluations (lists drawn 100 at a time), fused AdamW with its learning-rate schedule —
so a run can be compared run for run with an existing sort-llm run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from launch.checkpoint import load_checkpoint, save_checkpoint
from launch.experiment import RunContext
from launch.tasks import run_key
from sortgpt.experiment import EXPERIMENT
from sortgpt.naming import checkpoint_name
from sortgpt.reference import model_from_reference
from sortgpt.train import train
from tests.sortgpt.conftest import tiny_config


class RefBlock(nn.Module):  # registration order of the reference's Block: attn, ln_1, mlp, ln_2
    def __init__(self, d: int, use_mlp: bool):
        super().__init__()
        self.attn = nn.Module()
        self.attn.c_attn, self.attn.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.attn.c_proj.SCALED = True
        self.ln_1 = nn.LayerNorm(d)
        if use_mlp:
            self.mlp = nn.Module()
            self.mlp.c_fc, self.mlp.gelu, self.mlp.c_proj = nn.Linear(d, 3 * d), nn.GELU("tanh"), nn.Linear(3 * d, d)
            self.ln_2 = nn.LayerNorm(d)


def reference_init(cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The reference's GPT built after torch.manual_seed(seed): nanoGPT init by apply(), the tied
    head drawn again, the NoPE table drawn then zeroed. Returns its state dict (reference names)."""
    d, vocab, layers = cfg["n_embd"], cfg["vocab_n"] + 1, cfg["n_layers"]
    torch.manual_seed(cfg["seed"])
    root = nn.Module()
    root.transformer = nn.ModuleDict(dict(
        wte=nn.Embedding(vocab, d), wpe=nn.Embedding(2 * cfg["test_max_k"] + 1, d),
        h=nn.ModuleList([RefBlock(d, cfg["use_mlp"]) for _ in range(layers)]), ln_f=nn.LayerNorm(d)))
    root.lm_head = nn.Linear(d, vocab, bias=False)
    root.lm_head.weight = root.transformer.wte.weight

    def init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            std = 0.02 * ((2 * layers) ** -0.5 if getattr(m, "SCALED", False) else 1.0)
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    root.apply(init)
    if cfg["no_pos_emb"]:
        with torch.no_grad():
            root.transformer.wpe.weight.zero_()
    return {k: v.detach().clone() for k, v in root.state_dict().items()}


def reference_loop(cfg: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[int], dict[tuple[int, int], tuple]]:
    """The reference's training loop on CPU: (final weights, K of every step, teacher-forced
    (exact match, token accuracy) per (step, K) of its scheduled evaluations)."""
    state = {"model": reference_init(cfg), "train_config": _train_config(cfg)}
    after_init = torch.get_rng_state()  # the reference's loop draws on from here
    model, _, _ = model_from_reference(state, Path("ref.pt"))  # (building our GPT draws too)
    torch.set_rng_state(after_init)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() > 1], "weight_decay": 0.0},
                             {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}],
                            lr=cfg["max_lr"], betas=(0.9, 0.95), eps=1e-8, fused=True)

    def batch(n: int, k: int) -> torch.Tensor:
        x = torch.rand(n, cfg["vocab_n"]).topk(k, dim=1).indices
        return torch.cat([x, torch.full((n, 1), cfg["vocab_n"]), x.sort(dim=1).values], dim=1)

    def lr_at(itr: int) -> float:
        w, top, low, end = cfg["warmup_iters"], cfg["max_lr"], cfg["min_lr"], cfg["max_iters"]
        if itr < w:
            return top * (itr + 1) / (w + 1)
        return low + 0.5 * (1 + math.cos(math.pi * (itr - w) / (end - w))) * (top - low)

    ks, exact = [], {}
    for itr in range(cfg["max_iters"]):
        opt.zero_grad(set_to_none=True)
        lo, hi = cfg["train_min_k"], cfg["train_max_k"]
        if cfg["length_mode"] == "curriculum":
            frac = min(1.0, itr / cfg["curriculum_span_iters"])
            hi = max(lo, min(hi, lo + int(round(frac * (hi - lo)))))
        k = int(torch.randint(low=lo, high=hi + 1, size=(1,)).item())
        ks.append(k)
        seq = batch(cfg["batch_size"], k)
        logits = model(seq, positions=slice(k, 2 * k))
        F.cross_entropy(logits.reshape(-1, logits.size(-1)), seq[:, k + 1:].reshape(-1)).backward()
        for group in opt.param_groups:
            group["lr"] = lr_at(itr)
        opt.step()
        if itr % cfg["eval_every"] == 0:
            model.eval()
            gen_start = max(cfg["train_max_k"] + 1, cfg["test_min_k"])
            for k_eval in [*range(lo, cfg["train_max_k"] + 1), *range(gen_start, cfg["test_max_k"] + 1)]:
                right, tokens, left = 0, 0, cfg["eval_samples"]
                while left > 0:
                    n = min(100, left)
                    left -= n
                    seq = batch(n, k_eval)
                    with torch.no_grad():
                        pred = model(seq, positions=slice(k_eval, 2 * k_eval)).argmax(-1)
                    right += int((pred == seq[:, k_eval + 1:]).all(dim=1).sum())
                    tokens += int((pred == seq[:, k_eval + 1:]).sum())
                exact[(itr + 1, k_eval)] = (right / cfg["eval_samples"], tokens / (cfg["eval_samples"] * k_eval))
            model.train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, ks, exact


def _train_config(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"vocab_n": cfg["vocab_n"], "n_embd": cfg["n_embd"], "n_heads": cfg["n_heads"],
            "n_layers": cfg["n_layers"], "use_mlp": cfg["use_mlp"], "use_layernorm": cfg["use_layernorm"],
            "without_pos": cfg["no_pos_emb"], "train_min_k": cfg["train_min_k"], "train_max_k": cfg["train_max_k"],
            "test_min_k": cfg["test_min_k"], "test_max_k": cfg["test_max_k"], "seed": cfg["seed"]}


def logged(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("extra", [{}, {"no_pos_emb": False, "use_mlp": False, "length_mode": "curriculum",
                                        "curriculum_span_iters": 20}], ids=["nope-mlp", "positions-curriculum"])
def test_reference_stream_replays_the_reference_loop(tmp_path: Path, extra: dict[str, Any]) -> None:
    # eval_samples 150: the reference draws its evaluation lists 100 at a time (100 + 50)
    cfg = tiny_config(data_stream="reference", eval_samples=150, eval_every=7, max_iters=30, save_every=0,
                      checkpoint_iter=0, **extra)
    train(cfg, RunContext(run_dir=tmp_path))
    weights, ks, exact = reference_loop(cfg)

    ours = load_checkpoint(tmp_path / checkpoint_name("Final", cfg, cfg["max_iters"]))["model"]
    for name, tensor in ours.items():
        assert torch.equal(tensor, weights[name]), name  # same draws, same fused AdamW: bit-identical
    recs = logged(tmp_path)
    assert [r["metrics"]["K_mean"] for r in recs if r["split"] == "train"] == ks[::cfg["eval_every"]]
    scheduled = {(r["step"], r["length"]): pytest.approx((r["metrics"]["exact_match_acc"], r["metrics"]["token_acc"]))
                 for r in recs if r["split"] in ("test", "gen") and (r["step"] - 1) % cfg["eval_every"] == 0}
    assert scheduled == exact and len({t for _, t in exact.values()}) > 5  # the same lists, scored the same


def test_the_default_streams_differ_from_the_reference_and_ignore_evaluation(tmp_path: Path) -> None:
    base = tiny_config(eval_samples=150, max_iters=30, save_every=0, checkpoint_iter=0)

    def final(cfg: dict[str, Any], name: str) -> dict[str, torch.Tensor]:
        (tmp_path / name).mkdir()
        train(cfg, RunContext(run_dir=tmp_path / name))
        return load_checkpoint(tmp_path / name / checkpoint_name("Final", cfg, cfg["max_iters"]))["model"]

    separate, ref = final(base, "separate"), final(base | {"data_stream": "reference"}, "reference")
    assert not torch.equal(separate["wte.weight"], ref["wte.weight"])
    # In the reference's stream an evaluation draws from the training stream: its cadence moves training.
    ref_often = final(base | {"data_stream": "reference", "eval_every": 3}, "reference_often")
    assert not torch.equal(ref_often["wte.weight"], ref["wte.weight"])
    sep_often = final(base | {"eval_every": 3}, "separate_often")
    assert torch.equal(sep_often["wte.weight"], separate["wte.weight"])


def test_fused_adamw_is_the_default_and_older_runs_keep_theirs(tmp_path: Path) -> None:
    cfg = tiny_config(max_iters=6, save_every=3, checkpoint_iter=0, eval_every=100)
    (tmp_path / "new").mkdir()
    (tmp_path / "old").mkdir()
    train(cfg, RunContext(run_dir=tmp_path / "new"))
    state = load_checkpoint(tmp_path / "new" / "resume_00000006.pt")
    assert all(g["fused"] for g in state["optimizer"]["param_groups"])
    # A run.json written before the knobs existed: same run key as its config with their old values,
    # and a resume state saved then resumes (its config read with the old values).
    old = {k: v for k, v in cfg.items() if k not in ("adamw_impl", "data_stream")}
    assert run_key("sortgpt", old) == run_key("sortgpt", old | EXPERIMENT.later_params, EXPERIMENT.later_params)
    assert run_key("sortgpt", old) != run_key("sortgpt", cfg, EXPERIMENT.later_params)
    filled = old | EXPERIMENT.later_params | {"max_iters": 3}
    train(filled, RunContext(run_dir=tmp_path / "old"))
    saved = load_checkpoint(tmp_path / "old" / "resume_00000003.pt")
    saved["config"] = {k: v for k, v in saved["config"].items() if k not in EXPERIMENT.later_params}
    save_checkpoint(saved, tmp_path / "old" / "resume_00000003.pt", sidecar={"step": 3, "finished": True})
    train(filled | {"max_iters": 6}, RunContext(run_dir=tmp_path / "old"))
    resumed = load_checkpoint(tmp_path / "old" / "resume_00000006.pt")
    assert not any(g["fused"] for g in resumed["optimizer"]["param_groups"])


def test_old_and_reference_stream_checkpoints_evaluate(tmp_path: Path) -> None:
    """sweep evaluate of a run whose run.json predates the knobs, and of a reference-stream run whose
    Final_ step is a scheduled evaluation (its training-time lists came from a stream no file holds)."""
    import pandas as pd

    from sortgpt.evaluate import evaluate_tree

    for name, cfg in (("old", {k: v for k, v in tiny_config(max_iters=11, eval_every=5).items()
                                if k not in EXPERIMENT.later_params}),
                      ("ref", tiny_config(max_iters=11, eval_every=5, data_stream="reference"))):
        run_dir = tmp_path / "tree" / name
        run_dir.mkdir(parents=True)
        train(EXPERIMENT.later_params | cfg, RunContext(run_dir=run_dir))
        final = load_checkpoint(run_dir / checkpoint_name("Final", cfg, 11))
        final["config"] = cfg  # as a run written before the knobs existed saved it (for "old")
        save_checkpoint(final, run_dir / checkpoint_name("Final", cfg, 11), sidecar={"step": 11, "config": cfg})
    evaluate_tree(tmp_path / "tree", tmp_path / "e.parquet")
    rows = pd.read_parquet(tmp_path / "e.parquet")
    assert set(rows["split"]) >= {"test", "gen", "test_ar", "gen_ar"} and rows["step"].eq(11).all()


def test_an_interrupted_reference_stream_run_resumes_bit_identically(tmp_path: Path) -> None:
    """The one stream (K, batches and scheduled evaluations share it) is saved and restored whole."""
    cfg = tiny_config(data_stream="reference", max_iters=30, save_every=10, eval_every=7, checkpoint_iter=0)

    class Stop(Exception):
        pass

    def stop_at_25(step: int) -> None:
        if step == 25:
            raise Stop

    for name in ("straight", "resumed"):
        (tmp_path / name).mkdir()
    train(cfg, RunContext(run_dir=tmp_path / "straight"))
    with pytest.raises(Stop):
        train(cfg, RunContext(run_dir=tmp_path / "resumed"), on_step=stop_at_25)
    train(cfg, RunContext(run_dir=tmp_path / "resumed"))  # from the state at step 20
    a, b = (load_checkpoint(tmp_path / d / checkpoint_name("Final", cfg, 30))["model"] for d in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [[{k: v for k, v in r.items() if k != "time"} for r in logged(tmp_path / d)] for d in ("straight", "resumed")]
    assert strip[0] == strip[1]
