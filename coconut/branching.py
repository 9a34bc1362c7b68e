"""``sweep branching RUN...``: a run's accuracy split by whether the question's first step is a choice.

The root of a ProsQA question (a person) has one or more children. When some child of the root cannot
reach the target (a *decoy*), a model that writes its reasoning out (CoT) must pick the right child before
it has written anything else: a wrong first step commits it to a branch that never meets the target. Hao
et al. (2024, Section 5) read continuous thoughts as keeping several frontier nodes at once, a
breadth-first search that need not commit, and locate Coconut's edge over CoT there. This splits a run's
accuracy on the same questions into those whose every first step leads to the target ("no choice") and
those with at least one decoy first step ("choice"); for CoT runs it also counts how often the first
written step goes to a child that reaches the target.

The questions are the run's own evaluation split: the generated test (or validation) questions for
``eval_data: generated``, the real files otherwise; the model is the run's ``checkpoint_best`` (else its
final checkpoint), as ``final_test`` scores it.
"""

from __future__ import annotations

import json
import re
from collections import deque
from pathlib import Path
from typing import Any

import click

from launch.errors import UserError, user_errors_exit_2


def reachable(edges: list[list[int]], start: int) -> set[int]:
    """Nodes reachable from ``start`` along the is-a edges (``start`` included)."""
    children: dict[int, list[int]] = {}
    for a, b in edges:
        children.setdefault(a, []).append(b)
    seen, todo = {start}, deque([start])
    while todo:
        for nxt in children.get(todo.popleft(), []):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def good_first_steps(example: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(children of the root that reach the target, children that do not: the decoys)."""
    edges, root, target = example["edges"], example["root"], example["target"]
    kids = [b for a, b in edges if a == root]
    good = [k for k in kids if target in reachable(edges, k)]
    return good, [k for k in kids if k not in good]


def has_choice(example: dict[str, Any]) -> bool:
    """Whether the root has a decoy child: a first step from which the target cannot be reached."""
    return bool(good_first_steps(example)[1])


_STEP = re.compile(r"^\s*(\S+) is an? (\S+?)\.?\s*$")


def first_step_right(text: str, example: dict[str, Any]) -> bool:
    """For a CoT generation (the question, then steps one per line, then '### answer'): whether the first
    step written is "<root> is a <child>." for a child of the root that reaches the target."""
    lines = text.split("#")[0].split("\n")[1:]
    first = next((ln for ln in lines if ln.strip()), "")
    m = _STEP.match(first)
    if m is None:
        return False
    names = example["idx_to_symbol"]
    if m[1] != names[example["root"]]:
        return False
    good, _ = good_first_steps(example)
    return any(names[k] == m[2] for k in good)


def breakdown(texts: list[str], gold: list[dict[str, Any]], cot: bool) -> dict[str, Any]:
    """Counts per class ("no_choice", "choice"): questions, right answers (scored as training scores them)
    and, for CoT, right first steps."""
    from coconut.train import scores

    out: dict[str, Any] = {}
    for cls in ("no_choice", "choice"):
        idx = [i for i, ex in enumerate(gold) if has_choice(ex) == (cls == "choice")]
        right = int(scores([texts[i] for i in idx], [gold[i] for i in idx])["accuracy"])
        row: dict[str, Any] = {"n": len(idx), "right": right, "accuracy": right / len(idx) if idx else None}
        if cot:
            first = sum(first_step_right(texts[i], gold[i]) for i in idx)
            row["first_step_right"] = first / len(idx) if idx else None
        out[cls] = row
    return out


def run_breakdown(run_dir: Path, split: str, device: str = "cpu") -> dict[str, Any]:
    """Load the run's checkpoint_best (else its final checkpoint), answer its evaluation split, split the
    counts by class."""
    from coconut.data import tokenize
    from coconut.experiment import EXPERIMENT
    from coconut.train import checkpoint_for, curriculum_of, eval_split, generated_texts, load_weights

    path = checkpoint_for(run_dir)
    model, tok, state = load_weights(path, device)
    config = EXPERIMENT.defaults() | EXPERIMENT.later_params | state["config"]
    raw = eval_split(config, split)  # the real files or the generated split, as training and final_test read them
    stage = int(state["stage"])
    texts = generated_texts(model, tok, tokenize(raw, tok), stage, curriculum_of(config), device,
                            config["eval_batch_size"], config["max_new_tokens"])
    return {"run": str(run_dir), "checkpoint": path.name, "feedback_mode": config["feedback_mode"],
            "seed": config["seed"], "epoch": int(state["epoch"]), "stage": stage, "split": split,
            **breakdown(texts, raw, config["feedback_mode"] == "cot")}


def find_runs(paths: tuple[str, ...]) -> list[Path]:
    """Run directories: each PATH that holds checkpoints, else every directory below it that does."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"{p}: no such directory")
        found = [p] if any(p.glob("checkpoint_*")) else sorted({c.parent for c in p.rglob("checkpoint_*")})
        if not found:
            raise UserError(f"{p}: no coconut checkpoint (checkpoint_best / checkpoint_<epoch>) in or below it")
        runs += found
    return runs


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


@click.command("branching")
@click.argument("paths", nargs=-1, required=True, metavar="RUN...")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run instead of the table.")
@user_errors_exit_2
def branching_command(paths: tuple[str, ...], split: str, device: str, as_json: bool) -> None:
    """Accuracy of each COCONUT run (a run directory, or a tree to search) split by whether the root's first
    step is a choice between a child that reaches the target and one that does not."""
    rows = [run_breakdown(run, split, device) for run in find_runs(paths)]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    click.echo(f"{'mode':<18} {'seed':>4} {'epoch':>5}  {'no choice: n':>12} {'acc':>8}  {'choice: n':>9} "
               f"{'acc':>8}  {'CoT first step right (no choice / choice)':>40}")
    for r in rows:
        nc, c = r["no_choice"], r["choice"]
        first = (f"{_pct(nc['first_step_right'])} / {_pct(c['first_step_right'])}"
                 if "first_step_right" in c else "")
        click.echo(f"{r['feedback_mode']:<18} {r['seed']:>4} {r['epoch']:>5}  {nc['n']:>12} {_pct(nc['accuracy']):>8}  "
                   f"{c['n']:>9} {_pct(c['accuracy']):>8}  {first:>40}")
