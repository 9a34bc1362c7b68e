"""Read the ``sweep collect`` Parquet table and bring it into the shape the figures need.

The table has one row per metrics record (schema in the project brief). Everything here
is family-neutral except the small column lists in ``FAMILY_COLUMNS`` and the derived
sortgpt columns in ``sortgpt_frame``.

A metric cell is null where the record did not log that metric and NaN where it logged NaN (a
run that diverged). pandas reads both as NaN; the Parquet's validity bitmap tells them apart
where that matters: merging a record logged twice (:func:`drop_rerun_duplicates`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from launch.errors import UserError

# Columns every family needs: identity of a run, its state, and where each record sits.
COMMON_COLUMNS = ("experiment", "spec", "group", "task", "seed", "run_key", "run_dir", "state",
                  "step", "split", "length", "time")
# Config and metric columns the figures of each family read.
FAMILY_COLUMNS = {
    "sortgpt": ("n_layers", "use_mlp", "use_layernorm", "length_mode", "train_min_k", "train_max_k",
                "exact_match_acc", "loss"),
    "coconut": ("feedback_mode", "epochs_per_stage", "accuracy", "loss"),
}
FAMILIES = tuple(FAMILY_COLUMNS)
# (bool columns, int columns) of each family's config.
TYPED_COLUMNS = {
    "sortgpt": (("use_mlp", "use_layernorm", "no_pos_emb"), ("n_layers", "train_min_k", "train_max_k")),
    "coconut": (("pad_latent_to_max",), ("epochs_per_stage", "max_latent_stage", "num_epochs")),
}
# The identity of one metrics record: a rerun that logs the same record again must not count twice.
RECORD_KEY = ["run_key", "step", "split", "length"]


def read_results(path: str | Path) -> pd.DataFrame:
    """The records of ``path``, one row per (run, step, split, length).

    Raises UserError (one line naming the file) when the file is missing, not Parquet,
    empty, or lacks a column every family needs.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError):
        raise UserError(f"{path}: not a Parquet file") from None
    frame = table.to_pandas()
    require_columns(frame, COMMON_COLUMNS, path)
    if frame.empty:
        raise UserError(f"{path}: holds no records")
    frame, notes = one_directory_per_run(frame)
    frame = drop_rerun_duplicates(frame, logged_nans(table))
    frame.attrs["notes"] = notes  # for the caller to print (note: ...)
    return frame


def one_directory_per_run(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Keep one directory per run key. The run key is a hash of the configuration (seed included),
    so two specs that launch an equal configuration write two directories with one key. Merged by
    record key, their records became one run mixing both (the later record of each step winning)
    with one of them silently uncounted; counted twice, one configuration would weigh double. The
    directory that got furthest (then the first by name) is kept, and the others are named."""
    dirs = frame.groupby("run_key")["run_dir"].nunique()
    if not (dirs > 1).any():
        return frame, []
    notes, drop = [], []
    for run_key in dirs[dirs > 1].index:
        mine = frame[frame["run_key"] == run_key]
        last = mine.groupby("run_dir")["step"].max()
        kept = sorted(last.index, key=lambda d: (-last[d], d))[0]
        others = sorted(set(last.index) - {kept})
        drop += others
        notes.append(f"{', '.join(others)}: same configuration and seed as {kept} (run key {run_key}): "
                     f"counted once, as {kept}")
    # The index is kept: it lines the rows up with logged_nans (read_results resets it after the merge).
    return frame[~frame["run_dir"].isin(drop)], notes


def logged_nans(table: pa.Table) -> pd.DataFrame:
    """Where a record logged NaN: one bool column per float column that holds a NaN value (null, a
    metric the record did not log, is not NaN here), indexed like ``table.to_pandas()``. Usually
    empty; one vectorised pass per float column, cheap for millions of rows."""
    found = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_floating(column.type):
            nan = pc.fill_null(pc.is_nan(column), False)
            if pc.any(nan).as_py():
                found[name] = nan.to_numpy(zero_copy_only=False)
    return pd.DataFrame(found, index=pd.RangeIndex(table.num_rows))


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...], path: Path, family: str = "") -> None:
    missing = [col for col in columns if col not in frame.columns and f"metric_{col}" not in frame.columns]
    if missing:
        need = f" (needed for {family} results)" if family else ""
        names = ", ".join(repr(col) for col in missing)
        raise UserError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {names}{need}")


def drop_rerun_duplicates(frame: pd.DataFrame, logged_nan: pd.DataFrame | None = None) -> pd.DataFrame:
    """Merge the rows that share a record key: the latest logged value of each column wins.

    A rerun (requeue, resume past the last checkpoint) can log a record a second time;
    keeping one row per (run, step, split, length) is what keeps means and counts honest.
    A metric the later record did not log (null) comes from an earlier one, so two records of
    one step with different metrics merge. A NaN the later record logged (``logged_nan``, see
    :func:`logged_nans`; indexed like ``frame``) wins like any value: the rerun diverged, and
    the discarded attempt's number must not stand in for it.
    """
    if not frame.duplicated(RECORD_KEY).any():
        return frame.reset_index(drop=True)
    ordered = frame.sort_values("time", kind="stable")
    groups = ordered.groupby(RECORD_KEY, dropna=False, sort=False)
    merged = groups.last()  # the latest non-NaN value: right wherever no NaN was logged
    if logged_nan is not None and len(logged_nan.columns):
        group_of = groups.ngroup().to_numpy()  # numbered like merged's rows (both: order of first appearance)
        for name in logged_nan.columns.difference(RECORD_KEY):
            nan = logged_nan[name].reindex(ordered.index, fill_value=False).to_numpy(dtype=bool)
            logged = np.flatnonzero(nan | ordered[name].notna().to_numpy())
            # The latest logged record of each group: the last of its positions in time order.
            latest = pd.Series(logged).groupby(group_of[logged]).max()
            diverged = latest.index.to_numpy()[nan[latest.to_numpy()]]
            merged.iloc[diverged, merged.columns.get_loc(name)] = np.nan
    merged = merged.reset_index()
    return merged[frame.columns].astype(frame.dtypes.to_dict())


def metric_column(frame: pd.DataFrame, name: str) -> str:
    """The column holding metric ``name``: collect renames it ``metric_<name>`` when the
    plain name is already a config or provenance column."""
    return f"metric_{name}" if f"metric_{name}" in frame.columns else name


def families_in(frame: pd.DataFrame) -> list[str]:
    return [family for family in FAMILIES if (frame["experiment"] == family).any()]


def family_frame(frame: pd.DataFrame, family: str, path: Path) -> pd.DataFrame:
    """The rows of one experiment family, with its columns checked and typed."""
    rows = frame[frame["experiment"] == family].copy()
    require_columns(rows, FAMILY_COLUMNS[family], path, family)
    # A table holding several families has NaN in the other family's config columns,
    # which turns bool and int columns into object/float; restore them on our rows.
    bools, ints = TYPED_COLUMNS[family]
    for name in bools + ints + ("step",):
        if name in rows.columns and rows[name].notna().all():
            rows[name] = as_bool(rows[name], name, path) if name in bools else rows[name].astype("int64")
    if family == "sortgpt":
        rows = with_sortgpt_columns(rows)
    return rows.reset_index(drop=True)


_TEXT_BOOLS = {"True": True, "False": False, "true": True, "false": False}


def as_bool(column: pd.Series, name: str, path: Path) -> pd.Series:
    """A flag column as bools. Tables written by an older ``sweep collect`` hold the flags of a
    two-experiment table as the text "True"/"False", and ``astype(bool)`` reads "False" as True."""
    if pd.api.types.is_bool_dtype(column):
        return column
    values = list(column)
    if all(isinstance(v, (bool, int)) or type(v).__name__ == "bool_" for v in values):
        return column.astype(bool)
    wrong = next((v for v in values if not (isinstance(v, str) and v in _TEXT_BOOLS)
                  and not isinstance(v, (bool, int))), None)
    if wrong is not None:
        raise UserError(f"{path}: column {name!r} should hold true/false, found {wrong!r}")
    return pd.Series([_TEXT_BOOLS[v] if isinstance(v, str) else bool(v) for v in values], index=column.index,
                     dtype=bool)


def with_sortgpt_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """Add ``train_k`` (largest training length) and ``length_config``: fixed when
    train_min_k == train_max_k, else the length_mode (mix | curriculum); and
    ``budget``, the training sequences of a run (max_iters x batch_size)."""
    rows["train_k"] = rows["train_max_k"]
    rows["length_config"] = rows["length_mode"].astype(str).where(
        rows["train_min_k"] != rows["train_max_k"], "fixed")
    if "max_iters" in rows.columns and "batch_size" in rows.columns:
        # Training budget in sequences seen (iterations x batch): a budget curve varies it.
        rows["budget"] = (rows["max_iters"].astype("int64") * rows["batch_size"].astype("int64"))
    return rows


def run_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its provenance and config (taken from its latest record) and its last step."""
    ordered = rows.sort_values("time", kind="stable")
    runs = ordered.groupby("run_key", sort=False).last()
    runs["last_step"] = rows.groupby("run_key")["step"].max()
    return runs.reset_index()


# -- choosing the step ----------------------------------------------------------------

def at_step(rows: pd.DataFrame, splits: tuple[str, ...], step: int | None,
            value: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The records of ``splits`` at one step per run: each run's last step holding such a
    record (its final checkpoint), or ``step`` when given. Returns them and notes about the
    runs that have no record at ``step``, and about the runs whose records there are not
    whole (see :func:`whole_at_step`; ``value`` is the metric the caller averages)."""
    evals = rows[rows["split"].isin(splits)]
    if step is None:
        last = evals.groupby("run_key")["step"].transform("max")
        return whole_at_step(evals, evals[evals["step"] == last], value)
    chosen = evals[evals["step"] == step]
    if chosen.empty:
        available = sorted(evals["step"].unique())
        shown = ", ".join(str(s) for s in available[:20]) + (" …" if len(available) > 20 else "")
        raise UserError(f"--step {step}: no {'/'.join(splits)} records at that step (steps with them: {shown})")
    notes = []
    for run_key in sorted(set(evals["run_key"]) - set(chosen["run_key"])):
        run_dir = evals.loc[evals["run_key"] == run_key, "run_dir"].iloc[0]
        notes.append(f"{run_dir}: no {'/'.join(splits)} record at step {step}; left out")
    chosen, more = whole_at_step(evals, chosen, value)
    return chosen, notes + more


# Runs that differ only in their seed: one task of one group of one spec.
SIBLING_KEY = ["spec", "group", "task"]


def whole_at_step(evals: pd.DataFrame, chosen: pd.DataFrame, value: str | None) -> tuple[pd.DataFrame, list[str]]:
    """``chosen`` (one step per run) without the (run, split) records that are not whole, and a
    note for each. A run's score on a split is a mean over its lengths, so it is comparable only
    over the same lengths: those the run logged on that split at any step, and those its sibling
    seeds logged at the chosen step. A length missing there, or whose ``value`` is NaN, would
    make the mean one over fewer (other) lengths; that split of that run is left out instead."""
    if chosen.empty:
        return chosen, []
    own = evals.dropna(subset=["length"]).groupby(["run_key", "split"])["length"].agg(set)
    siblings: dict[tuple, set] = {}
    if all(c in chosen.columns for c in SIBLING_KEY):
        known = chosen.dropna(subset=[*SIBLING_KEY, "length"])
        siblings = known.groupby([*SIBLING_KEY, "split"])["length"].agg(set).to_dict()
    valid = chosen if value is None else chosen[chosen[value].notna()]
    have = valid.dropna(subset=["length"]).groupby(["run_key", "split"])["length"].agg(set).to_dict()
    drop, notes = set(), []
    for (run_key, split), run in chosen.groupby(["run_key", "split"], sort=True):
        first = run.iloc[0]
        expected = set(own.get((run_key, split), set()))
        if all(c in run.columns and pd.notna(first[c]) for c in SIBLING_KEY):
            expected |= siblings.get((*(first[c] for c in SIBLING_KEY), split), set())
        got = have.get((run_key, split), set())
        unmeasured = value is not None and run[value].isna().all()
        missing = sorted(int(k) for k in expected - got)
        if missing or unmeasured:
            drop.add((run_key, split))
            what = (f"{value or 'records'} missing or NaN at length {', '.join(map(str, missing))}" if missing
                    else f"{value} is NaN")
            notes.append(f"{first['run_dir']}: {split} at step {int(first['step'])}: {what}; its {split} score is "
                         "left out (a mean over fewer lengths is not comparable)")
    if not drop:
        return chosen, []
    keep = [(k, s) not in drop for k, s in zip(chosen["run_key"], chosen["split"], strict=True)]
    return chosen[keep], notes


# -- what a partial sweep is missing ---------------------------------------------------

def missing_notes(rows: pd.DataFrame, family: str, step: int | None = None) -> list[str]:
    """Say what is missing from a partial sweep: runs not completed, runs behind the
    others of their group, and (spec, group, task, seed) combinations with no records at
    all — inferred, since every group of a spec has the same tasks and seeds."""
    runs = run_table(rows)
    notes = []
    # Runs of one group trained for different lengths (a budget curve) are compared only
    # with runs of their own length.
    length = [c for c in ("max_iters", "num_epochs") if c in runs.columns and runs[c].notna().all()]
    group_last = runs.groupby(["spec", "group", *length])["last_step"].transform("max")
    for run, group_max in zip(runs.itertuples(), group_last, strict=True):
        problems = []
        if run.state != "completed":
            problems.append(f"state {run.state}")
        if run.last_step < group_max:
            problems.append(f"last step {run.last_step} < {group_max} reached in group {run.group}")
        if problems:
            using = f"; using its last step ({run.last_step})" if step is None else ""
            notes.append(f"{family} run {run.run_dir}: {', '.join(problems)}{using}")
    for spec, spec_runs in runs.groupby("spec"):
        present = set(zip(spec_runs["group"], spec_runs["task"], spec_runs["seed"], strict=True))
        expected = {(g, t, s) for g in spec_runs["group"].unique() for t in spec_runs["task"].unique()
                    for s in spec_runs["seed"].unique()}
        for group, task, seed in sorted(expected - present):
            notes.append(f"{family} spec {spec}: no records for group {group} task {task} seed {seed}")
    return notes


# -- --only selections -----------------------------------------------------------------

def parse_only(expr: str) -> list[tuple[str, list[str]]]:
    """``'n_layers=1,use_mlp=false'`` -> [('n_layers', ['1']), ('use_mlp', ['false'])].
    ``a=1|2`` accepts either value."""
    terms = []
    for part in expr.split(","):
        if not part.strip():
            continue
        name, sep, values = part.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise UserError(f"--only {expr!r}: {part.strip()!r} is not NAME=VALUE")
        terms.append((name.strip(), [v.strip() for v in values.split("|")]))
    if not terms:
        raise UserError(f"--only {expr!r}: empty selection")
    return terms


def apply_only(rows: pd.DataFrame, expr: str, known: set[str] | None = None) -> pd.DataFrame:
    """The rows matching every term of ``expr``; values compare in the column's type.
    A name outside ``known`` (default: the columns of ``rows``) is an error; a known
    name that ``rows`` lacks selects nothing."""
    keep = pd.Series(True, index=rows.index)
    for name, values in parse_only(expr):
        if name not in (rows.columns if known is None else known):
            raise UserError(f"--only: no column {name!r} in the results")
        if name not in rows.columns:
            return rows.iloc[0:0]
        column = rows[name]
        # --only picks runs. A column that varies within a run (step, split, length, a metric) would
        # pick some of a run's records instead: "final" would become the last step kept, and a mean
        # over the test lengths a mean over those left, under the same labels.
        if "run_key" in rows.columns and rows.groupby("run_key")[name].nunique(dropna=False).gt(1).any():
            raise UserError(f"--only: {name} varies within a run (a record or metric column); --only selects "
                            "runs by their configuration (--step picks the step)")
        keep &= column.isin([_typed(value, column, name) for value in values])
    return rows[keep]


def _typed(value: str, column: pd.Series, name: str) -> object:
    if pd.api.types.is_bool_dtype(column):
        lowered = value.lower()
        if lowered not in ("true", "false", "1", "0"):
            raise UserError(f"--only: {name} is true/false, not {value!r}")
        return lowered in ("true", "1")
    if pd.api.types.is_numeric_dtype(column):
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"--only: {name} is a number, not {value!r}") from None
        return int(number) if number.is_integer() and pd.api.types.is_integer_dtype(column) else number
    return value


# -- the reference's last evaluation step ------------------------------------------------

def last_eval_step(max_iters: int, eval_every: int) -> int:
    """The step of the reference's last evaluation: it evaluates after iteration ``itr``
    when ``itr % eval_every == 0`` and logs it as step ``itr + 1``, and adds none at the
    end (sweep adds one at max_iters). 40000 iterations, every 250: step 39751."""
    return (int(max_iters) - 1) // int(eval_every) * int(eval_every) + 1


def at_last_eval(rows: pd.DataFrame, splits: tuple[str, ...], value: str | None = None
                 ) -> tuple[pd.DataFrame, list[str]]:
    """The records of ``splits`` at each run's :func:`last_eval_step` (from its config's
    max_iters and eval_every), and notes about runs that have none there."""
    for name in ("max_iters", "eval_every"):
        if name not in rows.columns:
            raise UserError(f"--at-step last-eval: the results have no {name!r} column (needed to find the "
                            "reference's last evaluation step)")
    evals = rows[rows["split"].isin(splits)]
    target = [last_eval_step(m, e) if pd.notna(m) and pd.notna(e) else -1
              for m, e in zip(evals["max_iters"], evals["eval_every"], strict=True)]
    chosen = evals[evals["step"].to_numpy() == pd.Series(target, index=evals.index).to_numpy()]
    if chosen.empty:
        raise UserError(f"--at-step last-eval: no run has {'/'.join(splits)} records at the reference's last "
                        "evaluation step ((max_iters-1)//eval_every*eval_every+1); a table of final checkpoints "
                        "only (sweep evaluate) has none")
    notes = []
    for run_key in sorted(set(evals["run_key"]) - set(chosen["run_key"])):
        run = evals[evals["run_key"] == run_key].iloc[0]
        steps = sorted(evals.loc[evals["run_key"] == run_key, "step"].unique())
        notes.append(f"{run['run_dir']}: no {'/'.join(splits)} record at the reference's last evaluation step "
                     f"{last_eval_step(run['max_iters'], run['eval_every'])} (it has steps "
                     f"{', '.join(map(str, steps[-5:]))}); left out")
    chosen, more = whole_at_step(evals, chosen, value)
    return chosen, notes + more
