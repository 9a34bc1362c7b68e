"""Meta's COCONUT files: `sweep export --format meta-coconut` writes what run.py's ``load_model_path``
loads; `sweep answer` / `sweep corruption` read run.py's ``checkpoint_N`` files. The files on Meta's side are
built here as run.py builds its model: GPT-2 from a config, the three latent tokens added (rows from "<<"),
and for coconut the wrapper, which registers the GPT-2 model as ``base_causallm`` and its input embedding
again as ``embedding``; run.py saves that module's ``state_dict()``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from coconut.cli import answer_command, corruption_command, export_command
from coconut.data import SpecialIds, Tokenized, build_tokenizer, extract_answer, question_example
from coconut.experiment import EXPERIMENT
from coconut.meta import load_any
from coconut.model import Coconut, ModelConfig, build_model
from coconut.reference import reference_generate
from coconut.train import _weights, curriculum_of, load_weights
from launch.checkpoint import save_checkpoint

QUESTION = "Every wumpus is a dumpus. Tom is a wumpus. Sam is a rempus. Is Tom a dumpus or rempus?"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def runpy_model(tok, *, wrapped: bool, latent_tokens: bool = True, seed: int = 0, scale: float = 1.0):
    """GPT-2 1 x 16 (2 heads) as run.py sets it up for a mode: with the latent tokens or not, wrapped or not."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_layer=1, n_embd=16, n_head=2,
                                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    with torch.no_grad():   # larger weights: answers that depend on the context
        for p in base.parameters():
            p.mul_(scale)
    if latent_tokens:
        base.resize_token_embeddings(len(tok))
        with torch.no_grad():
            emb = base.get_input_embeddings().weight
            emb[tok.vocab_size:] = emb[tok.convert_tokens_to_ids("<<")]
    if not wrapped:
        return base.eval()
    wrapper = torch.nn.Module()
    wrapper.base_causallm = base
    wrapper.embedding = base.transformer.wte
    return wrapper.eval()


def sweep_checkpoint(tok, mode: str, path, **config):
    """A checkpoint as sweep's training writes it, for a model of ``mode``."""
    torch.manual_seed(1)
    model = build_model(ModelConfig(feedback_mode=mode, n_layer=1, n_embd=16, n_head=2), tok)
    cfg = EXPERIMENT.defaults() | {"feedback_mode": mode, "n_layer": 1, "n_embd": 16, "n_head": 2} | config
    save_checkpoint(_weights(model, tok, cfg, 3, 0, {}, None), path)
    return model


def test_export_loads_with_runpy_load_model_path(tiny_run, tmp_path):
    out = tmp_path / "meta"
    result = CliRunner().invoke(export_command, [str(tiny_run), "--format", "meta-coconut", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint_1", "checkpoint_2"]   # no sidecars: run.py
    # parses the epoch of every checkpoint_* name
    state = torch.load(out / "checkpoint_2", weights_only=True)
    assert all(k.startswith("base_causallm") for k in state if k != "embedding.weight")  # run.py: coconut weights
    meta = runpy_model(build_tokenizer(), wrapped=True, seed=9)
    loaded = meta.load_state_dict(state, strict=False)
    assert loaded.missing_keys == [] and loaded.unexpected_keys == []
    ours, _, _ = load_weights(tiny_run / "checkpoint_2")
    theirs = dict(meta.base_causallm.named_parameters())
    for name, p in ours.base_causallm.named_parameters():
        assert torch.equal(p, theirs[name]), name
    # and back: the exported file answers as the original does (the stage given: Meta's files do not say)
    args = [QUESTION, "--max-new-tokens", "6", "--stage", "1", "-v"]
    mine = CliRunner().invoke(answer_command, [str(tiny_run / "checkpoint_2"), *args])
    back = CliRunner().invoke(answer_command, [str(out / "checkpoint_2"), *args, "--n-head", "2"])
    assert mine.exit_code == 0 and back.exit_code == 0, back.output
    assert back.output == mine.output


@pytest.mark.parametrize("mode", ["pause_as_thought", "cot", "no_thoughts"])
def test_export_plain_lm_modes(tok, tmp_path, mode):
    """run.py runs these as a plain GPT-2 and saves its keys, unprefixed; the vocabulary has the latent
    tokens for pause as thought only."""
    ours = sweep_checkpoint(tok, mode, tmp_path / "run" / "checkpoint_3")
    result = CliRunner().invoke(export_command, [str(tmp_path / "run"), "--format", "meta-coconut",
                                                 "-o", str(tmp_path / "meta")])
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "meta" / "checkpoint_3", weights_only=True)
    assert not any(k.startswith("base_causallm") for k in state)
    meta = runpy_model(tok, wrapped=False, latent_tokens=mode == "pause_as_thought", seed=9)
    loaded = meta.load_state_dict(state, strict=False)
    assert loaded.missing_keys == [] and loaded.unexpected_keys == []
    assert all(torch.equal(p, dict(meta.named_parameters())[n]) for n, p in ours.base_causallm.named_parameters())
    model, _, info = load_any(tmp_path / "meta" / "checkpoint_3", n_head=2)
    # a plain GPT-2 without latent tokens reads as cot: CoT, no-CoT and w/o thought prompt and answer alike
    assert model.feedback_mode == ("pause_as_thought" if mode == "pause_as_thought" else "cot")
    assert info["epoch"] == 3 and info["stage"] == 0


def test_export_refuses_what_runpy_cannot_hold(tok, tmp_path):
    sweep_checkpoint(tok, "pause_curriculum", tmp_path / "pause" / "checkpoint_3")
    out = tmp_path / "meta"
    result = CliRunner().invoke(export_command, [str(tmp_path / "pause"), "--format", "meta-coconut", "-o", str(out)])
    assert result.exit_code == 2 and "no counterpart in Meta's code" in result.output and not out.exists()
    from coconut.data import CompactTokenizer

    compact = CompactTokenizer(tok)
    torch.manual_seed(0)
    model = build_model(ModelConfig(feedback_mode="continuous", n_layer=1, n_embd=16, n_head=2), compact)
    cfg = EXPERIMENT.defaults() | {"n_layer": 1, "n_embd": 16, "n_head": 2, "compact_vocab": True}
    save_checkpoint(_weights(model, compact, cfg, 1, 0, {}, None), tmp_path / "compact" / "checkpoint_1")
    result = CliRunner().invoke(export_command, [str(tmp_path / "compact"), "--format", "meta-coconut", "-o", str(out)])
    assert result.exit_code == 2 and "compact_vocab" in result.output and not out.exists()
    out.mkdir()
    (out / "x").write_text("")
    shutil.copytree(tmp_path / "pause", tmp_path / "again")
    result = CliRunner().invoke(export_command, [str(tmp_path / "again"), "--format", "meta-coconut", "-o", str(out)])
    assert result.exit_code == 2 and "not an empty directory" in result.output


def test_answer_reads_a_runpy_checkpoint(tok, tmp_path):
    """run.py's checkpoint_7 (coconut, saved through the wrapper): the model is rebuilt from the tensors'
    shapes, the stage from the name ((7 - 1) // 5 = 1 latent), and answers as coconut.py's loop does."""
    meta = runpy_model(tok, wrapped=True, seed=3, scale=4.0)
    torch.save(meta.state_dict(), tmp_path / "checkpoint_7")
    result = CliRunner().invoke(answer_command, [str(tmp_path / "checkpoint_7"), QUESTION, "--n-head", "2",
                                                 "--max-new-tokens", "8", "-v"])
    assert result.exit_code == 0, result.output
    ids = SpecialIds.of(tok)
    model = Coconut(meta.base_causallm, "continuous", ids).eval()
    cur = curriculum_of(EXPERIMENT.defaults())
    prompt = question_example(Tokenized(tok(QUESTION + "\n")["input_ids"], [], [], 0), 1, cur, ids)
    assert prompt.count(ids.latent) == 1
    out = reference_generate(model, prompt, max_new_tokens=8)
    assert result.output == (f"{tok.decode(out, skip_special_tokens=True)}\n"
                             f"{extract_answer(tok.decode(prompt + out, skip_special_tokens=True))}\n")
    # the heads are not in the file and 16 is no GPT-2 width: one line, exit 2
    result = CliRunner().invoke(answer_command, [str(tmp_path / "checkpoint_7"), QUESTION])
    assert result.exit_code == 2 and "n_head" in result.output and "--n-head" in result.output


def test_corruption_of_a_runpy_checkpoint_for_the_gates(tok, tmp_path):
    """Gate 4 reads corruption.json; the corruption command writes it for run.py's files too."""
    meta = runpy_model(tok, wrapped=True, seed=3, scale=4.0)
    torch.save(meta.state_dict(), tmp_path / "checkpoint_12")
    result = CliRunner().invoke(corruption_command, [str(tmp_path / "checkpoint_12"), "-n", "2", "--n-head", "2",
                                                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "corruption.json").read_text())
    assert saved["feedback_mode"] == "continuous" and saved["stage"] == 2 and saved["n"] == 2
    assert saved["checkpoint"] == "checkpoint_12"


def test_foreign_file_is_one_line(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "checkpoint_1")
    result = CliRunner().invoke(answer_command, [str(tmp_path / "checkpoint_1"), QUESTION])
    assert result.exit_code == 2 and "neither a coconut checkpoint" in result.output


def test_export_names_best_by_its_epoch_when_that_file_was_pruned(tiny_run, tmp_path):
    """run.py names every file by its epoch: a checkpoint_best whose own checkpoint_<n> was pruned
    (keep_checkpoints) is written as checkpoint_<n>, its epoch from its sidecar."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for suffix in ("", ".json"):
        shutil.move(run / f"checkpoint_1{suffix}", run / f"checkpoint_best{suffix}")
    out = tmp_path / "meta"
    result = CliRunner().invoke(export_command, [str(run), "--format", "meta-coconut", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint_1", "checkpoint_2"]
    best, _, _ = load_weights(run / "checkpoint_best")
    state = torch.load(out / "checkpoint_1", weights_only=True)
    assert all(torch.equal(state["base_causallm." + k], v) for k, v in best.base_causallm.state_dict().items())
