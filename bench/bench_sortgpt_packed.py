"""Run-iterations per second: sortgpt runs packed N to a process vs one run per process.

"One run per process" is the single-run training step of sortgpt/train.py (sample,
forward on the sorted half, backward, AdamW; bf16 autocast and TF32 on GPU). A
pack of N runs (seeds differ, so their K differ within a step) does N run-
iterations per pack iteration (sortgpt/packed.py: Pack.train_step, with its K
buckets). Evaluation and checkpoint writes are not timed (both paths do the same
amount of them). All rows of a device are measured in one invocation, in
interleaved rounds (median of --rounds), so the ratios are side by side.

    python bench/bench_sortgpt_packed.py [--packs 1,4,16,64] [--devices cpu,cuda] [--compile [MODE]]
                                         [--cpu-setups ci,micro,reproduce] [--threads N]

CPU rows use the CI-sized model (vocab 32, d 32, 2 layers, MLP, LayerNorm,
batch 64, K 2–6; compute-bound on a CPU core) and the unit tests' micro model
(overhead-bound); GPU rows the reference config (vocab 128, d 128, 2 layers,
MLP, LayerNorm, batch 4096) at K = 4 and K 2–16, plus the GPU-hours the whole
LayerNorm grid (252 runs x 40k iterations) would take at the measured rate.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from launch.experiment import RunContext
from sortgpt.data import pick_train_k, prediction_positions, sample_batch, sorted_half_loss
from sortgpt.experiment import EXPERIMENT
from sortgpt.model import GPT
from sortgpt.packed import COMPILE_MODES, Pack, _start_run, compile_mode_of
from sortgpt.train import K_SEED_OFFSET, autocast_for, generator_for, lr_at, make_optimizer, model_config

LN_GRID_RUNS = 252  # dynamic (168) + fixed (84) with LayerNorm, seed-003


def tiny_cpu_config() -> dict:
    return EXPERIMENT.defaults() | {
        "vocab_n": 32, "n_embd": 32, "n_layers": 2, "train_min_k": 2, "train_max_k": 6, "test_min_k": 7,
        "test_max_k": 10, "batch_size": 64, "max_iters": 300, "warmup_iters": 20, "max_lr": 3e-3,
        "eval_every": 10**9, "device": "cpu"}


def micro_cpu_config() -> dict:
    """The unit tests' run (vocab 16, d 16, 1 layer, batch 16, K 2–4): per-step
    overhead dominates, as it does for the reference model on a GPU."""
    return EXPERIMENT.defaults() | {
        "vocab_n": 16, "n_embd": 16, "n_layers": 1, "train_min_k": 2, "train_max_k": 4, "test_min_k": 5,
        "test_max_k": 6, "batch_size": 16, "max_iters": 40, "warmup_iters": 5, "max_lr": 1e-3,
        "eval_every": 10**9, "device": "cpu"}


def reproduce_config(n_layers: int, use_mlp: bool, k: int) -> dict:
    """A run of the reduced protocol (sweeps/reproduce_sortgpt.yaml: vocab 64, d 64,
    batch 256, fixed K), the shape `make reproduce-sortgpt` spends its time on."""
    return EXPERIMENT.defaults() | {
        "vocab_n": 64, "n_embd": 64, "n_layers": n_layers, "use_mlp": use_mlp, "train_min_k": k, "train_max_k": k,
        "test_min_k": 9, "test_max_k": 16, "batch_size": 256, "max_iters": 2000, "warmup_iters": 50,
        "max_lr": 1e-2, "min_lr": 1e-4, "eval_every": 10**9, "device": "cpu"}


CPU_SETUPS = {
    "ci": [("CI d32 L2 B64 K 2-6", tiny_cpu_config)],
    "micro": [("micro d16 L1 B16 K 2-4", micro_cpu_config)],
    "reproduce": [("reproduce d64 L1 no-MLP B256 K 4", lambda: reproduce_config(1, False, 4)),
                  ("reproduce d64 L2 MLP B256 K 8", lambda: reproduce_config(2, True, 8))],
}


def reference_config(k_range: tuple[int, int]) -> dict:
    return EXPERIMENT.defaults() | {"train_min_k": k_range[0], "train_max_k": k_range[1], "eval_every": 10**9,
                                    "device": "cuda"}


def single_run_step(cfg: dict, device: torch.device) -> Callable[[], None]:
    """One iteration of sortgpt/train.py's loop for one run."""
    torch.manual_seed(cfg["seed"])
    model = GPT(model_config(cfg)).to(device)
    optimizer = make_optimizer(model, cfg, device)
    data_generator = generator_for(device, cfg["seed"])
    k_generator = generator_for(torch.device("cpu"), cfg["seed"] + K_SEED_OFFSET)
    itr = 0

    def step() -> None:
        nonlocal itr
        k = pick_train_k(itr, cfg, k_generator)
        batch = sample_batch(cfg["batch_size"], k, cfg["vocab_n"], cfg["no_dup"], data_generator)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(itr, cfg)
        with autocast_for(device):
            loss = sorted_half_loss(model(batch, positions=prediction_positions(k)), batch, k)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        itr += 1

    return step


def packed_step(cfg: dict, n: int, device: torch.device, workdir: Path, compile_mode: str | None,
                overhead: float | None) -> Callable[[], None]:
    runs = []
    for i in range(n):
        run_dir = workdir / f"pack{n}_{i}"
        run_dir.mkdir(parents=True, exist_ok=True)
        run = _start_run(cfg | {"seed": 1000 + i}, RunContext(run_dir=run_dir), device)
        assert run is not None
        runs.append(run)
    pack = Pack(runs, device, overhead, None if device.type == "cpu" else 1 << 21, compile_mode)
    return pack.train_step


def run_iterations_per_second(step: Callable[[], None], runs: int, device: torch.device, min_seconds: float,
                              iters: int | None = None) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    t0, done = time.perf_counter(), 0
    while (iters is None and time.perf_counter() - t0 < min_seconds) or (iters is not None and done < iters):
        step()
        done += 1
    sync()
    return runs * done / (time.perf_counter() - t0)


def measure(cfg: dict, device: torch.device, packs: list[int], rounds: int, min_seconds: float, warmup: int,
            compile_mode: str | None, overhead: float | None) -> dict[str, float]:
    """Median run-iterations/s of each row, rows interleaved round by round."""
    with tempfile.TemporaryDirectory() as tmp:
        steps: dict[str, tuple[Callable[[], None], int]] = {"single": (single_run_step(cfg, device), 1)}
        for n in packs:
            steps[f"packed N={n}"] = (packed_step(cfg, n, device, Path(tmp), None, overhead), n)
            if compile_mode:  # the compiled pack beside the eager one
                steps[f"packed N={n} compiled ({compile_mode})"] = (
                    packed_step(cfg, n, device, Path(tmp) / "compiled", compile_mode, overhead), n)
        for step, _ in steps.values():
            for _ in range(warmup):
                step()
        rates: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(rounds):
            for name, (step, n) in steps.items():
                rates[name].append(run_iterations_per_second(step, n, device, min_seconds))
    return {name: statistics.median(r) for name, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packs", default="1,4,16,64", help="pack sizes N")
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped when absent")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cpu-setups", default="ci,micro", help=f"CPU configs: {', '.join(CPU_SETUPS)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.6, help="minimum timed seconds per row and round")
    parser.add_argument("--compile", nargs="?", const="default", default=None, choices=sorted(COMPILE_MODES),
                        help="also rows with the batched model torch.compile'd (reduce-overhead: CUDA graphs on a GPU)")
    parser.add_argument("--bucket-overhead", type=float, default=None,
                        help="bucket cost in tokens (default: the cost model; 0: one bucket per K)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    packs = [int(n) for n in args.packs.split(",")]
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} CPU thread(s), compile={args.compile}")
    print("| device | config | row | run-it/s | x single |")
    print("|---|---|---|---|---|")
    for name in args.devices.split(","):
        if name == "cuda" and not torch.cuda.is_available():
            print("| cuda | — | not measured: no CUDA device | | |")
            continue
        device = torch.device(name)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            setups = [("ref K 4", reference_config((4, 4))), ("ref K 2-16", reference_config((2, 16)))]
        else:
            setups = [(label, make()) for name in args.cpu_setups.split(",") for label, make in CPU_SETUPS[name]]
        for label, cfg in setups:
            rates = measure(cfg, device, packs, args.rounds, args.seconds, warmup=3 if device.type == "cpu" else 10,
                            compile_mode=compile_mode_of(args.compile or False), overhead=args.bucket_overhead)
            base = rates["single"]
            for row, rate in rates.items():
                print(f"| {name} | {label} | {row} | {rate:.1f} | {rate / base:.2f} |")
            if device.type == "cuda":
                best = max(rates.values())
                hours = LN_GRID_RUNS * int(cfg["max_iters"]) / best / 3600
                print(f"| {name} | {label} | LN grid at best rate | {hours:.1f} GPU-h | |")


if __name__ == "__main__":
    main()
