"""``sweep branching``: the choice / no-choice split of a run's questions and its counts."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from coconut.branching import branching_command, breakdown, first_step_right, good_first_steps, has_choice

# Rex (1) -> fox (2), Rex -> shark (4) -> king (5); Jack (0) -> pig (3) -> monkey (6). Target king.
EXAMPLE = {
    "question": "Every pig is a monkey. Rex is a fox. Jack is a pig. Rex is a shark. Every shark is a king. "
                "Is Rex a king or monkey?",
    "answer": "Rex is a king.", "steps": ["Rex is a shark.", "Every shark is a king."],
    "idx_to_symbol": ["Jack", "Rex", "fox", "pig", "shark", "king", "monkey"],
    "edges": [[1, 2], [0, 3], [1, 4], [4, 5], [3, 6]], "root": 1, "target": 5, "neg_target": 6,
}


def test_decoy_first_steps_and_first_step_right():
    assert good_first_steps(EXAMPLE) == ([4], [2]) and has_choice(EXAMPLE)
    one_way = EXAMPLE | {"edges": [[1, 4], [0, 3], [4, 5], [3, 6]]}
    assert good_first_steps(one_way) == ([4], []) and not has_choice(one_way)
    q = EXAMPLE["question"]
    assert first_step_right(f"{q}\nRex is a shark.\nEvery shark is a king.\n### Rex is a king.", EXAMPLE)
    assert not first_step_right(f"{q}\nRex is a fox.\nEvery fox is a king.\n### Rex is a king.", EXAMPLE)
    assert not first_step_right(f"{q}\nJack is a shark.\n### Rex is a king.", EXAMPLE)  # not the root
    assert not first_step_right(f"{q}\n### Rex is a king.", EXAMPLE)                     # no step written


def test_breakdown_counts_each_question_once_in_its_class():
    q = EXAMPLE["question"]
    one_way = EXAMPLE | {"edges": [[1, 4], [0, 3], [4, 5], [3, 6]]}
    texts = [f"{q}\nRex is a fox.\n### Rex is a king.", f"{q}\nRex is a shark.\n### Rex is a monkey.",
             f"{q}\nRex is a shark.\n### Rex is a king."]
    out = breakdown(texts, [EXAMPLE, EXAMPLE, one_way], cot=True)
    assert out["choice"] == {"n": 2, "right": 1, "accuracy": 0.5, "first_step_right": 0.5}
    assert out["no_choice"] == {"n": 1, "right": 1, "accuracy": 1.0, "first_step_right": 1.0}
    assert "first_step_right" not in breakdown(texts, [EXAMPLE] * 3, cot=False)["choice"]


def test_branching_command_on_a_trained_run(tmp_path, make_config):
    """A tiny CoT run on generated ProsQA-mini: every test question lands in exactly one class, and the
    classes' right answers add up to what final_test logged for the same checkpoint and questions."""
    from coconut.experiment import EXPERIMENT
    from coconut.train import eval_split
    from launch.experiment import RunContext

    cfg = make_config(feedback_mode="cot", eval_data="generated", graph_names="single_token", graph_min_nodes=6,
                      graph_max_nodes=8, graph_min_path=2, graph_max_path=2, max_latent_stage=2, val_size=10,
                      num_epochs=1, eval_batch_size=100, max_new_tokens=12, test_at_end=True)
    run_dir = tmp_path / "tree" / "cot" / "seed7"
    run_dir.mkdir(parents=True)
    EXPERIMENT.run(cfg, RunContext(run_dir=run_dir))
    out = CliRunner().invoke(branching_command, [str(tmp_path / "tree"), "--json"])  # a tree: searched
    assert out.exit_code == 0, out.output
    (row,) = [json.loads(line) for line in out.output.splitlines()]
    test = eval_split(cfg, "test")
    n_choice = sum(map(has_choice, test))
    assert (row["choice"]["n"], row["no_choice"]["n"]) == (n_choice, len(test) - n_choice)
    assert 0 < n_choice < len(test) and "first_step_right" in row["choice"]
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (final,) = [r for r in logged if r.get("split") == "test"]
    right = row["choice"]["right"] + row["no_choice"]["right"]
    assert right / len(test) == pytest.approx(final["metrics"]["accuracy"])
    table = CliRunner().invoke(branching_command, [str(run_dir)])
    assert table.exit_code == 0 and "cot" in table.output and str(n_choice) in table.output


def test_branching_refuses_a_path_without_runs(tmp_path):
    out = CliRunner().invoke(branching_command, [str(tmp_path)])
    assert out.exit_code == 2 and "no coconut checkpoint" in out.output
    out = CliRunner().invoke(branching_command, [str(tmp_path / "nope")])
    assert out.exit_code == 2 and "no such directory" in out.output
