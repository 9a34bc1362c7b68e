"""Training iterations per second of one sortgpt run at the reference config.

Reference: vocab 128, d 128, 1 head, 2 layers, MLP and LayerNorm on, no positional
embedding, batch 4096, K drawn from 2–16 ("mix") — the same step as
sortgpt/train.py (sample, forward on the sorted half, backward, AdamW), with bf16
autocast and TF32 on GPU. Evaluation is not timed. Prints one markdown row per
device:

    python bench/bench_sortgpt_train.py [--iters 5] [--devices cpu,cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from sortgpt.data import pick_train_k, prediction_positions, sample_batch, sorted_half_loss
from sortgpt.experiment import EXPERIMENT
from sortgpt.model import GPT
from sortgpt.train import autocast_for, generator_for, lr_at, make_optimizer, model_config


def iterations_per_second(cfg: dict, device: torch.device, iters: int, warmup: int) -> float:
    torch.manual_seed(cfg["seed"])
    model = GPT(model_config(cfg)).to(device)
    optimizer = make_optimizer(model, cfg, device)
    data_generator = generator_for(device, cfg["seed"])
    k_generator = generator_for(torch.device("cpu"), cfg["seed"] + 1)

    def step(itr: int) -> None:
        k = pick_train_k(itr, cfg, k_generator)
        batch = sample_batch(cfg["batch_size"], k, cfg["vocab_n"], cfg["no_dup"], data_generator)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(itr, cfg)
        with autocast_for(device):
            loss = sorted_half_loss(model(batch, positions=prediction_positions(k)), batch, k)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for itr in range(warmup):
        step(itr)
    sync()
    t0 = time.perf_counter()
    for itr in range(warmup, warmup + iters):
        step(itr)
    sync()
    return iters / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5, help="timed iterations on CPU (GPU: 40x as many)")
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped when absent")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--train-k", default="2-16", help="K range, e.g. 2-16 or 4-4")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lo, hi = (int(x) for x in args.train_k.split("-"))
    cfg = EXPERIMENT.defaults() | {"train_min_k": lo, "train_max_k": hi, "n_layers": 2, "use_mlp": True,
                                   "use_layernorm": True, "batch_size": 4096}
    print("| benchmark | device | config | it/s | est. h per 40k-iter run |")
    print("|---|---|---|---|---|")
    for name in args.devices.split(","):
        if name == "cuda" and not torch.cuda.is_available():
            continue
        device = torch.device(name)
        gpu = device.type == "cuda"
        if gpu:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        rate = iterations_per_second(cfg, device, args.iters * (40 if gpu else 1), warmup=10 if gpu else 1)
        what = torch.cuda.get_device_name(device) if gpu else f"{platform.processor() or 'cpu'}, " \
                                                                f"{torch.get_num_threads()} threads"
        print(f"| sortgpt train step | {what} | batch 4096, K {lo}-{hi}, L2 MLP LN, d 128 | {rate:.2f} "
              f"| {cfg['max_iters'] / rate / 3600:.1f} |")


if __name__ == "__main__":
    main()
