"""Tokenisation, the stage curriculum and batch collation (coconut dataset.py semantics)."""

from __future__ import annotations

import numpy as np
import pytest

from coconut.data import (
    IGNORE,
    Curriculum,
    SpecialIds,
    build_tokenizer,
    collate,
    collate_prompts,
    extract_answer,
    find_data_dir,
    load_prosqa,
    question_example,
    tokenize,
    training_example,
)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def ids(tok) -> SpecialIds:
    return SpecialIds.of(tok)


@pytest.fixture(scope="module")
def valid(tok):
    data = load_prosqa(find_data_dir() / "prosqa_valid.json")[:40]
    return data, tokenize(data, tok)


def test_tokenizer_is_gpt2_bpe_plus_three_tokens(tok, ids):
    assert len(tok) == 50260 and (ids.start, ids.end, ids.latent, ids.eos) == (50257, 50258, 50259, 50256)
    assert tok.encode("Tom is a lempus.\n### Tom") == [13787, 318, 257, 443, 3149, 385, 13, 198, 21017, 4186]
    assert tok.convert_tokens_to_ids("<<") == 16791


def test_pieces_concatenate_to_the_whole_text(tok, valid):
    data, toks = valid
    for ex, t in zip(data, toks, strict=True):
        whole = ex["question"] + "\n" + "\n".join(ex["steps"]) + "\n### " + ex["answer"]
        assert t.question + [x for s in t.steps for x in s] + t.answer == tok.encode(whole) + [tok.eos_token_id]


def test_stage_layout_and_labels(valid, ids):
    _, toks = valid
    t = next(t for t in toks if len(t.steps) == 4)
    rng = np.random.default_rng(0)
    cur = Curriculum(c_thought=2, max_latent_stage=3)
    flat = lambda steps: [x for s in steps for x in s]  # noqa: E731
    for stage in range(6):
        ex = training_example(t, stage, cur, ids, rng)
        n_lat = 2 * min(stage, 3)
        n_skip = stage if stage <= 3 else 4           # past max_latent_stage: every step dropped
        rest = flat(t.steps[n_skip:]) + t.answer
        assert ex["input_ids"] == t.question + [ids.start] + [ids.latent] * n_lat + [ids.end] + rest
        assert ex["labels"] == [IGNORE] * (len(t.question) + n_lat + 2) + rest
    # pad_latent_to_max=False: past the last stage, latents = min(n_steps, max_latent_stage)
    short = next(t for t in toks if len(t.steps) == 3)
    cur = Curriculum(c_thought=1, max_latent_stage=6, pad_latent_to_max=False)
    assert training_example(short, 7, cur, ids, rng)["input_ids"].count(ids.latent) == 3
    assert question_example(short, 7, cur, ids).count(ids.latent) == 3
    assert question_example(short, 7, Curriculum(max_latent_stage=6), ids).count(ids.latent) == 6
    assert question_example(short, 2, Curriculum(c_thought=2), ids) == short.question + [ids.start] + [
        ids.latent] * 4 + [ids.end]


def test_baselines_have_no_markers(valid, ids):
    _, toks = valid
    t, rng = toks[0], np.random.default_rng(0)
    cot = training_example(t, 0, Curriculum(markers=False), ids, rng)
    assert cot["input_ids"] == t.question + [x for s in t.steps for x in s] + t.answer
    assert cot["labels"][: len(t.question)] == [IGNORE] * len(t.question)
    no_cot = training_example(t, 0, Curriculum(markers=False, no_cot=True), ids, rng)
    assert no_cot["input_ids"] == t.question + t.answer
    assert question_example(t, 3, Curriculum(markers=False, no_cot=True), ids) == t.question


def test_uniform_prob_mixes_stages(valid, ids):
    _, toks = valid
    rng = np.random.default_rng(0)
    cur = Curriculum(max_latent_stage=6, uniform_prob=1.0)
    counts = {training_example(t, 0, cur, ids, rng)["input_ids"].count(ids.latent) for t in toks for _ in range(5)}
    assert len(counts) >= 4 and 0 in counts
    assert {training_example(t, 2, Curriculum(), ids, rng)["input_ids"].count(ids.latent) for t in toks} == {2}


def test_collate_aligns_first_latent_then_right_pads(valid, ids):
    _, toks = valid
    rng = np.random.default_rng(0)
    cur = Curriculum(max_latent_stage=3, uniform_prob=0.5)
    feats = [training_example(t, 2, cur, ids, rng) for t in toks[:12]]
    assert any(ids.latent not in f["input_ids"] for f in feats) and any(ids.latent in f["input_ids"] for f in feats)
    b = collate([dict(f) for f in feats], ids.eos, ids.latent)
    first = {int((row == ids.latent).nonzero()[0]) for row in b["input_ids"] if (row == ids.latent).any()}
    assert len(first) == 1
    for f, row, mask, pos, lab in zip(feats, b["input_ids"], b["attention_mask"], b["position_ids"],
                                      b["labels"], strict=True):
        real = mask.bool()
        assert row[real].tolist() == f["input_ids"] and lab[real].tolist() == f["labels"]
        assert pos[real].tolist() == list(range(len(f["input_ids"])))
        assert (lab[~real] == IGNORE).all() and (pos[~real] == 0).all() and (row[~real] == ids.eos).all()
        # padding only at the two ends: the real tokens are one contiguous block
        idx = real.nonzero().flatten()
        assert int(idx[-1] - idx[0]) + 1 == len(f["input_ids"])


def test_collate_prompts_end_together(valid, ids):
    _, toks = valid
    prompts = [question_example(t, 2, Curriculum(), ids) for t in toks[:5]]
    b = collate_prompts(prompts, ids.eos)
    assert (b["input_ids"][:, -1] == ids.end).all() and (b["input_ids"][:, -3] == ids.latent).all()
    assert b["attention_mask"].sum(1).tolist() == [len(p) for p in prompts]


def test_extract_answer():
    assert extract_answer("Q?\n<|start-latent|>x\n### Tom is a lempus.") == "Tom is a lempus."
    assert extract_answer("no hash, here") == "no hash here"


# -- the compact vocabulary -----------------------------------------------------------------------------

def test_compact_vocabulary_round_trips_text_exactly(tok):
    from coconut.data import CompactTokenizer
    from coconut.generate import GraphSize, generate_dataset

    compact = CompactTokenizer(tok)
    d = find_data_dir()
    data = (load_prosqa(d / "prosqa_valid.json") + load_prosqa(d / "prosqa_test.json")
            + generate_dataset(200, seed=1) + generate_dataset(200, seed=2, size=GraphSize(6, 8, 1, 3)))
    texts = [ex["question"] + "\n" for ex in data] + ["### " + ex["answer"] for ex in data]
    texts += [s + "\n" for ex in data for s in ex["steps"]]
    ids = compact(texts)["input_ids"]
    assert [compact.decode(i) for i in ids] == texts
    # the same tokens as GPT-2, renumbered: one compact id per GPT-2 id
    assert [[compact.gpt2_ids[i] for i in row] for row in ids] == tok(texts)["input_ids"]
    used = {i for row in ids for i in row}
    assert len(used) < 120 and max(used) < compact.vocab_size < 200
    # EOS, "<<" and the latent tokens are in; the latent tokens are the last three rows
    assert compact.decode([compact.eos_token_id]) == tok.eos_token
    assert compact.convert_tokens_to_ids(["<|start-latent|>", "<|end-latent|>", "<|latent|>"]) == \
        [compact.vocab_size, compact.vocab_size + 1, compact.vocab_size + 2] and len(compact) == compact.vocab_size + 3
    assert compact.decode([compact.convert_tokens_to_ids("<<")]) == "<<"
    # decoding with the markers and EOS gives GPT-2's text for the same tokens, skip_special_tokens included
    c, g = SpecialIds.of(compact), SpecialIds.of(tok)
    row = [c.start, *ids[0][:3], c.latent, c.end, c.eos]
    gpt2_row = [g.start, *tok(texts[0])["input_ids"][:3], g.latent, g.end, g.eos]
    for skip in (False, True):
        assert compact.decode(row, skip_special_tokens=skip) == tok.decode(gpt2_row, skip_special_tokens=skip)


def test_compact_vocabulary_refuses_other_text(tok):
    from coconut.data import CompactTokenizer
    from launch.errors import UserError

    compact = CompactTokenizer(tok)
    with pytest.raises(UserError, match="compact_vocab: .*outside the compact vocabulary"):
        compact(["Every wumpus is a zebra."])
    assert compact("Every wumpus is a yumpus.")["input_ids"] == compact(["Every wumpus is a yumpus."])["input_ids"][0]


def test_well_formed_answers():
    from coconut.data import well_formed

    ex = {"question": "Tom is a wumpus. Every wumpus is a yumpus. Is Tom a yumpus or rempus?"}
    assert well_formed("Tom is a yumpus.", ex) and well_formed("Tom is a rempus.", ex)
    assert not well_formed("Tom is a wumpus.", ex)          # a concept, but not one of the options
    assert not well_formed("Sam is a yumpus.", ex) and not well_formed("Tom is a yumpus", ex)
    assert not well_formed("", ex)
