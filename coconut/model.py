"""The COCONUT wrapper around GPT-2, with its feedback modes.

At a latent position p the model does not read a token embedding: it reads a *thought*.

* ``continuous`` (COCONUT): the thought is the last-layer hidden state at p-1 (after the final LayerNorm,
  like ``hidden_states[-1]`` in transformers). That makes the forward pass sequential: pass 0 runs up to
  the first latent, each following pass computes one more position on top of the KV cache, and a last
  pass covers the rest. Gradients flow through every pass, the cache included.
* ``pause_as_thought``: Meta's "pause as thought" exactly. The thought is the ``<|latent|>`` token's own
  row of the embedding matrix, which GPT-2 ties to the output head, in one causal pass: the same model
  and loss as run.py's (a plain GPT-2 on the token ids), so AdamW's updates (weight decay, the row's
  gradient from the output head as well as from the input) are the reference's too.
* The issue-4 controls, a *separate* pause vector (``pause_embedding``, initialised from ``<|latent|>``,
  not tied to the output head; the forward equals pause_as_thought's at init, the updates do not):
  ``frozen``: a fixed buffer, no gradient; ``learned_shared``: learnable, computed with the multi-pass
  loop; ``pause_curriculum``: learnable, one causal pass; ``pause_multipass``: exactly pause_curriculum,
  computed with the multi-pass loop (the compute-matched control; for input-independent thoughts the
  loop computes the same function as one pass, ``tests/coconut/test_model.py`` checks loss and gradients
  agree). ``learned_shared`` and ``pause_multipass`` are the same computation under two names (the
  issue lists both).
* ``cot`` / ``no_cot``: the baselines; they never see a latent and, as in the reference, the three extra
  tokens are not added to their vocabulary.
* ``no_thoughts``: Meta's "w/o thought": the curriculum removes the first ``stage`` steps like
  continuous but puts nothing in their place (no latent, no marker; run.py sets c_thought to 0), on a
  plain GPT-2 vocabulary like the baselines.

Generation: run.py answers with the modes it runs without its Coconut wrapper (``PLAIN_LM_MODES``)
through transformers' ``generate``, which stops at any EOS, the first token included; coconut.py's own
loop (continuous, and here the separate-vector pause controls, whose comparison is with continuous)
keeps its first token whatever it is.

Differences from Meta's ``coconut.py`` (same function, less work): the thought is written into a (B, 1, D)
input for the next pass instead of rebuilding the whole (B, T, D) embedding tensor per pass; logits are
computed only where a label is scored (the loss is the same mean over scored tokens); generation is
batched with a KV cache (``coconut/reference.py`` keeps the one-at-a-time, no-cache version the tests
compare against).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from coconut.data import IGNORE, INIT_TOKEN, CompactTokenizer, SpecialIds
from launch.errors import UserError

FEEDBACK_MODES = ("continuous", "pause_as_thought", "frozen", "learned_shared", "pause_curriculum", "pause_multipass",
                  "cot", "no_cot", "no_thoughts")
# Modes with a separate pause vector (the ``pause_embedding`` buffer or parameter).
PAUSE_MODES = ("frozen", "learned_shared", "pause_curriculum", "pause_multipass")
BASELINES = ("cot", "no_cot")          # trained at stage 0 throughout
NO_LATENT_TOKENS = ("cot", "no_cot", "no_thoughts")   # no latent, no marker, GPT-2's vocabulary unextended
# What run.py runs as a plain causal LM (no Coconut wrapper): generated with transformers' generate, saved
# without the ``base_causallm.`` prefix.
PLAIN_LM_MODES = ("pause_as_thought", "cot", "no_cot", "no_thoughts")
MODEL_NAMES = {
    "continuous": "coconut", "pause_as_thought": "pause-as-thought", "frozen": "pause-frozen",
    "learned_shared": "pause-learned", "pause_curriculum": "pause-curriculum", "pause_multipass": "pause-multipass",
    "cot": "cot", "no_cot": "no-cot", "no_thoughts": "no-thoughts",
}

# A thought transform gets the (B, D) thoughts about to enter latent number ``i`` and returns new ones
# (the corruption test swaps in random vectors; a test detaches them to show gradients flow).
ThoughtFn = Callable[[torch.Tensor, int], torch.Tensor]


@functools.cache
def cache_arg() -> str:
    """The name transformers gives the KV cache, as a forward argument and an output field:
    ``cache`` from transformers 5.x on (``past_key_values`` is deprecated there and warns on every
    call), ``past_key_values`` before."""
    from transformers import GPT2Model

    return "cache" if "cache" in inspect.signature(GPT2Model.forward).parameters else "past_key_values"


def run_transformer(transformer: nn.Module, cache: Any = None, **inputs: Any) -> tuple[torch.Tensor, Any]:
    """One call of a transformers decoder: (last hidden state, KV cache), continuing ``cache``."""
    if cache is not None:
        inputs[cache_arg()] = cache
    out = transformer(**inputs)
    return out.last_hidden_state, getattr(out, cache_arg(), None)


@dataclass
class ModelConfig:
    feedback_mode: str = "continuous"
    base_model: str = ""   # "" -> the inline GPT-2 config below, from scratch; else from_pretrained(id or path)
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 2
    n_positions: int = 1024
    dropout: float = 0.1   # GPT-2's default resid/embd/attn dropout (the reference trains with it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_base_model(cfg: ModelConfig, tok: Any) -> Any:
    """GPT2LMHeadModel: pretrained weights, or a fresh one from the inline config (seeded by the caller)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if cfg.base_model:
        if isinstance(tok, CompactTokenizer):  # its ids are not the pretrained checkpoint's rows
            raise UserError(f"compact_vocab: not for a pretrained base_model ({cfg.base_model!r}): its "
                            "embedding rows are GPT-2's 50,257 tokens")
        try:
            model = GPT2LMHeadModel.from_pretrained(cfg.base_model)
        except (OSError, ValueError) as e:
            raise UserError(f"base_model: cannot load {cfg.base_model!r} ({str(e).splitlines()[0]})") from None
    else:
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=tok.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
            bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
        ))
    if cfg.feedback_mode not in NO_LATENT_TOKENS:
        # New tokens start as "<<" — it stabilises training (run.py). Input and output embeddings are tied.
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        emb = model.get_input_embeddings().weight
        with torch.no_grad():
            emb[len(tok) - 3:] = emb[tok.convert_tokens_to_ids(INIT_TOKEN)]
    return model


class Coconut(nn.Module):
    def __init__(self, base_causallm: Any, feedback_mode: str, ids: SpecialIds):
        super().__init__()
        if feedback_mode not in FEEDBACK_MODES:
            raise UserError(f"feedback_mode: {feedback_mode!r} is not one of {', '.join(FEEDBACK_MODES)}")
        self.base_causallm = base_causallm
        self.feedback_mode = feedback_mode
        self.ids = ids
        if feedback_mode in PAUSE_MODES:
            init = base_causallm.get_input_embeddings().weight[ids.latent].detach().clone()
            if feedback_mode == "frozen":
                self.register_buffer("pause_embedding", init)
            else:
                self.pause_embedding = nn.Parameter(init)

    # -- the forward pass -----------------------------------------------------------------------------
    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
        thought_fn: ThoughtFn | None = None, use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """Last-layer hidden states (B, T, D) with thoughts at the latent positions, and the KV cache.
        Rows holding latents must have them in the same columns first..first+n-1 (see data.collate)."""
        transformer = self.base_causallm.transformer
        embeds = transformer.wte(input_ids)
        is_latent = input_ids == self.ids.latent
        n_latent = int(is_latent.sum(1).max()) if is_latent.any() else 0
        if n_latent == 0:
            return run_transformer(transformer, inputs_embeds=embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, use_cache=use_cache)
        first = int(is_latent.int().argmax(1)[is_latent.any(1)].min())
        self._check_aligned(is_latent, first, n_latent)

        if self.feedback_mode == "pause_as_thought" and thought_fn is None:
            # The latent token's own embedding row is already in place: run.py's plain GPT-2 forward.
            return run_transformer(transformer, inputs_embeds=embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, use_cache=use_cache)
        if self.feedback_mode in ("pause_curriculum", "pause_as_thought"):  # input-independent thoughts: one pass
            cols = []
            for i in range(n_latent):
                thought = self._pause(embeds.shape[0], thought_fn, i)
                cols.append(torch.where(is_latent[:, first + i, None], thought, embeds[:, first + i]))
            embeds = torch.cat([embeds[:, :first], torch.stack(cols, 1), embeds[:, first + n_latent:]], 1)
            return run_transformer(transformer, inputs_embeds=embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, use_cache=use_cache)

        # Multi-pass: pass 0 up to the first latent, one position per pass, then the rest.
        hidden, cache = run_transformer(transformer, inputs_embeds=embeds[:, :first],
                                        attention_mask=attention_mask[:, :first],
                                        position_ids=position_ids[:, :first], use_cache=True)
        chunks = [hidden]
        for i in range(n_latent):
            p = first + i
            if self.feedback_mode == "continuous":
                thought = chunks[-1][:, -1]  # the hidden state at p-1
                thought = thought_fn(thought, i) if thought_fn is not None else thought
            else:
                thought = self._pause(embeds.shape[0], thought_fn, i)
            x = torch.where(is_latent[:, p, None], thought, embeds[:, p])[:, None]
            hidden, cache = run_transformer(transformer, cache, inputs_embeds=x, attention_mask=attention_mask[:, :p + 1],
                                            position_ids=position_ids[:, p:p + 1], use_cache=True)
            chunks.append(hidden)
        rest = first + n_latent
        if rest < input_ids.shape[1]:
            hidden, cache = run_transformer(transformer, cache, inputs_embeds=embeds[:, rest:],
                                            attention_mask=attention_mask, position_ids=position_ids[:, rest:],
                                            use_cache=True)
            chunks.append(hidden)
        return torch.cat(chunks, 1), cache

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
        labels: torch.Tensor, thought_fn: ThoughtFn | None = None,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over the scored labels (the reference's loss)."""
        hidden, _ = self.hidden_states(input_ids, attention_mask, position_ids, thought_fn)
        targets = labels[:, 1:]
        scored = targets != IGNORE
        logits = self.base_causallm.lm_head(hidden[:, :-1][scored])
        return F.cross_entropy(logits.float(), targets[scored])

    # -- generation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
        max_new_tokens: int = 128, thought_fn: ThoughtFn | None = None,
    ) -> list[list[int]]:
        """Greedy continuation of left-padded prompts (all ending in the last column), batched with a KV
        cache. Same tokens as the reference's one-at-a-time loop: the first token is always kept, later
        ones until EOS (excluded) or ``max_new_tokens``. The plain-LM modes (``PLAIN_LM_MODES``) stop at a
        first-token EOS too: run.py generates them with transformers' ``generate`` (no Coconut wrapper),
        which ends at any EOS, while coconut.py's loop keeps its first token whatever it is."""
        hidden, cache = self.hidden_states(input_ids, attention_mask, position_ids, thought_fn, use_cache=True)
        lm_head = self.base_causallm.lm_head
        next_token = lm_head(hidden[:, -1]).argmax(-1)
        out = [[int(t)] for t in next_token]
        done = torch.zeros(len(out), dtype=torch.bool, device=input_ids.device)
        if self.feedback_mode in PLAIN_LM_MODES:
            done |= next_token == self.ids.eos
        position = position_ids[:, -1:]
        for _ in range(max_new_tokens - 1):
            if done.all():
                break
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], 1)
            position = position + 1
            hidden, cache = run_transformer(self.base_causallm.transformer, cache, input_ids=next_token[:, None],
                                            attention_mask=attention_mask, position_ids=position, use_cache=True)
            next_token = lm_head(hidden[:, -1]).argmax(-1)
            done |= next_token == self.ids.eos
            for row in (~done).nonzero().flatten().tolist():
                out[row].append(int(next_token[row]))
        return out

    # -- helpers --------------------------------------------------------------------------------------
    def pause_vector(self) -> torch.Tensor | None:
        """The (D,) vector every latent position reads in an input-independent mode, None otherwise:
        the separate ``pause_embedding``, or for pause_as_thought the latent token's embedding row."""
        if self.feedback_mode in PAUSE_MODES:
            return self.pause_embedding
        if self.feedback_mode == "pause_as_thought":
            return self.base_causallm.get_input_embeddings().weight[self.ids.latent]
        return None

    def _pause(self, batch: int, thought_fn: ThoughtFn | None, i: int) -> torch.Tensor:
        vector = self.pause_vector()
        assert vector is not None, self.feedback_mode
        thought = vector.expand(batch, -1)
        return thought_fn(thought, i) if thought_fn is not None else thought

    @staticmethod
    def _check_aligned(is_latent: torch.Tensor, first: int, n_latent: int) -> None:
        counts = is_latent.sum(1)
        cols = torch.arange(is_latent.shape[1], device=is_latent.device)
        expected = (cols >= first) & (cols < first + counts[:, None])
        if not torch.equal(expected, is_latent):
            raise ValueError("latent tokens must be contiguous and start in the same column in every row "
                             "(collate with coconut.data.collate)")


def build_model(cfg: ModelConfig, tok: Any) -> Coconut:
    return Coconut(build_base_model(cfg, tok), cfg.feedback_mode, SpecialIds.of(tok))
