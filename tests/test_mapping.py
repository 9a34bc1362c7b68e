"""TASK_MAPPING.md is generated from sweeps/*.yaml; fail when it is stale."""

from __future__ import annotations

from pathlib import Path

from launch.mapping import render
from launch.spec_set import expand_set, load_spec_set
from tests.helpers import sweep

REPO = Path(__file__).resolve().parent.parent
ARGS = "sweeps/*.yaml"


def current_mapping() -> str:
    specs = []
    for p in sorted((REPO / "sweeps").glob("*.yaml")):
        sset = load_spec_set(p.relative_to(REPO))
        specs.append((sset, expand_set(sset)))
    return render(specs, ARGS)


def test_task_mapping_is_up_to_date():
    expected = current_mapping()
    actual = (REPO / "TASK_MAPPING.md").read_text()
    assert actual == expected, "TASK_MAPPING.md is stale: run `sweep mapping sweeps/*.yaml`"


def test_seed003_task_numbering():
    text = (REPO / "TASK_MAPPING.md").read_text()
    # task_0000 = L2, MLP on, mix; task_0001 = L2, MLP on, curriculum; ... as in the seed-003 tables
    section = text.split("### len_gen_k8 ")[1]
    assert "| task_0000 | 2 | true | mix | 1337, 2337, 3337 | `with_layernorm/dynamic/len_gen_k8/task_0000/` |" \
        in section
    assert "| task_0003 | 2 | false | curriculum |" in section
    assert "| task_0007 | 1 | false | curriculum |" in section
    assert "168 runs" in text and "84 runs" in text


def test_the_documented_command_reproduces_the_file():
    # what a shell makes of `sweep mapping sweeps/*.yaml` (README, `make mapping`)
    specs = sorted(str(p.relative_to(REPO)) for p in (REPO / "sweeps").glob("*.yaml"))
    p = sweep("mapping", *specs, "--check", cwd=REPO, check=False)
    assert p.returncode == 0, p.stderr
    assert "is up to date" in p.stdout


def test_composite_leads_and_is_not_duplicated():
    text = (REPO / "TASK_MAPPING.md").read_text()
    first = text.index("## ")
    assert text[first:].startswith("## len_gen (`sweeps/len_gen.yaml`)")
    assert "sweep launch sweeps/len_gen.yaml --cluster slurm" in text[first:first + 400]
    assert "| **total** | | **504** |" in text
    assert text.count("## len_gen_dynamic_ln ") == 1  # its tables once, under the part's own section
