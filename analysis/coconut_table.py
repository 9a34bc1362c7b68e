"""The per-mode table of REPRODUCTION.md (COCONUT section) from a collected results.parquet:

    python -m analysis.coconut_table reproduce/coconut/results.parquet

Per feedback mode: runs (n), best validation accuracy, test accuracy of checkpoint_best (mean ± sample std
over seeds, in %), and the share of well-formed answers on test ("<root> is a <one of the options>.").
"""

from __future__ import annotations

import sys

import pandas as pd

from analysis.load import metric_column
from analysis.summary import mean_std, mode_rank


def coconut_table(frame: pd.DataFrame) -> pd.DataFrame:
    acc, formed = metric_column(frame, "accuracy"), metric_column(frame, "well_formed")
    rows = []
    for (mode, _key), run in frame[frame["experiment"] == "coconut"].groupby(["feedback_mode", "run_key"]):
        val, test = run[run["split"] == "val"], run[run["split"] == "test"]
        rows.append({"feedback_mode": mode, "best_val": val[acc].max(),
                     "test": test[acc].iloc[-1] if len(test) else float("nan"),
                     "test_formed": test[formed].iloc[-1] if len(test) and formed in test else float("nan")})
    runs = pd.DataFrame(rows)
    out = runs.groupby("feedback_mode").agg(n=("best_val", "size"), best_val_mean=("best_val", "mean"),
                                            best_val_std=("best_val", "std"), test_mean=("test", "mean"),
                                            test_std=("test", "std"), formed_mean=("test_formed", "mean"))
    return out.reset_index().sort_values("feedback_mode", key=lambda s: s.map(mode_rank))


def markdown(table: pd.DataFrame) -> str:
    lines = ["| mode | n | best val accuracy | test accuracy | well-formed test answers |", "|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.feedback_mode} | {r.n} | {mean_std(r.best_val_mean, r.best_val_std)} | "
                     f"{mean_std(r.test_mean, r.test_std)} | {100 * r.formed_mean:.1f} % |")
    return "\n".join(lines)


def main() -> None:
    print(markdown(coconut_table(pd.read_parquet(sys.argv[1]))))


if __name__ == "__main__":
    main()
