"""The numbers researchers quote: per-run scores, per-configuration means, thresholds.

sortgpt: the OOD exact match of a run is the mean over its out-of-distribution lengths
(split ``gen``) of ``exact_match_acc`` at the chosen step (its final checkpoint by
default). Cells are (architecture, length configuration, train K) — and training budget
(max_iters x batch_size) when the table holds several; ``n_runs`` counts distinct runs,
never rows.

coconut: the best validation epoch of each run, and its final validation accuracy (NaN when its
last epoch's accuracy is NaN: a run that diverged, never an earlier epoch's value). Rows are feedback
modes — split by every other configuration parameter whose value differs between runs of one mode
(two learning rates, two graph depths, two specs in one table), labelled ``continuous (lr=0.001)``.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.load import COMMON_COLUMNS, at_last_eval, at_step, metric_column, run_table
from launch.errors import UserError

ARCH_COLUMNS = ["n_layers", "use_mlp", "use_layernorm"]
CONFIG_ORDER = ["fixed", "mix", "curriculum"]
THRESHOLD = 0.95  # "reaches" = mean OOD exact match of the cell >= 95 %


def arch_columns(rows: pd.DataFrame) -> list[str]:
    """Architecture = layers, MLP, LayerNorm; plus no_pos_emb when the sweep varies it."""
    extra = ["no_pos_emb"] if "no_pos_emb" in rows.columns and rows["no_pos_emb"].nunique() > 1 else []
    return ARCH_COLUMNS + extra


def budget_columns(rows: pd.DataFrame) -> list[str]:
    """The columns besides architecture, length configuration and train K that tell cells
    apart: ``budget`` (max_iters x batch_size) when the table holds runs of several budgets
    (a budget curve beside a grid), and every other configuration parameter whose value
    differs between runs that would otherwise share a cell (two specs of different width,
    learning rate or train_min_k in one table). Runs that differ in what they learn are
    never averaged into one number."""
    budget = ["budget"] if "budget" in rows.columns and rows["budget"].nunique() > 1 else []
    base = arch_columns(rows) + ["length_config", "train_k"] + budget
    if not set(base) <= set(rows.columns):
        return budget
    return budget + varying_columns(rows, base)


def varying_columns(rows: pd.DataFrame, base: list[str], ignore: frozenset[str] = frozenset()) -> list[str]:
    """The configuration columns besides ``base`` (and ``ignore``) whose value differs between runs
    that share their ``base`` values: a mean over such runs would mix configurations."""
    names = [c for c in config_columns(rows) if c not in base and c not in ignore]
    if not names:
        return []
    # One row per run is enough once the columns are known to be constant within runs.
    runs = rows.drop_duplicates("run_key") if "run_key" in rows.columns else rows
    varies = runs.groupby(base, dropna=False)[names].nunique(dropna=False).gt(1).any()
    return [c for c in names if varies[c]]


def describe_values(rows: pd.DataFrame, columns: list[str]) -> str:
    """``lr (0.0001, 0.001), n_layer (2, 4)``: the values each column takes, for an error or a note."""
    return ", ".join(f"{c} ({', '.join(map(str, _sorted(rows[c].unique())))})" for c in columns)


# Not configuration: who/where/when a run was, its records, and what analysis derives or computes.
NOT_CONFIG = {*COMMON_COLUMNS, "job_id", "git_commit", "code_snapshot", "host", "started_at", "ended_at", "wall_s", "seed",
              "train_k", "length_config", "budget", "last_step", "id_exact_match", "ood_exact_match",
              "ood_exact_match_mean", "ood_exact_match_std", "id_exact_match_mean", "n_runs", "min_train_k_95",
              "best_epoch", "best_val_accuracy", "final_epoch", "final_val_accuracy", "best_val_accuracy_mean",
              "best_val_accuracy_std", "best_epoch_mean", "final_val_accuracy_mean"}
# Parameters that change neither what a run learns nor what its score estimates: runs differing
# only in them are one configuration (device and bookkeeping; eval_samples only the precision).
BOOKKEEPING = {"device", "save_every", "keep_resume", "checkpoint_iter", "eval_every", "eval_samples",
               "keep_checkpoints", "eval_batch_size"}


def config_columns(rows: pd.DataFrame) -> list[str]:
    """The configuration columns of ``rows``: in a table of records, those constant within each run
    (metrics vary within a run, or are missing on some splits);
    in a table of runs or cells, every column that is not known to be something else."""
    names = [c for c in rows.columns if c not in NOT_CONFIG and c not in BOOKKEEPING
             and not c.startswith("metric_")]
    if "split" not in rows.columns or "run_key" not in rows.columns:
        return names
    if not names:
        return []
    # constant within each run, a missing value counting as one: a setting some runs lack (a table of runs
    # from before the parameter existed, concatenated with newer ones) still tells those runs apart
    constant = rows.groupby("run_key")[names].nunique(dropna=False).le(1).all()
    return [c for c in names if constant[c]]


def cell_columns(rows: pd.DataFrame) -> list[str]:
    return arch_columns(rows) + ["length_config", "train_k"] + budget_columns(rows)


# -- sortgpt -------------------------------------------------------------------------

def sortgpt_evals(rows: pd.DataFrame, step: int | None = None, at: str = "final") -> tuple[pd.DataFrame, list[str]]:
    """The test/gen records of each run at the chosen step: its last (final checkpoint), the
    given ``step``, or with ``at="last-eval"`` the reference's last evaluation step."""
    exact = metric_column(rows, "exact_match_acc")
    if at == "last-eval":
        return at_last_eval(rows, ("test", "gen"), exact)
    return at_step(rows, ("test", "gen"), step, exact)


def sortgpt_run_scores(rows: pd.DataFrame, step: int | None = None, at: str = "final"
                       ) -> tuple[pd.DataFrame, list[str]]:
    """One row per run: its cell, the step used, and its mean ID and OOD exact match."""
    evals, notes = sortgpt_evals(rows, step, at)
    exact = metric_column(rows, "exact_match_acc")
    scores = evals.pivot_table(index="run_key", columns="split", values=exact, aggfunc="mean")
    scores = scores.rename(columns={"test": "id_exact_match", "gen": "ood_exact_match"})
    for name in ("id_exact_match", "ood_exact_match"):
        if name not in scores:
            scores[name] = float("nan")
    scores["step"] = evals.groupby("run_key")["step"].max()
    runs = run_table(rows).set_index("run_key")
    keep = ["run_dir", "seed", "state"] + cell_columns(rows)
    table = runs[keep].join(scores[["step", "id_exact_match", "ood_exact_match"]], how="inner")
    return order_cells(table.reset_index(), cell_columns(rows)), notes


def sortgpt_cells(scores: pd.DataFrame) -> pd.DataFrame:
    """Per cell: OOD exact match mean and std over runs (std of one run is NaN) and n_runs."""
    keys = [c for c in cell_columns(scores)]
    scored = scores.dropna(subset=["ood_exact_match"])
    cells = scored.groupby(keys, sort=False, dropna=False).agg(
        ood_exact_match_mean=("ood_exact_match", "mean"),
        ood_exact_match_std=("ood_exact_match", "std"),
        id_exact_match_mean=("id_exact_match", "mean"),
        n_runs=("run_key", "nunique"),
    )
    return order_cells(cells.reset_index(), keys)


def smallest_train_k(cells: pd.DataFrame, threshold: float = THRESHOLD) -> pd.DataFrame:
    """Per (architecture, configuration): the smallest train K whose mean OOD exact match
    reaches ``threshold``, or ``never``."""
    keys = arch_columns(cells) + ["length_config"] + budget_columns(cells)
    rows = []
    for key, cell in cells.groupby(keys, sort=False, dropna=False):
        reached = cell.loc[cell["ood_exact_match_mean"] >= threshold, "train_k"]
        rows.append(dict(zip(keys, key, strict=True)) | {
            "min_train_k_95": str(int(reached.min())) if len(reached) else "never"})
    return order_cells(pd.DataFrame(rows, columns=keys + ["min_train_k_95"]), keys)


def order_cells(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Sort by architecture, then fixed/mix/curriculum, then train K."""
    order = {name: i for i, name in enumerate(CONFIG_ORDER)}
    return table.sort_values(
        keys, key=lambda col: col.map(lambda v: order.get(v, len(order))) if col.name == "length_config" else col,
        kind="stable").reset_index(drop=True)


# -- coconut -------------------------------------------------------------------------

# The metrics coconut runs log (coconut/train.py). One that happens to be constant within every run (the
# stage of a mode without latent stages; a hand-built table) would otherwise pass for a configuration.
COCONUT_METRICS = frozenset({"accuracy", "loss", "well_formed", "cot_em", "best_epoch", "stage", "epoch_time_s",
                             "pause_embedding_drift"})
# Set from feedback_mode ("" -> coconut, pause-frozen, ...), or deciding only whether the test split is
# evaluated: runs of one mode that differ only in them are one configuration.
COCONUT_NOT_SPLIT = frozenset({"model_name", "test_at_end"}) | COCONUT_METRICS


def coconut_split_columns(rows: pd.DataFrame) -> list[str]:
    """The configuration columns whose value differs between runs of one feedback mode (two learning
    rates, two graph depths, two specs collected into one table). A mode's row or curve is split by
    them: a mean over them is the accuracy of no configuration."""
    if "feedback_mode" not in rows.columns:
        return []
    return varying_columns(rows, ["feedback_mode"], COCONUT_NOT_SPLIT)


def coconut_cell_columns(rows: pd.DataFrame) -> list[str]:
    return ["feedback_mode"] + coconut_split_columns(rows)


def coconut_label(cell: dict[str, object]) -> str:
    """``continuous``, or ``continuous (lr=0.001)`` when runs of the mode differ in ``lr``."""
    rest = [f"{name}={_label_text(value)}" for name, value in cell.items() if name != "feedback_mode"]
    return f"{cell['feedback_mode']} ({', '.join(rest)})" if rest else str(cell["feedback_mode"])


def _label_text(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):  # runs that lack the parameter
        return "unset"
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return str(bool(value))
    return _cell_text(value)


def coconut_run_epochs(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per run: its cell (feedback mode and the columns of :func:`coconut_split_columns`),
    best validation accuracy and the epoch it came at, and the final one; and notes on NaNs.

    The final accuracy is that of the run's last validation epoch, NaN included: a run that diverged
    must not show an earlier epoch's accuracy as its final one. The best is over the measured epochs."""
    accuracy = metric_column(rows, "accuracy")
    cells = coconut_cell_columns(rows)
    val = rows[rows["split"] == "val"].sort_values(["run_key", "step"], kind="stable")
    table, notes = [], []
    for run_key, run in val.groupby("run_key", sort=False):
        measured = run[run[accuracy].notna()]
        last = run.iloc[-1]
        best = measured.loc[measured[accuracy].idxmax()] if len(measured) else None  # first epoch at the top
        if pd.isna(last[accuracy]):
            notes.append(f"coconut run {last['run_dir']}: validation accuracy is NaN at its last epoch "
                         f"({int(last['step'])}); its final val accuracy is NaN"
                         + ("" if len(measured) else ", and so is its best (no epoch has a number)"))
        table.append({**{c: last[c] for c in cells}, "run_key": run_key, "run_dir": last["run_dir"],
                      "seed": int(last["seed"]),
                      "best_epoch": float("nan") if best is None else int(best["step"]),
                      "best_val_accuracy": float("nan") if best is None else float(best[accuracy]),
                      "final_epoch": int(last["step"]), "final_val_accuracy": float(last[accuracy])})
    columns = [*cells, "run_key", "run_dir", "seed", "best_epoch", "best_val_accuracy", "final_epoch",
               "final_val_accuracy"]
    return pd.DataFrame(table, columns=columns), notes


def coconut_best_epochs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per feedback mode (and configuration, see :func:`coconut_split_columns`): best validation
    accuracy and best epoch, mean and std over runs. A run's NaN is not skipped: a mean over fewer
    runs than ``n_runs`` would be a number of no set of runs shown; the row shows NaN instead."""
    cells = coconut_cell_columns(runs)
    groups = runs.groupby(cells, sort=True, dropna=False)
    table = pd.DataFrame({
        "best_val_accuracy_mean": groups["best_val_accuracy"].mean(skipna=False),
        "best_val_accuracy_std": groups["best_val_accuracy"].std(skipna=False),
        "best_epoch_mean": groups["best_epoch"].mean(skipna=False),
        "final_val_accuracy_mean": groups["final_val_accuracy"].mean(skipna=False),
        "n_runs": groups["run_key"].nunique(),
    }).reset_index()
    return table.sort_values("feedback_mode", key=lambda col: col.map(mode_rank), kind="stable").reset_index(drop=True)


FEEDBACK_MODES = ["continuous", "frozen", "learned_shared", "pause_as_thought", "pause_curriculum", "pause_multipass",
                  "no_thoughts", "cot", "no_cot"]


def mode_rank(mode: str) -> int:
    return FEEDBACK_MODES.index(mode) if mode in FEEDBACK_MODES else len(FEEDBACK_MODES)


# -- text output ---------------------------------------------------------------------

def mean_std(mean: float, std: float, percent: bool = True) -> str:
    """``97.5 ± 1.2 %``; the std of a single run is unknown, shown as ``± n/a``."""
    if math.isnan(mean):
        return "n/a"
    scale, unit = (100.0, " %") if percent else (1.0, "")
    spread = "n/a" if math.isnan(std) else f"{scale * std:.1f}"
    return f"{scale * mean:.1f} ± {spread}{unit}"


def markdown_table(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(_cell_text(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _cell_text(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        # A label, not a measurement: shown exactly (1e-4 and 3e-4 are not both "0.000").
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def sortgpt_markdown(cells: pd.DataFrame, thresholds: pd.DataFrame, step_label: str) -> str:
    arch = arch_columns(cells)
    shown = cells[arch + ["length_config", "train_k"] + budget_columns(cells)].rename(columns=_HEADINGS).copy()
    shown["OOD exact match (mean ± std)"] = [
        mean_std(m, s) for m, s in zip(cells["ood_exact_match_mean"], cells["ood_exact_match_std"], strict=True)]
    shown["n_runs"] = cells["n_runs"]
    reach = thresholds.rename(columns=_HEADINGS | {"min_train_k_95": "smallest train K ≥ 95 %"})
    return "\n".join([
        f"## sortgpt: out-of-distribution exact match ({step_label})", "", markdown_table(shown), "",
        f"## sortgpt: smallest train K whose mean OOD exact match reaches {THRESHOLD:.0%}", "",
        markdown_table(reach), ""])


def coconut_markdown(best: pd.DataFrame) -> str:
    cells = coconut_cell_columns(best)
    shown = pd.DataFrame({
        "feedback mode": [coconut_label(dict(zip(cells, values, strict=True)))
                          for values in best[cells].itertuples(index=False)],
        "best val accuracy (mean ± std)": [mean_std(m, s) for m, s in
                                           zip(best["best_val_accuracy_mean"], best["best_val_accuracy_std"],
                                               strict=True)],
        "best epoch (mean)": best["best_epoch_mean"].map(lambda v: "NaN" if math.isnan(v) else f"{v:.1f}"),
        "final val accuracy (mean)": best["final_val_accuracy_mean"].map(
            lambda v: "NaN" if math.isnan(v) else f"{100 * v:.1f} %"),
        "n_runs": best["n_runs"],
    })
    return "\n".join(["## coconut: best validation epoch per feedback mode", "", markdown_table(shown), ""])


_HEADINGS = {"n_layers": "layers", "use_mlp": "MLP", "use_layernorm": "LayerNorm", "no_pos_emb": "no pos. emb.",
             "length_config": "length config", "train_k": "train K", "budget": "budget (sequences)"}


def sortgpt_csv(cells: pd.DataFrame, thresholds: pd.DataFrame) -> str:
    """One flat CSV: each cell row also carries its (architecture, configuration) threshold."""
    keys = arch_columns(cells) + ["length_config"] + budget_columns(cells)
    table = cells.merge(thresholds, on=keys, how="left")
    return table.to_csv(index=False)


# -- sortgpt in the sort-llm reference's format ------------------------------------------
# Matches length_generalization/code/plot_all_final.py of the public sort-llm repository
# (write_csv, write_thresholds): one score per run = the mean over its gen Ks of the
# teacher-forced exact match; cells (n_layers, use_mlp, use_layernorm, length_mode,
# training, train_max_k) with length_mode "fixed" and training "fixed" when
# train_min_k == train_max_k, else training "dynamic"; mean, population std (np.std) and
# the number of runs; rows in the sorted order of those keys. Thresholds: per
# (n_layers, use_mlp, use_layernorm, length_mode, training) the smallest train_max_k whose
# mean reaches 0.95, empty when none; the reference writes its flags there as True/False.

REFERENCE_KEYS = ["n_layers", "use_mlp", "use_layernorm", "length_mode", "training", "train_max_k"]
REFERENCE_THRESHOLD = 0.95


def reference_run_scores(rows: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its reference cell and gen_em (mean gen exact match at the chosen step)."""
    exact = metric_column(rows, "exact_match_acc")
    gen = evals[evals["split"] == "gen"]
    scores = gen.groupby("run_key")[exact].mean().rename("gen_em")
    runs = run_table(rows).set_index("run_key")
    fixed = runs["train_min_k"] == runs["train_max_k"]
    table = pd.DataFrame({
        "n_layers": runs["n_layers"].astype(int), "use_mlp": runs["use_mlp"].astype(bool),
        "use_layernorm": runs["use_layernorm"].astype(bool),
        "length_mode": runs["length_mode"].astype(str).where(~fixed, "fixed"),
        "training": pd.Series("dynamic", index=runs.index).where(~fixed, "fixed"),
        "train_max_k": runs["train_max_k"].astype(int)})
    table = table.join(scores, how="inner").dropna(subset=["gen_em"])
    # The reference's summary.csv has no column for anything else: runs of one of its cells that
    # differ in another parameter (two widths, two budgets) would be averaged into one number.
    rows = rows.assign(training=rows["length_config"].where(rows["length_config"] == "fixed", "dynamic"))
    mixed = [c for c in (["budget"] if "budget" in rows.columns else []) + config_columns(rows)
             if c not in REFERENCE_KEYS and rows[rows["run_key"].isin(table.index)]
             .groupby(REFERENCE_KEYS, dropna=False)[c].nunique(dropna=False).gt(1).any()]
    if mixed:
        values = describe_values(rows, mixed)
        raise UserError(f"--format sort-llm: runs of one cell differ in {values}, which the reference's summary.csv "
                        "has no column for; summarise one configuration at a time (or use --format md|csv)")
    return table


def _sorted(values: object) -> list:
    try:
        return sorted(values)
    except TypeError:  # values of several types
        return sorted(values, key=str)


def reference_cells(scores: pd.DataFrame) -> list[tuple[tuple, float, float, int]]:
    """(key, mean, population std, n_runs) per cell, in the reference's sorted key order."""
    import numpy as np

    cells = []
    for key, cell in scores.groupby(REFERENCE_KEYS, sort=False):
        values = cell["gen_em"].to_numpy(dtype=float)
        key = (int(key[0]), bool(key[1]), bool(key[2]), str(key[3]), str(key[4]), int(key[5]))
        cells.append((key, float(np.mean(values)), float(np.std(values)), len(values)))
    return sorted(cells, key=lambda c: c[0])


def reference_summary_csv(cells: list[tuple[tuple, float, float, int]]) -> str:
    lines = [",".join(REFERENCE_KEYS + ["mean_gen_em", "std_gen_em", "n_runs"])]
    for (layers, mlp, ln, mode, training, kmax), mean, std, n in cells:
        lines.append(f"{layers},{int(mlp)},{int(ln)},{mode},{training},{kmax},{mean:.4f},{std:.4f},{n}")
    return "\n".join(lines) + "\n"


def reference_thresholds_csv(cells: list[tuple[tuple, float, float, int]],
                             threshold: float = REFERENCE_THRESHOLD) -> str:
    groups: dict[tuple, list[tuple[int, float]]] = {}
    for key, mean, _, _ in cells:
        groups.setdefault(key[:5], []).append((key[5], mean))
    lines = [",".join(REFERENCE_KEYS[:5] + [f"min_k_at_{threshold}"])]
    for key in sorted(groups):
        reached = [kmax for kmax, mean in sorted(groups[key]) if mean >= threshold]
        lines.append(",".join(str(v) for v in key) + "," + (str(reached[0]) if reached else ""))
    return "\n".join(lines) + "\n"
