"""`sweep evaluate` throughput (issue 13): checkpoints per second on a sort-llm-layout tree.

Builds trees in the reference's on-disk format (root/<group>/task_XXXX/saved_models/*.pt,
sortgpt/reference.py's writer) with freshly initialised weights — evaluation cost does not
depend on the weights — and times ``evaluate_tree`` end to end (find, load, evaluate
teacher-forced + free-running, write Parquet), batched per architecture, and the same models
evaluated one at a time for the packing speedup.

    python bench/bench_sortgpt_evaluate.py [--threads 1] [--n 24] [--reference-n 4]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch

from sortgpt.evaluate import evaluate_models, evaluate_tree, find_checkpoints, load_models
from sortgpt.experiment import EXPERIMENT
from sortgpt.model import GPT
from sortgpt.naming import checkpoint_name
from sortgpt.reference import to_reference_state
from sortgpt.train import model_config

# sweeps/ci_sortgpt.yaml's model and evaluation (vocab 32, d 32, test K 7-10, 100 lists per K)
CI = {"vocab_n": 32, "n_embd": 32, "use_mlp": True, "use_layernorm": True, "test_min_k": 7, "test_max_k": 10,
      "max_iters": 300, "eval_every": 50, "eval_samples": 100, "checkpoint_iter": 151, "device": "cpu"}
CI_TASKS = [(layers, lo, hi, mode) for layers in (2, 1) for lo, hi, mode in ((2, 6, "mix"), (2, 6, "curriculum"),
                                                                              (6, 6, "mix"))]
# the seed-003 grid's model and evaluation (vocab 128, d 128, test K 17-32, 100 lists per K)
REFERENCE = {"vocab_n": 128, "n_embd": 128, "n_layers": 2, "use_mlp": True, "use_layernorm": True,
             "train_min_k": 2, "train_max_k": 8, "test_min_k": 17, "test_max_k": 32, "max_iters": 40000,
             "eval_every": 250, "eval_samples": 100, "checkpoint_iter": 20001, "device": "cpu"}


def build_tree(root: Path, n: int, base: dict, tasks: list[tuple] | None) -> None:
    """n files: Checkpoint_ and Final_ of runs over the tasks and seeds, as sort-llm lays them out."""
    files = 0
    for seed in itertools.count(1337, 1000):
        for task, spec in enumerate(tasks or [None]):
            cfg = EXPERIMENT.defaults() | base | {"seed": seed}
            if spec is not None:
                layers, lo, hi, mode = spec
                cfg |= {"n_layers": layers, "train_min_k": lo, "train_max_k": hi, "length_mode": mode}
            torch.manual_seed(seed + task)
            model = GPT(model_config(cfg))
            # seeds go in separate task trees here (sort-llm would overwrite them in one)
            saved = root / f"seed{seed}" / "len_gen" / f"task_{task:04d}" / "saved_models"
            saved.mkdir(parents=True, exist_ok=True)
            for kind, step in (("Checkpoint", int(cfg["checkpoint_iter"])), ("Final", int(cfg["max_iters"]))):
                torch.save(to_reference_state(model, cfg, step), saved / checkpoint_name(kind, cfg, step))
                files += 1
                if files == n:
                    return


def time_tree(root: Path, out: Path) -> tuple[int, float]:
    start = time.perf_counter()
    report = evaluate_tree(root, out)
    return report.checkpoints, time.perf_counter() - start


def time_one_at_a_time(root: Path) -> float:
    models, _ = load_models(find_checkpoints(root), root)
    start = time.perf_counter()
    with torch.no_grad():
        for m in models:
            evaluate_models([m], torch.device("cpu"))
    return time.perf_counter() - start


def time_batched_only(root: Path) -> float:
    models, _ = load_models(find_checkpoints(root), root)
    start = time.perf_counter()
    with torch.no_grad():
        evaluate_models(models, torch.device("cpu"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=24, help="CI-sized checkpoints")
    parser.add_argument("--reference-n", type=int, default=4, help="reference-sized checkpoints (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        ci = Path(tmp) / "ci"
        build_tree(ci, args.n, CI, CI_TASKS)
        n, seconds = time_tree(ci, Path(tmp) / "ci.parquet")
        print(f"CI-sized tree, end to end: {n} checkpoints in {seconds:.2f} s = {n / seconds:.2f} checkpoints/s; "
              f"252 would take ~{252 * seconds / n:.0f} s")
        batched, single = time_batched_only(ci), time_one_at_a_time(ci)
        print(f"CI-sized evaluation only: batched {batched:.2f} s, one at a time {single:.2f} s "
              f"({single / batched:.2f}x)")
        if args.reference_n:
            ref = Path(tmp) / "ref"
            build_tree(ref, args.reference_n, REFERENCE, None)
            n, seconds = time_tree(ref, Path(tmp) / "ref.parquet")
            print(f"reference-sized (d128 L2 MLP, K 2-8 + 17-32, 100 lists/K): {n} checkpoints in {seconds:.1f} s "
                  f"= {n / seconds:.3f} checkpoints/s; 252 would take ~{252 * seconds / n / 60:.0f} min")


if __name__ == "__main__":
    main()
