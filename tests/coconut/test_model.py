"""The COCONUT wrapper: feedback modes, gradients, generation, state dict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coconut.data import (
    Curriculum,
    SpecialIds,
    Tokenized,
    build_tokenizer,
    collate,
    collate_prompts,
    question_example,
    training_example,
)
from coconut.generate import generate_dataset
from coconut.model import ModelConfig, build_model
from coconut.reference import reference_generate, reference_loss


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def examples(tok) -> list[Tokenized]:
    """Generated ProsQA examples with the question cut short, to keep the full-vocab reference cheap."""
    data = generate_dataset(6, seed=3)
    out = []
    for i, ex in enumerate(data):
        q = tok(ex["question"])["input_ids"][: 12 + 3 * i] + tok("\n")["input_ids"]
        steps = [tok(s + "\n")["input_ids"] for s in ex["steps"]]
        out.append(Tokenized(q, steps, tok("### " + ex["answer"])["input_ids"] + [tok.eos_token_id], i))
    return out


def make(tok, mode: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(feedback_mode=mode, n_layer=2, n_embd=32, n_head=2, dropout=0.0, **kw), tok)
    return model.eval()


def batch(tok, examples, stage: int, uniform_prob: float = 0.0, markers: bool = True):
    ids = SpecialIds.of(tok)
    cur = Curriculum(c_thought=2, max_latent_stage=2, uniform_prob=uniform_prob, markers=markers)
    rng = np.random.default_rng(1)
    return collate([training_example(t, stage, cur, ids, rng) for t in examples], ids.eos, ids.latent)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_new_tokens_start_as_double_less_than(tok):
    model = make(tok, "continuous")
    emb = model.base_causallm.get_input_embeddings().weight
    assert emb.shape[0] == 50260
    for t in range(50257, 50260):
        assert torch.equal(emb[t], emb[tok.convert_tokens_to_ids("<<")])
    for mode in ("cot", "no_cot", "no_thoughts"):   # run.py extends the vocabulary for none of these
        assert make(tok, mode).base_causallm.get_input_embeddings().weight.shape[0] == 50257
    assert make(tok, "pause_as_thought").base_causallm.get_input_embeddings().weight.shape[0] == 50260


def test_state_dict_keys(tok):
    for mode in ("continuous", "cot", "no_cot", "no_thoughts", "pause_as_thought"):
        assert all(k.startswith("base_causallm.") for k in make(tok, mode).state_dict())
    for mode in ("frozen", "learned_shared", "pause_curriculum", "pause_multipass"):
        keys = set(make(tok, mode).state_dict())
        assert "pause_embedding" in keys and all(k.startswith("base_causallm.") for k in keys - {"pause_embedding"})
    frozen = make(tok, "frozen")
    assert "pause_embedding" not in dict(frozen.named_parameters())
    assert isinstance(make(tok, "pause_curriculum").pause_embedding, torch.nn.Parameter)


def test_pause_multipass_equals_pause_curriculum(tok, examples):
    b = batch(tok, examples, stage=2, uniform_prob=0.5)  # mixed latent counts, left padding
    assert len(set((b["input_ids"] == 50259).sum(1).tolist())) > 1
    single, multi = make(tok, "pause_curriculum"), make(tok, "pause_multipass")
    multi.load_state_dict(single.state_dict())
    with torch.no_grad():  # a pause vector unlike any token embedding
        single.pause_embedding.normal_()
        multi.pause_embedding.copy_(single.pause_embedding)
    loss_s, loss_m = single(**b), multi(**b)
    loss_s.backward()
    loss_m.backward()
    torch.testing.assert_close(loss_m, loss_s, rtol=1e-5, atol=1e-6)
    gs, gm = grads(single), grads(multi)
    assert set(gs) == set(gm) and "pause_embedding" in gs and gs["pause_embedding"].abs().sum() > 0
    for name in gs:
        torch.testing.assert_close(gm[name], gs[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("mode", ["continuous", "frozen", "pause_curriculum", "pause_as_thought", "cot"])
def test_fast_forward_matches_reference(tok, examples, mode):
    """Loss and gradients of the KV-cached multi-pass forward equal the from-scratch reference."""
    b = batch(tok, examples, stage=0 if mode == "cot" else 2, uniform_prob=0.0 if mode == "cot" else 0.5,
              markers=mode != "cot")
    fast, ref = make(tok, mode), make(tok, mode)
    loss_f = fast(**b)
    loss_r = reference_loss(ref, **b)
    loss_f.backward()
    loss_r.backward()
    torch.testing.assert_close(loss_f, loss_r, rtol=1e-5, atol=1e-6)
    gf, gr = grads(fast), grads(ref)
    for name in gr:
        torch.testing.assert_close(gf[name], gr[name], rtol=1e-4, atol=1e-6, msg=name)
    if mode == "frozen":
        assert "pause_embedding" not in gf


def test_continuous_gradients_flow_through_passes(tok, examples):
    b = batch(tok, examples, stage=2)
    model = make(tok, "continuous")
    model(**b).backward()
    through = grads(model)
    model.zero_grad()
    model(**b, thought_fn=lambda h, i: h.detach()).backward()  # cut the feedback path
    cut = grads(model)
    diff = max(float((through[n] - cut[n]).abs().max()) for n in through)
    assert diff > 1e-4
    # and the thought really is the previous hidden state: the loss changes when it is replaced (a model at
    # init is near-uniform, so by little: ~1e-5 relative; an unused thought would give the identical loss)
    with torch.no_grad():
        assert abs(float(model(**b)) - float(model(**b, thought_fn=lambda h, i: torch.zeros_like(h)))) > 1e-6


@pytest.mark.parametrize("mode", ["continuous", "pause_curriculum", "pause_as_thought", "no_cot"])
def test_batched_generation_equals_one_at_a_time(tok, examples, mode):
    ids = SpecialIds.of(tok)
    cur = Curriculum(max_latent_stage=2, markers=mode != "no_cot", no_cot=mode == "no_cot")
    model = make(tok, mode, seed=4)
    with torch.no_grad():  # larger weights: outputs that depend on the context, and EOS early for some
        for p in model.base_causallm.parameters():
            p.mul_(4.0)
        model.base_causallm.lm_head.weight[ids.eos] *= 1.3
    prompts = [question_example(t, 2, cur, ids) for t in examples]
    batched = model.generate(**collate_prompts(prompts, ids.eos), max_new_tokens=12)
    single = [reference_generate(model, p, max_new_tokens=12) for p in prompts]
    assert batched == single
    assert len({tuple(s) for s in single}) > 1


@pytest.mark.parametrize("mode", ["cot", "no_cot", "no_thoughts", "pause_as_thought"])
def test_plain_lm_generation_equals_transformers_generate(tok, examples, mode):
    """run.py answers with the modes it runs as a plain GPT-2 (the baselines, w/o thought, pause as thought)
    through transformers' greedy ``generate``, which stops at any EOS, the first token included: same
    decoded text, so the same extracted answer. pause_as_thought's prompts hold latent tokens, read as
    their own embedding rows, as transformers reads them."""
    ids = SpecialIds.of(tok)
    cur = {"cot": Curriculum(markers=False), "no_cot": Curriculum(markers=False, no_cot=True),
           "no_thoughts": Curriculum(c_thought=0, markers=False), "pause_as_thought": Curriculum(max_latent_stage=2)}[mode]
    model = make(tok, mode, seed=4)
    with torch.no_grad():  # larger weights, and EOS likely enough that some prompt starts with it
        for p in model.base_causallm.parameters():
            p.mul_(4.0)
        # (after the end-of-latent marker EOS needs a larger push to come first)
        model.base_causallm.lm_head.weight[ids.eos] *= 5.0 if mode == "pause_as_thought" else 3.0
    stage = 0 if mode == "cot" else 2  # the baselines train and answer at stage 0; the others drop 2 steps
    prompts = [question_example(t, stage, cur, ids) for t in examples]
    assert all((ids.latent in p) == (mode == "pause_as_thought") for p in prompts)
    ours = model.generate(**collate_prompts(prompts, ids.eos), max_new_tokens=12)
    assert any(o[0] == ids.eos for o in ours)  # the case where coconut.py's own loop would go on
    for p, o in zip(prompts, ours, strict=True):
        hf = model.base_causallm.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                          max_new_tokens=12, do_sample=False, pad_token_id=ids.eos)[0]
        assert tok.decode(p + o, skip_special_tokens=True) == tok.decode(hf, skip_special_tokens=True)
        assert reference_generate(model, p, max_new_tokens=12) == o


def test_pretrained_base_model_from_a_local_path(tok, tmp_path):
    """The from_pretrained path (what base_model: openai-community/gpt2 takes), offline from a saved model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from launch.errors import UserError

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_layer=1, n_embd=16, n_head=2)).save_pretrained(tmp_path / "gpt2")
    model = build_model(ModelConfig(feedback_mode="continuous", base_model=str(tmp_path / "gpt2")), tok)
    emb = model.base_causallm.get_input_embeddings().weight
    assert emb.shape == (50260, 16) and model.base_causallm.config.n_layer == 1
    assert torch.equal(emb[50259], emb[tok.convert_tokens_to_ids("<<")])
    with pytest.raises(UserError, match="base_model"):
        build_model(ModelConfig(base_model=str(tmp_path / "missing")), tok)


def test_compact_vocabulary_model_and_pretrained_refusal(tok, tmp_path):
    """A from-scratch model on the compact vocabulary has one row per compact token (the latent rows start
    as "<<", as with the full vocabulary); a pretrained base model refuses it (its rows are GPT-2's)."""
    from coconut.data import CompactTokenizer
    from launch.errors import UserError

    compact = CompactTokenizer(tok)
    model = build_model(ModelConfig(feedback_mode="continuous", n_layer=1, n_embd=16, n_head=2), compact)
    emb = model.base_causallm.get_input_embeddings().weight
    assert emb.shape == (len(compact), 16) and len(compact) < 200
    assert torch.equal(emb[-1], emb[compact.convert_tokens_to_ids("<<")])
    cot = build_model(ModelConfig(feedback_mode="cot", n_layer=1, n_embd=16, n_head=2), compact)
    assert cot.base_causallm.get_input_embeddings().weight.shape[0] == compact.vocab_size
    with pytest.raises(UserError, match="compact_vocab: not for a pretrained base_model"):
        build_model(ModelConfig(feedback_mode="cot", base_model=str(tmp_path / "gpt2")), compact)


def test_pause_as_thought_trains_as_runpy_plain_gpt2(tok, examples):
    """Meta's pause as thought is run.py on a plain GPT-2: the latent token reads its own (tied) embedding row,
    the loss is transformers' own. Same loss, and the same weights after AdamW steps with weight decay
    (every parameter, as run.py passes them all). The separate-vector control (pause_curriculum) has the same
    loss at init but different updates: its pause vector gets no output-head gradient and the latent row no
    input gradient."""
    import copy

    b = batch(tok, examples, stage=2, uniform_prob=0.5)
    assert (b["input_ids"] == SpecialIds.of(tok).latent).any()
    ours = make(tok, "pause_as_thought")
    control = make(tok, "pause_curriculum")
    reference = copy.deepcopy(ours.base_causallm)   # what run.py trains for this mode

    def ref_loss():
        return reference(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                         position_ids=b["position_ids"], labels=b["labels"]).loss

    torch.testing.assert_close(ours(**b), ref_loss(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(control(**b), ref_loss(), rtol=1e-6, atol=1e-6)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.01) for m in (ours, control, reference)]
    for _ in range(3):
        for opt, loss in zip(opts, (lambda: ours(**b), lambda: control(**b), ref_loss), strict=True):
            opt.zero_grad()
            loss().backward()
            opt.step()
    latent = SpecialIds.of(tok).latent
    ref_params = dict(reference.named_parameters())
    for name, p in ours.base_causallm.named_parameters():
        mine, theirs = p, ref_params[name]
        if name.endswith("attn.c_attn.bias"):
            # Skip the key bias: it shifts every score of a query alike, so its exact gradient is 0 and Adam
            # turns the float noise in it into lr-sized steps of random sign (in run.py from run to run too).
            mine, theirs = mine.view(3, -1)[[0, 2]], theirs.view(3, -1)[[0, 2]]
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=name)
    row = reference.get_input_embeddings().weight[latent]
    torch.testing.assert_close(ours.pause_vector(), row, rtol=0, atol=1e-6)
    assert float((control.pause_vector() - row).abs().max()) > 1e-3


def test_pause_as_thought_thought_transform(tok, examples):
    """The corruption test's hook reaches pause_as_thought's latents: the identity keeps the loss, zeros change it."""
    b = batch(tok, examples, stage=2)
    model = make(tok, "pause_as_thought")
    with torch.no_grad():
        plain = model(**b)
        torch.testing.assert_close(model(**b, thought_fn=lambda h, i: h), plain, rtol=1e-6, atol=1e-7)
        assert abs(float(model(**b, thought_fn=lambda h, i: torch.zeros_like(h))) - float(plain)) > 1e-6
