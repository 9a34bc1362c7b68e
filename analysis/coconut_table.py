"""The per-mode table of REPRODUCTION.md (COCONUT section) from a collected results.parquet:

    python -m analysis.coconut_table reproduce/coconut/results.parquet

Per feedback mode: runs (n), best validation accuracy, test accuracy of checkpoint_best (mean ± sample std
over seeds, in %), the share of well-formed answers on test ("<root> is a <one of the options>."), and the
paper's ProsQA figure for the same method (Hao et al. 2024, Table 1: pretrained GPT-2, full ProsQA; "—" where
the paper has no such row or no ProsQA figure) — side by side, not comparable (see REPRODUCTION.md).
Every number of a row is over the same n runs: a run that did not complete, or lacks its validation or
test accuracy, is left out of all of them and named on stderr (``note: ...``).
The table has one row per mode, as the paper's: runs of one mode that differ in another parameter (two
learning rates, two graph depths: two specs collected into one file) are refused (``error: ...``, exit 2)
rather than averaged into one row; ``sweep summary`` splits its rows by such parameters instead.
"""

from __future__ import annotations

import sys

import pandas as pd

from analysis.load import metric_column, read_results
from analysis.summary import coconut_split_columns, describe_values, mean_std, mode_rank
from launch.errors import UserError

# Our mode -> (the paper's Table 1 row, its ProsQA accuracy in %). pause_as_thought is Meta's "pause as
# thought" (the <|latent|> token in place of the thoughts, same curriculum); no_thoughts is "w/o thought",
# whose ProsQA figure is not quoted here. The other pause modes are this project's controls (issue 4).
PAPER_TABLE1_PROSQA: dict[str, tuple[str, float | None]] = {
    "continuous": ("Coconut", 97.0), "pause_as_thought": ("pause as thought", 96.6),
    "no_thoughts": ("w/o thought", None), "cot": ("CoT", 77.5), "no_cot": ("No-CoT", 76.7),
}

COLUMNS = ["feedback_mode", "n", "best_val_mean", "best_val_std", "test_mean", "test_std", "formed_mean"]


def coconut_runs(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per whole run (best val, test accuracy and well-formed share), and notes on the others."""
    acc, formed = metric_column(frame, "accuracy"), metric_column(frame, "well_formed")
    order = [c for c in ("step", "time") if c in frame.columns]
    rows, notes = [], []
    for (mode, key), run in frame[frame["experiment"] == "coconut"].groupby(["feedback_mode", "run_key"]):
        run = run.sort_values(order, kind="stable")
        name = run["run_dir"].iloc[0] if "run_dir" in run else key
        state = run["state"].iloc[-1] if "state" in run else "completed"
        val = run[(run["split"] == "val") & run[acc].notna()]
        test = run[run["split"] == "test"]
        problems = [f"state {state}"] if state != "completed" else []
        problems += ["no validation accuracy"] if val.empty else []
        if test.empty:
            problems.append("no test accuracy")
        elif pd.isna(test[acc].iloc[-1]):
            # Its last test record, NaN included: a run that diverged must not show an earlier record's accuracy.
            problems.append("test accuracy is NaN")
        if problems:
            # Its NaN would drop out of one mean but not out of n: n would not be what the means are over.
            notes.append(f"coconut run {name}: {', '.join(problems)}; left out")
            continue
        rows.append({"feedback_mode": mode, "best_val": val[acc].max(), "test": test[acc].iloc[-1],
                     "test_formed": test[formed].iloc[-1] if formed in test else float("nan")})
    return pd.DataFrame(rows, columns=["feedback_mode", "best_val", "test", "test_formed"]), notes


def one_configuration_per_mode(frame: pd.DataFrame) -> None:
    """Raise UserError naming the parameters (and their values) in which runs of one feedback mode differ:
    each row stands next to one paper figure, and a mean over two configurations is neither's accuracy."""
    rows = frame[frame["experiment"] == "coconut"]
    split = coconut_split_columns(rows)
    if split:
        raise UserError(f"runs of one feedback mode differ in {describe_values(rows, split)}; this table has one "
                        "row per mode: make it from one configuration's runs (`sweep summary` splits its rows "
                        "by them)")


def coconut_table(frame: pd.DataFrame) -> pd.DataFrame:
    one_configuration_per_mode(frame)
    runs, _ = coconut_runs(frame)
    out = runs.groupby("feedback_mode").agg(n=("best_val", "size"), best_val_mean=("best_val", "mean"),
                                            best_val_std=("best_val", "std"), test_mean=("test", "mean"),
                                            test_std=("test", "std"), formed_mean=("test_formed", "mean"))
    return out.reset_index().reindex(columns=COLUMNS).sort_values("feedback_mode", key=lambda s: s.map(mode_rank))


def markdown(table: pd.DataFrame) -> str:
    lines = ["| mode | n | best val accuracy | test accuracy | well-formed test answers | paper's row | "
             "paper, Table 1 ProsQA |", "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        formed = "n/a" if pd.isna(r.formed_mean) else f"{100 * r.formed_mean:.1f} %"
        row, figure = PAPER_TABLE1_PROSQA.get(r.feedback_mode, ("—", None))
        paper = "—" if figure is None else f"{figure:.1f} %"
        lines.append(f"| {r.feedback_mode} | {r.n} | {mean_std(r.best_val_mean, r.best_val_std)} | "
                     f"{mean_std(r.test_mean, r.test_std)} | {formed} | {row} | {paper} |")
    return "\n".join(lines)


def main() -> None:
    try:
        if len(sys.argv) != 2:
            raise UserError("usage: python -m analysis.coconut_table RESULTS.parquet")
        frame = read_results(sys.argv[1])  # merges a rerun's records logged twice
        _, notes = coconut_runs(frame)
        notes = list(frame.attrs.get("notes", [])) + notes
        table = coconut_table(frame)
        if table.empty:
            raise UserError(f"{sys.argv[1]}: no completed coconut run with validation and test accuracy")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(markdown(table))


if __name__ == "__main__":
    main()
