"""The ``graph_names`` knob of ProsQA-mini: single-token names are single tokens, text round-trips through
the compact vocabulary, the default (the real splits' names) is unchanged, and adding the knob changed
no run key of a tree launched before it."""

from __future__ import annotations

from pathlib import Path

import pytest

from coconut.data import CompactTokenizer, build_tokenizer, tokenizer_for
from coconut.experiment import EXPERIMENT
from coconut.generate import (
    CONCEPT_NAMES,
    NAME_SETS,
    PERSON_NAMES,
    SINGLE_TOKEN_CONCEPTS,
    SINGLE_TOKEN_PEOPLE,
    GraphSize,
    generate_dataset,
)
from launch.errors import UserError
from launch.spec import load_spec
from launch.tasks import expand, run_key

MINI = GraphSize(6, 8, 1, 3)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_single_token_names_are_one_gpt2_token_each(tok):
    for name in SINGLE_TOKEN_PEOPLE:  # a person starts the first step (no leading space) and follows spaces
        assert len(tok(name)["input_ids"]) == 1 and len(tok(" " + name)["input_ids"]) == 1, name
    for name in SINGLE_TOKEN_CONCEPTS:  # a concept always follows a space ("Every dog", "is a dog")
        assert len(tok(" " + name)["input_ids"]) == 1, name
    assert len(set(SINGLE_TOKEN_PEOPLE + SINGLE_TOKEN_CONCEPTS)) == len(SINGLE_TOKEN_PEOPLE + SINGLE_TOKEN_CONCEPTS)
    # the made-up names are what this knob is about: most take several tokens
    assert sum(len(tok(" " + n)["input_ids"]) > 1 for n in CONCEPT_NAMES) > len(CONCEPT_NAMES) // 2


def test_single_token_questions_spend_one_token_per_name(tok):
    for ex in generate_dataset(100, seed=3, size=MINI, name_set="single_token"):
        pieces = [tok.decode([t]).strip() for t in tok(ex["question"])["input_ids"]]
        assert set(ex["idx_to_symbol"]) <= set(pieces)
        assert set(ex["idx_to_symbol"]) <= set(SINGLE_TOKEN_PEOPLE + SINGLE_TOKEN_CONCEPTS)
        # "Every X is a Y." is 6 tokens and "P is a Y." 5: nothing in a fact is split
        for fact in ex["question"].split("? ")[0].split(". ")[:-1]:
            assert len(tok(" " + fact + ".")["input_ids"]) == (6 if fact.startswith("Every") else 5), fact


def test_names_change_only_the_names(tok):
    """Same seed, same graphs: edges, root, target and the path are the same; only the words differ."""
    prosqa = generate_dataset(60, seed=[0, 1], size=MINI)
    single = generate_dataset(60, seed=[0, 1], size=MINI, name_set="single_token")
    structure = ("edges", "root", "target", "neg_target")
    assert [{k: ex[k] for k in structure} for ex in prosqa] == [{k: ex[k] for k in structure} for ex in single]
    for p, s in zip(prosqa, single, strict=True):
        rename = dict(zip(p["idx_to_symbol"], s["idx_to_symbol"], strict=True))

        def swap(text: str, rename: dict[str, str] = rename) -> str:
            return " ".join(rename.get(w.strip(".?"), w.strip(".?")) + w[len(w.strip(".?")):] for w in text.split(" "))

        assert swap(p["question"]) == s["question"] and swap(p["answer"]) == s["answer"]
        assert [swap(x) for x in p["steps"]] == s["steps"]


def test_default_names_are_the_real_splits_names():
    assert EXPERIMENT.defaults()["graph_names"] == "prosqa" and NAME_SETS["prosqa"] == (PERSON_NAMES, CONCEPT_NAMES)
    assert generate_dataset(20, seed=5, size=MINI) == generate_dataset(20, seed=5, size=MINI, name_set="prosqa")
    ex = generate_dataset(20, seed=5)[0]
    assert all(n in PERSON_NAMES + CONCEPT_NAMES for n in ex["idx_to_symbol"])
    with pytest.raises(ValueError, match="name_set: 'klingon'"):
        generate_dataset(1, seed=0, name_set="klingon")


def test_single_token_text_round_trips_through_its_compact_vocabulary(tok):
    data = generate_dataset(300, seed=2, size=MINI, name_set="single_token")
    texts = [ex["question"] + "\n" for ex in data] + ["### " + ex["answer"] for ex in data]
    texts += [s + "\n" for ex in data for s in ex["steps"]]
    config = EXPERIMENT.defaults() | {"compact_vocab": True, "graph_names": "single_token", "eval_data": "generated"}
    compact = tokenizer_for(config)
    ids = compact(texts)["input_ids"]
    assert [compact.decode(i) for i in ids] == texts
    assert [[compact.gpt2_ids[i] for i in row] for row in ids] == tok(texts)["input_ids"]
    # the data use one token per name plus the templates' few; the vocabulary also holds every name in
    # positions the data never put it (a concept at a line's start), so it is a little larger
    assert len({i for row in ids for i in row}) < 90 and compact.vocab_size < 200
    # the vocabulary follows the knob: the default one has no "dog"
    with pytest.raises(UserError, match="outside the compact vocabulary"):
        CompactTokenizer(tok)(["Every dog is a cat."])
    # a checkpoint's saved ids win over the names (reloading never rebuilds another vocabulary)
    assert CompactTokenizer(tok, compact.gpt2_ids[: compact.vocab_size]).gpt2_ids == compact.gpt2_ids


def test_check_reports_bad_names():
    base = EXPERIMENT.defaults() | {"eval_data": "generated"}
    assert EXPERIMENT.check(base | {"graph_names": "single_token"}) == []
    bad = EXPERIMENT.check(base | {"graph_names": "one_token"})
    assert bad == ["graph_names: 'one_token' is not one of prosqa, single_token"]
    assert [p.split(":")[0] for p in EXPERIMENT.check(base | {"graph_names": ["prosqa"]})] == ["graph_names"]
    real = EXPERIMENT.check(EXPERIMENT.defaults() | {"graph_names": "single_token"})
    assert len(real) == 1 and real[0].startswith("graph_names:") and "eval_data: generated" in real[0]


SPEC = """
experiment: coconut
group: "{model_name}"
path: "{group}/seed{seed}"
fixed: {base_model: "", n_layer: 2, n_embd: 64, eval_data: generated, graph_min_nodes: 6, graph_max_nodes: 8,
        graph_min_path: 2, graph_max_path: 2, compact_vocab: true%s}
axes:
  - {params: [feedback_mode, model_name], values: [[continuous, coconut], [cot, cot]], group: true}
seeds: [0, 1]
"""


def test_graph_names_keeps_the_run_keys_of_trees_launched_before_it(tmp_path: Path):
    """A config without graph_names (a run.json / spec from before the knob) has the run key it had; the
    knob at its default changes no key, single_token gives new ones."""
    assert EXPERIMENT.later_params["graph_names"] == "prosqa"

    def runs(extra: str):
        path = tmp_path / f"spec{len(extra)}.yaml"
        path.write_text(SPEC % extra)
        return expand(load_spec(path))

    now, explicit, single = runs(""), runs(", graph_names: prosqa"), runs(", graph_names: single_token")
    assert [r.config["graph_names"] for r in now] == ["prosqa"] * 4
    # the key a tree launched before the knob got: the same config without graph_names, no later_params
    before = [run_key("coconut", {k: v for k, v in r.config.items() if k not in EXPERIMENT.later_params})
              for r in now]
    assert [r.run_key for r in now] == before == [r.run_key for r in explicit]
    assert not {r.run_key for r in single} & set(before)


def test_a_run_saved_before_graph_names_resumes(make_config, tmp_path: Path):
    """A resume state whose config has no graph_names (written before the knob) resumes under today's
    config (graph_names: prosqa, filled in by the runner from later_params); another value is refused."""
    from launch.checkpoint import CheckpointError, load_checkpoint, resume_state_path, save_checkpoint
    from launch.experiment import RunContext

    run = tmp_path / "run"
    run.mkdir()
    EXPERIMENT.run(make_config(num_epochs=1), RunContext(run_dir=run))
    path = resume_state_path(run, 1)
    state = load_checkpoint(path)
    assert state["config"].pop("graph_names") == "prosqa"
    save_checkpoint(state, path, sidecar={"epoch": 1})
    with pytest.raises(CheckpointError, match="graph_names"):
        EXPERIMENT.run(make_config(graph_names="single_token", eval_data="generated"), RunContext(run_dir=run))
    EXPERIMENT.run(make_config(), RunContext(run_dir=run))
    assert load_checkpoint(resume_state_path(run, 2))["epoch"] == 2
