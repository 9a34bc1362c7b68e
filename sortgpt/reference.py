"""The sort-llm reference's checkpoint files, read as sortgpt models (issue 13).

The public sort-llm code (``length_generalization/code/sortGPT_len_generalization.py``)
saves, with ``torch.save``::

    Checkpoint_…_iters20001.pt  {"itr", "iters_done", "train_config", "model_config", "model", "optimizer"}
    Final_…_iters40000.pt       {"iters_done", "train_config", "model_config", "model"}

``train_config`` is its ``TrainConfig`` as a dict plus a few derived fields (the W&B
config); ``model_config`` is ``vars(GPTConfig)`` (block_size, vocab_size, n_layers,
n_heads, n_embd, without_pos, use_mlp, use_layernorm, max_seq_len); ``model`` is a
nanoGPT-style state dict. Its tree is ``root/<group>/task_XXXX/saved_models/*.pt``,
one directory per grid task, the seeds of a task writing the *same* file names (the
seed is not in the name), so a later seed overwrites an earlier one's files.

Parameter names, reference -> sortgpt/model.py:

    transformer.wte.weight            wte.weight (lm_head.weight is tied to it in both)
    transformer.wpe.weight            wpe.weight; dropped for NoPE models, where the
                                      reference keeps an all-zero, frozen table
    transformer.h.N.ln_1.*            blocks.N.ln_1.*
    transformer.h.N.attn.c_attn.*     blocks.N.attn.c_attn.*
    transformer.h.N.attn.c_proj.*     blocks.N.attn.c_proj.*
    transformer.h.N.ln_2.*            blocks.N.ln_2.*
    transformer.h.N.mlp.c_fc.*        blocks.N.mlp.c_fc.*   (also read: .mlp.fc_1.*)
    transformer.h.N.mlp.c_proj.*      blocks.N.mlp.c_proj.* (also read: .mlp.fc_2.*)
    transformer.ln_f.*                ln_f.*
    lm_head.weight                    lm_head.weight

A ``_orig_mod.`` (torch.compile) or ``module.`` (DDP) prefix is stripped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from launch.errors import CheckpointError
from sortgpt.experiment import EXPERIMENT
from sortgpt.model import GPT, GPTConfig
from sortgpt.naming import parse_checkpoint_name

REFERENCE_KEYS = ("train_config", "model_config", "model")
# reference TrainConfig field -> sortgpt config parameter (same meaning)
TRAIN_CONFIG_FIELDS = {
    "vocab_n": "vocab_n", "n_embd": "n_embd", "n_heads": "n_heads", "n_layers": "n_layers",
    "use_mlp": "use_mlp", "use_layernorm": "use_layernorm", "without_pos": "no_pos_emb",
    "length_mode": "length_mode", "train_min_k": "train_min_k", "train_max_k": "train_max_k",
    "test_min_k": "test_min_k", "test_max_k": "test_max_k",
    "curriculum_warmup_iters": "curriculum_warmup_iters", "curriculum_span_iters": "curriculum_span_iters",
    "warmup_iters": "warmup_iters", "max_iters": "max_iters", "learning_rate": "max_lr", "min_lr": "min_lr",
    "effective_batch_size": "batch_size", "eval_interval": "eval_every",
    "eval_samples_per_length": "eval_samples", "seed": "seed",
}
_MLP_NAMES = {"fc_1": "c_fc", "fc_2": "c_proj"}
_PREFIXES = ("_orig_mod.", "module.")


def is_reference_state(state: Any) -> bool:
    """A sort-llm checkpoint dict (its keys, and a nanoGPT-style state dict)."""
    return (isinstance(state, dict) and isinstance(state.get("model"), dict)
            and any(_strip(k).startswith("transformer.") for k in state["model"]))


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def config_from_reference(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """The sortgpt run config of a reference checkpoint: its ``train_config`` where
    present, else what the file name encodes (then the seed is unknown: None), with
    sortgpt's defaults for what neither holds. ``checkpoint_iter`` is the reference's
    ckpt_interval + 1 (it saves after iteration ckpt_interval, i.e. with that many + 1 done)."""
    cfg = EXPERIMENT.defaults() | {"device": "cpu", "save_best": False}
    train_config = state.get("train_config")
    if isinstance(train_config, dict):
        for ref, ours in TRAIN_CONFIG_FIELDS.items():
            if ref in train_config:
                cfg[ours] = _value(train_config[ref])
        if "allow_duplicates" in train_config:
            cfg["no_dup"] = not bool(_value(train_config["allow_duplicates"]))
        if "ckpt_interval" in train_config:
            cfg["checkpoint_iter"] = int(_value(train_config["ckpt_interval"])) + 1
        if "seed" not in train_config:
            cfg["seed"] = None
        return cfg
    parsed = parse_checkpoint_name(path.name)
    if parsed is None:
        raise CheckpointError(f"{path}: train_config: missing, and the file name is not in the "
                              "Checkpoint_/Final_ naming convention (nothing says how the model was trained)")
    kind = parsed.pop("kind")
    step = int(state.get("iters_done") or parsed.pop("step"))
    parsed.pop("step", None)
    cfg |= parsed
    cfg["seed"] = None  # not in the name: reported, never guessed
    # A Final_ file is written after the last iteration; of a Checkpoint_ we only know it came before.
    cfg["max_iters"] = step if kind == "Final" else max(int(cfg["max_iters"]), step)
    return cfg


def _value(v: Any) -> Any:
    """W&B config.yaml style ``{"value": x}`` or a plain value."""
    return v["value"] if isinstance(v, dict) and "value" in v else v


def model_config_from_reference(state: dict[str, Any], cfg: dict[str, Any], path: Path) -> GPTConfig:
    mc = state.get("model_config")
    if isinstance(mc, dict):
        try:
            no_pos = bool(mc["without_pos"])
            return GPTConfig(vocab_size=int(mc["vocab_size"]), n_embd=int(mc["n_embd"]),
                             n_heads=int(mc["n_heads"]), n_layers=int(mc["n_layers"]),
                             use_mlp=bool(mc["use_mlp"]), use_layernorm=bool(mc["use_layernorm"]),
                             no_pos_emb=no_pos, max_seq_len=int(mc["max_seq_len"]))
        except KeyError as e:
            raise CheckpointError(f"{path}: model_config: missing {e.args[0]!r}") from None
    from sortgpt.train import model_config

    return model_config(cfg)


def state_dict_from_reference(ref: dict[str, Any], config: GPTConfig, path: Path) -> dict[str, torch.Tensor]:
    """The reference's parameter names mapped to sortgpt/model.py's (module docstring)."""
    out: dict[str, torch.Tensor] = {}
    for raw, tensor in ref.items():
        name = _strip(raw)
        if name == "lm_head.weight":
            out[name] = tensor
            continue
        if not name.startswith("transformer."):
            raise CheckpointError(f"{path}: model: {raw}: not a parameter of the reference GPT")
        name = name[len("transformer."):]
        if name == "wpe.weight" and config.no_pos_emb:
            if torch.count_nonzero(tensor):
                raise CheckpointError(f"{path}: model: {raw}: model_config says no positional embedding "
                                      "(without_pos) but the table is not zero")
            continue
        m = re.fullmatch(r"h\.(\d+)\.(.*)", name)
        if m:
            rest = m.group(2)
            parts = rest.split(".")
            if len(parts) == 3 and parts[0] == "mlp" and parts[1] in _MLP_NAMES:
                rest = f"mlp.{_MLP_NAMES[parts[1]]}.{parts[2]}"
            name = f"blocks.{m.group(1)}.{rest}"
        out[name] = tensor
    if "lm_head.weight" in out and "wte.weight" in out and not torch.equal(out["lm_head.weight"], out["wte.weight"]):
        raise CheckpointError(f"{path}: model: lm_head.weight: differs from transformer.wte.weight "
                              "(sortgpt ties the output head to the token embedding)")
    if "lm_head.weight" not in out and "wte.weight" in out:
        out["lm_head.weight"] = out["wte.weight"]
    return out


def model_from_reference(state: dict[str, Any], path: str | Path) -> tuple[GPT, dict[str, Any], int | None]:
    """A sortgpt GPT holding a reference checkpoint's weights, its run config, and its
    step (``iters_done``; else the file name's ``iters``)."""
    path = Path(path)
    cfg = config_from_reference(state, path)
    config = model_config_from_reference(state, cfg, path)
    model = GPT(config)
    try:
        model.load_state_dict(state_dict_from_reference(state["model"], config, path))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: model: does not fit the GPT its model_config describes "
                              f"({' '.join(str(e).split())[:300]})") from None
    step = state.get("iters_done")
    if step is None:
        parsed = parse_checkpoint_name(path.name)
        step = parsed["step"] if parsed else None
    return model.eval(), cfg, (None if step is None else int(step))


def to_reference_state(model: GPT, cfg: dict[str, Any], step: int) -> dict[str, Any]:
    """A sortgpt model written as a sort-llm Final_ file would hold it (tests build trees
    with it; the inverse of :func:`model_from_reference`)."""
    c = model.config
    sd: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("blocks."):
            name = "h." + name[len("blocks."):]
        sd[name if name == "lm_head.weight" else "transformer." + name] = tensor.detach().clone()
    if c.no_pos_emb:
        sd["transformer.wpe.weight"] = torch.zeros(c.max_seq_len, c.n_embd)
    ordered = {k: sd[k] for k in sorted(sd, key=lambda k: (k == "lm_head.weight", k))}
    train_config = {ref: cfg[ours] for ref, ours in TRAIN_CONFIG_FIELDS.items()}
    train_config |= {"allow_duplicates": not cfg["no_dup"], "weight_decay": 0.0,
                     "micro_batch_size": cfg["batch_size"], "log_interval": cfg["eval_every"],
                     "ckpt_interval": int(cfg["checkpoint_iter"]) - 1, "eval_batch_size": cfg["eval_samples"],
                     "total_vocab_size": c.vocab_size, "sep_id": c.vocab_size - 1, "max_seq_len": c.max_seq_len}
    model_config = {"block_size": int(cfg["train_max_k"]), "vocab_size": c.vocab_size, "n_layers": c.n_layers,
                    "n_heads": c.n_heads, "n_embd": c.n_embd, "without_pos": c.no_pos_emb, "use_mlp": c.use_mlp,
                    "use_layernorm": c.use_layernorm, "max_seq_len": c.max_seq_len}
    return {"iters_done": int(step), "train_config": train_config, "model_config": model_config, "model": ordered}
