"""`sweep evaluate TREE -o results.parquet` (issue 13): sweep trees and sort-llm trees ->
the rows `sweep collect` writes; `sweep summary` and `sweep plot` read them unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from analysis.cli import plot_command, summary_command
from launch.collect import PROVENANCE, RECORD, collect
from launch.experiment import RunContext
from launch.store import Store, write_json
from launch.tasks import Run, run_key
from sortgpt.cli import evaluate_command
from sortgpt.model import GPT
from sortgpt.naming import checkpoint_name
from sortgpt.train import model_config, train
from tests.sortgpt.reference_files import reference_file

SPLITS = ("test", "gen", "test_ar", "gen_ar")


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sweep_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Run]]:
    """Two trained runs of one architecture (seeds 1, 2) in a sweep tree with run.json and state.json."""
    from sortgpt.experiment import EXPERIMENT

    root = tmp_path_factory.mktemp("tree")
    runs = []
    for task, seed in enumerate((1, 2)):
        cfg = EXPERIMENT.defaults() | {
            "vocab_n": 16, "n_embd": 16, "n_layers": 1, "train_min_k": 2, "train_max_k": 4, "test_min_k": 5,
            "test_max_k": 6, "batch_size": 32, "max_iters": 40, "warmup_iters": 5, "max_lr": 3e-3, "eval_every": 10,
            "eval_samples": 20, "checkpoint_iter": 21, "save_every": 0, "device": "cpu", "seed": seed}
        rel = f"tiny/g/task_{task:04d}/seed{seed}"
        run = Run(spec="tiny", experiment="sortgpt", group="g", task=task, seed=seed, rel_dir=rel,
                  run_key=run_key("sortgpt", cfg), config=cfg, params={})
        (root / rel).mkdir(parents=True)
        write_json(root / rel / "run.json", run.to_json())
        train(cfg, RunContext(run_dir=root / rel))
        write_json(root / rel / "state.json", {"state": "completed", "job_id": f"7_{task}", "git_commit": "abc",
                                               "host": "h", "started_at": 1.7e9, "ended_at": 1.7e9 + 5,
                                               "wall_s": 5.0})
        runs.append(run)
    return root, runs


def evaluate(*args: Any) -> Any:
    return CliRunner().invoke(evaluate_command, [str(a) for a in args])


def test_evaluating_a_sweep_tree_reproduces_the_runs_own_evaluations(sweep_tree, tmp_path: Path) -> None:
    """Same lists (the (seed, step) generators), same model, batched: the exact match of
    every split and K at the Checkpoint_ (step 21) and Final_ (step 40) files equals what
    training logged at those steps."""
    root, runs = sweep_tree
    out = tmp_path / "results.parquet"
    result = evaluate(root, "-o", out)
    assert result.exit_code == 0, result.output
    assert "evaluated 4 checkpoints (2 runs)" in result.output
    table = pd.read_parquet(out)
    assert set(table["step"]) == {21, 40} and set(table["split"]) == set(SPLITS)
    compared = 0
    for run in runs:
        logged = {(r["step"], r["split"], r["length"]): r["metrics"] for r in records(root / run.rel_dir)}
        mine = table[table["run_key"] == run.run_key]
        assert set(mine["run_dir"]) == {run.rel_dir} and set(mine["seed"]) == {run.seed}
        assert set(mine["job_id"]) == {f"7_{run.task}"} and set(mine["spec"]) == {"tiny"}
        for row in mine.itertuples():
            if row.split.endswith("_ar") and row.step != 40:
                continue  # training runs free-running evaluation at the end only
            expected = logged[(row.step, row.split, row.length)]
            assert row.exact_match_acc == expected["exact_match_acc"], (row.step, row.split, row.length)
            assert row.token_acc == expected["token_acc"]
            if row.split in ("test", "gen"):
                assert row.loss == pytest.approx(expected["loss"], rel=1e-5, abs=1e-6)
            compared += 1
    assert compared == 2 * (5 + 5 * 2)  # runs x (5 Ks teacher-forced at 21; both kinds at 40)


def test_the_table_has_collects_schema(sweep_tree, tmp_path: Path) -> None:
    """The same tree through `sweep collect` and `sweep evaluate`: every column evaluate
    writes is a collect column of the same type (collect has more: the train split's)."""
    root, runs = sweep_tree
    collect(runs, Store(root), tmp_path / "collected.parquet")
    assert evaluate(root, "-o", tmp_path / "evaluated.parquet").exit_code == 0
    collected = pd.read_parquet(tmp_path / "collected.parquet")
    evaluated = pd.read_parquet(tmp_path / "evaluated.parquet")
    assert list(evaluated.columns[:len(PROVENANCE + RECORD)]) == PROVENANCE + RECORD
    assert set(evaluated.columns) <= set(collected.columns)
    for column in evaluated.columns:
        assert evaluated[column].dtype == collected[column].dtype, column
    final = collected[collected["step"] == 40].merge(evaluated, on=["run_key", "step", "split", "length"])
    assert len(final) == 2 * 2 * 5 and (final["exact_match_acc_x"] == final["exact_match_acc_y"]).all()


def build_reference_tree(root: Path, make_config) -> None:
    """root/<group>/task_XXXX/saved_models as sort-llm leaves it: task_0000's seeds 1337,
    2337, 3337 wrote the same names (Checkpoint_ left by 2337, Final_ by 3337), W&B kept all
    three; task_0001 (another architecture) has a Final_ file without train_config."""
    for group, kmax in (("len_gen_k3", 3), ("len_gen_k4", 4)):
        cfg = make_config(train_max_k=kmax, n_layers=1, use_mlp=False)
        task = root / group / "task_0000"
        for kind, step, seed in (("Checkpoint", 21, 2337), ("Final", 40, 3337)):
            torch.manual_seed(seed + kmax)
            reference_file(task / "saved_models" / checkpoint_name(kind, cfg, step), GPT(model_config(cfg)),
                           cfg | {"seed": seed}, step, final=kind == "Final")
        for seed in (1337, 2337, 3337):
            config_yaml = task / "wandb" / "wandb" / f"run-{seed}" / "files" / "config.yaml"
            config_yaml.parent.mkdir(parents=True)
            config_yaml.write_text(f"seed:\n  desc: null\n  value: {seed}\n")
        other = make_config(train_max_k=kmax, n_layers=2, use_mlp=True)
        torch.manual_seed(kmax)
        reference_file(root / group / "task_0001" / "saved_models" / checkpoint_name("Final", other, 40),
                       GPT(model_config(other)), other, 40, with_config=False)


def test_a_sort_llm_tree_evaluates_reports_overwritten_seeds_and_feeds_summary_and_plot(
        tmp_path: Path, make_config) -> None:
    root = tmp_path / "grid_outputs"
    build_reference_tree(root, make_config)
    out = tmp_path / "results.parquet"
    result = evaluate(root, "-o", out)
    assert result.exit_code == 0, result.output
    assert ("note: len_gen_k3/task_0000: W&B logged runs of seeds 1337, 2337, 3337 but the checkpoints left are "
            "of seeds 2337, 3337: seed 1337 was overwritten (same file names); not evaluated") in result.output
    assert "its Checkpoint_ and Final_ files are of different seeds (2337, 3337)" in result.output
    assert "no train_config: configuration read from the file name; the seed is unknown" in result.output
    table = pd.read_parquet(out)
    runs = table.groupby("run_key").agg(seed=("seed", "first"), step=("step", "max"), task=("task", "first"),
                                        group=("group", "first"), n_layers=("n_layers", "first"))
    assert len(runs) == 6  # per group: seed 2337 @21, seed 3337 @40, the unknown-seed run
    assert sorted(runs["seed"].dropna().astype(int)) == [2337, 2337, 3337, 3337]
    assert runs["seed"].isna().sum() == 2 and set(runs.loc[runs["seed"].isna(), "n_layers"]) == {2}
    assert set(table["spec"]) == {"sort-llm"} and set(table["group"]) == {"len_gen_k3", "len_gen_k4"}
    assert set(table.loc[table["split"] == "gen", "length"]) == {5, 6}
    assert table["exact_match_acc"].between(0, 1).all()

    summary = CliRunner().invoke(summary_command, [str(out)])
    assert summary.exit_code == 0, summary.output
    assert "## sortgpt: out-of-distribution exact match" in summary.output
    plots = CliRunner().invoke(plot_command, [str(out), "-o", str(tmp_path / "plots")])
    assert plots.exit_code == 0, plots.output
    assert list((tmp_path / "plots").glob("*.png"))


def test_test_k_overrides_the_range(tmp_path: Path, make_config) -> None:
    root = tmp_path / "tree"
    build_reference_tree(root, make_config)
    out = tmp_path / "r.parquet"
    assert evaluate(root / "len_gen_k4", "-o", out, "--test-k", "7-9", "--samples", "5").exit_code == 0
    table = pd.read_parquet(out)
    assert set(table.loc[table["split"].isin(["gen", "gen_ar"]), "length"]) == {7, 8, 9}
    assert set(table.loc[table["split"] == "test", "length"]) == {2, 3, 4}


@pytest.mark.parametrize(("setup", "message"), [
    ("corrupt", "is not a torch checkpoint"),
    ("positions", "model_config.max_seq_len: K=9 needs 19 positions, this model's positional table has 13"),
    ("empty", "no Checkpoint_/Final_ files"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path: Path, make_config, setup: str,
                                                          message: str) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    cfg = make_config(no_pos_emb=False)
    path = root / "g" / "task_0000" / "saved_models" / checkpoint_name("Final", cfg, 40)
    if setup == "corrupt":
        path.parent.mkdir(parents=True)
        path.write_text("not a checkpoint")
    elif setup == "positions":
        reference_file(path, GPT(model_config(cfg)), cfg, 40)
    out = tmp_path / "r.parquet"
    result = evaluate(root, "-o", out, "--test-k", "7-9")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    if setup != "empty":
        assert str(path) in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("arch", [dict(n_layers=2, use_mlp=True, use_layernorm=True, no_pos_emb=True),
                                  dict(n_layers=1, use_mlp=False, use_layernorm=False, no_pos_emb=True),
                                  dict(n_layers=2, use_mlp=True, use_layernorm=True, no_pos_emb=False, n_heads=2)])
def test_cached_decoding_generates_what_greedy_sort_does(make_config, arch: dict) -> None:
    """packed_generate (key/value cache, n runs at once) against train.greedy_sort (the
    whole sequence again for every token, one model) on 3 models of one architecture."""
    from sortgpt.packed import Layout, packed_generate
    from sortgpt.train import greedy_sort

    cfg = make_config(**arch)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = GPT(model_config(cfg)).eval()
        with torch.no_grad():  # larger than the init: an argmax that depends on the context
            for p in model.parameters():
                p.normal_(std=0.3)
        models.append(model)
    layout = Layout(models[0])
    weights = torch.stack([layout.flatten(m) for m in models])
    k = cfg["test_max_k"]
    g = torch.Generator().manual_seed(0)
    prompts = torch.stack([torch.cat([torch.rand(16, cfg["vocab_n"], generator=g).topk(k, dim=1).indices,
                                      torch.full((16, 1), cfg["vocab_n"])], dim=1) for _ in models])
    generated = packed_generate(layout.unflatten(weights), prompts, k, models[0].config)
    distinct = []
    for i, model in enumerate(models):
        expected = greedy_sort(model, prompts[i], k, torch.device("cpu"))
        assert torch.equal(generated[i], expected)
        distinct.append(len({tuple(row) for row in expected.tolist()}))
    assert max(distinct) > 1  # some model's output depends on the prompt
