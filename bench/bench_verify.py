"""Cost of verifying a checkpoint against its sidecar on every load (issue 11).

Measures (1) sha256 throughput of ``launch.checkpoint.sha256_file`` on a large file
(page-cached, so this is the CPU cost, the worst case relative to a load); (2) the share
of hashing in a ``sweep sort`` call on a reference-size sortgpt checkpoint (vocab 128,
d 128, 2 layers), end to end as a user runs it; (3) the share of hashing in loading a
reference-size resume state (model + AdamW state + RNG), which is what a requeued run
does before its first step.

    OMP_NUM_THREADS=1 python bench/bench_verify.py [--mb 256] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from launch.checkpoint import load_checkpoint, load_latest_resume_state, save_checkpoint, sha256_file

REPO = Path(__file__).resolve().parent.parent


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def throughput(tmp: Path, mb: int, repeat: int) -> float:
    big = tmp / "big.bin"
    big.write_bytes(os.urandom(mb << 20))
    sha256_file(big)  # into the page cache
    return mb / best_of(lambda: sha256_file(big), repeat)


def reference_run(tmp: Path) -> tuple[dict, Path, Path]:
    from launch.checkpoint import resume_state_path, rng_state
    from sortgpt.experiment import EXPERIMENT
    from sortgpt.naming import checkpoint_name
    from sortgpt.train import GPT, checkpoint_payload, make_optimizer, model_config

    cfg = EXPERIMENT.defaults() | {"device": "cpu"}  # the reference config: vocab 128, d 128, L2
    torch.manual_seed(0)
    model = GPT(model_config(cfg))
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    final = tmp / checkpoint_name("Final", cfg, cfg["max_iters"])
    save_checkpoint(checkpoint_payload(model, cfg, cfg["max_iters"]), final, sidecar={"config": dict(cfg)})
    for p in model.parameters():  # an optimizer state as large as after training: exp_avg, exp_avg_sq
        p.grad = torch.randn_like(p)
    opt.step()
    state = {"step": 100, "finished": False, "config": dict(cfg), "model": model.state_dict(),
             "optimizer": opt.state_dict(), "rng": rng_state()}
    run_dir = tmp / "run"
    run_dir.mkdir()
    save_checkpoint(state, resume_state_path(run_dir, 100), sidecar={"step": 100})
    return cfg, final, run_dir


def sweep_sort_s(final: Path, repeat: int) -> float:
    cmd = [sys.executable, "-m", "launch.cli", "sort", str(final), "17", "3", "99", "42"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, env=env)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        mbps = throughput(tmp, args.mb, args.repeat)
        print(f"sha256_file: {mbps:.0f} MB/s ({1000 / mbps:.2f} ms per MB) on a {args.mb} MB page-cached file")

        _, final, run_dir = reference_run(tmp)
        size = final.stat().st_size / 2**20
        hash_s = best_of(lambda: sha256_file(final), args.repeat)
        load_s = best_of(lambda: load_checkpoint(final, verify=False), args.repeat)
        sort_s = sweep_sort_s(final, 3)
        print(f"sweep sort, reference Final ({size:.2f} MB): hash {hash_s * 1e3:.2f} ms, load without hash "
              f"{load_s * 1e3:.2f} ms, whole `sweep sort` {sort_s * 1e3:.0f} ms -> hash = "
              f"{100 * hash_s / sort_s:.2f}% of the call")

        state = next(run_dir.glob("resume_*.pt"))
        size = state.stat().st_size / 2**20
        verified_s = best_of(lambda: load_latest_resume_state(run_dir), args.repeat)
        plain_s = best_of(lambda: load_checkpoint(state, verify=False), args.repeat)
        hash_s = best_of(lambda: sha256_file(state), args.repeat)
        print(f"resume, reference resume state ({size:.2f} MB): verified load {verified_s * 1e3:.2f} ms, "
              f"unverified load {plain_s * 1e3:.2f} ms, hash {hash_s * 1e3:.2f} ms -> hash = "
              f"{100 * hash_s / verified_s:.0f}% of the load")
        gpt2_mb = 124e6 * 4 / 2**20  # coconut: GPT-2 small fp32 weights in each resume state
        print(f"coconut resume state (GPT-2 small, ~{gpt2_mb:.0f} MB): hash ≈ {gpt2_mb / mbps:.2f} s at the "
              "throughput above")


if __name__ == "__main__":
    main()
