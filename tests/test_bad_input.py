"""Bad input at the real `sweep` CLI: for each case one readable line, the right exit code,
no traceback, and nothing created or changed on disk.

One file on purpose: the cases share one harness (run the CLI, snapshot the tree before and
after) and read as one catalogue of what a user can get wrong.

Exit 2 for every bad input; exit 1 only where documented (`sweep verify` finding bad
checkpoints, which prints its report on stdout). Spec-validation cases that
tests/test_spec.py already covers (unknown key, empty axis, duplicate seed, ...) are
not repeated; these are the other ways a user gets it wrong.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import sweep, tree_snapshot

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

SORTGPT = """experiment: sortgpt
path: "{group}/task_{task:04d}/seed{seed}"
fixed: {vocab_n: 16, n_embd: 16, n_layers: 1, train_max_k: 4, test_min_k: 5, test_max_k: 6, max_iters: 20, device: cpu}
axes:
  - {use_mlp: [true, false]}
seeds: [1]
"""


@dataclass
class Case:
    name: str
    setup: Callable[[Path], list[str]]  # writes its files under tmp_path, returns the CLI arguments
    expect: str                          # a substring of the one error line (stdout report for exit 1)
    code: int = 2


CASES: list[Case] = []


def case(expect: str, code: int = 2) -> Callable[[Callable[[Path], list[str]]], Callable[[Path], list[str]]]:
    def register(setup: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
        CASES.append(Case(setup.__name__, setup, expect, code))
        return setup
    return register


# -- files the cases write -------------------------------------------------------------


def spec(tmp: Path, text: str, name: str = "spec.yaml") -> str:
    (tmp / name).write_text(text)
    return name


def sortgpt_spec(tmp: Path, old: str = "", new: str = "") -> str:
    assert old in SORTGPT
    return spec(tmp, SORTGPT.replace(old, new, 1) if old else SORTGPT)


def checkpoint(tmp: Path, name: str = "model.pt", state: object = None) -> Path:
    path = tmp / name
    torch.save({"model": {"w": torch.arange(4000, dtype=torch.float32)}, "step": 3} if state is None else state, path)
    return path


class Evil:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def run_dir(tmp: Path, experiment: str = "sortgpt", state: str | None = "completed", config: dict | None = None,
            name: str = "run") -> str:
    d = tmp / name
    d.mkdir()
    if config is None:
        config = {"steps": 1} if experiment == "noop" else {**_sortgpt_defaults(), "max_iters": 10}
    (d / "run.json").write_text(json.dumps({"experiment": experiment, "config": config, "run_key": "abc",
                                            "rel_dir": name, "group": "g", "task": 0, "seed": 1, "spec": "s"}))
    if state is not None:
        (d / "state.json").write_text(json.dumps({"state": state}))
    return name


def _sortgpt_defaults() -> dict:
    from sortgpt.experiment import EXPERIMENT

    return EXPERIMENT.defaults()


# -- specs: files and YAML ---------------------------------------------------------------


@case("nope.yaml: spec file not found")
def launch_missing_spec(tmp: Path) -> list[str]:
    return ["launch", "nope.yaml", "--cluster", "local"]


@case("is a directory, not a spec file")
def launch_spec_is_a_directory(tmp: Path) -> list[str]:
    (tmp / "specdir.yaml").mkdir()
    return ["launch", "specdir.yaml", "--cluster", "local"]


@case("malformed YAML (line 4, column 1): found unexpected end of stream")
def launch_unclosed_quote(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, 'experiment: noop\npath: "{seed}\naxes: [{x: [1]}]\n'), "--cluster", "local"]


@case("malformed YAML")
def launch_tab_indentation(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: noop\naxes:\n\t- {x: [1]}\npath: '{seed}'\n"), "--cluster", "local"]


@case("not a text file")
def launch_binary_spec(tmp: Path) -> list[str]:
    (tmp / "spec.yaml").write_bytes(b"\xff\xfe\x00\x81binary\x00")
    return ["launch", "spec.yaml", "--cluster", "local"]


@case("the spec must be a mapping of keys, got null")
def launch_empty_spec(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "# nothing but a comment\n"), "--cluster", "local"]


@case("experiment: must be a string")
def launch_experiment_is_a_list(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: [noop]\npath: '{seed}'\naxes: [{x: [1]}]\n"), "--cluster", "local"]


@case("axes: must be a list of axes, got a mapping")
def launch_axes_is_a_mapping(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: noop\npath: '{seed}'\naxes: {x: [1]}\n"), "--cluster", "local"]


@case("axes[0].values: must be a list, got an integer")
def launch_axis_values_scalar(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: noop\npath: '{x}/{seed}'\naxes: [{x: 3}]\n"), "--cluster", "local"]


@case("seeds: must be a non-empty list of integers")
def launch_no_seeds(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: noop\npath: '{seed}'\naxes: [{x: [1]}]\nseeds: []\n"),
            "--cluster", "local"]


@case("seeds[1]: must be an integer, got a string")
def launch_seed_is_a_string(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: noop\npath: '{seed}'\naxes: [{x: [1]}]\nseeds: [1, two]\n"),
            "--cluster", "local"]


@case("path: must be a relative path inside the tree root")
def launch_path_escapes_the_tree(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: noop\npath: '../out/{seed}'\naxes: [{x: [1]}]\n"), "--cluster", "local"]


@case("resources.gpu: unknown key")
def launch_unknown_resource(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: noop\npath: '{seed}'\naxes: [{x: [1]}]\nresources: {gpu: 1}\n"),
            "--cluster", "local"]


@case("spec.yaml: fixed.max_lr: must be a finite number, got inf")
def launch_infinite_learning_rate(tmp: Path) -> list[str]:
    return ["launch", sortgpt_spec(tmp, "max_iters: 20", "max_iters: 20, max_lr: .inf"), "--cluster", "local",
            "--root", "tree"]


@case("spec.yaml: axes[0].values[1]: must be a finite number, got nan")
def launch_nan_axis_value(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: noop\npath: 'y{y}/seed{seed}'\naxes:\n  - {y: [0.5, .nan]}\n"),
            "--cluster", "local", "--root", "tree"]


@case("spec.yaml: axes[0].values[1]: must fit in a 64-bit integer, got 18446744073709551617")
def launch_axis_value_beyond_64_bits(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: noop\npath: 'y{y}/seed{seed}'\naxes:\n  - {y: [1, 18446744073709551617]}\n"),
            "--cluster", "local", "--root", "tree"]


@case("spec.yaml: fixed.lengths[1]: must be a finite number, got -inf")
def launch_infinite_list_element(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: noop\npath: 's{seed}'\nfixed: {lengths: [1, -.inf]}\naxes: []\n"),
            "--cluster", "local", "--root", "tree"]


@case("spec.yaml: fixed.lengths[1]: elements of lengths must be an integer, got a string 'two'")
def launch_list_element_of_the_wrong_type(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: noop\npath: 's{seed}'\nfixed: {lengths: [1, two]}\naxes: []\n"),
            "--cluster", "local", "--root", "tree"]


@case("spec.yaml: resources.mem_gb: must be a finite number, got nan")
def launch_nan_memory_in_the_spec(tmp: Path) -> list[str]:
    return ["launch", sortgpt_spec(tmp, "seeds: [1]", "seeds: [1]\nresources: {mem_gb: .nan}"), "--cluster", "local",
            "--root", "tree"]


@case("Invalid value for '--mem': 'nan' is not a finite number")
def launch_nan_memory_flag(tmp: Path) -> list[str]:
    return ["launch", sortgpt_spec(tmp), "--cluster", "slurm", "--root", "tree", "--mem", "nan", "--dry-run"]


@case("Invalid value for '--lr': 'inf' is not a finite number")
def resume_infinite_lr(tmp: Path) -> list[str]:
    return ["resume", run_dir(tmp), "--steps", "10", "--lr", "inf"]


@case("spec.yaml: gates.gate3_acc: must be a number, got a string 'high'")
def launch_gate_threshold_not_a_number(tmp: Path) -> list[str]:
    return ["launch", sortgpt_spec(tmp, "seeds: [1]", "seeds: [1]\ngates: {gate3_acc: high}"), "--cluster", "local",
            "--root", "tree"]


@case("spec.yaml: axes: the grid has 1,000,000,000 runs (1000 × 1000 × 1000 × 1 seeds), more than max_runs=1,000,000")
def launch_grid_too_large(tmp: Path) -> list[str]:
    axes = "".join(f"  - {{{name}: [{', '.join(map(str, range(1000)))}]}}\n" for name in ("x", "steps", "fail_at_step"))
    return ["launch", spec(tmp, f"experiment: noop\npath: '{{x}}/{{steps}}/{{fail_at_step}}/s{{seed}}'\naxes:\n{axes}"),
            "--cluster", "local", "--root", "tree", "--dry-run"]


def noop_spec(tmp: Path, path: str, axis: str) -> str:
    return spec(tmp, f"experiment: noop\npath: '{path}'\naxes:\n  - {axis}\n")


@case("spec.yaml: path: template field {label.__class__} is not allowed: use a plain {name}")
def launch_template_attribute_access(tmp: Path) -> list[str]:
    return ["launch", noop_spec(tmp, "{label.__class__}/s{seed}", "{label: [a]}"), "--cluster", "local"]


@case("spec.yaml: path: template field {lengths[0]} is not allowed")
def launch_template_index_access(tmp: Path) -> list[str]:
    return ["launch", noop_spec(tmp, "{lengths[0]}/s{seed}", "{label: [a]}"), "--cluster", "local"]


@case("path: template collides: group spec task 0 seed 0 and group spec task 1 seed 0 both map to 'x/a/b/s0' and "
      "'x/a//b/s0' (one directory)")
def launch_paths_equal_after_normalisation(tmp: Path) -> list[str]:
    return ["launch", noop_spec(tmp, "x/{label}/s{seed}", "{label: [a/b, a//b]}"), "--cluster", "local"]


@case("both map to 'x/./a/s0' and 'x/a/s0' (one directory)")
def launch_paths_equal_after_dot_removal(tmp: Path) -> list[str]:
    return ["launch", noop_spec(tmp, "x/{label}/s{seed}", "{label: [./a, a]}"), "--cluster", "local"]


@case("both map to 'Run/s0' and 'run/s0' (one directory)")
def launch_paths_equal_but_for_case(tmp: Path) -> list[str]:
    return ["launch", noop_spec(tmp, "{label}/s{seed}", "{label: [Run, run]}"), "--cluster", "local"]


@case("spec.yaml: axes[0]: group spec task 1 seed 0: label='a\\x00b' puts the unusable character '\\x00'")
def launch_nul_in_a_path_value(tmp: Path) -> list[str]:
    return ["launch", noop_spec(tmp, "{label}/s{seed}", '{label: [a, "a\\0b"]}'), "--cluster", "local"]


def manifest(tmp: Path, content: str) -> None:
    (tmp / "tree" / ".sweep" / "manifests").mkdir(parents=True)
    (tmp / "tree" / ".sweep" / "manifests" / "spec.json").write_text(content)


@case("tree/.sweep/manifests/spec.json: runs.x/s1: must be a mapping with a run_key string: the manifest is corrupt")
def launch_manifest_entry_of_the_wrong_shape(tmp: Path) -> list[str]:
    manifest(tmp, json.dumps({"runs": {"x/s1": ["abc"]}}))
    return ["launch", noop_spec(tmp, "x/s{seed}", "{label: [a]}"), "--cluster", "local", "--root", "tree"]


@case("tree/.sweep/manifests/spec.json: not JSON: the manifest is corrupt")
def launch_manifest_not_json(tmp: Path) -> list[str]:
    manifest(tmp, '{"runs": {"x/s1": ')
    return ["launch", noop_spec(tmp, "x/s{seed}", "{label: [a]}"), "--cluster", "local", "--root", "tree"]


@case("pack: must be a positive integer or 'auto', got 0")
def launch_pack_zero(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: noop\npath: '{seed}'\naxes: [{x: [1]}]\npack: 0\n"), "--cluster", "local"]


# -- specs: experiment parameters ----------------------------------------------------------


@case("test_max_k: 40 distinct numbers cannot be drawn from vocab_n=16")
def launch_k_larger_than_vocabulary(tmp: Path) -> list[str]:
    return ["launch", sortgpt_spec(tmp, "test_max_k: 6", "test_max_k: 40"), "--cluster", "local"]


@case("n_layers must be an integer, got a string 'two'")
def launch_sortgpt_wrong_type(tmp: Path) -> list[str]:
    return ["launch", sortgpt_spec(tmp, "n_layers: 1", "n_layers: two"), "--cluster", "local"]


@case("length_mode: must be one of mix, curriculum, got 'spiral'")
def launch_sortgpt_unknown_length_mode(tmp: Path) -> list[str]:
    return ["launch", sortgpt_spec(tmp, "device: cpu", "device: cpu, length_mode: spiral"), "--cluster", "local"]


@case("n_embd: 16 is not divisible by n_heads=3")
def launch_sortgpt_heads_do_not_divide(tmp: Path) -> list[str]:
    return ["launch", sortgpt_spec(tmp, "n_layers: 1", "n_layers: 1, n_heads: 3"), "--cluster", "local"]


@case("feedback_mode: 'telepathy' is not one of")
def launch_coconut_unknown_feedback_mode(tmp: Path) -> list[str]:
    try:
        import coconut.experiment  # noqa: F401
    except ImportError as e:
        pytest.skip(f"coconut.experiment is not importable yet: {e}")
    return ["launch", spec(tmp, "experiment: coconut\npath: '{feedback_mode}/seed{seed}'\n"
                                "axes: [{feedback_mode: [continuous, telepathy]}]\n"), "--cluster", "local"]


@case("graph_min_path: needs at least graph_min_path + 3 = 8 nodes, graph_max_nodes is 6")
def launch_coconut_mini_graph_too_small_for_its_path(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: coconut\npath: '{feedback_mode}/seed{seed}'\n"
                                "fixed: {graph_min_nodes: 5, graph_max_nodes: 6, graph_min_path: 5, graph_max_path: 6}\n"
                                "axes: [{feedback_mode: [cot]}]\n"), "--cluster", "local"]


@case("compact_vocab: only for a model trained from scratch")
def launch_coconut_compact_vocab_on_pretrained(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: coconut\npath: '{feedback_mode}/seed{seed}'\n"
                                "fixed: {base_model: openai-community/gpt2, compact_vocab: true}\n"
                                "axes: [{feedback_mode: [cot]}]\n"), "--cluster", "local"]


# -- CLI arguments ------------------------------------------------------------------------


@case("Invalid value for '--cluster': 'kubernetes' is not one of 'slurm', 'local'")
def launch_unknown_cluster(tmp: Path) -> list[str]:
    return ["launch", sortgpt_spec(tmp), "--cluster", "kubernetes"]


@case("Missing option '--cluster'")
def launch_without_cluster(tmp: Path) -> list[str]:
    return ["launch", sortgpt_spec(tmp)]


@case("--concurrency")
def launch_zero_concurrency(tmp: Path) -> list[str]:
    return ["launch", sortgpt_spec(tmp), "--cluster", "local", "--concurrency", "0"]


@case("--only: 'use_mlp' is not name=value")
def launch_only_without_value(tmp: Path) -> list[str]:
    return ["launch", sortgpt_spec(tmp), "--cluster", "local", "--only", "use_mlp"]


@case("--only: unknown parameter 'depth'")
def status_only_unknown_parameter(tmp: Path) -> list[str]:
    return ["status", sortgpt_spec(tmp), "--only", "depth=3"]


@case("--only 'n_layers=7' matches no run")
def launch_only_matches_nothing(tmp: Path) -> list[str]:
    return ["launch", sortgpt_spec(tmp), "--cluster", "local", "--only", "n_layers=7"]


@case("No such command 'lanuch'")
def misspelled_command(tmp: Path) -> list[str]:
    return ["lanuch", sortgpt_spec(tmp)]


@case("Missing option '-o'")
def collect_without_output(tmp: Path) -> list[str]:
    return ["collect", sortgpt_spec(tmp)]


@case("not a run directory (no run.json)")
def logs_of_a_plain_directory(tmp: Path) -> list[str]:
    (tmp / "somewhere").mkdir()
    return ["logs", "somewhere"]


@case("tree/.sweep/locks: Not a directory")
def launch_root_below_a_file(tmp: Path) -> list[str]:
    (tmp / "tree").write_text("a file, not a folder")
    return ["launch", sortgpt_spec(tmp), "--cluster", "local", "--root", "tree/"]


@case("nowhere/TASK_MAPPING.md: cannot write: No such file or directory")
def mapping_into_a_missing_folder(tmp: Path) -> list[str]:
    return ["mapping", sortgpt_spec(tmp), "-o", "nowhere/TASK_MAPPING.md"]


# -- checkpoints to `sweep sort` -------------------------------------------------------------


@case("checkpoint missing.pt not found")
def sort_missing_checkpoint(tmp: Path) -> list[str]:
    checkpoint(tmp, "other.pt")
    return ["sort", "missing.pt", "3", "1"]


@case("truncated or corrupt")
def sort_truncated_checkpoint(tmp: Path) -> list[str]:
    path = checkpoint(tmp)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return ["sort", path.name, "3", "1"]


@case("is not a torch checkpoint (it is a JSON file starting")
def sort_foreign_checkpoint(tmp: Path) -> list[str]:
    (tmp / "model.pt").write_text('{"weights": [1, 2, 3]}')
    return ["sort", "model.pt", "3", "1"]


@case("it is a bare Python pickle, not a torch checkpoint")
def sort_bare_pickle(tmp: Path) -> list[str]:
    (tmp / "model.pt").write_bytes(pickle.dumps({"model": {}}, protocol=2))
    return ["sort", "model.pt", "3", "1"]


@case("refusing to load model.pt: it holds pickled Python objects")
def sort_malicious_checkpoint(tmp: Path) -> list[str]:
    checkpoint(tmp, state={"model": Evil(), "model_config": {}, "config": {}})
    return ["sort", "model.pt", "3", "1"]


@case("does not contain model state (key 'model')")
def sort_checkpoint_without_model(tmp: Path) -> list[str]:
    checkpoint(tmp, state={"weights": torch.zeros(3)})
    return ["sort", "model.pt", "3", "1"]


@case("not a sortgpt model checkpoint")
def sort_checkpoint_of_another_model(tmp: Path) -> list[str]:
    checkpoint(tmp, state={"model": {"w": torch.zeros(2)}, "model_config": {"depth": 3}, "config": {}})
    return ["sort", "model.pt", "3", "1"]


@case("refusing checkpoint model.pt: its sha256 is")
def sort_checkpoint_changed_after_save(tmp: Path) -> list[str]:
    from launch.checkpoint import save_checkpoint

    weights = torch.arange(8, dtype=torch.float32)
    save_checkpoint({"model": {"w": weights}}, tmp / "model.pt")
    data = (tmp / "model.pt").read_bytes()
    at = data.index(weights.numpy().tobytes())  # one bit of a weight: same size, still unpickles
    (tmp / "model.pt").write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1:])
    return ["sort", "model.pt", "3", "1"]


@case("refusing checkpoint model.pt: its sha256 is")
def answer_checkpoint_changed_after_save(tmp: Path) -> list[str]:
    sort_checkpoint_changed_after_save(tmp)
    return ["answer", "model.pt", "Is Tom a wumpus?"]


@case("refusing checkpoint model.pt: it is 100 bytes, its sidecar records")
def sort_checkpoint_truncated_after_save(tmp: Path) -> list[str]:
    from launch.checkpoint import save_checkpoint

    save_checkpoint({"model": {"w": torch.zeros(8)}}, tmp / "model.pt")
    (tmp / "model.pt").write_bytes((tmp / "model.pt").read_bytes()[:100])
    return ["sort", "model.pt", "3", "1"]


@case("unknown device 'tpu': use auto, cpu, cuda or cuda:N")
def sort_on_an_unknown_device(tmp: Path) -> list[str]:
    checkpoint(tmp)
    return ["sort", "model.pt", "3", "1", "--device", "tpu"]


@case("no GPU is visible")
def sort_on_an_absent_gpu(tmp: Path) -> list[str]:
    checkpoint(tmp)
    return ["sort", "model.pt", "3", "1", "--device", "cuda:7"]


def coconut_results(tmp: Path, corruption: str) -> list[str]:
    """A results table of one coconut run and its corruption.json (as `sweep gates` reads them)."""
    import pandas as pd

    pd.DataFrame({"feedback_mode": ["continuous"], "split": ["val"], "step": [1], "run_dir": ["r"],
                  "accuracy": [0.5], "loss": [1.0], "stage": [0]}).to_parquet(tmp / "r.parquet")
    (tmp / "r").mkdir()
    (tmp / "r" / "corruption.json").write_text(corruption)
    return ["gates", "r.parquet", "--root", "."]


@case("r/corruption.json: not a JSON file")
def gates_malformed_corruption_json(tmp: Path) -> list[str]:
    return coconut_results(tmp, '{"drop": 0.1')


@case("r/corruption.json: drop: must be a finite number, got 'big'")
def gates_corruption_drop_not_a_number(tmp: Path) -> list[str]:
    return coconut_results(tmp, '{"drop": "big"}')


@case("Invalid value for '--gate3-acc': 'nan' is not a finite number")
def gates_nan_threshold_flag(tmp: Path) -> list[str]:
    return [*coconut_results(tmp, '{"drop": 0.1}'), "--gate3-acc", "nan"]


# -- `sweep verify`: a bad argument is exit 2; bad files are exit 1 with the report ----------

@case("Path 'gone' does not exist")
def verify_missing_path(tmp: Path) -> list[str]:
    return ["verify", "gone"]


@case("test_max_k: 40 distinct numbers cannot be drawn from vocab_n=16")
def verify_invalid_spec(tmp: Path) -> list[str]:
    return ["verify", sortgpt_spec(tmp, "test_max_k: 6", "test_max_k: 40")]


@case("unloadable", code=1)
def verify_truncated_checkpoint(tmp: Path) -> list[str]:
    path = checkpoint(tmp)
    path.write_bytes(path.read_bytes()[:100])
    return ["verify", "model.pt"]


@case("refusing to load", code=1)
def verify_malicious_checkpoint(tmp: Path) -> list[str]:
    checkpoint(tmp, state={"model": Evil()})
    return ["verify", "."]


@case("mismatched", code=1)
def verify_checkpoint_changed_after_save(tmp: Path) -> list[str]:
    from launch.checkpoint import save_checkpoint

    path = tmp / "model.pt"
    save_checkpoint({"model": {"w": torch.zeros(8)}}, path)
    torch.save({"model": {"w": torch.ones(8)}}, path)  # same size, other bytes: only the hash tells
    return ["verify", "model.pt"]


@case("its sidecar describes 'other.pt', not this file", code=1)
def verify_sidecar_of_another_file(tmp: Path) -> list[str]:
    from launch.checkpoint import save_checkpoint

    save_checkpoint({"model": {"w": torch.zeros(8)}}, tmp / "other.pt")
    (tmp / "model.pt").write_bytes((tmp / "other.pt").read_bytes())  # copied with the sidecar, renamed
    (tmp / "model.pt.json").write_text((tmp / "other.pt.json").read_text())
    (tmp / "other.pt").unlink()
    (tmp / "other.pt.json").unlink()
    return ["verify", "model.pt"]


@case("its sidecar records run 0123456789ab, this directory holds run abc", code=1)
def verify_checkpoint_of_another_run(tmp: Path) -> list[str]:
    from launch.checkpoint import save_checkpoint

    name = run_dir(tmp, experiment="noop")
    save_checkpoint({"model": {"w": torch.zeros(8)}}, tmp / name / "model.pt", sidecar={"run_key": "0123456789ab"})
    return ["verify", name]


@case("its sidecar records another config than this run's: steps 5 (run: 1)", code=1)
def verify_checkpoint_of_another_config(tmp: Path) -> list[str]:
    from launch.checkpoint import save_checkpoint

    name = run_dir(tmp, experiment="noop")
    save_checkpoint({"model": {"w": torch.zeros(8)}}, tmp / name / "model.pt", sidecar={"config": {"steps": 5}})
    return ["verify", name]


# -- results files to `sweep plot` / `sweep summary` --------------------------------------------


@case("results.parquet: not a Parquet file")
def plot_csv_named_parquet(tmp: Path) -> list[str]:
    (tmp / "results.parquet").write_text("step,loss\n1,0.5\n")
    return ["plot", "results.parquet", "-o", "figs"]


@case("results.parquet: no such file")
def summary_missing_results(tmp: Path) -> list[str]:
    return ["summary", "results.parquet"]


@case("not a Parquet file")
def summary_truncated_parquet(tmp: Path) -> list[str]:
    import pandas as pd

    pd.DataFrame({"step": [1, 2], "loss": [0.5, 0.4]}).to_parquet(tmp / "r.parquet")
    data = (tmp / "r.parquet").read_bytes()
    (tmp / "r.parquet").write_bytes(data[: len(data) // 2])
    return ["summary", "r.parquet"]


@case("r.parquet: missing columns")
def summary_parquet_of_something_else(tmp: Path) -> list[str]:
    import pandas as pd

    pd.DataFrame({"name": ["a"], "price": [3.0]}).to_parquet(tmp / "r.parquet")
    return ["summary", "r.parquet"]


# -- `sweep resume` ------------------------------------------------------------------------------


@case("somewhere: not a run directory (no run.json)")
def resume_not_a_run_dir(tmp: Path) -> list[str]:
    (tmp / "somewhere").mkdir()
    return ["resume", "somewhere", "--steps", "10"]


@case("nowhere: not a run directory (does not exist)")
def resume_missing_dir(tmp: Path) -> list[str]:
    return ["resume", "nowhere", "--steps", "10"]


@case("run is not finished (state: running)")
def resume_running_run(tmp: Path) -> list[str]:
    return ["resume", run_dir(tmp, state="running"), "--steps", "10"]


@case("run is not finished (state: never started)")
def resume_unstarted_run(tmp: Path) -> list[str]:
    return ["resume", run_dir(tmp, state=None), "--steps", "10"]


@case("unreadable run file")
def resume_corrupt_run_json(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "run.json").write_text('{"experiment": "sortgpt", "conf')
    return ["resume", "run", "--steps", "10"]


@case("experiment 'noop' cannot extend a finished run (it has no extend hook)")
def resume_experiment_without_extend(tmp: Path) -> list[str]:
    return ["resume", run_dir(tmp, experiment="noop"), "--steps", "10"]


@case("run: no resume state (resume_<step>.pt) to continue from")
def resume_without_resume_state(tmp: Path) -> list[str]:
    return ["resume", run_dir(tmp), "--steps", "10"]


@case("the parent's final resume state is unloadable")
def resume_corrupt_resume_state(tmp: Path) -> list[str]:
    name = run_dir(tmp)
    (tmp / name / "resume_00000010.pt").write_bytes(b"not a checkpoint at all")
    return ["resume", name, "--steps", "10"]


@case("Invalid value for '--steps': 0 is not in the range x>=1")
def resume_zero_steps(tmp: Path) -> list[str]:
    return ["resume", run_dir(tmp), "--steps", "0"]


@case("Invalid value for '--steps': 'ten' is not a valid integer")
def resume_steps_not_a_number(tmp: Path) -> list[str]:
    return ["resume", run_dir(tmp), "--steps", "ten"]


@case("spec.yaml: resources.signal_delay_s: 120 s is not shorter than the time limit (resources.time_min: 2 min "
      "= 120 s)")
def launch_signal_lead_not_shorter_than_the_time_limit(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: noop\npath: '{seed}'\naxes: [{x: [1]}]\n"
                           "resources: {time_min: 2, signal_delay_s: 120}\n"), "--cluster", "slurm", "--dry-run"]


@case("sweep launch: --signal-delay: 60 s is not shorter than the time limit (--time 1 min = 60 s)")
def launch_signal_delay_flag_not_shorter_than_time(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: noop\npath: '{seed}'\naxes: [{x: [1]}]\n"), "--cluster", "slurm",
            "--root", "tree", "--time", "1", "--signal-delay", "60"]


@case("sweep launch: --retry: unknown state 'oom' (use any of: failed, cancelled, timeout, out_of_memory, node_fail, "
      "preempted)")
def launch_retry_unknown_state(tmp: Path) -> list[str]:
    return ["launch", spec(tmp, "experiment: noop\npath: '{seed}'\naxes: [{x: [1]}]\n"), "--cluster", "local",
            "--root", "tree", "--retry", "failed,oom"]


@case("Invalid value for '--lr': -0.1 is not in the range x>0")
def resume_negative_lr(tmp: Path) -> list[str]:
    return ["resume", run_dir(tmp), "--steps", "10", "--lr", "-0.1"]


@case("Missing option '--steps'")
def resume_without_steps(tmp: Path) -> list[str]:
    return ["resume", run_dir(tmp)]


# -- `sweep upload` / `sweep download` ------------------------------------------------------------


@case("--repo 'my repo' is neither a Hub repo id (owner/name) nor a local folder")
def upload_bad_repo_id(tmp: Path) -> list[str]:
    return ["upload", sortgpt_spec(tmp), "--repo", "my repo", "--dry-run"]


@case("no completed run of spec spec under tree (2 not started): nothing to upload")
def upload_nothing_completed(tmp: Path) -> list[str]:
    return ["upload", sortgpt_spec(tmp), "--root", "tree", "--repo", "someone/x", "--dry-run"]


@case("--repo nothing-here: no such folder")
def download_from_missing_folder(tmp: Path) -> list[str]:
    return ["download", "--repo", "./nothing-here", "--to", "out"]


@case("spec.yaml: headline: must be '<split>/<metric>'")
def launch_headline_without_a_split(tmp: Path) -> list[str]:
    return ["launch", sortgpt_spec(tmp, "seeds: [1]", "seeds: [1]\nheadline: exact_match_acc"), "--cluster", "local"]


@case("spec.yaml: retry_on[1]: 'out_of_memory' cannot be retried automatically")
def launch_retry_on_out_of_memory(tmp: Path) -> list[str]:
    return ["launch", sortgpt_spec(tmp, "seeds: [1]", "seeds: [1]\nretry_on: [preempted, out_of_memory]"),
            "--cluster", "local", "--dry-run"]


@case("spec.yaml: retry_on: must be a list of states")
def status_retry_on_not_a_list(tmp: Path) -> list[str]:
    return ["status", sortgpt_spec(tmp, "seeds: [1]", "seeds: [1]\nretry_on: node_fail")]


# -- the tests ------------------------------------------------------------------------------------


def test_at_least_thirty_distinct_cases() -> None:
    assert len({c.name for c in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("bad", [pytest.param(c, id=c.name) for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(tmp_path: Path, bad: Case) -> None:
    args = bad.setup(tmp_path)
    before = tree_snapshot(tmp_path)
    p = sweep(*args, cwd=tmp_path, check=False, env=ONE_THREAD, timeout=120)
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    assert tree_snapshot(tmp_path) == before, "the command created or changed files"
    assert not (tmp_path / "PWNED").exists()
    if bad.code == 2:
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
        assert bad.expect in lines[0]
        assert p.returncode == 2, p.stderr
    else:  # verify: the table on stdout names the bad file and why; the summary says FAILED
        assert bad.expect in p.stdout and "verify FAILED" in p.stdout, p.stdout
        assert p.returncode == 1, f"exit {p.returncode}"
