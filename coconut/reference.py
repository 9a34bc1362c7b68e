"""Straightforward, slow versions of the model's forward pass and generation.

They follow Meta's coconut.py step by step but without any KV cache: each latent is filled by running
the whole prefix again, and generation handles one example at a time, recomputing the whole sequence
for every new token. The tests compare the fast paths in ``coconut/model.py`` with these; the bench
times both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from coconut.model import PLAIN_LM_MODES, Coconut, ThoughtFn


def filled_embeddings(model: Coconut, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor, thought_fn: ThoughtFn | None = None) -> torch.Tensor:
    """Input embeddings with every latent replaced by its thought, one latent at a time, each time
    running the model from scratch over everything before it."""
    transformer = model.base_causallm.transformer
    embeds = transformer.wte(input_ids)
    for i in range(int((input_ids == model.ids.latent).sum(1).max())):
        new_rows = []
        for b in range(input_ids.shape[0]):
            positions = (input_ids[b] == model.ids.latent).nonzero().flatten()
            if i >= len(positions):
                new_rows.append(embeds[b])
                continue
            p = int(positions[i])
            if model.feedback_mode == "continuous":
                h = transformer(inputs_embeds=embeds[b:b + 1, :p], attention_mask=attention_mask[b:b + 1, :p],
                                position_ids=position_ids[b:b + 1, :p]).last_hidden_state
                thought = h[0, -1]
            else:  # a separate pause vector, or pause_as_thought's own embedding row (the same values)
                thought = model.pause_vector()
            if thought_fn is not None:
                thought = thought_fn(thought[None], i)[0]
            new_rows.append(torch.cat([embeds[b, :p], thought[None], embeds[b, p + 1:]]))
        embeds = torch.stack(new_rows)
    return embeds


def reference_loss(model: Coconut, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   position_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The reference's loss: full logits, shifted, mean cross-entropy over labels != -100."""
    embeds = filled_embeddings(model, input_ids, attention_mask, position_ids)
    logits = model.base_causallm(inputs_embeds=embeds, attention_mask=attention_mask,
                                 position_ids=position_ids).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


@torch.no_grad()
def reference_generate(model: Coconut, prompt: list[int], max_new_tokens: int = 128,
                       thought_fn: ThoughtFn | None = None) -> list[int]:
    """Greedy generation for one prompt, no cache (coconut.py ``generate``): the first token is always
    kept, then tokens until EOS (not kept) or ``max_new_tokens`` in all. The plain-LM modes (transformers'
    ``generate`` in run.py) end at a first-token EOS as well."""
    wte, base = model.base_causallm.transformer.wte, model.base_causallm
    device = wte.weight.device
    ids = torch.tensor([prompt], device=device)
    ones = torch.ones_like(ids)
    embeds = filled_embeddings(model, ids, ones, torch.arange(len(prompt), device=device)[None], thought_fn)
    tokens = [int(base(inputs_embeds=embeds).logits[0, -1].argmax())]
    if model.feedback_mode in PLAIN_LM_MODES and tokens[0] == model.ids.eos:
        return tokens
    embeds = torch.cat([embeds, wte(torch.tensor([[tokens[-1]]], device=device))], 1)
    for _ in range(max_new_tokens - 1):
        token = int(base(inputs_embeds=embeds).logits[0, -1].argmax())
        if token == model.ids.eos:
            break
        tokens.append(token)
        embeds = torch.cat([embeds, wte(torch.tensor([[token]], device=device))], 1)
    return tokens
