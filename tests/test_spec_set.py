"""Composite specs (``include:``, launch/spec_set.py): sweeps/len_gen.yaml is the seed-003 grid,
and every command that takes a spec takes one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from launch.executors import pid_alive
from launch.spec import load_spec
from launch.spec_set import expand_set, load_spec_set
from launch.tasks import expand
from tests.helpers import sweep, tree_snapshot, wait_for

REPO = Path(__file__).resolve().parent.parent
LEN_GEN_PARTS = ["len_gen_dynamic_ln", "len_gen_dynamic_no_ln", "len_gen_fixed_ln", "len_gen_fixed_no_ln"]

PART = """experiment: noop
name: {name}
group: "{name}_g{{x}}"
path: "{name}/{{group}}/task_{{task:04d}}/seed{{seed}}"
fixed: {{steps: {steps}, step_sleep_s: {sleep}, y: {y}}}
axes:
  - {{x: [0, 1], group: true}}
  - {{label: [a, b]}}
seeds: [1, 2]
"""
COMPOSITE = "name: both\ninclude: [a.yaml, b.yaml]\n"


def write_parts(tmp: Path, steps: int = 2, sleep: float = 0.0) -> Path:
    """Two noop parts a (y=0) and b (y=1), 8 runs each, and the composite ``both`` of them."""
    for name, y in (("a", 0.0), ("b", 1.0)):
        (tmp / f"{name}.yaml").write_text(PART.format(name=name, steps=steps, sleep=sleep, y=y))
    composite = tmp / "both.yaml"
    composite.write_text(COMPOSITE)
    return composite


def counts_of(spec: Path, root: Path) -> dict:
    return json.loads(sweep("status", spec, "--root", root, "--json", "--no-scheduler").stdout)


def done(spec: Path, root: Path) -> dict | None:
    c = next(iter(counts_of(spec, root)["counts"].values()))
    return c if not (c["pending"] or c["running"] or c["requeued"] or c["not_submitted"]) else None


# -- the seed-003 grid -------------------------------------------------------------------


def test_len_gen_expands_exactly_as_its_four_parts(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(REPO)
    sset = load_spec_set("sweeps/len_gen.yaml")
    assert sset.composite and sset.name == "len_gen" and [p.name for p in sset.parts] == LEN_GEN_PARTS
    composite = expand_set(sset)
    parts = [r for name in LEN_GEN_PARTS for r in expand(load_spec(f"sweeps/{name}.yaml"))]
    assert len(composite) == len(parts) == 504
    for mine, theirs in zip(composite, parts, strict=True):
        # directory, group, task number, seed, run key, resolved config, and the spec it belongs to
        assert mine.to_json() == theirs.to_json()
    assert len({r.rel_dir for r in composite}) == 504


def test_len_gen_dry_run_is_one_plan_and_writes_nothing(tmp_path: Path):
    root = tmp_path / "tree"
    # the plan depends on the cluster's MaxArraySize: SLURM's default here, whether or not a local
    # SLURM (MaxArraySize 5, started by the SLURM tests) is up on this machine
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(  # answers `show config` only: no partitions, no limits to check
        "#!/bin/sh\n[ \"$2\" = config ] && { echo 'MaxArraySize            = 1001'; exit 0; }\n"
        "[ \"$1\" = ping ] && { echo 'Slurmctld(primary) at localhost is UP'; exit 0; }\nexit 1\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = sweep("launch", "sweeps/len_gen.yaml", "--cluster", "slurm", "--root", root, "--dry-run",
                cwd=REPO, env=env).stdout
    assert out.startswith("spec len_gen (sweeps/len_gen.yaml): composite of 4 specs, experiment sortgpt, 504 runs")
    for name, n in zip(LEN_GEN_PARTS, (168, 168, 84, 84)):
        assert f"part {name} (sweeps/{name}.yaml): {n} runs in 7 groups, {n} to submit" in out
    assert out.count("would submit") == 1 and "would submit 504 runs as 504 jobs" in out
    assert out.count("--- sbatch script") == 1 and "#SBATCH --job-name=len_gen" in out
    assert "#SBATCH --array=0-503%64" in out
    assert not root.exists()

    out = sweep("launch", "sweeps/len_gen.yaml", "--cluster", "slurm", "--root", root, "--dry-run",
                "--only", "use_layernorm=false", cwd=REPO, env=env).stdout
    assert "would submit 252 runs" in out and "part len_gen_dynamic_ln" not in out
    assert "part len_gen_fixed_no_ln (sweeps/len_gen_fixed_no_ln.yaml): 84 runs" in out


def test_a_mistyped_spec_names_the_specs_that_exist(tmp_path: Path):
    for args in (["launch", "sweeps/len-gen.yaml", "--cluster", "slurm"], ["status", "len_gen.yaml"]):
        p = sweep(*args, cwd=REPO, check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        assert "spec file not found (did you mean sweeps/len_gen.yaml?); specs under sweeps/: " in lines[0]
        assert "len_gen_fixed_no_ln.yaml" in lines[0] and "ci_sortgpt.yaml" in lines[0]


# -- launch, status, collect, cancel on the local executor --------------------------------


def test_part_then_composite_submits_each_run_once(tmp_path: Path):
    composite = write_parts(tmp_path)
    root = tmp_path / "tree"
    sweep("launch", tmp_path / "a.yaml", "--cluster", "local", "--root", root)
    wait_for(lambda: done(tmp_path / "a.yaml", root), timeout=120, what="part a")

    out = sweep("launch", composite, "--cluster", "local", "--root", root).stdout
    assert "submitted 8 runs" in out and "skipped 8 completed" in out
    c = wait_for(lambda: done(composite, root), timeout=120, what="the composite")
    assert c["completed"] == 16

    # the per-spec files stay the parts': nothing named after the composite
    meta = root / ".sweep"
    assert sorted(p.name for p in (meta / "manifests").iterdir()) == ["a.json", "b.json"]
    assert sorted(p.name for p in (meta / "jobs").iterdir()) == ["a.json", "b.json"]
    manifest_b = json.loads((meta / "manifests" / "b.json").read_text())
    assert manifest_b["spec_file"] == str((tmp_path / "b.yaml").resolve()) and len(manifest_b["runs"]) == 8

    # nothing twice, from either side
    for spec in (composite, tmp_path / "a.yaml", tmp_path / "b.yaml"):
        out = sweep("launch", spec, "--cluster", "local", "--root", root).stdout
        assert "nothing to submit" in out, out

    status = json.loads(sweep("status", composite, "--root", root, "--json", "-v", "--no-scheduler").stdout)
    assert status["counts"]["both"]["completed"] == 16
    assert {k: v["completed"] for k, v in status["parts"]["both"].items()} == {"a": 8, "b": 8}
    assert {r["spec"] for r in status["runs"]} == {"a", "b"}
    text = sweep("status", composite, "--root", root, "--no-scheduler").stdout
    assert text.splitlines() == ["both: 16 runs — 16 completed", "  a: 8 runs — 8 completed",
                                 "  b: 8 runs — 8 completed"]

    # collect: the composite gives the same table as its parts, and a part named beside it adds nothing
    sweep("collect", composite, tmp_path / "a.yaml", "--root", root, "-o", tmp_path / "both.parquet")
    sweep("collect", tmp_path / "a.yaml", tmp_path / "b.yaml", "--root", root, "-o", tmp_path / "parts.parquet")
    both = pd.read_parquet(tmp_path / "both.parquet")
    parts = pd.read_parquet(tmp_path / "parts.parquet")
    assert both.run_key.nunique() == 16 and set(both.spec) == {"a", "b"}
    key = ["run_dir", "step", "split", "length"]
    pd.testing.assert_frame_equal(both.sort_values(key, ignore_index=True), parts.sort_values(key, ignore_index=True))

    out = sweep("collect", composite, "--root", root, "--only", "spec=b", "-o", tmp_path / "b.parquet").stdout
    assert "from 8 of 8 runs" in out
    sweep("wait", composite, "--root", root, "--timeout", "5")


def test_composite_wait_and_cancel(tmp_path: Path):
    composite = write_parts(tmp_path, steps=400, sleep=0.05)
    root = tmp_path / "tree"
    sweep("launch", composite, "--cluster", "local", "--root", root, "--concurrency", "1")
    p = sweep("wait", composite, "--root", root, "--timeout", "1", "--interval", "0.2", check=False)
    assert p.returncode == 1 and "still active" in p.stderr
    out = sweep("cancel", composite, "--root", root, "--only", "x=1").stdout
    assert "cancelled 8 runs" in out
    out = sweep("cancel", composite, "--root", root).stdout
    assert "cancelled 8 runs" in out
    c = counts_of(composite, root)["counts"]["both"]
    assert c["cancelled"] == 16


def test_renumbering_a_part_is_refused_through_the_composite(tmp_path: Path):
    composite = write_parts(tmp_path)
    root = tmp_path / "tree"
    sweep("launch", tmp_path / "a.yaml", "--cluster", "local", "--root", root)
    wait_for(lambda: done(tmp_path / "a.yaml", root), timeout=120, what="part a")
    # and its local workers gone: they write their submitit result after the last run completed
    wait_for(lambda: not any(pid_alive(pid) for w in (root / ".sweep" / "queue").glob("*/workers.json")
                             for pid in json.loads(w.read_text())["pids"]), timeout=60, what="part a's workers")
    # a value inserted before the launched ones renumbers the tasks of part a
    (tmp_path / "a.yaml").write_text((tmp_path / "a.yaml").read_text().replace("[a, b]", "[c, a, b]"))
    # (the first launch's workers may still be writing their submitit logs as they exit:
    # compare everything else, and that no new local job was started; as in test_local)
    workers = root / ".sweep" / "submitit-local"

    def snapshot() -> tuple[dict, set[str]]:
        files = {k: v for k, v in tree_snapshot(tmp_path).items() if not k.startswith("tree/.sweep/submitit-local/")}
        return files, {d.name for d in workers.iterdir()}

    before = snapshot()
    for extra in (["--dry-run"], []):
        p = sweep("launch", composite, "--cluster", "local", "--root", root, *extra, check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        assert "spec a would change runs already launched" in lines[0]
    assert snapshot() == before


# -- bad composites: one line, exit 2, nothing written -----------------------------------


BAD = {
    "missing part": ("include: [a.yaml, nope.yaml]", "both.yaml: include[1]: ", "nope.yaml: spec file not found"),
    "self include": ("include: [a.yaml, both.yaml]", "both.yaml: include[1]: ",
                     "include cycle: both.yaml -> both.yaml"),
    "cycle": ("include: [a.yaml, c.yaml]", "c.yaml: include[1]: ", "include cycle: both.yaml -> c.yaml -> both.yaml"),
    "twice": ("include: [a.yaml, ./a.yaml]", "both.yaml: include[1]: ", "a.yaml is included twice"),
    "other root": ("include: [a.yaml, root.yaml]", "both.yaml: include: ", "parts must share one root"),
    "other resources": ("include: [a.yaml, res.yaml]", "both.yaml: include: ", "parts must share one resources"),
    "other experiment": ("include: [a.yaml, sortgpt.yaml]", "both.yaml: include: ",
                         "parts must share one experiment"),
    "same name": ("include: [a.yaml, a2.yaml]", "both.yaml: include: ", "are both named 'a'"),
    "same directory": ("include: [a.yaml, dir.yaml]", "both.yaml: include: ", "both map a run to"),
    "extra key": ("include: [a.yaml]\nfixed: {steps: 3}", "both.yaml: fixed: ", "a composite spec takes only"),
    "empty include": ("include: []", "both.yaml: include: ", "must be a non-empty list"),
    "part is not a spec": ("include: [a.yaml, nonsense.yaml]", "nonsense.yaml: ", "unknown key"),
    # issue 11's checks hold per part, and across parts where they concern one tree
    "same directory after normalisation": ("include: [a.yaml, dircase.yaml]", "both.yaml: include: ",
                                           "'a/a_g0/task_0000/seed1' and 'A/a_g0/task_0000/seed1' (one directory)"),
    "part over its max_runs": ("include: [a.yaml, big.yaml]", "big.yaml: axes: ", "more than max_runs=4"),
    "non-finite value in a part": ("include: [a.yaml, nan.yaml]", "nan.yaml: fixed.y: ", "must be a finite number"),
    "max_runs on the composite": ("include: [a.yaml]\nmax_runs: 100", "both.yaml: max_runs: ",
                                  "set 'max_runs' in its parts"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_composite_is_one_line_and_writes_nothing(tmp_path: Path, case: str):
    text, where, problem = BAD[case]
    write_parts(tmp_path)
    a = (tmp_path / "a.yaml").read_text()
    (tmp_path / "c.yaml").write_text("include: [b.yaml, both.yaml]\n")
    (tmp_path / "root.yaml").write_text(a.replace("name: a", "name: r").replace("a/{group}", "r/{group}")
                                        + "root: elsewhere\n")
    (tmp_path / "res.yaml").write_text(a.replace("name: a", "name: r").replace("a/{group}", "r/{group}")
                                       + "resources: {time_min: 5}\n")
    (tmp_path / "sortgpt.yaml").write_text("experiment: sortgpt\npath: 's/{group}/seed{seed}'\naxes:\n"
                                           "  - {use_mlp: [true, false]}\n")
    (tmp_path / "a2.yaml").write_text(a.replace("a/{group}", "a2/{group}"))
    (tmp_path / "dir.yaml").write_text(a.replace("name: a", "name: d"))
    (tmp_path / "nonsense.yaml").write_text(a.replace("name: a", "name: n\nbogus: 1"))
    (tmp_path / "dircase.yaml").write_text(a.replace("name: a", "name: d").replace('"a/{group}', '"A/{group}'))
    (tmp_path / "big.yaml").write_text(a.replace("name: a", "name: g").replace("a/{group}", "g/{group}")
                                       + "max_runs: 4\n")
    (tmp_path / "nan.yaml").write_text(a.replace("name: a", "name: m").replace("a/{group}", "m/{group}")
                                       .replace("y: 0.0", "y: .nan"))
    (tmp_path / "both.yaml").write_text(text + "\n")
    before = tree_snapshot(tmp_path)
    for args in (["launch", "both.yaml", "--cluster", "local", "--root", "tree"],
                 ["status", "both.yaml", "--root", "tree", "--no-scheduler"]):
        p = sweep(*args, cwd=tmp_path, check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        assert lines[0].startswith(f"error: {where}") and problem in lines[0], lines[0]
    assert tree_snapshot(tmp_path) == before


def test_mapping_of_a_composite_alone_lists_its_parts_once(tmp_path: Path):
    composite = write_parts(tmp_path)
    out = tmp_path / "MAP.md"
    sweep("mapping", composite, tmp_path / "a.yaml", "-o", out)
    text = out.read_text()
    assert text.count("## a (") == 1 and text.count("## b (") == 1
    assert text.index("## both (") < text.index("## a (")
    assert f"sweep launch {composite} --cluster slurm" in text
    assert "**Total: 16 runs in 2 specs, and 1 composite spec.**" in text


def test_verify_takes_a_composite(tmp_path: Path):
    composite = write_parts(tmp_path)
    root = tmp_path / "tree"
    sweep("launch", composite, "--cluster", "local", "--root", root, "--only", "x=0")
    wait_for(lambda: counts_of(composite, root)["counts"]["both"]["completed"] == 8, timeout=120,
             what="the x=0 runs")
    out = sweep("verify", composite, "--root", root).stdout
    assert "verify passed" in out


# -- composites and issue 11's identity checks -------------------------------------------


def test_composite_status_and_collect_attribute_by_each_parts_manifest(tmp_path: Path):
    composite = write_parts(tmp_path)
    root = tmp_path / "tree"
    sweep("launch", composite, "--cluster", "local", "--root", root, "--only", "x=0")
    wait_for(lambda: counts_of(composite, root)["counts"]["both"]["completed"] == 8, timeout=120,
             what="the x=0 runs")
    # part b edited after launch: its launched directories now hold other runs than it names there
    (tmp_path / "b.yaml").write_text((tmp_path / "b.yaml").read_text().replace("y: 1.0", "y: 2.0"))

    status = json.loads(sweep("status", composite, "--root", root, "--json", "-v", "--no-scheduler").stdout)
    assert {k: v["completed"] for k, v in status["parts"]["both"].items()} == {"a": 4, "b": 0}
    wrong = [r for r in status["runs"] if r["state"] == "failed"]
    assert {r["spec"] for r in wrong} == {"b"} and len(wrong) == 4
    # found through part b's own manifest (.sweep/manifests/b.json), not only through run.json
    assert all(r["reason"].startswith("wrong run: the manifest records run") for r in wrong), wrong

    out = tmp_path / "both.parquet"
    p = sweep("collect", composite, "--root", root, "-o", out, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count("not merged: wrong run: the manifest records run") == 4, p.stderr
    assert "from 4 of 16 runs" in p.stdout
    table = pd.read_parquet(out)
    assert set(table.spec) == {"a"} and table.run_key.nunique() == 4
    # part a alone is whole
    sweep("collect", composite, "--root", root, "--only", "spec=a", "-o", tmp_path / "a.parquet")


def test_verify_of_a_composite_checks_that_each_sidecar_is_its_runs(tmp_path: Path):
    import torch

    from launch.checkpoint import save_checkpoint

    composite = write_parts(tmp_path)
    root = tmp_path / "tree"
    sweep("launch", composite, "--cluster", "local", "--root", root, "--only", "x=0,label=a,seed=1")
    wait_for(lambda: counts_of(composite, root)["counts"]["both"]["completed"] == 2, timeout=120,
             what="one run of each part")
    run_a, run_b = root / "a/a_g0/task_0000/seed1", root / "b/b_g0/task_0000/seed1"
    for d in (run_a, run_b):
        config = json.loads((d / "run.json").read_text())["config"]
        save_checkpoint({"model": {"w": torch.ones(4)}}, d / "Final.pt", sidecar={"config": config})
    out = sweep("verify", composite, "--root", root).stdout
    assert "verify passed" in out

    # part a's checkpoint with its sidecar copied over part b's: hashes match, the identity does not
    for name in ("Final.pt", "Final.pt.json"):
        (run_b / name).write_bytes((run_a / name).read_bytes())
    p = sweep("verify", composite, "--root", root, check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    bad = [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("mismatched")]
    assert len(bad) == 1 and "b/b_g0/task_0000/seed1/Final.pt" in bad[0], p.stdout
    assert "its sidecar records run" in bad[0] and "this directory holds run" in bad[0], bad[0]
