"""``sweep gates``, ``sweep answer`` and ``sweep corruption``: the COCONUT family's commands.

* ``gates SOURCE``: Gate 3 / 3b / 4 / 4b and the red flags of issue 4, from a ``sweep collect`` Parquet
  file or straight from a spec's tree. One row per check, then exit 0 (all pass), 1 (a gate failed or a
  red flag is up) or, with ``--strict``, 1 also when a check lacks data.
* ``answer CKPT QUESTION``: greedy answer of a trained model (checkpoint file, run dir or model name).
* ``corruption CKPT``: corruption sensitivity — the validation accuracy drop when the inputs at the
  thought positions are replaced by random vectors of the same norm; saved as ``corruption.json`` next
  to the checkpoint, where ``gates`` finds it for Gate 4.
* ``export RUN_DIR --format meta-coconut -o OUT``: the run's checkpoints as the raw state_dicts Meta's
  run.py saves and loads (``load_model_path``).

``answer`` and ``corruption`` also read Meta's own ``checkpoint_N`` files (weights only; coconut/meta.py).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from launch.cli import FiniteFloatRange
from launch.errors import UserError, user_errors_exit_2

CORRUPTION_FILE = "corruption.json"

# Issue 4's thresholds (accuracies as fractions).
DEFAULT_THRESHOLDS = {
    "gate3_acc": 0.58,          # continuous, end of stage 2: validation accuracy above this
    "gate3b_acc": 0.45,         # pause_curriculum, end of stage 2
    "gate4_acc_gap": 0.05,      # continuous - pause_curriculum, final epoch
    "gate4_corruption_gap": 0.10,  # ... or corruption sensitivity of continuous - of pause_curriculum
    "gate4b_drift": 0.01,       # L2 distance of the pause embedding from its initial value
    "red_pause_above": 0.03,    # pause_curriculum above continuous by this much: a bug
    "red_leak_acc": 1.0,        # any model at this accuracy: a data leak
    "red_spike_ratio": 1.5,     # loss at a stage's first epoch over the previous epoch's: a spike
}




# --- gates -------------------------------------------------------------------------------------------

def read_results(source: str, root: str | None) -> tuple[Any, Path | None]:
    """(DataFrame of metrics rows, tree root or None) from a Parquet file or a spec YAML."""
    import pandas as pd

    path = Path(source)
    if not path.exists():
        raise UserError(f"{source}: no such file")
    if path.suffix in (".yaml", ".yml"):
        from launch.collect import collect
        from launch.spec import load_spec
        from launch.store import Store
        from launch.tasks import expand

        spec = load_spec(path, root=root)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "results.parquet"
            report = collect(expand(spec), Store(spec.root), out, include_incomplete=True)
            if report.rows == 0:
                raise UserError(f"{source}: no run of this spec under {spec.root} has metrics yet")
            return pd.read_parquet(out), Path(spec.root)
    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several kinds for a non-Parquet file
        raise UserError(f"{source}: not a Parquet file ({type(e).__name__})") from None
    return frame, Path(root) if root else None


def _per_seed(frame: Any, mode: str, pick: Callable[[Any], float | None]) -> list[float]:
    """``pick`` applied to each run (seed) of ``mode``'s validation records, sorted by step."""
    rows = frame[(frame["feedback_mode"] == mode) & (frame["split"] == "val")]
    out = []
    for _, run in rows.groupby("run_dir"):
        value = pick(run.sort_values("step"))
        if value is not None and not math.isnan(value):
            out.append(float(value))
    return out


def _stage_end_acc(stage: int) -> Callable[[Any], float | None]:
    def pick(run: Any) -> float | None:
        at = run[run["stage"] == stage]
        if at.empty or run["stage"].max() <= stage and run["step"].max() < run["num_epochs"].max():
            return None  # the stage has not ended yet
        return float(at["accuracy"].iloc[-1])
    return pick


def _final(column: str) -> Callable[[Any], float | None]:
    def pick(run: Any) -> float | None:
        if column not in run or run[column].isna().all():
            return None
        return float(run[column].dropna().iloc[-1])
    return pick


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _corruption(frame: Any, root: Path | None, mode: str) -> float | None:
    """Mean corruption sensitivity (accuracy drop) over the runs of ``mode`` that have corruption.json."""
    if root is None:
        return None
    drops = []
    for run_dir in sorted(set(frame.loc[frame["feedback_mode"] == mode, "run_dir"])):
        f = root / run_dir / CORRUPTION_FILE
        if f.is_file():
            drops.append(_read_drop(f))
    return _mean(drops)


def _read_drop(path: Path) -> float:
    """The ``drop`` a corruption.json records, or one UserError line naming the file and key."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path}: not a JSON file ({' '.join(str(e).split())[:120]})") from None
    drop = data.get("drop") if isinstance(data, dict) else None
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not math.isfinite(drop):
        raise UserError(f"{path}: drop: must be a finite number, got {drop!r}")
    return float(drop)


def loss_spikes(frame: Any, ratio: float) -> list[str]:
    """Runs whose training loss at the first epoch of a stage exceeds ``ratio`` x the previous epoch's."""
    found = []
    train = frame[(frame["split"] == "train") & frame["loss"].notna()]
    for run_dir, run in train.groupby("run_dir"):
        run = run.sort_values("step")
        loss, stage = run["loss"].tolist(), run["stage"].tolist()
        for i in range(1, len(run)):
            if stage[i] != stage[i - 1] and loss[i] > ratio * loss[i - 1]:
                found.append(f"{run_dir} stage {int(stage[i])}: {loss[i - 1]:.3f} -> {loss[i]:.3f}")
    return found


def evaluate_gates(frame: Any, root: Path | None, t: dict[str, float]) -> list[dict[str, str]]:
    """One row per check: name, value, threshold, status (PASS, FAIL, RED, ok, n/a)."""
    for col in ("feedback_mode", "split", "step", "run_dir", "accuracy", "loss", "stage"):
        if col not in frame:
            raise UserError(f"the results have no {col!r} column: not a coconut sweep")
    rows: list[dict[str, str]] = []

    def add(name: str, value: str, threshold: str, ok: bool | None, red: bool = False, info: bool = False) -> None:
        status = "n/a" if ok is None else ("PASS" if ok else "FAIL")
        if red:
            status = "n/a" if ok is None else ("ok" if ok else "RED")
        rows.append({"check": name, "value": value, "threshold": threshold, "status": "info" if info else status})

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x + 0.0:.1f}%"

    cont2 = _mean(_per_seed(frame, "continuous", _stage_end_acc(2)))
    losses = _per_seed(frame, "continuous", _final("loss"))
    first_losses = _per_seed(frame, "continuous", lambda run: float(run["loss"].iloc[0]))
    diverging = any(not math.isfinite(v) for v in losses) or (_mean(losses) or 0) > (_mean(first_losses) or 0)
    add("Gate 3: continuous acc, end of stage 2", pct(cont2), f"> {pct(t['gate3_acc'])}",
        None if cont2 is None else cont2 > t["gate3_acc"])
    add("Gate 3: continuous val loss not diverging",
        "-" if not losses else f"{_mean(first_losses):.3f} -> {_mean(losses):.3f}", "final <= first",
        None if not losses else not diverging)

    pause2 = _mean(_per_seed(frame, "pause_curriculum", _stage_end_acc(2)))
    drift = _per_seed(frame, "pause_curriculum", _final("pause_embedding_drift")) \
        if "pause_embedding_drift" in frame else []
    add("Gate 3b: pause_curriculum acc, end of stage 2", pct(pause2), f"> {pct(t['gate3b_acc'])}",
        None if pause2 is None else pause2 > t["gate3b_acc"])
    add("Gate 3b: pause embedding moved from init", "-" if not drift else f"{min(drift):.4f}",
        f"> {t['gate4b_drift']}", None if not drift else min(drift) > t["gate4b_drift"])

    cont = _mean(_per_seed(frame, "continuous", _final("accuracy")))
    pause = _mean(_per_seed(frame, "pause_curriculum", _final("accuracy")))
    gap = None if cont is None or pause is None else cont - pause
    c_cont, c_pause = _corruption(frame, root, "continuous"), _corruption(frame, root, "pause_curriculum")
    c_gap = None if c_cont is None or c_pause is None else c_cont - c_pause
    passed = (gap is not None and gap >= t["gate4_acc_gap"]) or (c_gap is not None and c_gap >= t["gate4_corruption_gap"])
    add("Gate 4: continuous - pause_curriculum (final acc)", pct(gap), f">= {pct(t['gate4_acc_gap'])}", None, info=True)
    add("Gate 4: corruption sensitivity difference", pct(c_gap), f">= {pct(t['gate4_corruption_gap'])}", None,
        info=True)
    add("Gate 4: either of the two", "", "", None if gap is None and c_gap is None else passed)

    for mode in ("pause_curriculum", "pause_as_thought", "learned_shared", "pause_multipass"):
        d = _per_seed(frame, mode, _final("pause_embedding_drift")) if "pause_embedding_drift" in frame else []
        add(f"Gate 4b: {mode} embedding L2 from init (min)", "-" if not d else f"{min(d):.4f}",
            f"> {t['gate4b_drift']}", None if not d else min(d) > t["gate4b_drift"])

    add("Red flag: pause_curriculum above continuous", pct(None if gap is None else 0.0 - gap),
        f"< {pct(t['red_pause_above'])}", None if gap is None else -gap < t["red_pause_above"], red=True)
    val = frame[(frame["split"] == "val") & frame["accuracy"].notna()]
    top = None if val.empty else float(val["accuracy"].max())
    leaks = sorted(set(val.loc[val["accuracy"] >= t["red_leak_acc"], "feedback_mode"]))
    add("Red flag: a model at 100% (data leak)", pct(top) + (f" ({', '.join(leaks)})" if leaks else ""),
        f"< {pct(t['red_leak_acc'])}", None if top is None else not leaks, red=True)
    spikes = loss_spikes(frame, t["red_spike_ratio"])
    add("Red flag: loss spike at a stage transition", f"{len(spikes)} runs" + (f" (e.g. {spikes[0]})" if spikes else ""),
        f"train loss x{t['red_spike_ratio']}", not spikes, red=True)
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    cols = ["check", "value", "threshold", "status"]
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols), "  ".join("-" * width[c] for c in cols)]
    lines += ["  ".join(r[c].ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _threshold_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for name, value in reversed(DEFAULT_THRESHOLDS.items()):
        command = click.option(f"--{name.replace('_', '-')}", name, type=FiniteFloatRange(), default=value,
                               show_default=True)(command)
    return command


@click.command("gates")
@click.argument("source", metavar="SOURCE")
@click.option("--root", default=None, help="Tree root (spec: overrides its root; Parquet: where run dirs "
                                           "live, for corruption.json).")
@click.option("--strict", is_flag=True, help="Exit 1 also when a gate has no data yet.")
@_threshold_options
@user_errors_exit_2
def gates_command(source: str, root: str | None, strict: bool, **thresholds: float) -> None:
    """Gates 3/3b/4/4b and red flags of a COCONUT sweep: SOURCE is a Parquet file from `sweep collect`
    or a spec (its tree is read directly). Exit 0 all pass, 1 a gate failed or a red flag is up."""
    frame, tree = read_results(source, root)
    gate_file = _spec_gate_thresholds(source)
    thresholds = {**thresholds, **{k: v for k, v in gate_file.items() if k in thresholds}}
    rows = evaluate_gates(frame, tree, thresholds)
    click.echo(format_table(rows))
    bad = [r for r in rows if r["status"] in ("FAIL", "RED")]
    pending = [r for r in rows if r["status"] == "n/a" and r["threshold"]]
    click.echo(f"\n{len(bad)} failed or red, {len(pending)} without data")
    if bad or (strict and pending):
        raise SystemExit(1)


def _spec_gate_thresholds(source: str) -> dict[str, float]:
    """The spec's ``gates:`` block (thresholds), else nothing."""
    if not source.endswith((".yaml", ".yml")):
        return {}
    import yaml

    try:
        raw = yaml.safe_load(Path(source).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{source}: cannot read the spec ({' '.join(str(e).split())[:120]})") from None
    block = (raw.get("gates") if isinstance(raw, dict) else None) or {}
    if not isinstance(block, dict):
        raise UserError(f"{source}: gates: must be a mapping of thresholds")
    unknown = set(map(str, block)) - set(DEFAULT_THRESHOLDS)
    if unknown:
        raise UserError(f"{source}: gates: unknown threshold(s) {', '.join(sorted(unknown))}")
    for k, v in block.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"{source}: gates.{k}: must be a finite number, got {v!r}")
    return {k: float(v) for k, v in block.items()}


# --- answer ------------------------------------------------------------------------------------------

def _load(ckpt: str, root: str, seed: int | None, device: str,
          n_head: int | None = None) -> tuple[Any, Any, dict[str, Any], Path]:
    from coconut.meta import load_any
    from coconut.train import checkpoint_for, find_run_dir

    path = Path(ckpt)
    if not path.is_file():
        path = checkpoint_for(find_run_dir(ckpt, root, seed))
    model, tok, state = load_any(path, device, n_head)
    return model, tok, state, path


def _n_head_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--n-head", type=click.IntRange(min=1), default=None,
                        help="Attention heads of a Meta checkpoint_N whose width is not GPT-2's (768, 1024, ...): "
                             "a raw state_dict does not record them.")(command)


@click.command("answer")
@click.argument("ckpt", metavar="CKPT")
@click.argument("question")
@click.option("--root", default="checkpoints", show_default=True, help="Tree root when CKPT is a model name.")
@click.option("--seed", type=int, default=None, help="Which seed when CKPT is a model name (default: lowest).")
@click.option("--stage", type=int, default=None, help="Curriculum stage for the latents (default: the checkpoint's).")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="Also print the whole generated text.")
@_n_head_option
@user_errors_exit_2
def answer_command(ckpt: str, question: str, root: str, seed: int | None, stage: int | None, max_new_tokens: int,
                   verbose: bool, n_head: int | None) -> None:
    """Answer a ProsQA-style QUESTION with the model in CKPT (a checkpoint file, a run directory, or a model
    name such as coconut or pause-curriculum under --root). Meta's checkpoint_N files load too: the stage
    is then (N-1) // 5 (ProsQA's epochs per stage) unless --stage says."""
    from coconut.data import Tokenized, collate_prompts, extract_answer, question_example
    from coconut.train import curriculum_of

    model, tok, state, _ = _load(ckpt, root, seed, "cpu", n_head)
    stage = int(state["stage"]) if stage is None else stage
    cur = curriculum_of(state["config"])
    prompt = question_example(Tokenized(tok(question.strip() + "\n")["input_ids"], [], [], 0), stage, cur, model.ids)
    out = model.generate(**collate_prompts([prompt], model.ids.eos), max_new_tokens=max_new_tokens)[0]
    text = tok.decode(prompt + out, skip_special_tokens=True)
    if verbose:
        click.echo(tok.decode(out, skip_special_tokens=True))
    click.echo(extract_answer(text))


# --- corruption --------------------------------------------------------------------------------------

def same_norm_noise(generator: Any) -> Callable[[Any, int], Any]:
    """A thought transform: each thought -> a Gaussian random vector rescaled to the thought's norm."""
    import torch

    def corrupt(thought: torch.Tensor, i: int) -> torch.Tensor:
        noise = torch.randn(thought.shape, generator=generator, dtype=thought.dtype).to(thought.device)
        return noise * (thought.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True))

    return corrupt


def corruption_sensitivity(model: Any, tok: Any, state: dict[str, Any], split: str, n: int, seed: int,
                           device: str, batch_size: int = 64) -> dict[str, Any]:
    import torch

    from coconut.data import find_data_dir, load_prosqa, tokenize
    from coconut.experiment import EXPERIMENT
    from coconut.train import accuracy, answer_questions, curriculum_of, eval_split

    config = state["config"]
    if config.get("eval_data", "real") == "generated":  # ProsQA-mini: the run's own generated splits
        raw = eval_split({**EXPERIMENT.defaults(), **config}, "val" if split == "valid" else split)
    else:
        raw = load_prosqa(find_data_dir(config.get("data_dir", "")) / f"prosqa_{split}.json")
    raw = raw[:n] if n else raw
    examples = tokenize(raw, tok)
    stage, cur = int(state["stage"]), curriculum_of(config)
    max_new = int(config.get("max_new_tokens", 128))
    clean = accuracy(answer_questions(model, tok, examples, stage, cur, device, batch_size, max_new), raw)
    gen = torch.Generator().manual_seed(seed)
    noisy = accuracy(answer_questions(model, tok, examples, stage, cur, device, batch_size, max_new,
                                      thought_fn=same_norm_noise(gen)), raw)
    return {"feedback_mode": config["feedback_mode"], "epoch": int(state["epoch"]), "stage": stage, "split": split,
            "n": len(raw), "seed": seed, "accuracy": clean, "corrupted_accuracy": noisy, "drop": clean - noisy}


@click.command("corruption")
@click.argument("ckpt", metavar="CKPT")
@click.option("--root", default="checkpoints", show_default=True, help="Tree root when CKPT is a model name.")
@click.option("--seed", "run_seed", type=int, default=None, help="Which seed's run when CKPT is a model name.")
@click.option("--split", type=click.Choice(["valid", "test"]), default="valid", show_default=True)
@click.option("-n", "n", type=int, default=0, help="Only the first N examples (0: all).")
@click.option("--noise-seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--no-save", is_flag=True, help=f"Do not write {CORRUPTION_FILE} next to the checkpoint.")
@_n_head_option
@user_errors_exit_2
def corruption_command(ckpt: str, root: str, run_seed: int | None, split: str, n: int, noise_seed: int,
                       device: str, no_save: bool, n_head: int | None) -> None:
    """Corruption sensitivity of CKPT: validation accuracy, and accuracy when every thought-position input is
    replaced by a random vector of the same norm; the drop is what Gate 4 compares."""
    from launch.device import resolve_device

    device = resolve_device(device)
    model, tok, state, path = _load(ckpt, root, run_seed, device, n_head)
    result = corruption_sensitivity(model, tok, state, split, n, noise_seed, device)
    result["checkpoint"] = path.name
    click.echo(f"{result['feedback_mode']} epoch {result['epoch']} (stage {result['stage']}), {result['n']} {split} "
               f"examples: accuracy {100 * result['accuracy']:.1f}%, with random thoughts "
               f"{100 * result['corrupted_accuracy']:.1f}%, drop {100 * result['drop']:.1f} points")
    if not no_save:
        (path.parent / CORRUPTION_FILE).write_text(json.dumps(result, indent=2) + "\n")


# --- export ------------------------------------------------------------------------------------------

@click.command("export")
@click.argument("source", metavar="RUN_DIR")
@click.option("--format", "fmt", type=click.Choice(["meta-coconut"]), required=True,
              help="meta-coconut: the raw state_dict Meta's run.py saves as checkpoint_N and loads with "
                   "load_model_path.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="Directory for the files (must not exist, or be empty).")
@click.option("--root", default="checkpoints", show_default=True, help="Tree root when RUN_DIR is a model name.")
@click.option("--seed", type=int, default=None, help="Which seed when RUN_DIR is a model name (default: lowest).")
@user_errors_exit_2
def export_command(source: str, fmt: str, out: str, root: str, seed: int | None) -> None:
    """Write the checkpoints of RUN_DIR (a run directory, a model name under --root, or one checkpoint file)
    in another code's format: OUT/checkpoint_<epoch> for every epoch's checkpoint (and checkpoint_best's epoch
    when its own file was pruned). continuous, pause_as_thought, cot, no_cot and no_thoughts have Meta
    counterparts; the separate-vector pause modes and compact_vocab models do not (exit 2)."""
    from coconut.meta import export_meta
    from coconut.train import find_run_dir

    path = Path(source)
    if not path.is_file():
        path = find_run_dir(source, root, seed)
    for written in export_meta(path, Path(out)):
        click.echo(written)
