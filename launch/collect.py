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

The table is never whole in memory (issue 12): a first pass reads every run's files, decides what is
merged, and notes the columns and the types each holds; a second reads the merged runs' records again
and writes them a row group at a time, with the schema one DataFrame of every row would give.

Columns (documented in checkpoints/README.md):
provenance  spec, experiment, group, task, seed, run_key, run_dir, job_id,
            git_commit, code_snapshot, host, started_at, ended_at, wall_s, state
record      step, split, length (nullable), time
config      one column per resolved config parameter (lists/dicts as JSON);
            ``config_<name>`` when it is named like a provenance column
metrics     one float column per metric name; ``metric_<name>`` on a clash; null where a
            record did not log the metric, NaN where it logged NaN
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from launch import store as st
from launch.errors import UserError
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


def read_metrics(path: Path | str, limit: int | None = None) -> tuple[list[dict[str, Any]], str | None, str]:
    """The records of a metrics.jsonl (its first ``limit`` when given), its torn last line (None when
    whole) and a digest of the bytes of the records returned (collect's two passes compare it).

    A last line that is not JSON was cut short by a kill mid-write: only it is dropped. Any
    other bad line raises ValueError naming the line: the file is not what ctx.log writes. A symlink
    raises OSError ELOOP: a run never writes its metrics through one (ctx.log refuses to), so a link is
    another run's file, whose numbers must not be labelled as this run's."""
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW)) as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    if limit is not None:
        lines = lines[:limit]
    recs, torn, digest = [], None, hashlib.blake2b(digest_size=16)
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
        digest.update(line.rstrip("\n").encode())
        digest.update(b"\n")
    return recs, torn, digest.hexdigest()


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
    if not -2**63 <= step < 2**63:  # the column is int64: out of range it failed the whole table
        return f"step {step} is out of range"
    length = rec.get("length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or abs(length) >= 2**63):
        # true would become length 1 and pass for the real length-1 record
        return f"length must be an integer or null, got {length!r}"
    t = rec.get("time")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)):
        return f"time must be a number of seconds, got {t!r}"
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
    d = _dir(store, r)
    info = read_json(f"{d}/{st.RUN_FILE}")
    if info is None and os.path.exists(f"{d}/{METRICS_FILE}"):
        return f"no {st.RUN_FILE}: cannot tell which run wrote {METRICS_FILE}"
    return store.identity_problem(r, manifest, info)


def _dir(store: Store, r: Run) -> str:
    """The run's directory as a plain string (pathlib's joins were seconds of collect at 50,000 runs)."""
    return f"{os.fspath(store.root)}/{r.rel_dir}"


def _extensions(d: Path, r: Run) -> list[str]:
    """Say which runs continue ``r`` (``sweep resume`` writes them beside it as ``<dir>_resume<N>``):
    they are not runs of the spec, so their numbers are not in the table, and nobody should think so."""
    out = []
    prefix = f"{d.name}_resume"
    try:  # the names, not a glob: pathlib compiled a pattern per run (a third of collect's time at 10,000)
        names = [n for n in os.listdir(d.parent) if n.startswith(prefix)]
    except OSError:
        names = []
    for child in sorted(d.parent / n for n in names):
        info = read_json(child / st.RUN_FILE)
        parent = info.get("parent") if isinstance(info, dict) else None
        if isinstance(parent, dict) and parent.get("run_key") == r.run_key:
            state = (read_state(child / st.STATE_FILE) or {}).get("state") or "not started"
            out.append(f"{r.rel_dir}: extended by sweep resume as {child.name} ({state}): not a run of the spec, "
                       "so not in the table")
    return out


def collect(runs: list[Run], store: Store, out: Path, include_incomplete: bool = False) -> CollectReport:
    """Two passes, so the table is never whole in memory: the first reads every run's files and decides
    what is merged, and the columns and their types; the second reads the merged runs' records again and
    writes them a row group at a time (as many records per run as the first pass read)."""
    report = CollectReport()
    jobs: dict[str, str] = {}
    for spec in sorted({r.spec for r in runs}):
        jobs.update(read_jobs(store, spec))
    # config columns: every run's parameters, known before the first row; those of no run in the table
    # are dropped at the end
    config_cols = list(dict.fromkeys(k for r in runs for k in r.config if k != "seed"))
    seen_cfg: set[str] = set()
    table = TableBuilder(config_cols)
    manifests = {spec: store.manifest_runs(spec) for spec in sorted({r.spec for r in runs})}
    # run, its provenance from state.json, its records' count and digest
    merged: list[tuple[Run, tuple[Any, ...], int, str]] = []
    for r in runs:
        d = _dir(store, r)
        state = read_state(f"{d}/{st.STATE_FILE}")
        if not state:
            if os.path.lexists(f"{d}/{METRICS_FILE}"):  # it trained: state.json was written before that
                report.skipped.setdefault("corrupt state.json", []).append(r.rel_dir)
                report.problems[r.rel_dir] = (f"{st.STATE_FILE} is {'empty' if state == {} else 'missing'} beside "
                                              f"its {METRICS_FILE}: cannot tell whether the run completed")
                continue
            report.skipped.setdefault("not started", []).append(r.rel_dir)
            continue
        foreign = _not_own(store, r, manifests[r.spec])
        if foreign:
            report.foreign[r.rel_dir] = foreign
            continue
        if state.get("_corrupt"):
            report.skipped.setdefault("corrupt state.json", []).append(r.rel_dir)
            if state.get("_why"):
                report.problems[r.rel_dir] = f"{st.STATE_FILE}: {state['_why']}"
            continue
        if state.get("state") != st.COMPLETED and not include_incomplete:
            report.skipped.setdefault(f"not completed ({state.get('state')})", []).append(r.rel_dir)
            continue
        completed = state.get("state") == st.COMPLETED
        try:
            recs, torn, digest = read_metrics(f"{d}/{METRICS_FILE}")
        except FileNotFoundError:
            if completed:  # a completed run's numbers are missing: the table is not whole
                report.skipped.setdefault("corrupt metrics.jsonl", []).append(r.rel_dir)
                report.problems[r.rel_dir] = f"completed, but it has no {METRICS_FILE}"
            else:
                report.skipped.setdefault("no metrics.jsonl", []).append(r.rel_dir)
            continue
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            report.foreign[r.rel_dir] = (f"{METRICS_FILE} is a symbolic link (to {os.readlink(f'{d}/{METRICS_FILE}')}): "
                                         "not a file this run wrote")
            continue
        except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            report.skipped.setdefault("corrupt metrics.jsonl", []).append(r.rel_dir)
            report.problems[r.rel_dir] = f"{METRICS_FILE}: {e}"
            continue
        if completed and not recs:
            report.skipped.setdefault("corrupt metrics.jsonl", []).append(r.rel_dir)
            report.problems[r.rel_dir] = f"completed, but its {METRICS_FILE} holds no records"
            continue
        if torn:
            report.warnings.append(f"{r.rel_dir}/{METRICS_FILE}: dropped its last line, cut short "
                                   f"(killed while writing?): {torn[:60]!r}")
        seen_cfg.update(r.config)  # seed is already a provenance column
        from_state = (jobs.get(r.rel_dir, state.get("job_id")), *(_intern(state.get(k)) for k in _FROM_STATE))
        table.scan(_provenance(r, from_state), r.config, recs)
        merged.append((r, from_state, len(recs), digest))
        del recs
        report.runs += 1
        report.warnings += _extensions(Path(d), r)
    del manifests

    table.start(Path(out), keep_config=seen_cfg)
    try:
        for r, from_state, n, digest in merged:
            table.add(_provenance(r, from_state), r.config, _read_again(store, r, n, digest))
        report.rows = table.finish()
    except BaseException:
        table.abort()
        raise
    return report


_FROM_STATE = ("git_commit", "code_snapshot", "host", "started_at", "ended_at", "wall_s", "state")


def _intern(v: Any) -> Any:
    return sys.intern(v) if v.__class__ is str else v  # one copy of the host name, not 50,000


def _provenance(r: Run, from_state: tuple[Any, ...]) -> dict[str, Any]:
    job_id, git_commit, code_snapshot, host, started_at, ended_at, wall_s, state = from_state
    return {"spec": r.spec, "experiment": r.experiment, "group": r.group, "task": r.task, "seed": r.seed,
            "run_key": r.run_key, "run_dir": r.rel_dir, "job_id": job_id, "git_commit": git_commit,
            "code_snapshot": code_snapshot, "host": host, "started_at": started_at, "ended_at": ended_at,
            "wall_s": wall_s, "state": state}


class CollectRace(UserError):
    """A run's metrics changed between collect's two passes in a way appending cannot explain."""


def _read_again(store: Store, r: Run, n: int, digest: str) -> list[dict[str, Any]]:
    """The first ``n`` records of the run's metrics.jsonl, which the first pass read (a run still
    running may have appended more since: they are left out, as they were not there then).

    They must be the same bytes as then, in a directory that still belongs to ``r``: a relaunch or a
    resume that rewrote the file between the passes would otherwise put its numbers under the labels
    (job, start time, state) the first pass read from another attempt."""
    d = _dir(store, r)
    info = read_json(f"{d}/{st.RUN_FILE}")
    if not isinstance(info, dict) or info.get("run_key") != r.run_key:
        raise CollectRace(f"{r.rel_dir}/{st.RUN_FILE} no longer names run {r.run_key} (taken over while sweep "
                          "collect read it); nothing was written: run it again")
    try:
        recs, _, again = read_metrics(f"{d}/{METRICS_FILE}", limit=n)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CollectRace(f"{r.rel_dir}/{METRICS_FILE} changed while sweep collect read it ({e}); "
                          "nothing was written: run it again") from None
    if len(recs) < n:
        raise CollectRace(f"{r.rel_dir}/{METRICS_FILE} holds {len(recs)} records, {n} a moment ago; nothing "
                          "was written: run it again")
    if again != digest:
        raise CollectRace(f"{r.rel_dir}/{METRICS_FILE}: its first {n} records were rewritten while sweep collect "
                          "read them; nothing was written: run it again")
    return recs


CHUNK_ROWS = 32_768  # rows per Parquet row group: the most rows held in memory at once
_NO_KEY = object()


def _type_key(v: Any) -> Any:
    """What pandas' inference of a column can depend on, for one value: its type; for a float whether it
    is NaN; for an int its range (int64, uint64, beyond); for a date/time its time zone."""
    t = v.__class__
    if t is float:
        return t, v != v
    if t is int:
        return t, (0 if v < -2**63 else 1 if v < 0 else 2 if v < 2**63 else 3 if v < 2**64 else 4)
    tz = getattr(v, "tzinfo", _NO_KEY)
    return t if tz is _NO_KEY else (t, str(tz))


class TableBuilder:
    """The long table: ``scan`` every run's rows first (the metric columns in order of first appearance,
    and what each column's values are, by type), then ``start`` the file, ``add`` the same rows in the same
    order (written a row group of CHUNK_ROWS at a time) and ``finish`` it.

    The file's schema, pandas metadata included, is what writing the whole table at once through one
    DataFrame gives: it is taken from a small DataFrame holding one value of each type each column
    holds (pandas infers a column's dtype from those), typed by the same code as every row group."""

    def __init__(self, config_cols: list[str]):
        self.config_cols = config_cols
        # a config parameter named like a provenance/record column keeps its value as config_<name>
        self.cfg_col = {k: f"config_{k}" if k in PROVENANCE or k in RECORD else k for k in config_cols}
        self.reserved = set(PROVENANCE) | set(RECORD) | set(self.cfg_col.values())
        self.metric_cols: dict[str, str] = {}  # metric name -> column
        self.kinds: dict[str, dict[Any, Any]] = {}  # column -> type key -> a value of it
        self.n = 0  # rows scanned
        self.columns: dict[str, list[Any]] = {}
        self.written = 0
        self.tmp: Path | None = None

    def _note(self, col: str, values: Any) -> None:
        """Note the types of ``values`` (one column's)."""
        seen = self.kinds.setdefault(col, {})
        for v in values:
            t = v.__class__
            k = t if t is str or v is None or t is bool else _type_key(v)  # (the common ones inline: 50,000 runs)
            if k not in seen:
                seen[k] = v

    def scan(self, prov: dict[str, Any], config: dict[str, Any], recs: list[dict[str, Any]]) -> None:
        """Pass 1: one run's rows, for the columns and their types (nothing of them is kept)."""
        if not recs:  # a run without records has no row: its values type no column
            return
        kinds = self.kinds
        for c, v in [*((c, prov[c]) for c in PROVENANCE),
                     *((self.cfg_col[c], config.get(c)) for c in self.config_cols)]:  # one value per run
            if isinstance(v, (list, dict)):
                v = json.dumps(v)
            t = v.__class__
            k = t if t is str or v is None or t is bool else _type_key(v)
            seen = kinds.setdefault(c, {})
            if k not in seen:
                seen[k] = v
        for c in RECORD:
            self._note(c, [rec.get(c) for rec in recs])
        metric_cols = self.metric_cols
        for rec in recs:
            for name in rec.get("metrics", {}):
                if name not in metric_cols:
                    col = f"metric_{name}" if name in self.reserved else name
                    # a metric named metric_x beside a metric x that clashes: never one column for both
                    while col in self.reserved or col in metric_cols.values():
                        col = f"metric_{col}"
                    metric_cols[name] = col
        self.n += len(recs)

    def start(self, out: Path, keep_config: set[str] | None = None) -> None:
        """Open the file (a temporary beside ``out``) with the table's schema (config columns of
        ``keep_config`` only, when given)."""
        if keep_config is not None:
            self.cfg_col = {k: c for k, c in self.cfg_col.items() if k in keep_config}
            self.config_cols = [k for k in self.config_cols if k in keep_config]
        self.names = PROVENANCE + RECORD + list(self.cfg_col.values()) + list(self.metric_cols.values())
        # one value of each type per column (repeated to one length): the dtypes of the whole table
        width = max((len(self.kinds.get(c, ())) for c in self.names), default=0) if self.n else 0
        sample: dict[str, list[Any]] = {}
        for c in self.names:
            values = list(self.kinds.get(c, {}).values()) or [None]
            sample[c] = (values + [values[0]] * width)[:width]
        df, self.as_text = _typed_frame(sample, self.metric_cols, self.cfg_col, None)
        self.dtypes = dict(df.dtypes)
        self.schema = pa.Table.from_pandas(df, preserve_index=False).schema
        out.parent.mkdir(parents=True, exist_ok=True)
        self.out, self.tmp = out, out.with_name(f".{out.name}.tmp")
        self.writer = pq.ParquetWriter(self.tmp, self.schema)
        self.columns = {c: [] for c in self.names}
        self.rows = 0

    def add(self, prov: dict[str, Any], config: dict[str, Any], recs: list[dict[str, Any]]) -> None:
        """Pass 2: one run's rows, in the order scanned (a column at a time: a run's provenance and config
        are one value per run)."""
        columns, metric_cols = self.columns, self.metric_cols
        n = len(recs)
        metrics = [rec.get("metrics", {}) for rec in recs]
        for m in metrics:
            for name in m:
                if name not in metric_cols:
                    raise CollectRace(f"run {prov['run_dir']}: metric {name!r} was not there a moment ago; "
                                      "nothing was written: run sweep collect again")
        for c in PROVENANCE:
            columns[c].extend([prov[c]] * n)
        for c in RECORD:
            columns[c].extend([rec.get(c) for rec in recs])
        for c in self.config_cols:
            v = config.get(c)
            columns[self.cfg_col[c]].extend([json.dumps(v) if isinstance(v, (list, dict)) else v] * n)
        for name, col in metric_cols.items():
            columns[col].extend([m.get(name) for m in metrics])
        self.rows += n
        if len(columns["step"]) >= CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        n = len(self.columns["step"])
        raw = {c: self.columns[c] for c in self.metric_cols.values()}
        df, _ = _typed_frame(self.columns, self.metric_cols, self.cfg_col, self.as_text)
        self.columns = {c: [] for c in self.names}
        for c, dtype in self.dtypes.items():  # e.g. ints, in a table where other rows hold none: float64,
            if df[c].dtype != dtype and dtype == "float64" and df[c].dtype.kind in "iu":  # as one frame
                df[c] = df[c].astype("float64")
        table = pa.Table.from_pandas(df, schema=self.schema, preserve_index=False)
        del df
        for c, values in raw.items():  # pandas made both NaN; the file keeps them apart
            i = self.schema.get_field_index(c)
            table = table.set_column(i, self.schema.field(i), _metric_array(values))
        self.writer.write_table(table)
        self.written += n

    def finish(self) -> int:
        """Write what is left, move the file to ``out``; the number of rows."""
        if self.columns["step"] or not self.written:  # an empty table is still a file with its columns
            self._flush()
        if self.rows != self.n:  # cannot happen (add takes the rows scanned): never a table short of some
            raise AssertionError(f"collect wrote {self.rows} rows, scanned {self.n}")
        self.writer.close()
        assert self.tmp is not None
        self.tmp.replace(self.out)
        self.tmp = None
        return self.rows

    def abort(self) -> None:
        """Leave nothing behind (the file being written is removed)."""
        if self.tmp is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
            self.tmp.unlink(missing_ok=True)
            self.tmp = None


def write_table(records: list[tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]], config_cols: list[str],
                out: Path) -> int:
    """Write the long table (one row per metrics record) of ``records`` — (provenance, config,
    metrics records) per run — atomically to ``out``; returns the number of rows. Shared by
    ``sweep collect`` and anything that must write rows of the same schema (``sweep evaluate``)."""
    table = TableBuilder(config_cols)
    for prov, config, recs in records:
        table.scan(prov, config, recs)
    table.start(Path(out))
    try:
        for prov, config, recs in records:
            table.add(prov, config, recs)
        return table.finish()
    except BaseException:
        table.abort()
        raise


def _metric_array(values: list[Any]) -> pa.Array:
    """A metric column as float64 with null where a record did not log the metric and NaN where it
    logged NaN (a diverged run measured NaN: not the same as not measured; pandas would merge them)."""
    return pa.array([None if v is None else float(v) for v in values], type=pa.float64(), from_pandas=False)


def _typed_frame(columns: dict[str, list[Any]], metric_cols: dict[str, str], cfg_col: dict[str, str],
                 as_text: set[str] | None) -> tuple[pd.DataFrame, set[str]]:
    """The columns -> a DataFrame typed as the table's (``columns`` is emptied: the frame holds its own
    copy), and the config columns stored as text (``as_text``: those of the whole table, when known)."""
    df = pd.DataFrame(columns)
    columns.clear()
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
    if as_text is None:
        # A column whose values are of one type plus None (a parameter of one experiment in a table of
        # two) keeps that type, with nulls: storing it as text made False the string "False", which is
        # truthy. Only values of really different types (e.g. 3 and "a") are stored as text.
        as_text = set()
        for c in cfg_col.values():
            kinds = {type(v) for v in df[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 and not pd.api.types.is_numeric_dtype(df[c]):
                as_text.add(c)
    for c in as_text:
        df[c] = df[c].map(lambda v: None if v is None else str(v))
    return df, as_text
