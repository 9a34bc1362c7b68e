"""Hand computations of the summary numbers, written independently of analysis/:
plain loops over the Parquet rows, no pandas groupby."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq


def latest_records(path: Path) -> dict[tuple, dict]:
    """One record per (run, step, split, length): a later ``time`` replaces an earlier one."""
    latest: dict[tuple, dict] = {}
    for row in pq.read_table(path).to_pylist():
        key = (row["run_key"], row["step"], row["split"], row["length"])
        if key not in latest or row["time"] >= latest[key]["time"]:
            latest[key] = row
    return latest


def sortgpt_cells(path: Path, step: int | None = None) -> dict[tuple, tuple[float, float, int]]:
    """(n_layers, use_mlp, use_layernorm, length configuration, train K) ->
    (mean OOD exact match, sample std or NaN, number of runs)."""
    latest = latest_records(path)
    final: dict[str, int] = {}
    for (run, record_step, split, _), row in latest.items():
        if row["experiment"] == "sortgpt" and split in ("test", "gen"):
            final[run] = max(final.get(run, record_step), record_step)
    ood: dict[str, list[float]] = defaultdict(list)
    cell_of: dict[str, tuple] = {}
    for (run, record_step, split, _), row in latest.items():
        wanted = final.get(run) if step is None else step
        if row["experiment"] == "sortgpt" and split == "gen" and record_step == wanted:
            ood[run].append(row["exact_match_acc"])
            config = "fixed" if row["train_min_k"] == row["train_max_k"] else row["length_mode"]
            cell_of[run] = (int(row["n_layers"]), bool(row["use_mlp"]), bool(row["use_layernorm"]), config,
                            int(row["train_max_k"]))
    per_cell: dict[tuple, list[float]] = defaultdict(list)
    for run, values in ood.items():
        per_cell[cell_of[run]].append(sum(values) / len(values))
    return {cell: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else math.nan, len(v))
            for cell, v in per_cell.items()}


def smallest_train_k(cells: dict[tuple, tuple[float, float, int]]) -> dict[tuple, str]:
    """(n_layers, use_mlp, use_layernorm, configuration) -> smallest train K with mean >= 0.95, or 'never'."""
    reached: dict[tuple, list[int]] = defaultdict(list)
    for (*arch_config, train_k), (mean, _, _) in cells.items():
        ks = reached.setdefault(tuple(arch_config), [])  # every (architecture, configuration) gets a row
        if mean >= 0.95:
            ks.append(train_k)
    return {key: str(min(ks)) if ks else "never" for key, ks in reached.items()}


def coconut_best(path: Path) -> dict[str, tuple[float, float, int]]:
    """feedback_mode -> (mean best val accuracy, mean best epoch, number of runs)."""
    per_run: dict[str, dict[int, float]] = defaultdict(dict)
    mode_of: dict[str, str] = {}
    for (run, step, split, _), row in latest_records(path).items():
        if row["experiment"] == "coconut" and split == "val" and row["accuracy"] is not None:
            per_run[run][step] = row["accuracy"]
            mode_of[run] = row["feedback_mode"]
    best: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for run, by_epoch in per_run.items():
        top = max(by_epoch.values())
        epoch = min(e for e, acc in by_epoch.items() if acc == top)  # the first epoch reaching it
        best[mode_of[run]].append((top, epoch))
    return {mode: (statistics.mean(a for a, _ in v), statistics.mean(e for _, e in v), len(v))
            for mode, v in best.items()}
