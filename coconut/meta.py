"""Meta's COCONUT files: the raw ``state_dict`` run.py saves as ``checkpoint_<N>``, read and written.

run.py saves ``parallel_model.state_dict()`` after an epoch, nothing else: for ``coconut: True`` the keys
of its Coconut wrapper (``base_causallm.`` + GPT-2's names, and ``embedding.weight``, the wrapper's own
handle on the same input embedding); for the modes it runs as a plain GPT-2 (pause as thought, CoT,
no-CoT, w/o thought) GPT-2's own names. Its ``load_model_path`` loads such a file with
``load_state_dict(strict=False)``: a coconut file after the wrapper is built, a plain one before the
vocabulary is extended (so run.py cannot reload its own pause-as-thought files; sweep can).

No configuration travels with those weights, so reading one takes what the tensors say (vocabulary,
width, depth, context length, whether the wrapper saved it) and the file name (``checkpoint_N`` was
saved after epoch N, trained at stage (N-1) // epochs_per_stage); the rest is ProsQA's settings
(args/prosqa_coconut.yaml, which are this experiment's defaults). The one thing shapes cannot tell is the
number of attention heads: GPT-2's sizes are known, any other width needs it given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from coconut.data import SpecialIds, build_tokenizer
from coconut.model import MODEL_NAMES, PAUSE_MODES, PLAIN_LM_MODES, Coconut
from launch.checkpoint import load_checkpoint
from launch.errors import CheckpointError, UserError

META_FORMAT = "meta-coconut"
WRAPPER = "base_causallm."
# The heads of GPT-2 small, medium, large and xl by width (what run.py's model_id loads).
GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}
# Keys Meta's files may hold that this model does not: the wrapper's second handle on the embedding, and
# the attention-mask buffers older transformers versions saved with GPT-2.
_EXTRA = re.compile(r"^(embedding\.weight|.*\.attn\.(bias|masked_bias))$")


def is_meta_state(state: dict[str, Any]) -> bool:
    """Whether a loaded checkpoint is a raw GPT-2 state_dict as run.py saves it."""
    return bool(state) and all(isinstance(v, torch.Tensor) for v in state.values()) and (
        "transformer.wte.weight" in state or WRAPPER + "transformer.wte.weight" in state)


def epoch_of(path: Path) -> int | None:
    """N of a ``checkpoint_N`` file name, else None."""
    m = re.fullmatch(r"checkpoint_(\d+)", path.name)
    return int(m[1]) if m else None


def load_meta(path: Path, state: dict[str, torch.Tensor], n_head: int | None = None,
              device: str = "cpu") -> tuple[Coconut, Any, dict[str, Any]]:
    """(model, tokenizer, checkpoint-like dict with config, epoch, stage) for one of run.py's files.

    The mode: saved through the wrapper -> continuous; a plain GPT-2 with the three latent tokens ->
    pause_as_thought (the only plain mode run.py extends the vocabulary for); without them -> cot (CoT,
    no-CoT and w/o thought prompt and answer alike: question in, greedy text out)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from coconut.experiment import EXPERIMENT

    wrapped = WRAPPER + "transformer.wte.weight" in state
    base = {k[len(WRAPPER):]: v for k, v in state.items() if k.startswith(WRAPPER)} if wrapped else dict(state)
    tok = build_tokenizer()
    vocab, n_embd = base["transformer.wte.weight"].shape
    if vocab not in (tok.vocab_size, len(tok)):
        raise CheckpointError(f"{path}: an embedding of {vocab} rows is neither GPT-2's {tok.vocab_size} nor "
                              f"{len(tok)} with the three latent tokens (not a ProsQA GPT-2 COCONUT model)")
    if wrapped:
        mode = "continuous"
        if vocab != len(tok):
            raise CheckpointError(f"{path}: saved through the Coconut wrapper but without the latent tokens "
                                  f"({vocab} rows)")
    else:
        mode = "pause_as_thought" if vocab == len(tok) else "cot"
    if n_head is None:
        if n_embd not in GPT2_HEADS:
            raise UserError(f"{path}: n_head: a raw state_dict does not record it and width {n_embd} is none of "
                            f"GPT-2's ({', '.join(map(str, GPT2_HEADS))}); pass --n-head")
        n_head = GPT2_HEADS[n_embd]
    if n_embd % n_head:
        raise UserError(f"n_head: width {n_embd} is not divisible by {n_head}")
    layers = {int(m[1]) for k in base if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    if "transformer.wpe.weight" not in base or not layers:
        raise CheckpointError(f"{path}: not a GPT-2 state_dict (no transformer.wpe / transformer.h.N weights)")
    n_inner = base["transformer.h.0.mlp.c_fc.weight"].shape[1] if "transformer.h.0.mlp.c_fc.weight" in base else None
    gpt2 = GPT2Config(vocab_size=vocab, n_positions=base["transformer.wpe.weight"].shape[0], n_embd=n_embd,
                      n_layer=max(layers) + 1, n_head=n_head, n_inner=n_inner,
                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    model = Coconut(GPT2LMHeadModel(gpt2), mode, SpecialIds.of(tok))
    want = {k[len(WRAPPER):] for k in model.state_dict()}
    # lm_head is tied to the embedding: a file without it still defines it
    missing = sorted(want - set(base) - {"lm_head.weight"})
    unexpected = sorted(k for k in set(base) - want if not _EXTRA.match(k))
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not fit GPT-2 {gpt2.n_layer} x {n_embd}: "
                              + "; ".join(f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                                          for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys))
    try:
        model.load_state_dict({WRAPPER + k: v for k, v in base.items() if k in want}, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(e).splitlines()[0]})") from None
    config = EXPERIMENT.defaults() | {"feedback_mode": mode, "model_name": MODEL_NAMES[mode], "n_layer": gpt2.n_layer,
                                      "n_embd": n_embd, "n_head": n_head}
    epoch = epoch_of(path)
    if mode == "cot":
        stage = 0   # run.py trains and answers the baselines at stage 0
    elif epoch is None:  # not named by its epoch: the last stage (Meta's evaluation configs resume past all)
        stage = config["max_latent_stage"]
    else:
        stage = (epoch - 1) // config["epochs_per_stage"]
    return model.to(device).eval(), tok, {"config": config, "epoch": epoch or 0, "stage": stage, "metrics": {},
                                          "format": META_FORMAT}


def load_any(path: str | Path, device: str = "cpu", n_head: int | None = None) -> tuple[Coconut, Any, dict[str, Any]]:
    """A checkpoint of sweep's training (checkpoint_<n> / checkpoint_best) or one of Meta's run.py files."""
    from coconut.train import WEIGHTS_KEYS, model_from_state

    path = Path(path)
    state = load_checkpoint(path)
    if is_meta_state(state):
        return load_meta(path, state, n_head, device)
    missing = [k for k in WEIGHTS_KEYS if k not in state]
    if missing:
        have = ", ".join(map(str, list(state)[:8])) or "nothing"
        raise CheckpointError(f"{path}: neither a coconut checkpoint of sweep (no {', '.join(missing)}) nor Meta's "
                              f"raw GPT-2 state_dict; it has: {have}")
    return model_from_state(path, state, device)


# --- export ------------------------------------------------------------------------------------------

def meta_state_dict(model: Coconut, state: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """What run.py would have saved for this model: the wrapper's keys for continuous, GPT-2's for the
    plain-LM modes. Tensors are shared as in the model (the tied embedding is stored once)."""
    mode = model.feedback_mode
    if mode in PAUSE_MODES:
        raise UserError(f"{path}: feedback_mode {mode!r} has no counterpart in Meta's code (its pause vector is a "
                        "separate parameter); pause_as_thought is Meta's pause as thought")
    if state.get("compact_vocab_ids") is not None:
        rows = model.base_causallm.get_input_embeddings().weight.shape[0]
        raise UserError(f"{path}: compact_vocab: this model has {rows} embedding rows; run.py builds GPT-2's "
                        "50,257 (+3), and the rows of the tokens it never saw cannot be made up")
    base = {k: v.detach().cpu() for k, v in model.base_causallm.state_dict().items()}
    if mode in PLAIN_LM_MODES:
        return base
    out = {WRAPPER + k: v for k, v in base.items()}
    out["embedding.weight"] = base["transformer.wte.weight"]  # the wrapper registers the embedding again
    return out


def export_sources(run_dir: Path) -> list[tuple[Path, int]]:
    """(checkpoint, epoch) pairs to export from a run directory: every checkpoint_<n>, and checkpoint_best
    under its epoch when that epoch's own file was pruned (run.py names every file by its epoch)."""
    from launch.checkpoint import read_sidecar

    numbered = {int(p.name.split("_")[1]): p for p in run_dir.glob("checkpoint_*") if p.name.split("_")[1].isdigit()}
    best = run_dir / "checkpoint_best"
    if best.is_file():
        epoch = ((read_sidecar(best) or {}).get("epoch"))
        if isinstance(epoch, int) and epoch not in numbered:
            numbered[epoch] = best
    return [(p, n) for n, p in sorted(numbered.items())]


def export_meta(source: Path, out: Path) -> list[Path]:
    """Write ``out/checkpoint_<N>`` in run.py's format for a checkpoint file or every checkpoint of a run
    directory. Refuses (nothing written) a non-empty ``out``, a mode or vocabulary run.py cannot hold."""
    if source.is_file():
        sources = [(source, epoch_of(source))]
    else:
        sources = export_sources(source)
        if not sources:
            raise UserError(f"{source}: no checkpoint_<n> or checkpoint_best to export")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty directory")
    created = not out.exists()
    written: list[Path] = []
    try:
        for path, epoch in sources:
            model, _, state = load_any(path)
            if state.get("format") == META_FORMAT:
                raise UserError(f"{path}: already in Meta's format")
            weights = meta_state_dict(model, state, path)
            out.mkdir(parents=True, exist_ok=True)
            target = out / f"checkpoint_{int(state['epoch']) if epoch is None else epoch}"
            # no sidecar next to it: run.py reads the epoch of every file named checkpoint_* as an int
            tmp = out / f".{target.name}.{os.getpid()}.tmp"
            written.append(tmp)
            torch.save(weights, tmp)
            os.replace(tmp, target)
            written[-1] = target
    except BaseException:
        for p in written:  # bad input writes nothing: drop what this call wrote before the failure
            p.unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    return written
