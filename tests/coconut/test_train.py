"""Training loop: metrics, checkpoints, bit-identical resume, batched evaluation, model loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from coconut.data import Curriculum, SpecialIds, build_tokenizer, extract_answer, question_example, tokenize
from coconut.experiment import EXPERIMENT
from coconut.generate import GraphSize, generate_dataset
from coconut.model import ModelConfig, build_model
from coconut.reference import reference_generate
from coconut.train import answer_questions, checkpoint_for, load_model_by_name
from launch.checkpoint import load_checkpoint
from launch.errors import CheckpointError
from launch.experiment import RunContext


def records(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec.pop("time")
        rec["metrics"].pop("epoch_time_s", None)
        out.append(rec)
    return out


def test_resume_is_bit_identical(tiny_run, make_config, tmp_path):
    straight, resumed = tiny_run, tmp_path / "resumed"
    resumed.mkdir()
    EXPERIMENT.run(make_config(num_epochs=1), RunContext(run_dir=resumed))   # "killed" after epoch 1
    with open(resumed / "metrics.jsonl", "a") as f:   # a record from the lost part of epoch 2
        f.write(json.dumps({"step": 2, "split": "train", "length": None, "time": 0, "metrics": {}}) + "\n")
    EXPERIMENT.run(make_config(), RunContext(run_dir=resumed))
    a = load_checkpoint(straight / "checkpoint_2")["model"]
    b = load_checkpoint(resumed / "checkpoint_2")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert records(straight) == records(resumed)
    # the weights did move, and the metrics have the agreed shape
    c1 = load_checkpoint(straight / "checkpoint_1")["model"]
    assert any(not torch.equal(a[k], c1[k]) for k in a)
    recs = records(straight)
    assert [(r["step"], r["split"]) for r in recs] == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    assert [r["metrics"]["stage"] for r in recs if r["split"] == "val"] == [0, 1]
    assert {"loss", "accuracy"} <= set(recs[1]["metrics"])
    assert (straight / "checkpoint_best").is_file() and len(list(straight.glob("resume_*.pt"))) == 1


def test_resume_refuses_a_different_config(tiny_run, make_config, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(CheckpointError, match="lr"):
        EXPERIMENT.run(make_config(lr=2e-3, num_epochs=3), RunContext(run_dir=run))


def test_batched_answers_equal_one_at_a_time_no_cache():
    tok = build_tokenizer()
    ids = SpecialIds.of(tok)
    raw = generate_dataset(7, seed=11)
    examples = tokenize(raw, tok)
    torch.manual_seed(0)
    model = build_model(ModelConfig(feedback_mode="continuous", n_layer=1, n_embd=16, n_head=2, dropout=0.0), tok)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)  # context-dependent outputs from an untrained model
    # not padded to the max: examples with fewer steps get fewer latents -> several prompt groups
    cur = Curriculum(max_latent_stage=6, pad_latent_to_max=False)
    batched = answer_questions(model, tok, examples, 5, cur, "cpu", batch_size=3, max_new_tokens=6)
    single = []
    for ex in examples:
        prompt = question_example(ex, 5, cur, ids)
        single.append(extract_answer(tok.decode(prompt + reference_generate(model, prompt, 6),
                                                skip_special_tokens=True)))
    assert len({question_example(ex, 5, cur, ids).count(ids.latent) for ex in examples}) > 1
    assert batched == single and len(set(single)) > 1


def test_load_model_by_name_prefers_best_then_final_then_highest(tiny_run, tmp_path):
    root = tmp_path / "tree"
    run = root / "coconut" / "coconut" / "seed7"
    shutil.copytree(tiny_run, run)
    model, tok, state = load_model_by_name("coconut", root)
    assert checkpoint_for(run).name == "checkpoint_best" and state["epoch"] in (1, 2)
    saved = load_checkpoint(run / "checkpoint_best")["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    (run / "checkpoint_best").unlink()
    assert checkpoint_for(run).name == "checkpoint_2"          # the final epoch (num_epochs = 2)
    shutil.copy(run / "checkpoint_1", run / "checkpoint_9")
    assert checkpoint_for(run).name == "checkpoint_2"
    (run / "checkpoint_2").unlink()
    assert checkpoint_for(run).name == "checkpoint_9"          # else the highest-numbered
    with pytest.raises(CheckpointError, match="no run named"):
        load_model_by_name("pause-frozen", root)


def test_check_reports_bad_values():
    cfg = EXPERIMENT.defaults() | {"feedback_mode": "warm", "n_embd": 30, "n_head": 4, "uniform_prob": 2.0}
    problems = EXPERIMENT.check(cfg)
    assert any(p.startswith("feedback_mode:") for p in problems)
    assert any(p.startswith("n_embd:") for p in problems)
    assert any(p.startswith("uniform_prob:") for p in problems)
    assert EXPERIMENT.check(EXPERIMENT.defaults()) == []
    assert EXPERIMENT.total_steps(EXPERIMENT.defaults()) == 50


def test_check_reports_bad_mini_and_vocabulary_values():
    cfg = EXPERIMENT.defaults() | {"graph_min_nodes": 9, "graph_max_nodes": 8, "eval_data": "both",
                                   "compact_vocab": True, "base_model": "openai-community/gpt2"}
    problems = EXPERIMENT.check(cfg)
    assert sorted(p.split(":")[0] for p in problems) == ["compact_vocab", "eval_data", "graph_min_nodes"]
    assert EXPERIMENT.check(EXPERIMENT.defaults() | {"graph_max_path": 2.5})[0].startswith("graph_max_path:")


def test_compact_mini_run_scores_generated_splits_and_reloads(make_config, tmp_path):
    """A ProsQA-mini run on the compact vocabulary: generated validation and test splits disjoint from the
    training set, a checkpoint that records the vocabulary and loads back to the same answers."""
    from coconut.train import eval_split, load_weights

    cfg = make_config(compact_vocab=True, eval_data="generated", graph_min_nodes=7, graph_max_nodes=8,
                      graph_min_path=2, graph_max_path=2, val_size=5, test_at_end=True, num_epochs=1)
    EXPERIMENT.run(cfg, RunContext(run_dir=tmp_path))
    recs = records(tmp_path)
    assert [r["split"] for r in recs] == ["train", "val", "test"]
    assert {"accuracy", "well_formed"} <= set(recs[1]["metrics"]) and "well_formed" in recs[2]["metrics"]
    train_q = {ex["question"] for ex in generate_dataset(12, cfg["data_seed"], size=GraphSize(7, 8, 2, 2))}
    val, test = eval_split(cfg, "val"), eval_split(cfg, "test")
    assert len(val) == 5 and len(test) == 500 and eval_split(cfg, "val") == val
    assert not train_q & {ex["question"] for ex in val} and not (train_q | {ex["question"] for ex in val}) & {
        ex["question"] for ex in test}
    model, tok, state = load_weights(tmp_path / "checkpoint_best")
    assert len(state["compact_vocab_ids"]) == tok.vocab_size and len(tok) < 200
    assert model.base_causallm.get_input_embeddings().weight.shape[0] == len(tok)
