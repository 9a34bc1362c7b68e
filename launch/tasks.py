"""Expand a :class:`Spec` into its runs, deterministically.

Order: group points (cross product of group axes, declared order) → task index
(cross product of the other axes, declared order, first axis outermost) → seed
(innermost). ``task`` is the index inside the group, so ``task_0000`` names the
same configuration in every group, as in the seed-003 tables.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

import yaml

from launch.errors import SpecError, UserError
from launch.experiment import later_params
from launch.spec import Axis, Spec, yaml_value


@dataclass(frozen=True)
class Run:
    spec: str
    experiment: str
    group: str
    task: int
    seed: int
    rel_dir: str              # run directory relative to the tree root
    run_key: str              # short hash of the canonical resolved config
    config: dict[str, Any]    # fully resolved: experiment defaults < fixed < axes < seed
    params: dict[str, Any]    # the values the axes set (what TASK_MAPPING shows)

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "experiment": self.experiment, "group": self.group, "task": self.task,
                "seed": self.seed, "rel_dir": self.rel_dir, "run_key": self.run_key,
                "params": self.params, "config": self.config}


def run_key(experiment: str, config: dict[str, Any], later: dict[str, Any] | None = None) -> str:
    """The run's identity: a hash of the experiment name and the full config. Parameters in ``later``
    (the experiment's ``later_params``) are left out while they hold their old value (same type and value:
    ``True`` is not ``1``), so a tree written before they existed keeps its keys."""
    if later:
        config = {k: v for k, v in config.items()
                  if not (k in later and type(v) is type(later[k]) and v == later[k])}
    canon = _CANON.encode({"experiment": experiment, "config": config})
    return hashlib.sha256(canon.encode()).hexdigest()[:12]


# json.dumps(sort_keys=True, separators=(",", ":")), built once: json.dumps makes an encoder per call,
# half of run_key's time over 50,000 runs
_CANON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _points(axes: list[Axis]) -> list[dict[str, Any]]:
    out = []
    for combo in itertools.product(*(a.values for a in axes)):
        point: dict[str, Any] = {}
        for axis, values in zip(axes, combo):
            point.update(zip(axis.params, values))
        out.append(point)
    return out


def expand(spec: Spec) -> list[Run]:
    """All runs of ``spec``; raises SpecError on invalid configs or colliding directories."""
    assert spec.experiment is not None
    defaults = spec.experiment.defaults()
    later = later_params(spec.experiment)
    runs: list[Run] = []
    where: dict[str, tuple[tuple[str, int, int], str]] = {}  # normalized rel_dir -> ((group, task, seed), rel_dir)
    group_names: dict[str, dict[str, Any]] = {}
    checked: set[str] = set()
    for gpoint in _points(spec.group_axes):
        group = _format(spec.group_template, {**defaults, **spec.fixed, **gpoint}, spec, "group")
        if group in group_names and group_names[group] != gpoint:
            raise SpecError(spec.file, "group", f"group points {group_names[group]} and {gpoint} both give "
                                                f"group name {group!r}; use their parameters in the template")
        group_names[group] = gpoint
        for task, ipoint in enumerate(_points(spec.inner_axes)):
            params = {**gpoint, **ipoint}
            base = {**defaults, **spec.fixed, **params}
            for seed in spec.seeds:
                config = {**base, "seed": seed}
                key = run_key(spec.experiment_name, config, later)
                if key not in checked:  # each config once (its run key stands for it: no second dump)
                    checked.add(key)
                    problems = spec.experiment.check(config)
                    if problems:
                        raise SpecError(spec.file, _source(problems[0], spec),
                                        f"{problems[0]} (group {group}, task {task}, seed {seed})")
                fields = {**config, "task": task, "seed": seed, "group": group, "run_key": key}
                rel = _format(spec.path_template, fields, spec, "path")
                # (string ops, and the run's description made only for an error: 2x faster at 50k)
                if not rel or rel.startswith("/") or (".." in rel and ".." in rel.split("/")):
                    # a value like '../x' or '' would put the run outside the tree root
                    raise SpecError(spec.file, "path", f"{_desc(group, task, seed)} maps to {rel!r}, outside the "
                                                       "tree root")
                if _UNUSABLE.search(rel) is not None:
                    _check_usable(rel, fields, spec, _desc(group, task, seed))
                same = normalized_dir(rel)  # a//b, a/./b and A/b are one directory (the last on some file systems)
                if same in where:
                    other, other_rel = where[same]
                    shown = repr(rel) if rel == other_rel else f"{other_rel!r} and {rel!r} (one directory)"
                    raise SpecError(spec.file, "path", f"template collides: {_desc(*other)} and "
                                                       f"{_desc(group, task, seed)} both map to {shown}")
                where[same] = ((group, task, seed), rel)
                runs.append(Run(spec=spec.name, experiment=spec.experiment_name, group=group, task=task,
                                seed=seed, rel_dir=rel, run_key=key, config=config, params=params))
    return runs


def _desc(group: str, task: int, seed: int) -> str:
    return f"group {group} task {task} seed {seed}"


def normalized_dir(rel: str) -> str:
    """The directory ``rel`` names once the file system has read it: ``a//b`` and ``a/./b`` are
    ``a/b``; case-folded, because macOS and Windows file systems ignore case."""
    return posixpath.normpath(rel).casefold()


_UNUSABLE = re.compile(r"[\x00-\x1f\x7f\\]")


def _check_usable(rel: str, fields: dict[str, Any], spec: Spec, desc: str) -> None:
    """A NUL byte, a control character or a backslash in a directory name: refused, naming the value."""
    m = _UNUSABLE.search(rel)
    if m is None:
        return
    bad = m.group()
    culprit = next((k for k, v in fields.items() if isinstance(v, str) and bad in v), None)
    where = _source(f"{culprit}:", spec) if culprit else "path"
    value = f" {culprit}={fields[culprit]!r}" if culprit else ""
    raise SpecError(spec.file, where, f"{desc}:{value} puts the unusable character {bad!r} in the run directory "
                                      f"{rel!r}")


def _format(template: str, fields: dict[str, Any], spec: Spec, key: str) -> str:
    try:
        return template.format(**fields)
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise SpecError(spec.file, key, f"cannot fill template {template!r}: {e}") from None


def _source(problem: str, spec: Spec) -> str:
    """The key path that sets the parameter a problem names (``"K: ..."`` -> ``axes[0]``)."""
    name = problem.split(":", 1)[0].strip()
    if name in spec.fixed:
        return f"fixed.{name}"
    for i, a in enumerate(spec.axes):
        if name in a.params:
            return f"axes[{i}]"
    return name


def parse_only(expr: str | None, runs: list[Run], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """``'n_layers=1,use_mlp=false'`` -> ``{'n_layers': 1, 'use_mlp': False}`` (values read as YAML;
    also ``group=``, ``task=``, ``seed=``, and ``spec=`` for a part of a composite spec)."""
    if not expr:
        return {}
    known = set(runs[0].config) | {"group", "task", "seed", "spec"} if runs else set()
    out: dict[str, Any] = {}
    for part in expr.split(","):
        if "=" not in part:
            raise UserError(f"--only: {part!r} is not name=value")
        k, v = (x.strip() for x in part.split("=", 1))
        if known and k not in known:
            raise UserError(f"--only: unknown parameter {k!r}")
        try:
            out[k] = yaml_value(v)
        except yaml.YAMLError:
            out[k] = v
    return out


def select(runs: list[Run], only: dict[str, Any]) -> list[Run]:
    def match(r: Run) -> bool:
        fields = {**r.config, "group": r.group, "task": r.task, "seed": r.seed, "spec": r.spec}
        return all(fields.get(k) == v for k, v in only.items())

    return [r for r in runs if match(r)] if only else list(runs)
