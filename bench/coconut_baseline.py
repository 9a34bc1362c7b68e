"""A straightforward COCONUT implementation, kept as the baseline the optimised one is measured against.

It does what Meta's coconut.py does, in our own code: the multi-pass forward reuses the KV cache
between passes but rebuilds the whole (B, T, D) input-embedding tensor after every pass, computes logits
for every position over the whole vocabulary, and the loss is the mean over labels != -100. Generation
handles one example at a time and recomputes the whole sequence for each new token (no cache).

Same function as ``coconut.model.Coconut.forward`` / ``generate``: ``bench/bench_coconut.py`` checks the
numbers agree before timing them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from coconut.data import extract_answer, question_example
from coconut.model import Coconut, cache_arg
from coconut.reference import reference_generate


def baseline_loss(model: Coconut, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  position_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    base = model.base_causallm
    embeds = base.transformer.wte(input_ids)
    latent_lists = [(row == model.ids.latent).nonzero().flatten().tolist() for row in input_ids]
    n_passes = max(len(p) for p in latent_lists)
    end = min(p[0] for p in latent_lists if p) if n_passes else input_ids.shape[1]
    start, cache, logits = 0, None, []
    for i in range(n_passes):
        out = base(inputs_embeds=embeds[:, start:end], attention_mask=attention_mask[:, :end],
                   position_ids=position_ids[:, start:end], use_cache=True, output_hidden_states=True,
                   **({cache_arg(): cache} if cache is not None else {}))
        logits.append(out.logits)
        cache, hidden = getattr(out, cache_arg()), out.hidden_states[-1]
        # rebuild the whole input tensor with this pass's thoughts written in
        rows = []
        for b, positions in enumerate(latent_lists):
            cols = list(embeds[b].unbind(0))
            if i < len(positions):
                p = positions[i]
                if model.feedback_mode == "continuous":
                    cols[p] = hidden[b, p - 1 - start]
                else:
                    cols[p] = model.pause_vector()  # a separate vector, or pause_as_thought's own row
            rows.append(torch.stack(cols))
        embeds = torch.stack(rows)
        start, end = end, (input_ids.shape[1] if i + 1 >= n_passes else end + 1)
    out = base(inputs_embeds=embeds[:, start:end], attention_mask=attention_mask[:, :end],
               position_ids=position_ids[:, start:end], use_cache=cache is not None,
               **({cache_arg(): cache} if cache is not None else {}))
    logits.append(out.logits)
    logits = torch.cat(logits, 1)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


@torch.no_grad()
def baseline_answers(model: Coconut, tok: Any, examples: list[Any], stage: int, cur: Any,
                     max_new_tokens: int = 128) -> list[str]:
    """One example at a time, no cache (run.py's evaluation loop)."""
    model.eval()
    answers = []
    for ex in examples:
        prompt = question_example(ex, stage, cur, model.ids)
        out = reference_generate(model, prompt, max_new_tokens)
        answers.append(extract_answer(tok.decode(prompt + out, skip_special_tokens=True)))
    return answers
