"""Results files for the analysis tests.

``results_parquet`` is the one fixture the generic tests read, in two versions: a
synthetic table shaped exactly like the output of ``sweep collect`` (schema in the common
brief) built here from a small seeded generator, and ``real_sweep``: a tiny sortgpt sweep
really launched on the local executor and collected with ``sweep collect`` (skipped, with
the reason, where the harness CLI is not there). Swap or add versions here.

The synthetic sweep is deliberately partial and messy, like a real one mid-flight:
one run still ``running`` (fewer steps), one (group, task, seed) never started, and one
rerun whose metric records appear twice in the table.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SORTGPT_STEPS = [0, 50, 100]
SORTGPT_GEN_K = [17, 18, 19, 20]
SORTGPT_TRAIN_K = [4, 8]
SORTGPT_SEEDS = [1337, 2337]
# (length configuration, length_mode, train_min_k(train K)): "fixed" is train_min_k == train_max_k.
SORTGPT_CONFIGS = [("fixed", "mix", None), ("mix", "mix", 2), ("curriculum", "curriculum", 2)]
SORTGPT_ARCHS = [(n_layers, use_mlp, use_ln) for n_layers in (1, 2) for use_mlp in (True, False)
                 for use_ln in (True, False)]

COCONUT_MODES = ["continuous", "frozen", "cot", "no_cot"]
COCONUT_MODEL_NAME = {"continuous": "coconut", "frozen": "pause-frozen", "cot": "cot", "no_cot": "no-cot"}
COCONUT_SEEDS = [0, 1]
COCONUT_EPOCHS = 6
COCONUT_ITERS_PER_EPOCH = 5

# The partial-sweep defects, by (group, task, seed) of the sortgpt sweep.
RUNNING_RUN = ("len_gen_k8", 5, 2337)  # stopped after step 50, state "running"
NEVER_STARTED = ("len_gen_k4", 7, 2337)  # absent from the table
RERUN_DUPLICATED = ("len_gen_k4", 0, 1337)  # every record twice (a rerun that re-logged them)


def _run_key(*parts: object) -> str:
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def _provenance(spec: str, experiment: str, group: str, task: int, seed: int, run_dir: str,
                state: str, started: float) -> dict:
    return {
        "spec": spec, "experiment": experiment, "group": group, "task": task, "seed": seed,
        "run_key": _run_key(spec, group, task, seed), "run_dir": run_dir,
        "job_id": f"4242_{task}", "git_commit": "0123abcd", "host": "node1",
        "started_at": datetime.fromtimestamp(started, tz=timezone.utc),
        "ended_at": datetime.fromtimestamp(started + 600, tz=timezone.utc),
        "wall_s": 600.0, "state": state,
    }


def sortgpt_rows(rng: np.random.Generator) -> list[dict]:
    """One row per metrics record of a 2-train-K x 8-architecture x 3-configuration x 2-seed sweep."""
    rows: list[dict] = []
    t0 = 1.7e9
    for train_k in SORTGPT_TRAIN_K:
        group = f"len_gen_k{train_k}"
        tasks = [(arch, cfg) for arch in SORTGPT_ARCHS for cfg in SORTGPT_CONFIGS]
        for task, ((n_layers, use_mlp, use_ln), (length_config, length_mode, min_k)) in enumerate(tasks):
            for seed in SORTGPT_SEEDS:
                if (group, task, seed) == NEVER_STARTED:
                    continue
                running = (group, task, seed) == RUNNING_RUN
                steps = SORTGPT_STEPS[:2] if running else SORTGPT_STEPS
                ln_dir = "with_layernorm" if use_ln else "without_layernorm"
                run_dir = f"{ln_dir}/{length_config}/{group}/task_{task:04d}/seed{seed}"
                prov = _provenance("len_gen", "sortgpt", group, task, seed, run_dir,
                                   "running" if running else "completed", t0)
                config = {
                    "vocab_n": 64, "n_embd": 32, "n_heads": 2, "n_layers": n_layers, "use_mlp": use_mlp,
                    "use_layernorm": use_ln, "no_pos_emb": False, "length_mode": length_mode,
                    "train_min_k": train_k if min_k is None else min_k, "train_max_k": train_k,
                    "test_min_k": 2, "test_max_k": SORTGPT_GEN_K[-1], "no_dup": True,
                    "max_iters": SORTGPT_STEPS[-1], "batch_size": 8, "max_lr": 1e-3, "min_lr": 1e-4,
                    "warmup_iters": 10, "curriculum_warmup_iters": 10, "curriculum_span_iters": 50,
                    "eval_every": 50, "eval_samples": 16, "checkpoint_iter": "[]", "save_every": 50,
                    "keep_resume": True, "seed": seed, "device": "cpu",
                }
                # A skill level that grows with train K, MLP, layers and training; noise per seed.
                skill = (0.45 + 0.06 * train_k + 0.15 * use_mlp + 0.1 * (n_layers - 1) + 0.05 * use_ln
                         + {"fixed": -0.25, "mix": 0.0, "curriculum": 0.05}[length_config])
                t = t0
                for step in steps:
                    progress = step / SORTGPT_STEPS[-1]
                    t += 30.0
                    rows.append({**prov, **config, "step": step, "split": "train", "length": None,
                                 "time": t, "loss": 3.0 * (1.2 - progress) + rng.uniform(0, 0.1),
                                 "token_acc": min(1.0, 0.3 + 0.6 * progress),
                                 "exact_match_acc": min(1.0, 0.9 * progress * skill + rng.uniform(0, 0.05)),
                                 "K_mean": (config["train_min_k"] + train_k) / 2,
                                 "K_min": float(config["train_min_k"]), "K_max": float(train_k),
                                 "lr": 1e-3})
                    for split, ks in (("test", range(2, train_k + 1)), ("gen", SORTGPT_GEN_K)):
                        for k in ks:
                            ood_penalty = 0.015 * (k - train_k) if split == "gen" else 0.0
                            em = float(np.clip(progress * (skill - ood_penalty) + rng.normal(0, 0.05), 0, 1))
                            rows.append({**prov, **config, "step": step, "split": split, "length": k,
                                         "time": t, "exact_match_acc": em, "token_acc": min(1.0, em + 0.2),
                                         "loss": 2.0 * (1 - em) + 0.01, "pos_abs_err_sum": 10 * (1 - em),
                                         "pos_abs_err_mean": (1 - em)})
                if (group, task, seed) == RERUN_DUPLICATED:
                    mine = [r for r in rows if r["run_key"] == prov["run_key"]]
                    rows.extend({**r, "time": r["time"] + 3600.0} for r in mine)
    return rows


def coconut_rows(rng: np.random.Generator) -> list[dict]:
    rows: list[dict] = []
    t0 = 1.7e9
    for task, mode in enumerate(COCONUT_MODES):
        for seed in COCONUT_SEEDS:
            run_dir = f"coconut/{mode}/task_{task:04d}/seed{seed}"
            prov = _provenance("coconut_ci", "coconut", "coconut", task, seed, run_dir, "completed", t0)
            config = {
                "feedback_mode": mode, "model_name": COCONUT_MODEL_NAME[mode], "base_model": "gpt2-tiny",
                "n_layer": 2, "n_embd": 32, "n_head": 2, "c_thought": 1, "epochs_per_stage": 2,
                "max_latent_stage": 2, "num_epochs": COCONUT_EPOCHS, "lr": 1e-4, "weight_decay": 0.01,
                "batch_size": 4, "grad_accum": 1, "uniform_prob": 0.0, "pad_latent_to_max": False,
                "train_size": 64, "seed": seed, "device": "cpu",
            }
            quality = {"continuous": 0.9, "frozen": 0.6, "cot": 0.8, "no_cot": 0.4}[mode]
            t = t0
            for epoch in range(COCONUT_EPOCHS):
                stage = min(epoch // 2, 2)
                for i in range(COCONUT_ITERS_PER_EPOCH):
                    t += 1.0
                    rows.append({**prov, **config, "step": epoch * COCONUT_ITERS_PER_EPOCH + i,
                                 "split": "train", "length": None, "time": t,
                                 "loss": 2.5 / (1 + epoch + i / 5) + rng.uniform(0, 0.05), "stage": float(stage)})
                # Accuracy dips after each stage switch, then recovers.
                acc = float(np.clip(quality * (epoch + 1) / COCONUT_EPOCHS - 0.1 * (epoch % 2 == 0 and epoch > 0)
                                    + rng.normal(0, 0.03), 0, 1))
                rows.append({**prov, **config, "step": epoch, "split": "val", "length": None, "time": t,
                             "accuracy": acc, "loss": 2.0 * (1 - acc) + 0.05})
    return rows


def write_results(path: Path, rows: list[dict]) -> Path:
    """Write rows as ``sweep collect`` does: metric columns float, ``length`` nullable Int64."""
    frame = pd.DataFrame(rows)
    frame["length"] = frame["length"].astype("Int64")
    for col in ("step", "task", "seed"):
        frame[col] = frame[col].astype("int64")
    for col in ("loss", "token_acc", "exact_match_acc", "K_mean", "K_min", "K_max", "lr", "pos_abs_err_sum",
                "pos_abs_err_mean", "accuracy", "stage"):
        if col in frame:
            frame[col] = frame[col].astype("float64")
    frame.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="session")
def synthetic_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both families in one table, as when several specs share one checkpoint tree."""
    rng = np.random.default_rng(0)
    rows = sortgpt_rows(rng) + coconut_rows(rng)
    return write_results(tmp_path_factory.mktemp("results") / "results.parquet", rows)


# A real sweep, as small as sortgpt allows: 2 length configurations (fixed K=3, curriculum
# K<=4) x 2 seeds, 20 iterations, evaluated at steps 1, 11 and 20. Its cost is mostly
# process start-up (torch import) of the 4 runs, 2 at a time.
TINY_SORTGPT_SPEC = """
experiment: sortgpt
name: tiny_sortgpt
group: "k{train_min_k}-{train_max_k}_{length_mode}"
path: "{group}/task_{task:04d}/seed{seed}"
fixed: {vocab_n: 16, n_embd: 16, n_heads: 1, n_layers: 1, use_mlp: true, use_layernorm: true,
        test_min_k: 5, test_max_k: 6, max_iters: 20, batch_size: 16, max_lr: 3.0e-3, min_lr: 1.0e-4,
        warmup_iters: 2, curriculum_span_iters: 10, eval_every: 10, eval_samples: 16,
        checkpoint_iter: 0, save_every: 0, keep_resume: 1, device: cpu}
axes:
  - {params: [train_min_k, train_max_k, length_mode], values: [[3, 3, mix], [2, 4, curriculum]],
     group: true}
seeds: [1, 2]
"""


TINY_COCONUT_SPEC = """
experiment: coconut
name: tiny_coconut
group: "{model_name}"
path: "coconut/{group}/seed{seed}"
fixed: {base_model: "", n_layer: 1, n_embd: 32, n_head: 2, c_thought: 1, epochs_per_stage: 1,
        max_latent_stage: 1, num_epochs: 2, lr: 1.0e-3, batch_size: 16, grad_accum: 1, train_size: 32,
        val_size: 8, max_new_tokens: 24, eval_batch_size: 8, keep_checkpoints: 1, device: cpu}
axes:
  - params: [feedback_mode, model_name]
    values: [[continuous, coconut], [pause_curriculum, pause-curriculum]]
    group: true
seeds: [0, 1]
"""


def _sweep(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launch.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _real_sweep_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Launch the tiny sortgpt sweep on the local executor and `sweep collect` it."""
    help_text = _sweep("--help")
    if help_text.returncode != 0 or "collect" not in help_text.stdout or "launch" not in help_text.stdout:
        pytest.skip("`sweep launch` / `sweep collect` are not available yet")
    work = tmp_path_factory.mktemp("real_sweep")
    spec, root = work / "tiny_sortgpt.yaml", work / "tree"
    spec.write_text(TINY_SORTGPT_SPEC)
    coconut_spec = work / "tiny_coconut.yaml"
    coconut_spec.write_text(TINY_COCONUT_SPEC)
    for s in (spec, coconut_spec):
        launched = _sweep("launch", s, "--cluster", "local", "--root", root, "--concurrency", "2")
        assert launched.returncode == 0, launched.stderr
    waited = _sweep("wait", spec, coconut_spec, "--root", root, "--interval", "1", "--timeout", "400", timeout=450)
    assert waited.returncode == 0, f"tiny sweeps did not all complete: {waited.stdout} {waited.stderr}"
    out = work / "results.parquet"
    collected = _sweep("collect", spec, coconut_spec, "--root", root, "-o", out)
    assert collected.returncode == 0, collected.stderr
    return out


@pytest.fixture(scope="session", params=["synthetic", pytest.param("real_sweep", marks=pytest.mark.slow)])
def results_parquet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == "synthetic":
        return request.getfixturevalue("synthetic_results")
    return _real_sweep_results(tmp_path_factory)
