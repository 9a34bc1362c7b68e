"""sort-llm checkpoint files built by hand, as the reference's sortGPT_len_generalization.py
saves them (torch.save of a dict; nanoGPT-style parameter names), for the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sortgpt.model import GPT


def reference_state_dict(model: GPT, mlp_names: tuple[str, str] = ("c_fc", "c_proj")) -> dict[str, torch.Tensor]:
    """The reference GPT's state dict, written out by hand from its module tree:
    transformer.{wte,wpe,h.N.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.*},ln_f}, lm_head."""
    c = model.config
    sd: dict[str, torch.Tensor] = {"transformer.wte.weight": model.wte.weight.detach().clone(),
                                   "transformer.wpe.weight": (torch.zeros(c.max_seq_len, c.n_embd) if c.no_pos_emb
                                                              else model.wpe.weight.detach().clone())}
    for i, block in enumerate(model.blocks):
        pre = f"transformer.h.{i}."
        if c.use_layernorm:
            sd[pre + "ln_1.weight"], sd[pre + "ln_1.bias"] = block.ln_1.weight, block.ln_1.bias
        for part in ("c_attn", "c_proj"):
            layer = getattr(block.attn, part)
            sd[pre + f"attn.{part}.weight"], sd[pre + f"attn.{part}.bias"] = layer.weight, layer.bias
        if c.use_mlp:
            if c.use_layernorm:
                sd[pre + "ln_2.weight"], sd[pre + "ln_2.bias"] = block.ln_2.weight, block.ln_2.bias
            for ours, theirs in zip(("c_fc", "c_proj"), mlp_names):
                layer = getattr(block.mlp, ours)
                sd[pre + f"mlp.{theirs}.weight"], sd[pre + f"mlp.{theirs}.bias"] = layer.weight, layer.bias
    if c.use_layernorm:
        sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = model.ln_f.weight, model.ln_f.bias
    sd["lm_head.weight"] = model.lm_head.weight
    return {k: v.detach().clone() for k, v in sd.items()}


def reference_file(path: Path, model: GPT, cfg: dict[str, Any], step: int, *, final: bool = True,
                   mlp_names: tuple[str, str] = ("c_fc", "c_proj"), with_config: bool = True) -> Path:
    """A file as sortGPT_len_generalization.py saves it (Final_: no itr, no optimizer)."""
    c = model.config
    state: dict[str, Any] = {} if final else {"itr": step - 1}
    state["iters_done"] = step
    if with_config:
        state["train_config"] = {
            "vocab_n": cfg["vocab_n"], "n_embd": cfg["n_embd"], "n_heads": cfg["n_heads"],
            "train_min_k": cfg["train_min_k"], "train_max_k": cfg["train_max_k"], "test_min_k": cfg["test_min_k"],
            "test_max_k": cfg["test_max_k"], "allow_duplicates": not cfg["no_dup"], "n_layers": cfg["n_layers"],
            "without_pos": cfg["no_pos_emb"], "use_mlp": cfg["use_mlp"], "use_layernorm": cfg["use_layernorm"],
            "length_mode": cfg["length_mode"], "curriculum_warmup_iters": 0, "curriculum_span_iters": 20000,
            "warmup_iters": 200, "max_iters": cfg["max_iters"], "learning_rate": 1e-4, "min_lr": 1e-6,
            "weight_decay": 0.0, "micro_batch_size": 4096, "effective_batch_size": 4096, "log_interval": 250,
            "eval_interval": cfg["eval_every"], "ckpt_interval": 20000, "save_dir": "./saved_models",
            "eval_samples_per_length": cfg["eval_samples"], "eval_batch_size": 100, "seed": cfg["seed"],
            "use_compile": False, "wandb_project": "sortgpt", "wandb_entity": None, "wandb_group": "g",
            "wandb_mode": None, "total_vocab_size": c.vocab_size, "sep_id": c.vocab_size - 1,
            "max_seq_len": c.max_seq_len, "grad_accum_steps": 1, "amp_dtype": "none", "device": "cpu"}
        state["model_config"] = {"block_size": cfg["train_max_k"], "vocab_size": c.vocab_size,
                                 "n_layers": c.n_layers, "n_heads": c.n_heads, "n_embd": c.n_embd,
                                 "without_pos": c.no_pos_emb, "use_mlp": c.use_mlp,
                                 "use_layernorm": c.use_layernorm, "max_seq_len": c.max_seq_len}
    state["model"] = reference_state_dict(model, mlp_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
