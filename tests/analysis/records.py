"""Hand-built results tables of `sweep collect`'s shape, written with pyarrow: a metric a row lacks is
null (not logged), a float NaN stays NaN (logged NaN) — the distinction the collector keeps."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

FLOATS = ("accuracy", "loss", "well_formed", "lr", "time")
INTS = ("task", "seed", "step", "length", "epochs_per_stage", "max_latent_stage", "num_epochs")


def write_records(path: Path, rows: list[dict]) -> Path:
    """``rows`` as a Parquet table of `sweep collect`'s shape; a metric a row lacks is null."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    types = {**{n: pa.float64() for n in FLOATS}, **{n: pa.int64() for n in INTS}}
    pq.write_table(pa.table({n: pa.array([row.get(n) for row in rows], type=types.get(n)) for n in names}), path)
    return path


def coconut_run(run: str, seed: int, val: list[float], **config: object) -> list[dict]:
    """A completed coconut run: its val records at epochs 1, 2, ... with the accuracies ``val``, then its test
    record (test accuracy = the last val accuracy); ``config`` overrides the defaults."""
    base = {"spec": "s", "experiment": "coconut", "group": "g", "task": 0, "seed": seed, "run_key": run,
            "run_dir": run, "state": "completed", "length": None, "feedback_mode": "continuous",
            "model_name": "coconut", "epochs_per_stage": 1, "max_latent_stage": 1, "num_epochs": len(val),
            "lr": 1e-4, "device": "cpu", "test_at_end": True} | config
    rows = [base | {"step": e, "split": "val", "time": float(e), "accuracy": a, "loss": 1.0 - a}
            for e, a in enumerate(val, 1)]
    return rows + [base | {"step": len(val), "split": "test", "time": 99.0, "accuracy": val[-1],
                           "well_formed": 1.0}]
