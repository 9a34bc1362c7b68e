"""Sweep specs: YAML -> a validated :class:`Spec`.

Every problem is reported as a :class:`SpecError` naming the file and the key
path (``axes[1].values[0]``), so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from launch.errors import SpecError, UserError
from launch.experiment import Experiment, load_experiment

TOP_KEYS = {"experiment", "name", "root", "group", "path", "fixed", "axes", "seeds",
            "resources", "wandb", "pack", "max_requeues", "description", "gates", "max_runs",
            "fail_on_nonfinite_loss", "headline", "retry_on"}
# a grid larger than this is refused from its axis lengths alone (the spec's max_runs raises it)
DEFAULT_MAX_RUNS = 1_000_000
AXIS_KEYS = {"params", "param", "values", "group", "name"}
RESOURCE_KEYS = {
    "partition": str, "time_min": int, "gpus": int, "cpus": int, "mem_gb": (int, float),
    "account": str, "qos": str, "constraint": str, "setup": list, "array_parallelism": int,
    "local_concurrency": int, "tasks_per_node": int, "nodes": int, "signal_delay_s": int,
}
WANDB_KEYS = {"project": str, "entity": str, "mode": str, "tags": list}
WANDB_MODES = {"online", "offline", "disabled"}
# the end states a spec may have requeued automatically (retry_on:), and its default
RETRYABLE = ("node_fail", "preempted", "timeout")
DEFAULT_RETRY_ON = ("node_fail", "preempted")
# names the templates may use besides config parameters
TEMPLATE_NAMES = {"task", "seed", "group", "run_key"}


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeLoader reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads 1e-3 as a string; YAML 1.2 and every researcher read a number
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))


def yaml_value(text: str) -> Any:
    """One value as a spec would read it (``--only`` values)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


@dataclass(frozen=True)
class Axis:
    params: tuple[str, ...]          # one name, or several that vary together (linked)
    values: tuple[tuple[Any, ...], ...]  # one tuple per point, aligned with params
    group: bool = False              # a group axis forms the directory level / W&B group


@dataclass
class Spec:
    file: str
    name: str
    experiment_name: str
    root: Path
    group_template: str
    path_template: str
    fixed: dict[str, Any]
    axes: list[Axis]
    seeds: list[int]
    resources: dict[str, Any] = field(default_factory=dict)
    wandb: dict[str, Any] | None = None
    pack: int | str = 1
    max_requeues: int = 5
    fail_on_nonfinite_loss: bool = True  # a training loss that becomes NaN/inf ends the run failed
    # the metric `status -v` shows, "<split>/<name>" (presentation only: not part of any run key)
    headline: str | None = None
    # end states whose runs the job requeues itself, up to max_requeues (never OOM or a code error)
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    experiment: Experiment | None = field(default=None, repr=False)

    @property
    def group_axes(self) -> list[Axis]:
        return [a for a in self.axes if a.group]

    @property
    def inner_axes(self) -> list[Axis]:
        return [a for a in self.axes if not a.group]


def load_spec(path: str | Path, root: str | Path | None = None) -> Spec:
    """Read and validate a spec file. ``root`` overrides the spec's tree root."""
    return parse_spec(read_spec_file(path), file=str(path), default_name=Path(path).stem, root=root)


def read_spec_file(path: str | Path) -> Any:
    """The YAML of a spec file, unvalidated; a missing file names the specs that do exist."""
    p = Path(path)
    f = str(path)
    if not p.exists():
        raise UserError(f"{f}: spec file not found{_existing_specs_hint(p)}")
    if p.is_dir():
        raise UserError(f"{f}: is a directory, not a spec file")
    try:
        return yaml.load(p.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f, "", f"malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise SpecError(f, "", "not a text file") from None


def _existing_specs_hint(p: Path) -> str:
    """`` (did you mean sweeps/a.yaml?); specs under sweeps/: a.yaml, b.yaml`` (the missing file's folder,
    else ./sweeps)."""
    import difflib

    for folder in (p.parent, Path("sweeps")):
        names = sorted(q.name for q in folder.glob("*.y*ml") if q.suffix in (".yaml", ".yml")) \
            if folder.is_dir() else []
        if names:
            close = difflib.get_close_matches(p.name, names, n=1)
            shown = folder.as_posix().rstrip("/") + "/"
            guess = f" (did you mean {shown}{close[0]}?)" if close else ""
            return f"{guess}; specs under {shown}: {', '.join(names)}"
    return ""


def parse_spec(raw: Any, file: str = "<spec>", default_name: str = "spec",
               root: str | Path | None = None) -> Spec:
    if not isinstance(raw, dict):
        raise SpecError(file, "", f"the spec must be a mapping of keys, got {_tname(raw)}")
    if "include" in raw:  # read by launch.spec_set, which the harness commands use
        raise SpecError(file, "include", "a composite spec (include:) is not taken here; name its parts")
    unknown = sorted(set(map(str, raw)) - TOP_KEYS)
    if unknown:
        raise SpecError(file, unknown[0], f"unknown key (allowed: {', '.join(sorted(TOP_KEYS))})")
    for key in ("experiment", "path", "axes"):
        if key not in raw:
            raise SpecError(file, key, "missing required key")

    exp_name = _expect(raw["experiment"], str, file, "experiment")
    try:
        exp = load_experiment(exp_name)
    except UserError as e:
        raise SpecError(file, "experiment", str(e)) from None
    defaults = exp.defaults()

    name = _expect(raw.get("name", default_name), str, file, "name")
    if not name or any(c in name for c in "/\\ "):
        raise SpecError(file, "name", f"{name!r} is not a usable name (no spaces or slashes)")

    fixed_raw = raw.get("fixed") or {}
    if not isinstance(fixed_raw, dict):
        raise SpecError(file, "fixed", f"must be a mapping of parameter: value, got {_tname(fixed_raw)}")
    fixed = {}
    for k, v in fixed_raw.items():
        _check_param(str(k), v, defaults, file, f"fixed.{k}", exp_name)
        fixed[str(k)] = v

    axes_raw = raw["axes"]
    if not isinstance(axes_raw, list):
        raise SpecError(file, "axes", f"must be a list of axes, got {_tname(axes_raw)}")
    axes: list[Axis] = []
    seen_params: dict[str, str] = {k: f"fixed.{k}" for k in fixed}  # param -> where it is set
    for i, a in enumerate(axes_raw):
        axis = _parse_axis(a, file, f"axes[{i}]", defaults, exp_name)
        for prm in axis.params:
            if prm in seen_params:
                raise SpecError(file, f"axes[{i}]", f"parameter {prm!r} is already set by {seen_params[prm]}")
            seen_params[prm] = f"axes[{i}]"
        axes.append(axis)

    if "seed" in seen_params:
        raise SpecError(file, seen_params["seed"], "set seeds with the top-level 'seeds' list, not as a parameter")
    seeds_raw = raw.get("seeds", [defaults.get("seed", 0)])
    if not isinstance(seeds_raw, list) or not seeds_raw:
        raise SpecError(file, "seeds", "must be a non-empty list of integers")
    for j, s in enumerate(seeds_raw):
        if not isinstance(s, int) or isinstance(s, bool):
            raise SpecError(file, f"seeds[{j}]", f"must be an integer, got {_tname(s)} {s!r}")
    if len(set(seeds_raw)) != len(seeds_raw):
        dup = next(s for s in seeds_raw if seeds_raw.count(s) > 1)
        raise SpecError(file, "seeds", f"duplicate seed {dup}")

    _check_grid_size(raw, axes, len(seeds_raw), file)

    names = set(defaults) | TEMPLATE_NAMES
    group_t = _expect(raw.get("group", name), str, file, "group")
    path_t = _expect(raw["path"], str, file, "path")
    # A group name is one per group point: a field that varies inside the group would
    # silently take its default for every task.
    inner_params = {prm for axis in axes if not axis.group for prm in axis.params}
    for fname in _check_template(group_t, names - {"task", "group", "run_key", "seed"}, file, "group"):
        if fname in inner_params:
            raise SpecError(file, "group", f"template field {{{fname}}} varies inside a group ({seen_params[fname]} "
                                           f"is not a group axis): add 'group: true' to that axis or drop the field")
    _check_template(path_t, names, file, "path")
    if "{seed" not in path_t and "{run_key" not in path_t:
        raise SpecError(file, "path", "must contain {seed} (each seed needs its own directory)")
    if Path(path_t).is_absolute() or ".." in Path(path_t).parts:
        raise SpecError(file, "path", "must be a relative path inside the tree root")

    resources = _parse_typed_block(raw.get("resources") or {}, RESOURCE_KEYS, file, "resources")
    wandb = None
    if raw.get("wandb") is not None:
        wandb = _parse_typed_block(raw["wandb"], WANDB_KEYS, file, "wandb")
        mode = wandb.setdefault("mode", "disabled")
        if mode not in WANDB_MODES:
            raise SpecError(file, "wandb.mode", f"{mode!r} is not one of {', '.join(sorted(WANDB_MODES))}")
        if mode == "disabled":
            wandb = None

    pack = raw.get("pack", 1)
    if not (pack == "auto" or (isinstance(pack, int) and not isinstance(pack, bool) and pack >= 1)):
        raise SpecError(file, "pack", f"must be a positive integer or 'auto', got {pack!r}")
    max_requeues = raw.get("max_requeues", 5)
    if not isinstance(max_requeues, int) or isinstance(max_requeues, bool) or max_requeues < 0:
        raise SpecError(file, "max_requeues", f"must be a non-negative integer, got {max_requeues!r}")

    if raw.get("gates") is not None and not isinstance(raw["gates"], dict):
        raise SpecError(file, "gates", f"must be a mapping of thresholds, got {_tname(raw['gates'])}")
    for gate, threshold in (raw.get("gates") or {}).items():
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise SpecError(file, f"gates.{gate}", f"must be a number, got {_tname(threshold)} {threshold!r}")
        _check_finite(threshold, file, f"gates.{gate}")
    nonfinite = raw.get("fail_on_nonfinite_loss", True)
    if not isinstance(nonfinite, bool):
        raise SpecError(file, "fail_on_nonfinite_loss", f"must be true or false, got {nonfinite!r}")

    headline = raw.get("headline")
    if headline is not None:
        split, _, metric = str(headline).partition("/") if isinstance(headline, str) else ("", "", "")
        if not (split.strip() and metric.strip()):
            raise SpecError(file, "headline", f"must be '<split>/<metric>' as the runs log it (e.g. "
                                              f"gen/exact_match_acc), got {_tname(headline)} {headline!r}")
    retry_on = raw.get("retry_on", list(DEFAULT_RETRY_ON))
    if not isinstance(retry_on, list):
        raise SpecError(file, "retry_on", f"must be a list of states (any of: {', '.join(RETRYABLE)}), "
                                          f"got {_tname(retry_on)} {retry_on!r}")
    for i, state in enumerate(retry_on):
        if state not in RETRYABLE:
            why = " (a run out of memory or failing in its code fails the same way again)" \
                if state in ("out_of_memory", "failed", "cancelled") else ""
            raise SpecError(file, f"retry_on[{i}]", f"{state!r} cannot be retried automatically{why}; "
                                                    f"use any of: {', '.join(RETRYABLE)}")

    spec_root = _expect(raw.get("root", "checkpoints"), str, file, "root")  # checked also when --root wins
    if not spec_root.strip():
        raise SpecError(file, "root", "is empty (leave it out for ./checkpoints)")
    root_path = Path(root) if root is not None else Path(spec_root)
    return Spec(file=file, name=name, experiment_name=exp_name, root=root_path, group_template=group_t,
                path_template=path_t, fixed=fixed, axes=axes, seeds=list(seeds_raw), resources=resources,
                wandb=wandb, pack=pack, max_requeues=max_requeues, fail_on_nonfinite_loss=nonfinite,
                headline=headline, retry_on=tuple(dict.fromkeys(retry_on)), experiment=exp)


def _check_grid_size(raw: dict[str, Any], axes: list[Axis], n_seeds: int, file: str) -> None:
    """Refuse a grid of more than ``max_runs`` runs from the axis lengths alone (constant memory)."""
    limit = raw.get("max_runs", DEFAULT_MAX_RUNS)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise SpecError(file, "max_runs", f"must be a positive integer, got {limit!r}")
    total = n_seeds
    for axis in axes:
        total *= len(axis.values)
    if total > limit:
        lengths = " × ".join(str(len(a.values)) for a in axes) or "1"
        raise SpecError(file, "axes", f"the grid has {total:,} runs ({lengths} × {n_seeds} seeds), more than "
                                      f"max_runs={limit:,}; set max_runs in the spec if that is meant")


def _parse_axis(a: Any, file: str, key: str, defaults: dict[str, Any], exp_name: str) -> Axis:
    if not isinstance(a, dict) or not a:
        raise SpecError(file, key, f"an axis must be a mapping like {{n_layers: [1, 2]}}, got {_tname(a)}")
    if not (set(a) & {"params", "param", "values"}):
        # shorthand {name: [values]}, optionally with group: true
        rest = {k: v for k, v in a.items() if k != "group"}
        if len(rest) != 1:
            raise SpecError(file, key, "shorthand axis takes one parameter; use {params: [...], values: [...]} "
                                       "for linked parameters")
        (prm, vals), = rest.items()
        a = {"params": [prm], "values": [[v] for v in vals] if isinstance(vals, list) else vals,
             "group": a.get("group", False)}
    else:
        unknown = sorted(set(map(str, a)) - AXIS_KEYS)
        if unknown:
            raise SpecError(file, f"{key}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(AXIS_KEYS))})")
        if "param" in a:
            if "params" in a:
                raise SpecError(file, key, "give either 'param' or 'params', not both")
            vals = a.get("values")
            a = dict(a, params=[a["param"]], values=[[v] for v in vals] if isinstance(vals, list) else vals)
    params = a.get("params")
    if isinstance(params, str):
        params = [params]
    if not isinstance(params, list) or not params:
        raise SpecError(file, f"{key}.params", "must be a non-empty list of parameter names")
    if len(set(params)) != len(params):
        raise SpecError(file, f"{key}.params", "a parameter is listed twice")
    values = a.get("values")
    if not isinstance(values, list):
        raise SpecError(file, f"{key}.values", f"must be a list, got {_tname(values)}")
    if not values:
        raise SpecError(file, f"{key}.values", "is empty (an empty axis would give no runs)")
    points: list[tuple[Any, ...]] = []
    for j, v in enumerate(values):
        vkey = f"{key}.values[{j}]"
        if len(params) > 1:
            if not isinstance(v, list) or len(v) != len(params):
                raise SpecError(file, vkey, f"must be a list of {len(params)} values for {params}, got {v!r}")
            point = tuple(v)
        else:
            point = tuple(v) if isinstance(v, list) and len(v) == 1 else (v,)
        for prm, pv in zip(params, point):
            _check_param(str(prm), pv, defaults, file, vkey, exp_name)
        if point in points:
            raise SpecError(file, vkey, f"duplicate value {v!r}")
        points.append(point)
    group = a.get("group", False)
    if not isinstance(group, bool):
        raise SpecError(file, f"{key}.group", f"must be true or false, got {group!r}")
    return Axis(params=tuple(map(str, params)), values=tuple(points), group=group)


def _check_param(name: str, value: Any, defaults: dict[str, Any], file: str, key: str, exp_name: str) -> None:
    if name == "seed":
        return
    if name not in defaults:
        raise SpecError(file, key, f"experiment {exp_name!r} has no parameter {name!r}")
    _check_finite(value, file, key)
    want = defaults[name]
    if want is None:  # the experiment takes anything here
        return
    if not _same_kind(value, want):
        raise SpecError(file, key, f"{name} must be {_tname(want)}, got {_tname(value)} {value!r}")
    if isinstance(want, list) and want and isinstance(value, list):
        # list elements are checked like scalars, against the default's element type
        kinds = {type(w) for w in want}
        for i, item in enumerate(value):
            if not any(_same_kind(item, w) for w in want if type(w) in kinds):
                raise SpecError(file, f"{key}[{i}]", f"elements of {name} must be {_tname(want[0])}, "
                                                     f"got {_tname(item)} {item!r}")


def _same_kind(value: Any, want: Any) -> bool:
    """``value`` has the type of the default ``want`` (a float default takes ints too)."""
    if want is None:
        return True
    if isinstance(want, bool):
        return isinstance(value, bool)
    if isinstance(want, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(want, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(want))


def _check_finite(value: Any, file: str, key: str) -> None:
    """NaN and ±inf make a run meaningless: refused wherever they sit (lists and mappings included); so
    is an integer beyond 64 bits, which no table column holds (collect failed on it after the runs)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(file, key, f"must be a finite number, got {value}")
    if isinstance(value, int) and not -2**63 <= value < 2**63:
        raise SpecError(file, key, f"must fit in a 64-bit integer, got {value}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, file, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, item in value.items():
            _check_finite(item, file, f"{key}.{k}")


def _check_template(t: str, names: set[str], file: str, key: str) -> list[str]:
    """The names the template reads, each one of ``names``."""
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(t) if f is not None]
    except ValueError as e:
        raise SpecError(file, key, f"bad template {t!r}: {e}") from None
    for fname, fmt, conv in parsed:
        # a format string can reach any attribute of a value ({x.__class__}) or index it ({x[0]}):
        # only plain names, with a format spec, are allowed
        if "." in fname or "[" in fname or conv is not None or "{" in (fmt or ""):
            shown = fname + (f"!{conv}" if conv else "") + (f":{fmt}" if fmt else "")
            raise SpecError(file, key, f"template field {{{shown}}} is not allowed: use a plain {{name}}, "
                                       "optionally with a format spec like {task:04d}")
    fields = [f for f, _, _ in parsed]
    bases = list(fields)
    for base in bases:
        if not base:
            raise SpecError(file, key, f"template {t!r} has an empty field {{}}; name a parameter")
        if base not in names:
            raise SpecError(file, key, f"template field {{{base}}} is neither a parameter nor one of "
                                       f"{', '.join(sorted(TEMPLATE_NAMES))}")
    return bases


def _parse_typed_block(block: Any, schema: dict[str, Any], file: str, key: str) -> dict[str, Any]:
    if not isinstance(block, dict):
        raise SpecError(file, key, f"must be a mapping, got {_tname(block)}")
    out = {}
    for k, v in block.items():
        if k not in schema:
            raise SpecError(file, f"{key}.{k}", f"unknown key (allowed: {', '.join(sorted(schema))})")
        t = schema[k]
        if isinstance(v, bool) or not isinstance(v, t):
            raise SpecError(file, f"{key}.{k}", f"must be {_tname(t)}, got {_tname(v)} {v!r}")
        _check_finite(v, file, f"{key}.{k}")
        if isinstance(v, (int, float)) and v <= 0:
            raise SpecError(file, f"{key}.{k}", f"must be positive, got {v}")
        for i, item in enumerate(v if isinstance(v, list) else []):  # setup lines, tags
            if not isinstance(item, str):
                raise SpecError(file, f"{key}.{k}[{i}]", f"must be a string, got {_tname(item)} {item!r}")
        out[k] = v
    return out


def _expect(v: Any, t: type, file: str, key: str) -> Any:
    if not isinstance(v, t):
        raise SpecError(file, key, f"must be {_tname(t)}, got {_tname(v)} {v!r}")
    return v


def _tname(v: Any) -> str:
    t = v if isinstance(v, type) else type(v)
    if isinstance(v, tuple) and all(isinstance(x, type) for x in v):
        return " or ".join(_tname(x) for x in v)
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(t, t.__name__)
