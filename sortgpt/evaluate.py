"""``sweep evaluate TREE -o results.parquet``: evaluate every model of a checkpoint tree
and write the rows ``sweep collect`` writes, so ``sweep plot`` / ``sweep summary`` read them.

Trees:

* sweep's own: ``Checkpoint_…``/``Final_…`` files in run directories; the run's identity
  (spec, group, task, seed, run key, config) comes from its ``run.json``, its state from
  ``state.json``, the model and config from the file itself;
* the sort-llm reference's: ``root/<group>/task_XXXX/saved_models/*.pt`` (sortgpt/reference.py),
  the config from the file's ``train_config``, else from its name (then the seed is unknown
  and left empty). The seeds of one task write the same file names, so only the last
  writer's files survive: the seeds that W&B logged in the task directory but whose
  checkpoints are gone are reported, and every file is attributed to the seed its own
  ``train_config`` names — nothing is guessed.

``Best_…`` files and resume states are not evaluated (a Best_ file is an earlier step of a
run whose Final_ is there).

Evaluation is train.py's: at the checkpoint's step, teacher-forced (splits ``test`` = the
trained Ks, ``gen`` = the test K range above them) then free-running (``test_ar``,
``gen_ar``), each run drawing its lists from its own (seed, step) generator — so evaluating
the Final_ file of a sweep run reproduces the final records of its metrics.jsonl. The test K
range is the run's own or ``--test-k A-B``. Models of one architecture are evaluated as one
batched model (sortgpt/packed.py's forward and its evaluation code).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from launch.checkpoint import load_checkpoint, read_sidecar
from launch.collect import write_table
from launch.errors import CheckpointError, UserError
from sortgpt import train as single
from sortgpt.model import GPT
from sortgpt.naming import parse_checkpoint_name
from sortgpt.reference import is_reference_state, model_from_reference

EVALUATED_KINDS = ("Checkpoint", "Final")
REFERENCE_SPEC = "sort-llm"
_TASK_DIR = re.compile(r"task_(\d+)$")


@dataclass
class Model:
    """One checkpoint to evaluate: its weights, run config, step and provenance."""

    path: Path
    model: GPT
    config: dict[str, Any]
    step: int
    provenance: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EvaluateReport:
    rows: int = 0
    checkpoints: int = 0
    runs: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# -- finding the models --------------------------------------------------------------

def find_checkpoints(tree: Path) -> list[Path]:
    """The Checkpoint_/Final_ files under ``tree`` (a single file is its own tree)."""
    if tree.is_file():
        return [tree]
    if not tree.is_dir():
        raise UserError(f"{tree}: no such file or directory")
    found = []
    for path in sorted(tree.rglob("*.pt")):
        if ".sweep" in path.relative_to(tree).parts:
            continue
        parsed = parse_checkpoint_name(path.name)
        if parsed is not None and parsed["kind"] in EVALUATED_KINDS:
            found.append(path)
    return found


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _sweep_provenance(path: Path, tree: Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """Provenance of a checkpoint in a sweep run directory (None when there is no run.json)."""
    info = _read_json(path.parent / "run.json")
    if not info or "run_key" not in info:
        return None
    state = _read_json(path.parent / "state.json") or {}
    sidecar = read_sidecar(path) or {}
    return {"spec": info.get("spec"), "experiment": info.get("experiment", "sortgpt"), "group": info.get("group"),
            "task": info.get("task"), "seed": info.get("seed", cfg.get("seed")), "run_key": info["run_key"],
            "run_dir": info.get("rel_dir") or _rel(path.parent, tree), "job_id": state.get("job_id"),
            "git_commit": state.get("git_commit") or sidecar.get("git_commit"),
            "code_snapshot": state.get("code_snapshot"), "host": state.get("host"),
            "started_at": state.get("started_at"), "ended_at": state.get("ended_at"),
            "wall_s": state.get("wall_s"), "state": state.get("state", "completed")}


def _rel(path: Path, tree: Path) -> str:
    base = tree if tree.is_dir() else tree.parent
    try:
        return str(path.relative_to(base)) or "."
    except ValueError:
        return str(path)


def _task_dir(path: Path) -> Path | None:
    """The task_XXXX directory a reference checkpoint sits in (…/task_XXXX/saved_models/x.pt)."""
    for parent in path.parents:
        if _TASK_DIR.match(parent.name):
            return parent
    return None


def _reference_provenance(path: Path, tree: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    task_dir = _task_dir(path)
    group = task_dir.parent.name if task_dir is not None else path.parent.name
    task = int(_TASK_DIR.match(task_dir.name).group(1)) if task_dir is not None else None  # type: ignore[union-attr]
    run_dir = _rel(path.parent, tree)
    identity = {"dir": run_dir, "config": {k: v for k, v in cfg.items() if k != "device"}}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return {"spec": REFERENCE_SPEC, "experiment": "sortgpt", "group": group, "task": task, "seed": cfg.get("seed"),
            "run_key": key, "run_dir": run_dir, "job_id": None, "git_commit": None, "code_snapshot": None, "host": None,
            "started_at": None, "ended_at": None, "wall_s": None, "state": "completed"}


def load_models(paths: list[Path], tree: Path) -> tuple[list[Model], list[str]]:
    """Every checkpoint as a model with its config, step and provenance; notes on what
    the tree does not say (unknown seeds, seeds overwritten in a sort-llm task)."""
    models: list[Model] = []
    notes: list[str] = []
    for path in paths:
        state = load_checkpoint(path, require=("model",))
        if is_reference_state(state):
            model, cfg, step = model_from_reference(state, path)
            if step is None:
                raise CheckpointError(f"{path}: iters_done: missing, and the file name carries no iters")
            prov = _reference_provenance(path, tree, cfg)
            if cfg.get("seed") is None:
                notes.append(f"{path}: no train_config: configuration read from the file name; the seed is "
                             "unknown and left empty (not guessed)")
        else:
            for key in ("config", "model_config"):
                if key not in state:
                    raise CheckpointError(f"{path}: {key}: missing (not a sortgpt or sort-llm checkpoint)")
            model, cfg = single.load_model(path)
            step = state.get("step")
            if step is None:
                parsed = parse_checkpoint_name(path.name)
                step = parsed["step"] if parsed else None
            if step is None:
                raise CheckpointError(f"{path}: step: missing, and the file name carries no iters")
            prov = _sweep_provenance(path, tree, cfg) or _reference_provenance(path, tree, cfg) | {"spec": None}
        models.append(Model(path=path, model=model, config=dict(cfg), step=int(step), provenance=prov))
    notes += reference_overwrite_notes(models, tree)
    duplicates: dict[tuple[str, int], list[Model]] = defaultdict(list)
    for m in models:
        duplicates[(m.provenance["run_key"], m.step)].append(m)
    for (_, step), same in duplicates.items():
        if len(same) > 1:
            names = ", ".join(str(m.path) for m in same)
            notes.append(f"the same run at step {step} in {len(same)} files ({names}); all evaluated, "
                         "and `sweep summary` keeps the last")
    return models, notes


def wandb_seeds(task_dir: Path) -> set[int]:
    """Seeds of the W&B runs logged in a sort-llm task directory (their config.yaml)."""
    import yaml

    seeds = set()
    for cfg_file in task_dir.glob("wandb/**/files/config.yaml"):
        try:
            data = yaml.safe_load(cfg_file.read_text())
            seed = data["seed"]["value"] if isinstance(data.get("seed"), dict) else data.get("seed")
            seeds.add(int(seed))
        except Exception:  # an unreadable W&B file only weakens the report
            continue
    return seeds


def reference_overwrite_notes(models: list[Model], tree: Path) -> list[str]:
    """sort-llm tasks whose seeds share file names: which seeds' checkpoints are gone."""
    notes = []
    by_task: dict[Path, list[Model]] = defaultdict(list)
    for m in models:
        if m.provenance["spec"] in (REFERENCE_SPEC, None) and (task_dir := _task_dir(m.path)) is not None:
            by_task[task_dir].append(m)
    for task_dir, members in sorted(by_task.items()):
        present = {m.config.get("seed") for m in members if m.config.get("seed") is not None}
        logged = wandb_seeds(task_dir)
        gone = sorted(logged - present)
        if gone:
            lost = (f"seed {gone[0]} was" if len(gone) == 1 else f"seeds {', '.join(map(str, gone))} were")
            notes.append(f"{_rel(task_dir, tree)}: W&B logged runs of seeds {', '.join(map(str, sorted(logged)))} "
                         f"but the checkpoints left are of seed{'s' if len(present) > 1 else ''} "
                         f"{', '.join(map(str, sorted(present))) or 'unknown'}: {lost} overwritten (same file "
                         "names); not evaluated")
        by_name: dict[str, set[Any]] = defaultdict(set)
        for m in members:
            by_name[re.sub(r"^(Checkpoint|Final)_|_iters\d+\.pt$", "", m.path.name)].add(m.config.get("seed"))
        for name, seeds in sorted(by_name.items()):
            if len(seeds) > 1:
                notes.append(f"{_rel(task_dir, tree)}: {name}: its Checkpoint_ and Final_ files are of different "
                             f"seeds ({', '.join(map(str, sorted(seeds, key=str)))}): each is attributed to its "
                             "own train_config's seed")
    return notes


# -- evaluating ------------------------------------------------------------------------

class _Recorder:
    """Stands in for a RunContext: keeps what the evaluation logs."""

    def __init__(self, model: Model):
        self.model = model
        self.run_dir = model.path.parent
        self.name = str(model.path)

    def log(self, step: int, metrics: dict[str, float], split: str = "train", length: int | None = None) -> None:
        self.model.records.append({"step": int(step), "split": split, "length": length, "time": time.time(),
                                   "metrics": {k: float(v) for k, v in metrics.items()}})


def parse_k_range(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", text)
    if m is None:
        raise UserError(f"--test-k {text!r}: expected A-B (e.g. 17-32) or K")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if not 1 <= lo <= hi:
        raise UserError(f"--test-k {text!r}: need 1 <= A <= B")
    return lo, hi


def eval_config(m: Model, test_k: tuple[int, int] | None, samples: int | None) -> dict[str, Any]:
    """The config the evaluation runs under: the run's, with the test K range and sample
    count overridden when asked, no Best_ files, and seed 0 for a run of unknown seed."""
    cfg = dict(m.config) | {"save_best": False}
    if test_k is not None:
        cfg["test_min_k"], cfg["test_max_k"] = test_k
    if samples is not None:
        cfg["eval_samples"] = samples
    if cfg.get("seed") is None:
        cfg["seed"] = 0
    longest = max(int(cfg["train_max_k"]), int(cfg["test_max_k"]))
    if cfg.get("no_dup", True) and longest > int(cfg["vocab_n"]):
        raise UserError(f"{m.path}: test_max_k: {longest} distinct numbers cannot be drawn from vocab_n="
                        f"{cfg['vocab_n']}")
    if not m.model.config.no_pos_emb and 2 * longest + 1 > m.model.config.max_seq_len:
        raise UserError(f"{m.path}: model_config.max_seq_len: K={longest} needs {2 * longest + 1} positions, "
                        f"this model's positional table has {m.model.config.max_seq_len}")
    return cfg


def architecture(model: GPT) -> tuple:
    """Models with equal keys run as one batched model (NoPE: the table size is irrelevant)."""
    c = model.config.to_dict()
    if c["no_pos_emb"]:
        c.pop("max_seq_len")
    return tuple(sorted(c.items()))


def evaluate_models(models: list[Model], device: torch.device, test_k: tuple[int, int] | None = None,
                    samples: int | None = None) -> None:
    """Teacher-forced then free-running evaluation of every model, one batched model per
    architecture; the records land in each ``Model.records``."""
    from sortgpt.packed import Pack, PackedRun

    groups: dict[tuple, list[Model]] = defaultdict(list)
    for m in models:
        groups[architecture(m.model)].append(m)
    for members in groups.values():
        runs = [PackedRun(cfg=eval_config(m, test_k, samples), ctx=_Recorder(m),  # type: ignore[arg-type]
                          model=m.model.to(device), optimizer=None, generators={},  # type: ignore[arg-type]
                          step=m.step) for m in members]
        pack = Pack.for_evaluation(runs, device)
        pack.evaluate(runs)
        pack.evaluate(runs, autoregressive=True)


# -- the table -------------------------------------------------------------------------

def write_results(models: list[Model], out: Path) -> int:
    """``sweep collect``'s table (launch/collect.py) from the evaluation records."""
    config_cols: list[str] = []
    for m in models:
        for k in m.config:
            if k not in config_cols and k != "seed":  # seed is a provenance column
                config_cols.append(k)
    return write_table([(m.provenance, m.config, m.records) for m in models], config_cols, out)


def evaluate_tree(tree: Path, out: Path, device: str = "cpu", test_k: tuple[int, int] | None = None,
                  samples: int | None = None) -> EvaluateReport:
    """Find, load, evaluate and write; nothing is written when any checkpoint is bad."""
    start = time.perf_counter()
    tree = Path(tree)
    paths = find_checkpoints(tree)
    if not paths:
        raise UserError(f"{tree}: no Checkpoint_/Final_ files (sortgpt or sort-llm) found")
    models, notes = load_models(paths, tree)
    dev = single.resolve_device(device)
    with torch.no_grad():
        evaluate_models(models, dev, test_k, samples)
    rows = write_results(models, Path(out))
    return EvaluateReport(rows=rows, checkpoints=len(models), runs=len({m.provenance["run_key"] for m in models}),
                          seconds=time.perf_counter() - start, notes=notes)
