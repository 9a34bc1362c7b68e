"""``sweep collect``: the tree's metric files -> one long Parquet table.

One row per metrics record (run × step × split × eval length). Reads
``run.json``, ``state.json`` and ``metrics.jsonl``, never model weights.

Attribution is by identity: a run directory's rows are labelled with a run of
the spec only when the run key in its ``run.json`` (and in the spec's manifest)
is that run's key. A directory holding another run (the spec was edited after
launch, or another spec launched into it) is reported in ``foreign`` and never
merged. A run whose files cannot be read (corrupt state.json, a metrics line
that is not a ctx.log record) is skipped with the line at fault; a torn last
line of metrics.jsonl (a kill mid-write) costs that line only, with a warning.
``sweep collect`` exits 1 after writing the rest when any run was not merged
for either reason. A metric value that is not a number (or null) makes its line
corrupt: it is never coerced to NaN. A run extended by ``sweep resume`` (a
``<dir>_resume<N>`` child) is not a run of the spec: it is named in a warning.

Columns (documented in checkpoints/README.md):
provenance  spec, experiment, group, task, seed, run_key, run_dir, job_id,
            git_commit, code_snapshot, host, started_at, ended_at, wall_s, state
record      step, split, length (nullable), time
config      one column per resolved config parameter (lists/dicts as JSON);
            ``config_<name>`` when it is named like a provenance column
metrics     one float column per metric name; ``metric_<name>`` on a clash
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from launch import store as st
from launch.experiment import METRICS_FILE
from launch.store import Store, read_jobs, read_json, read_state
from launch.tasks import Run

PROVENANCE = ["spec", "experiment", "group", "task", "seed", "run_key", "run_dir", "job_id", "git_commit",
              "code_snapshot", "host", "started_at", "ended_at", "wall_s", "state"]
RECORD = ["step", "split", "length", "time"]


@dataclass
class CollectReport:
    rows: int = 0
    runs: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> run dirs
    # run dir -> why its files are not the run the spec names there (never merged)
    foreign: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # run dir -> what is corrupt in it
    warnings: list[str] = field(default_factory=list)  # what was dropped (a torn last line)

    @property
    def corrupt(self) -> list[str]:
        """Run dirs whose files could not be read (skipped as corrupt)."""
        return [rel for reason, dirs in self.skipped.items() if reason.startswith("corrupt") for rel in dirs]


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The records of a metrics.jsonl and its torn last line (None when whole).

    A last line that is not JSON was cut short by a kill mid-write: only it is dropped. Any
    other bad line raises ValueError naming the line: the file is not what ctx.log writes."""
    with open(path) as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    recs, torn = [], None
    for i, (n, line) in enumerate(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            if i == len(lines) - 1 and not line.endswith("\n"):
                torn = line
                break
            raise ValueError(f"line {n} is not JSON") from None
        problem = _record_problem(rec)
        if problem:
            raise ValueError(f"line {n}: {problem}")
        recs.append(rec)
    return recs, torn


def _record_problem(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return "not a JSON object"
    if not isinstance(rec.get("metrics"), dict):
        return "no metrics mapping"
    if not isinstance(rec.get("split"), str):
        return "no split"
    step = rec.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        return f"step must be an integer, got {step!r}"
    # A metric is a number (or null): text or a list would become NaN in the float column, and a mean
    # over a run's lengths would then quietly be a mean over fewer of them.
    bad = next(((k, v) for k, v in rec["metrics"].items()
                if v is not None and not isinstance(v, (int, float))), None)
    if bad:
        return f"metric {bad[0]!r} must be a number, got {bad[1]!r}"
    return None


def _not_own(store: Store, r: Run, manifest: dict[str, Any]) -> str | None:
    """Why the files in ``r``'s directory may not be labelled as ``r`` (see Store.identity_problem);
    a directory with metrics but no run.json cannot be attributed either."""
    d = store.run_dir(r)
    info = read_json(d / st.RUN_FILE)
    if info is None and (d / METRICS_FILE).exists():
        return f"no {st.RUN_FILE}: cannot tell which run wrote {METRICS_FILE}"
    return store.identity_problem(r, manifest, info)


def _extensions(d: Path, r: Run) -> list[str]:
    """Say which runs continue ``r`` (``sweep resume`` writes them beside it as ``<dir>_resume<N>``):
    they are not runs of the spec, so their numbers are not in the table, and nobody should think so."""
    out = []
    for child in sorted(d.parent.glob(f"{d.name}_resume*")):
        info = read_json(child / st.RUN_FILE)
        parent = info.get("parent") if isinstance(info, dict) else None
        if isinstance(parent, dict) and parent.get("run_key") == r.run_key:
            state = (read_state(child / st.STATE_FILE) or {}).get("state") or "not started"
            out.append(f"{r.rel_dir}: extended by sweep resume as {child.name} ({state}): not a run of the spec, "
                       "so not in the table")
    return out


def collect(runs: list[Run], store: Store, out: Path, include_incomplete: bool = False) -> CollectReport:
    report = CollectReport()
    jobs: dict[str, str] = {}
    for spec in sorted({r.spec for r in runs}):
        jobs.update(read_jobs(store, spec))
    # config columns: every run's parameters, known before the first row (so each run's records become
    # columns as they are read, never held as dicts); those of no run in the table are dropped at the end
    config_cols = list(dict.fromkeys(k for r in runs for k in r.config if k != "seed"))
    seen_cfg: set[str] = set()
    table = TableBuilder(config_cols)
    manifests = {spec: store.manifest_runs(spec) for spec in sorted({r.spec for r in runs})}
    for r in runs:
        d = store.run_dir(r)
        state = read_state(d / st.STATE_FILE)
        if not state:
            report.skipped.setdefault("not started", []).append(r.rel_dir)
            continue
        foreign = _not_own(store, r, manifests[r.spec])
        if foreign:
            report.foreign[r.rel_dir] = foreign
            continue
        if state.get("_corrupt"):
            report.skipped.setdefault("corrupt state.json", []).append(r.rel_dir)
            continue
        if state.get("state") != st.COMPLETED and not include_incomplete:
            report.skipped.setdefault(f"not completed ({state.get('state')})", []).append(r.rel_dir)
            continue
        try:
            recs, torn = read_metrics(d / METRICS_FILE)
        except FileNotFoundError:
            report.skipped.setdefault("no metrics.jsonl", []).append(r.rel_dir)
            continue
        except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            report.skipped.setdefault("corrupt metrics.jsonl", []).append(r.rel_dir)
            report.problems[r.rel_dir] = f"{METRICS_FILE}: {e}"
            continue
        if torn:
            report.warnings.append(f"{r.rel_dir}/{METRICS_FILE}: dropped its last line, cut short "
                                   f"(killed while writing?): {torn[:60]!r}")
        seen_cfg.update(r.config)  # seed is already a provenance column
        prov = {"spec": r.spec, "experiment": r.experiment, "group": r.group, "task": r.task, "seed": r.seed,
                "run_key": r.run_key, "run_dir": r.rel_dir, "job_id": jobs.get(r.rel_dir, state.get("job_id")),
                "git_commit": state.get("git_commit"), "code_snapshot": state.get("code_snapshot"),
                "host": state.get("host"),
                "started_at": state.get("started_at"), "ended_at": state.get("ended_at"),
                "wall_s": state.get("wall_s"), "state": state.get("state")}
        table.add(prov, r.config, recs)
        del recs
        report.runs += 1
        report.warnings += _extensions(d, r)

    report.rows = table.write(Path(out), keep_config=seen_cfg)
    return report


class TableBuilder:
    """The long table's columns, filled run by run (``add``) so no run's records outlive their rows."""

    def __init__(self, config_cols: list[str]):
        self.config_cols = config_cols
        # a config parameter named like a provenance/record column keeps its value as config_<name>
        self.cfg_col = {k: f"config_{k}" if k in PROVENANCE or k in RECORD else k for k in config_cols}
        self.reserved = set(PROVENANCE) | set(RECORD) | set(self.cfg_col.values())
        self.metric_cols: dict[str, str] = {}  # metric name -> column
        self.columns: dict[str, list[Any]] = {c: [] for c in PROVENANCE + RECORD + list(self.cfg_col.values())}
        self.n = 0

    def add(self, prov: dict[str, Any], config: dict[str, Any], recs: list[dict[str, Any]]) -> None:
        columns, metric_cols = self.columns, self.metric_cols
        for rec in recs:
            for c in PROVENANCE:
                columns[c].append(prov[c])
            columns["step"].append(rec.get("step"))
            columns["split"].append(rec.get("split"))
            columns["length"].append(rec.get("length"))
            columns["time"].append(rec.get("time"))
            for c in self.config_cols:
                v = config.get(c)
                columns[self.cfg_col[c]].append(json.dumps(v) if isinstance(v, (list, dict)) else v)
            for name, v in rec.get("metrics", {}).items():
                col = metric_cols.get(name)
                if col is None:
                    col = metric_cols[name] = f"metric_{name}" if name in self.reserved else name
                    columns[col] = [None] * self.n
                columns[col].append(v)
            self.n += 1
            for col in metric_cols.values():
                if len(columns[col]) < self.n:
                    columns[col].append(None)

    def write(self, out: Path, keep_config: set[str] | None = None) -> int:
        """Write the table atomically to ``out`` (config columns of ``keep_config`` only, when given);
        the number of rows."""
        if keep_config is not None:
            for k in self.config_cols:
                if k not in keep_config:
                    del self.columns[self.cfg_col[k]]
            self.cfg_col = {k: c for k, c in self.cfg_col.items() if k in keep_config}
        return _write_columns(self.columns, self.metric_cols, self.cfg_col, self.n, out)


def write_table(records: list[tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]], config_cols: list[str],
                out: Path) -> int:
    """Write the long table (one row per metrics record) of ``records`` — (provenance, config,
    metrics records) per run — atomically to ``out``; returns the number of rows. Shared by
    ``sweep collect`` and anything that must write rows of the same schema (``sweep evaluate``)."""
    table = TableBuilder(config_cols)
    for prov, config, recs in records:
        table.add(prov, config, recs)
    return table.write(out)


def _write_columns(columns: dict[str, list[Any]], metric_cols: dict[str, str], cfg_col: dict[str, str], n: int,
                   out: Path) -> int:
    """The columns -> typed Parquet (each stage let go once the next is built)."""
    df = pd.DataFrame(columns)
    columns.clear()  # the DataFrame holds its own copy
    for c in ("started_at", "ended_at"):
        df[c] = pd.to_datetime(df[c], unit="s", utc=True)
    for c in ("task", "seed", "step", "length"):
        df[c] = df[c].astype("Int64")
    for name, c in metric_cols.items():
        # Never coerce: a value that is not a number must not become a NaN nobody sees.
        bad = next((v for v in df[c] if v is not None and not pd.api.types.is_number(v)), None)
        if bad is not None:
            raise ValueError(f"metric {name!r} holds {bad!r}, not a number")
        df[c] = df[c].astype("float64")
    for c in cfg_col.values():
        # A column whose values are of one type plus None (a parameter of one experiment in a table of
        # two) keeps that type, with nulls: storing it as text made False the string "False", which is
        # truthy. Only values of really different types (e.g. 3 and "a") are stored as text.
        kinds = {type(v) for v in df[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds) > 1 and not pd.api.types.is_numeric_dtype(df[c]):
            df[c] = df[c].map(lambda v: None if v is None else str(v))
    table = pa.Table.from_pandas(df, preserve_index=False)
    del df
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    return n
