"""A table of two experiment families, written by the real ``write_table`` of ``sweep collect``: a flag
of one family is null in the other's rows. It must stay a flag — stored as the text "False" it read as
True, and `sweep summary` labelled every no-LayerNorm sortgpt run "LayerNorm: yes" (seen in `make demo`)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from launch.collect import PROVENANCE, write_table
from tests.helpers import sweep


def _prov(experiment: str, run: str) -> dict:
    return {c: None for c in PROVENANCE} | {"spec": experiment, "experiment": experiment, "group": "g", "task": 0,
                                           "seed": 1, "run_key": run.ljust(12, "0"), "run_dir": run,
                                           "started_at": 1.7e9, "ended_at": 1.7e9 + 1, "wall_s": 1.0,
                                           "state": "completed"}


def _records(tmp_path: Path) -> Path:
    records = []
    for ln in (True, False):
        config = {"n_layers": 1, "use_mlp": False, "use_layernorm": ln, "no_pos_emb": True, "length_mode": "mix",
                  "train_min_k": 4, "train_max_k": 4, "max_iters": 10, "batch_size": 8}
        recs = [{"step": 10, "split": "train", "length": None, "time": time.time(), "metrics": {"loss": 0.1}}]
        recs += [{"step": 10, "split": "gen", "length": k, "time": time.time(),
                  "metrics": {"exact_match_acc": 0.9 if ln else 0.1}} for k in (9, 10)]
        records.append((_prov("sortgpt", f"ln{int(ln)}"), config, recs))
    config = {"feedback_mode": "cot", "epochs_per_stage": 1, "max_latent_stage": 1, "num_epochs": 2,
              "pad_latent_to_max": False}
    recs = [{"step": e, "split": "val", "length": None, "time": time.time(),
             "metrics": {"accuracy": 0.5, "loss": 1.0}} for e in (1, 2)]
    records.append((_prov("coconut", "cot"), config, recs))
    columns = sorted({k for _, config, _ in records for k in config})
    out = tmp_path / "mixed.parquet"
    write_table(records, columns, out)
    return out


def test_a_flag_of_one_family_stays_a_flag_in_a_two_family_table(tmp_path: Path) -> None:
    out = _records(tmp_path)
    schema = pq.read_schema(out)
    assert schema.field("use_layernorm").type == pa.bool_() and schema.field("pad_latent_to_max").type == pa.bool_()
    df = pd.read_parquet(out)
    assert df.loc[df.run_dir == "ln0", "use_layernorm"].tolist() == [False] * 3

    summary = sweep("summary", out).stdout
    assert "| 1 | no | yes | fixed | 4 | 90.0 ± n/a % | 1 |" in summary, summary
    assert "| 1 | no | no | fixed | 4 | 10.0 ± n/a % | 1 |" in summary, summary


def test_flags_stored_as_text_by_an_older_collect_are_read_right(tmp_path: Path) -> None:
    """Tables already written with "True"/"False" text flags: read as the flags they were."""
    df = pd.read_parquet(_records(tmp_path))
    for col in ("use_layernorm", "use_mlp", "no_pos_emb"):
        df[col] = df[col].map(lambda v: None if v is None or v != v else str(v))
    old = tmp_path / "old.parquet"
    df.to_parquet(old)
    assert pa.types.is_string(pq.read_schema(old).field("use_layernorm").type) or \
        pa.types.is_large_string(pq.read_schema(old).field("use_layernorm").type)
    summary = sweep("summary", old).stdout
    assert "| 1 | no | no | fixed | 4 | 10.0 ± n/a % | 1 |" in summary, summary

    df["use_layernorm"] = df["use_layernorm"].map(lambda v: "maybe" if v == "False" else v)
    df.to_parquet(old)
    p = sweep("summary", old, check=False)
    assert p.returncode == 2 and p.stderr.strip() == f"error: {old}: column 'use_layernorm' should hold " \
                                                     "true/false, found 'maybe'", p.stderr
