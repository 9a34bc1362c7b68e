"""sortgpt's AdamW step on CPU: the reference's fused kernel (adamw_impl: fused, the default) against
torch's per-parameter loop (fused_on_gpu), and a whole training step with each — interleaved rounds,
median, so the ratio holds on a noisy machine. Prints markdown rows:

    python bench/bench_sortgpt_adamw.py [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sortgpt.data import prediction_positions, sample_batch, sorted_half_loss
from sortgpt.experiment import EXPERIMENT
from sortgpt.model import GPT
from sortgpt.train import make_optimizer, model_config

SETUPS = {
    "reference (d 128, L2, MLP, LN, batch 4096, K 8)": {"batch_size": 4096, "train_max_k": 8},
    "reproduce (d 64, L1, no MLP, LN, batch 256, K 4)": {
        "vocab_n": 64, "n_embd": 64, "n_layers": 1, "use_mlp": False, "batch_size": 256, "train_min_k": 4,
        "train_max_k": 4, "test_min_k": 9, "test_max_k": 16},
}


def timings(cfg: dict, impl: str, reps: int) -> tuple[float, float]:
    """(seconds per optimizer.step, seconds per whole training step)."""
    cfg = cfg | {"adamw_impl": impl}
    torch.manual_seed(0)
    model = GPT(model_config(cfg))
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    k = int(cfg["train_max_k"])
    batch = sample_batch(int(cfg["batch_size"]), k, int(cfg["vocab_n"]), True, gen)
    opt_s = step_s = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        loss = sorted_half_loss(model(batch, positions=prediction_positions(k)), batch, k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        opt_s += t2 - t1
        step_s += t2 - t0
    return opt_s / reps, step_s / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| setup | AdamW step, fused | loop | fused / loop | training step, fused | loop | fused / loop |")
    print("|---|---|---|---|---|---|---|")
    for name, overrides in SETUPS.items():
        cfg = EXPERIMENT.defaults() | {"device": "cpu"} | overrides
        runs: dict[str, list[tuple[float, float]]] = {"fused": [], "fused_on_gpu": []}
        timings(cfg, "fused", 1), timings(cfg, "fused_on_gpu", 1)  # warm-up
        for _ in range(args.rounds):
            for impl in runs:
                runs[impl].append(timings(cfg, impl, args.reps))
        f_opt, l_opt = (statistics.median(o for o, _ in runs[i]) for i in ("fused", "fused_on_gpu"))
        f_step, l_step = (statistics.median(s for _, s in runs[i]) for i in ("fused", "fused_on_gpu"))
        print(f"| {name} | {f_opt * 1e3:.2f} ms | {l_opt * 1e3:.2f} ms | {f_opt / l_opt:.2f} | "
              f"{f_step * 1e3:.1f} ms | {l_step * 1e3:.1f} ms | {f_step / l_step:.2f} |")


if __name__ == "__main__":
    main()
