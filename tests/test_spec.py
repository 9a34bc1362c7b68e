"""Spec validation and task expansion: what a researcher writes -> which runs exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.errors import SpecError
from launch.spec import load_spec
from launch.tasks import expand, parse_only, run_key, select
from tests.helpers import sweep, tree_snapshot

BASE = """
experiment: noop
group: "g{x}"
path: "{group}/task_{task:04d}/seed{seed}"
fixed: {steps: 2}
axes:
  - {params: [x, y], values: [[0, 0.5], [1, 1.5]], group: true}
  - {label: [a, b, c]}
  - {steps: [1, 2]}
seeds: [7, 8]
"""


def test_expansion_order_task_ids_and_linked_axes(write_spec):
    spec = load_spec(write_spec(BASE.replace("fixed: {steps: 2}\n", "")))
    runs = expand(spec)
    assert len(runs) == 2 * 3 * 2 * 2
    # linked axis: x and y vary together; it is the group level
    assert {(r.group, r.config["x"], r.config["y"]) for r in runs} == {("g0", 0, 0.5), ("g1", 1, 1.5)}
    g0 = [r for r in runs if r.group == "g0"]
    # task index = position in the inner cross product, first axis outermost; seeds innermost
    assert [(r.task, r.config["label"], r.config["steps"], r.seed) for r in g0[:6]] == [
        (0, "a", 1, 7), (0, "a", 1, 8), (1, "a", 2, 7), (1, "a", 2, 8), (2, "b", 1, 7), (2, "b", 1, 8)]
    # the same task id names the same inner configuration in every group
    for t in range(6):
        a = {(r.config["label"], r.config["steps"]) for r in runs if r.task == t}
        assert len(a) == 1
    assert runs[0].rel_dir == "g0/task_0000/seed7"
    # deterministic: expanding again gives identical keys
    assert [r.run_key for r in expand(load_spec(write_spec(BASE.replace("fixed: {steps: 2}\n", ""))))] == \
        [r.run_key for r in runs]
    assert len({r.run_key for r in runs}) == len(runs)


def test_run_key_is_hash_of_resolved_config():
    a = run_key("noop", {"x": 1, "y": 2.0})
    assert a == run_key("noop", {"y": 2.0, "x": 1})  # canonical: key order does not matter
    assert a != run_key("noop", {"x": 1, "y": 2.5})
    assert a != run_key("other", {"x": 1, "y": 2.0})
    assert len(a) == 12


class NoopWithALaterKnob:
    """noop after it gained a knob: ``z`` (False keeps the old behaviour; True would change the run)."""

    name = "noop_later"
    later_params = {"z": False}

    def __init__(self) -> None:
        from launch.noop import EXPERIMENT

        self.noop = EXPERIMENT

    def defaults(self) -> dict:
        return self.noop.defaults() | {"z": False}

    def check(self, config: dict) -> list[str]:
        return self.noop.check(config)

    def run(self, config: dict, ctx) -> None:
        assert config["z"] in (False, True), config  # a run.json from before the knob gets z: False
        self.noop.run(config, ctx)


NOOP_LATER = NoopWithALaterKnob()


def test_a_knob_added_later_keeps_the_run_keys_of_existing_trees(write_spec, tmp_path: Path):
    """Adding a parameter with its old value as default changes no run key; using it does. A run.json
    written before the knob existed runs with the old value."""
    from launch.runner import run_one
    from launch.store import Store

    base = BASE.replace("fixed: {steps: 2}\n", "")
    old = expand(load_spec(write_spec(base)))
    new = expand(load_spec(write_spec(base.replace("experiment: noop", "experiment: tests.test_spec:NOOP_LATER"))))
    assert [r.config["z"] for r in new] == [False] * len(new)
    assert [run_key("noop_later", r.config, NOOP_LATER.later_params) for r in new] == \
        [run_key("noop_later", old_r.config) for old_r in old]
    assert [r.run_key for r in new] == [run_key("tests.test_spec:NOOP_LATER", o.config) for o in old]
    on = expand(load_spec(write_spec(base.replace("experiment: noop", "experiment: tests.test_spec:NOOP_LATER")
                                     .replace("axes:", "fixed: {z: true}\naxes:"))))
    assert not {r.run_key for r in on} & {r.run_key for r in new}
    # same value, other type: True is not 1
    assert run_key("e", {"z": 0}, {"z": False}) != run_key("e", {}, {"z": False})

    # a run directory written before the knob: its config has no z
    r = old[0]
    info = {"spec": "s", "experiment": "tests.test_spec:NOOP_LATER", "group": r.group, "task": r.task,
            "seed": r.seed, "rel_dir": r.rel_dir, "run_key": r.run_key, "params": {}, "config": r.config}
    Store(tmp_path).write_run_info(r.rel_dir, info)
    assert "z" not in info["config"] and run_one(tmp_path, r.rel_dir) is True


def test_only_filter(write_spec):
    runs = expand(load_spec(write_spec(BASE.replace("fixed: {steps: 2}\n", ""))))
    sel = select(runs, parse_only("label=b,steps=2", runs))
    assert {(r.config["label"], r.config["steps"]) for r in sel} == {("b", 2)}
    assert len(sel) == 2 * 2
    assert len(select(runs, parse_only("group=g1,seed=8", runs))) == 6


BAD = [
    ("unknown top-level key", "experiment: noop\npath: '{seed}'\naxes: [{x: [1]}]\nfoo: 1\n", "foo: unknown key"),
    ("missing path", "experiment: noop\naxes: [{x: [1]}]\n", "path: missing required key"),
    ("empty axis", "experiment: noop\npath: '{seed}'\naxes: [{x: []}]\n", "axes[0].values: is empty"),
    ("duplicate value", "experiment: noop\npath: 's{seed}/{x}'\naxes: [{x: [1, 1]}]\n",
     "axes[0].values[1]: duplicate value"),
    ("wrong type", "experiment: noop\npath: '{seed}'\naxes: [{x: [1, two]}]\n",
     "axes[0].values[1]: x must be an integer"),
    ("bool for int", "experiment: noop\npath: '{seed}'\nfixed: {steps: true}\naxes: [{x: [1]}]\n",
     "fixed.steps: steps must be an integer"),
    ("unknown parameter", "experiment: noop\npath: '{seed}'\naxes: [{depth: [1]}]\n",
     "axes[0].values[0]: experiment 'noop' has no parameter 'depth'"),
    ("unknown experiment", "experiment: nope\npath: '{seed}'\naxes: [{x: [1]}]\n",
     "experiment: unknown experiment 'nope'"),
    ("template collision", "experiment: noop\npath: 'run/seed{seed}'\naxes: [{x: [1, 2]}]\n",
     "path: template collides"),
    ("no seed in path", "experiment: noop\npath: 'run/{x}'\naxes: [{x: [1, 2]}]\n", "path: must contain {seed}"),
    ("unknown template field", "experiment: noop\npath: '{zz}/{seed}'\naxes: [{x: [1]}]\n",
     "path: template field {zz}"),
    ("linked arity", "experiment: noop\npath: '{x}/{seed}'\naxes: [{params: [x, y], values: [[1]]}]\n",
     "axes[0].values[0]: must be a list of 2 values"),
    ("param set twice", "experiment: noop\npath: '{x}/{seed}'\nfixed: {x: 1}\naxes: [{x: [1]}]\n",
     "axes[0]: parameter 'x' is already set by fixed.x"),
    ("experiment check", "experiment: noop\npath: '{x}/{seed}'\naxes: [{steps: [0]}]\n",
     "axes[0]: steps: must be at least 1"),
    ("duplicate seed", "experiment: noop\npath: '{x}/{seed}'\naxes: [{x: [1]}]\nseeds: [1, 1]\n",
     "seeds: duplicate seed 1"),
    ("bad resources", "experiment: noop\npath: '{x}/{seed}'\naxes: [{x: [1]}]\nresources: {gpus: many}\n",
     "resources.gpus: must be an integer"),
    ("bad wandb mode", "experiment: noop\npath: '{x}/{seed}'\naxes: [{x: [1]}]\nwandb: {mode: sometimes}\n",
     "wandb.mode:"),
    ("malformed yaml", "experiment: noop\naxes: [{x: [1}\n", "malformed YAML (line"),
    ("not a mapping", "- just\n- a list\n", "the spec must be a mapping"),
    ("group names clash", "experiment: noop\ngroup: same\npath: '{group}/{x}/{task}/{seed}'\n"
                          "axes: [{x: [1, 2], group: true}]\n", "group: group points"),
    ("group name from an inner axis", "experiment: noop\ngroup: 'g{x}'\npath: '{group}/{task}/{seed}'\n"
                                      "axes: [{x: [1, 2]}]\n", "group: template field {x} varies inside a group"),
    ("group name from the seed", "experiment: noop\ngroup: 'g{seed}'\npath: '{group}/{x}/{seed}'\n"
                                 "axes: [{x: [1, 2]}]\n", "group: template field {seed}"),
    ("value leaves the tree", "experiment: noop\npath: '{label}/s{seed}'\naxes: [{label: [a, '../../x']}]\n",
     "path: group bad task 1 seed 0 maps to '../../x/s0', outside the tree root"),
    ("empty value makes the path absolute", "experiment: noop\npath: '{label}/s{seed}'\naxes: [{label: ['']}]\n",
     "path: group bad task 0 seed 0 maps to '/s0', outside the tree root"),
    ("duplicate key", "experiment: noop\npath: 'a{seed}'\naxes: [{x: [1]}]\npath: 'b{seed}'\n",
     "malformed YAML (line 4, column 1): duplicate key 'path'"),
    ("setup line not a string", "experiment: noop\npath: '{seed}'\naxes: [{x: [1]}]\nresources: {setup: [ok, 3]}\n",
     "resources.setup[1]: must be a string, got an integer 3"),
    ("wandb tag not a string", "experiment: noop\npath: '{seed}'\naxes: [{x: [1]}]\nwandb: {tags: [{a: 1}]}\n",
     "wandb.tags[0]: must be a string, got a mapping"),
    ("root not a string under --root", "experiment: noop\nroot: 5\npath: '{seed}'\naxes: [{x: [1]}]\n",
     "root: must be a string, got an integer 5"),
    ("empty root", "experiment: noop\nroot: ''\npath: '{seed}'\naxes: [{x: [1]}]\n", "root: is empty"),
]


@pytest.mark.parametrize("label,text,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_spec_one_line_exit_2_nothing_written(tmp_path: Path, label: str, text: str, expected: str):
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    before = tree_snapshot(tmp_path)
    p = sweep("launch", spec, "--cluster", "local", "--root", tmp_path / "tree", cwd=tmp_path, check=False)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"error: {spec}"), lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in p.stderr
    assert tree_snapshot(tmp_path) == before


def test_spec_error_names_file_and_key(write_spec):
    with pytest.raises(SpecError) as e:
        load_spec(write_spec("experiment: noop\npath: '{seed}'\naxes: [{x: [1]}, {y: []}]\n"))
    assert e.value.key == "axes[1].values"


def test_exponent_floats_without_a_dot_are_numbers(write_spec):
    # plain YAML 1.1 reads 1e-3 as the string '1e-3'; researchers write learning rates that way
    runs = expand(load_spec(write_spec("experiment: noop\npath: 's{seed}/{y}'\naxes: [{y: [1e-3, 2.5, -3E+2]}]\n")))
    assert [r.config["y"] for r in runs] == [0.001, 2.5, -300.0]
    assert [r.config["y"] for r in select(runs, parse_only("y=1e-3", runs))] == [0.001]
