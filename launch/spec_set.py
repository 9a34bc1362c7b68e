"""Composite specs: one file that stands for several specs.

A composite spec lists other spec files (its *parts*) and nothing else::

    name: len_gen                  # default: the file name
    description: ...               # optional
    include:                       # paths relative to this file; a part may itself be composite
      - len_gen_dynamic_ln.yaml
      - len_gen_fixed_ln.yaml

Its runs are exactly its parts' runs (same directories, groups, task numbers,
run keys, and ``Run.spec`` = the part's name), so every file the harness keeps
per spec (manifest, jobs file, lock) stays the part's: a tree launched from the
parts is recognised by the composite and the other way round, and the parts
stay usable alone. The parts share one experiment, one tree root and one set of
SLURM resources (one launch submits them together).

Every command that takes a spec loads it with :func:`load_spec_set`; a plain
spec is a set of one part, named and behaving as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch.errors import SpecError
from launch.experiment import Experiment
from launch.spec import Spec, parse_spec, read_spec_file
from launch.tasks import Run, expand, normalized_dir

COMPOSITE_KEYS = {"include", "name", "description"}


@dataclass
class SpecSet:
    file: str
    name: str
    parts: list[Spec]
    composite: bool = False
    description: str | None = None

    # what the parts share (checked when loading)
    @property
    def root(self) -> Path:
        return self.parts[0].root

    @property
    def experiment_name(self) -> str:
        return self.parts[0].experiment_name

    @property
    def experiment(self) -> Experiment | None:
        return self.parts[0].experiment

    @property
    def resources(self) -> dict[str, Any]:
        return self.parts[0].resources

    def part(self, name: str) -> Spec:
        return next(p for p in self.parts if p.name == name)

    def by_part(self, runs: list[Run]) -> dict[str, list[Run]]:
        """``runs`` split by the part they belong to, in part order (parts without runs left out)."""
        out: dict[str, list[Run]] = {p.name: [] for p in self.parts}
        for r in runs:
            out[r.spec].append(r)
        return {k: v for k, v in out.items() if v}


def as_set(spec: Spec | SpecSet) -> SpecSet:
    return spec if isinstance(spec, SpecSet) else SpecSet(file=spec.file, name=spec.name, parts=[spec])


def load_spec_set(path: str | Path, root: str | Path | None = None) -> SpecSet:
    """A plain spec (a set of one) or a composite one with its parts; ``root`` overrides every tree root
    (the parts must name one root all the same: a composite spec is one tree)."""
    path = Path(path)
    raw = read_spec_file(path)
    if not _is_composite(raw):
        spec = parse_spec(raw, file=str(path), default_name=path.stem, root=root)
        return SpecSet(file=spec.file, name=spec.name, parts=[spec])
    sset = _load(path, stack=[], raw=raw)
    if root is not None:
        for part in sset.parts:
            part.root = Path(root)
    return sset


def _is_composite(raw: Any) -> bool:
    return isinstance(raw, dict) and "include" in raw


def _load(path: Path, stack: list[Path], raw: Any = None) -> SpecSet:
    f = str(path)
    raw = read_spec_file(path) if raw is None else raw
    if not _is_composite(raw):
        spec = parse_spec(raw, file=f, default_name=path.stem)
        return SpecSet(file=f, name=spec.name, parts=[spec])
    unknown = sorted(set(map(str, raw)) - COMPOSITE_KEYS)
    if unknown:
        raise SpecError(f, unknown[0], f"a composite spec takes only {', '.join(sorted(COMPOSITE_KEYS))}; "
                                       f"set {unknown[0]!r} in its parts")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ "):
        raise SpecError(f, "name", f"{name!r} is not a usable name (no spaces or slashes)")
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise SpecError(f, "description", "must be a string")
    include = raw["include"]
    if not isinstance(include, list) or not include:
        raise SpecError(f, "include", "must be a non-empty list of spec files (relative to this file)")
    here = stack + [path.resolve()]
    parts: list[Spec] = []
    seen: dict[Path, str] = {}  # resolved part file -> where it was included
    for i, item in enumerate(include):
        key = f"include[{i}]"
        if not isinstance(item, str) or not item.strip():
            raise SpecError(f, key, f"must be the path of a spec file, got {item!r}")
        part_path = Path(item) if Path(item).is_absolute() else path.parent / item
        if not part_path.is_file():
            raise SpecError(f, key, f"{part_path}: spec file not found{_siblings(part_path)}")
        if part_path.resolve() in here:
            cycle = " -> ".join(p.name for p in here[here.index(part_path.resolve()):] + [part_path.resolve()])
            raise SpecError(f, key, f"include cycle: {cycle}")
        for part in _load(part_path, here).parts:
            resolved = Path(part.file).resolve()
            if resolved in seen:
                raise SpecError(f, key, f"{part.file} is included twice (also by {seen[resolved]})")
            seen[resolved] = key
            parts.append(part)
    _check_parts(f, parts)
    return SpecSet(file=f, name=name, parts=parts, composite=True, description=description)


def _siblings(p: Path) -> str:
    names = sorted(q.name for q in p.parent.glob("*.y*ml")) if p.parent.is_dir() else []
    return f" (specs there: {', '.join(names)})" if names else ""


def _check_parts(f: str, parts: list[Spec]) -> None:
    """One experiment, one tree, one set of resources, distinct names (the per-spec files are keyed by name)."""
    first = parts[0]
    names: dict[str, str] = {}
    for p in parts:
        if p.name in names:
            raise SpecError(f, "include", f"{names[p.name]} and {p.file} are both named {p.name!r} "
                                          f"(manifests and job files are per spec name)")
        names[p.name] = p.file
        for what, mine, theirs in (("experiment", p.experiment_name, first.experiment_name),
                                   ("root", p.root, first.root), ("resources", p.resources, first.resources)):
            if mine != theirs:
                raise SpecError(f, "include", f"parts must share one {what}: {p.file} has {mine!r}, "
                                              f"{first.file} has {theirs!r} (launch them separately)")


def expand_set(sset: SpecSet) -> list[Run]:
    """Every part's runs, in part order; two parts that map to one run directory are an error (one
    after normalisation too: ``a//b``, ``a/./b`` and ``A/b`` are ``a/b``, as within a spec)."""
    if len(sset.parts) == 1:  # expand() already refuses two runs of one part in one directory
        return expand(sset.parts[0])
    runs: list[Run] = []
    owner: dict[str, tuple[str, str]] = {}  # normalized rel_dir -> (part name, rel_dir)
    for part in sset.parts:
        for r in expand(part):
            same = normalized_dir(r.rel_dir)
            if same in owner:
                other, other_rel = owner[same]
                shown = repr(r.rel_dir) if r.rel_dir == other_rel else f"{other_rel!r} and {r.rel_dir!r} (one directory)"
                raise SpecError(sset.file, "include", f"{other} and {part.name} both map a run to {shown}")
            owner[same] = (part.name, r.rel_dir)
            runs.append(r)
    return runs
