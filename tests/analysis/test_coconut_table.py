"""analysis.coconut_table: the REPRODUCTION.md table equals a hand computation."""

from __future__ import annotations

import statistics

import pandas as pd
import pytest

from analysis.coconut_table import coconut_table, markdown


def rows() -> pd.DataFrame:
    out = []
    # (mode, seed): validation accuracies per epoch, then (test accuracy, test well-formed share)
    runs = {("cot", 0): ([0.1, 0.5, 0.4], (0.45, 0.9)), ("cot", 1): ([0.2, 0.3, 0.6], (0.55, 1.0)),
            ("continuous", 0): ([0.0, 0.25, 0.2], (0.2, 0.5)), ("continuous", 1): ([0.3, 0.1, 0.0], (0.3, 0.7))}
    for (mode, seed), (val, (test, formed)) in runs.items():
        key = f"{mode}-{seed}"
        for step, acc in enumerate(val, 1):
            out.append({"experiment": "coconut", "feedback_mode": mode, "run_key": key, "split": "train",
                        "step": step, "accuracy": None, "well_formed": None})
            out.append({"experiment": "coconut", "feedback_mode": mode, "run_key": key, "split": "val",
                        "step": step, "accuracy": acc, "well_formed": 0.5})
        out.append({"experiment": "coconut", "feedback_mode": mode, "run_key": key, "split": "test",
                    "step": len(val), "accuracy": test, "well_formed": formed})
    return pd.DataFrame(out)


def test_paper_column_has_table_1_prosqa_figures():
    from analysis.coconut_table import PAPER_TABLE1_PROSQA

    assert {m: f for m, (_, f) in PAPER_TABLE1_PROSQA.items() if f is not None} == \
        {"continuous": 97.0, "pause_as_thought": 96.6, "cot": 77.5, "no_cot": 76.7}
    frame = rows()
    frame["feedback_mode"] = frame["feedback_mode"].replace({"continuous": "frozen", "cot": "pause_as_thought"})
    text = markdown(coconut_table(frame))
    assert "| pause_as_thought | 2 | 55.0 ± 7.1 % | 50.0 ± 7.1 % | 95.0 % | pause as thought | 96.6 % |" in text
    assert "| frozen | 2 | 27.5 ± 3.5 % | 25.0 ± 7.1 % | 60.0 % | — | — |" in text


def test_table_matches_hand_computation():
    table = coconut_table(rows()).set_index("feedback_mode")
    assert list(table.index) == ["continuous", "cot"]          # the modes' canonical order
    cot = table.loc["cot"]
    assert cot["n"] == 2
    assert cot["best_val_mean"] == pytest.approx(statistics.mean([0.5, 0.6]))
    assert cot["best_val_std"] == pytest.approx(statistics.stdev([0.5, 0.6]))
    assert cot["test_mean"] == pytest.approx(0.5) and cot["test_std"] == pytest.approx(statistics.stdev([0.45, 0.55]))
    assert table.loc["continuous", "formed_mean"] == pytest.approx(0.6)
    text = markdown(coconut_table(rows()))
    assert "| cot | 2 | 55.0 ± 7.1 % | 50.0 ± 7.1 % | 95.0 % | CoT | 77.5 % |" in text
    assert "| continuous | 2 | 27.5 ± 3.5 % | 25.0 ± 7.1 % | 60.0 % | Coconut | 97.0 % |" in text
