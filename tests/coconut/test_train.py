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
    assert len(list(straight.glob("resume_*.pt"))) == 1


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
    shutil.copy(run / "checkpoint_1", run / "checkpoint_best")  # as if epoch 1 had answered something right
    model, tok, state = load_model_by_name("coconut", root)
    assert checkpoint_for(run).name == "checkpoint_best" and state["epoch"] == 1
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
    assert "cot_em" not in recs[1]["metrics"]      # the CoT baseline's metric only
    # max_new_tokens 4 cannot spell an answer: no best checkpoint, the final epoch's weights are tested
    assert recs[1]["metrics"]["accuracy"] == 0 and recs[2]["metrics"]["best_epoch"] == 0
    train_q = {ex["question"] for ex in generate_dataset(12, cfg["data_seed"], size=GraphSize(7, 8, 2, 2))}
    val, test = eval_split(cfg, "val"), eval_split(cfg, "test")
    assert len(val) == 5 and len(test) == 500 and eval_split(cfg, "val") == val
    assert not train_q & {ex["question"] for ex in val} and not (train_q | {ex["question"] for ex in val}) & {
        ex["question"] for ex in test}
    model, tok, state = load_weights(tmp_path / "checkpoint_1")
    assert len(state["compact_vocab_ids"]) == tok.vocab_size and len(tok) < 200
    assert model.base_causallm.get_input_embeddings().weight.shape[0] == len(tok)


def test_checkpoint_best_only_when_accuracy_beats_zero(tiny_run):
    """run.py's best_acc starts at 0: epochs that answer nothing right are never the best. The tiny run
    cannot spell an answer in max_new_tokens = 4 tokens, so it has epoch checkpoints and no best."""
    val = [r["metrics"]["accuracy"] for r in records(tiny_run) if r["split"] == "val"]
    assert val == [0.0, 0.0]
    assert (tiny_run / "checkpoint_1").is_file() and (tiny_run / "checkpoint_2").is_file()
    assert not (tiny_run / "checkpoint_best").exists()
    assert checkpoint_for(tiny_run).name == "checkpoint_2"


def test_no_thoughts_is_runpy_without_thoughts(make_config):
    """Meta's w/o thought: the curriculum's stages drop the first k steps as for continuous, but nothing takes
    their place (run.py sets c_thought to 0 and no_special_marker): the question, then steps k.., then the
    answer; the loss on everything after the question; prompts are the bare question; the stage advances
    every epochs_per_stage epochs (unlike the baselines) and uniform_prob applies."""
    import numpy as np

    from coconut.data import IGNORE, training_example
    from coconut.train import curriculum_of, stage_of

    config = make_config(feedback_mode="no_thoughts", max_latent_stage=3, epochs_per_stage=2, uniform_prob=0.0)
    assert EXPERIMENT.check(config) == []
    cur = curriculum_of(config)
    tok = build_tokenizer()
    ids = SpecialIds.of(tok)
    ex = tokenize(generate_dataset(1, seed=5), tok)[0]
    assert len(ex.steps) >= 3
    rng = np.random.default_rng(0)
    for stage in range(6):
        kept = ex.steps[stage:] if stage <= 3 else []   # past max_latent_stage every step goes
        row = training_example(ex, stage, cur, ids, rng)
        rest = [t for s in kept for t in s] + ex.answer
        assert row["input_ids"] == ex.question + rest
        assert row["labels"] == [IGNORE] * len(ex.question) + rest
        assert question_example(ex, stage, cur, ids) == ex.question
    assert [stage_of(config, e) for e in range(6)] == [0, 0, 1, 1, 2, 2]
    assert curriculum_of(make_config(feedback_mode="no_thoughts", uniform_prob=0.3)).uniform_prob == 0.3
    model = build_model(ModelConfig(feedback_mode="no_thoughts", n_layer=1, n_embd=16, n_head=2), tok)
    assert model.base_causallm.get_input_embeddings().weight.shape[0] == tok.vocab_size


def test_cot_exact_match_is_runpy_metric():
    """run.py's CoT match on the decoded text (question included): the lines after the first, up to '#',
    stripped, against the steps joined by newlines. A correct generation decodes to exactly that."""
    from coconut.train import cot_exact_match

    tok = build_tokenizer()
    raw = generate_dataset(3, seed=2)
    for ex, t in zip(raw, tokenize(raw, tok), strict=True):
        right = tok.decode(t.question + [x for s in t.steps for x in s] + t.answer, skip_special_tokens=True)
        assert cot_exact_match(right, ex)
        wrong = tok.decode(t.question + [x for s in t.steps[:-1] for x in s] + t.answer, skip_special_tokens=True)
        assert not cot_exact_match(wrong, ex)
        assert not cot_exact_match(tok.decode(t.question + t.answer, skip_special_tokens=True), ex)


def test_cot_run_logs_cot_em(make_config, tmp_path):
    """The CoT baseline reports run.py's CoT exact match next to accuracy, on validation and test."""
    cfg = make_config(feedback_mode="cot", compact_vocab=True, eval_data="generated", graph_min_nodes=7,
                      graph_max_nodes=8, graph_min_path=2, graph_max_path=2, val_size=5, test_at_end=True,
                      num_epochs=1)
    EXPERIMENT.run(cfg, RunContext(run_dir=tmp_path))
    val, test = [r["metrics"] for r in records(tmp_path) if r["split"] in ("val", "test")]
    assert {"accuracy", "cot_em"} <= set(val) and {"accuracy", "cot_em"} <= set(test)
    assert val["cot_em"] == 0.0 and test["cot_em"] == 0.0   # 4 new tokens cannot spell two steps
