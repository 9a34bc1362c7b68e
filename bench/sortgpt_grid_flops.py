"""The arithmetic floor of a sortgpt grid: FLOPs, and GPU-hours at a GPU's peak.

Issue 7 asks for the GPU-hours of the whole LayerNorm grid. The measured figure
comes from `bench/bench_sortgpt_packed.py` on a GPU (run-iterations/s); this
script gives what no implementation can beat, from the specs alone, so the
measured figure can be read as a fraction of it (model FLOP utilisation).

FLOPs per run are counted from each run's resolved config, iteration by
iteration of its length schedule (the expected cost over K's uniform draw, the
curriculum's growing range included):

- training step: 3 × forward (backward ≈ 2 × forward) over batch × T tokens,
  T = 2K + 1; forward per token = 2 × (weights of the blocks) + causal
  attention 2 × 2 × C × (t + 1) / 1 averaged over positions t; the tied head
  only on the K scored positions (2 × C × V each) — what sortgpt/train.py runs;
- evaluation: a forward pass over eval_samples × T for every in-distribution and
  OOD K every eval_every iterations, and the final autoregressive pass (K
  forwards of growing length, no KV cache).

    python bench/sortgpt_grid_flops.py [SPEC ...] [--peak-tflops 989]

Default specs: the two LayerNorm specs of the seed-003 grid. 989 TFLOP/s is an
H100 SXM's dense bf16 tensor-core peak (NVIDIA's datasheet).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from launch.spec import load_spec
from launch.tasks import expand
from sortgpt.data import train_k_range
from sortgpt.train import eval_ks

ROOT = Path(__file__).resolve().parent.parent
LN_SPECS = [ROOT / "sweeps/len_gen_dynamic_ln.yaml", ROOT / "sweeps/len_gen_fixed_ln.yaml"]


def forward_flops(cfg: dict, seq_len: int, scored: int) -> float:
    """FLOPs of one sequence's forward pass: ``seq_len`` tokens through the blocks,
    the head on ``scored`` positions."""
    C, V = int(cfg["n_embd"]), int(cfg["vocab_n"]) + 1
    per_layer_weights = 4 * C * C + (6 * C * C if cfg["use_mlp"] else 0)  # c_attn 3C², c_proj C², MLP 2·3C²
    matmuls = 2 * per_layer_weights * seq_len * int(cfg["n_layers"])
    # causal attention: position t attends to t + 1 keys, QKᵀ and AV each 2·C per key
    attention = 4 * C * (seq_len * (seq_len + 1) // 2) * int(cfg["n_layers"])
    return float(matmuls + attention + 2 * C * V * scored)


def run_flops(cfg: dict) -> tuple[float, float]:
    """(training FLOPs, evaluation FLOPs) of one whole run."""
    batch = int(cfg["batch_size"])
    train = 0.0
    cache: dict[tuple[int, int], float] = {}
    for step in range(int(cfg["max_iters"])):
        lo, hi = train_k_range(step, cfg)
        if (lo, hi) not in cache:
            cache[lo, hi] = sum(3 * batch * forward_flops(cfg, 2 * k + 1, k) for k in range(lo, hi + 1)) / (hi - lo + 1)
        train += cache[lo, hi]
    in_dist, out_of_dist = eval_ks(cfg)
    samples = int(cfg["eval_samples"])
    one_eval = sum(samples * forward_flops(cfg, 2 * k + 1, k) for k in in_dist + out_of_dist)
    evals = len(range(0, int(cfg["max_iters"]), int(cfg["eval_every"]))) + 1  # every eval_every + the last
    greedy = sum(samples * forward_flops(cfg, k + 1 + i, 1) for k in in_dist + out_of_dist for i in range(k))
    return train, evals * one_eval + greedy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", type=Path, default=LN_SPECS)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak")
    args = parser.parse_args()
    peak = args.peak_tflops * 1e12
    print("| spec | runs | train FLOP | eval FLOP | floor GPU-h at peak | smallest run | largest run |")
    print("|---|---|---|---|---|---|---|")
    total = 0.0
    total_runs = 0
    for path in args.specs:
        runs = expand(load_spec(path))
        counted = [run_flops(r.config) for r in runs]
        per_run = [t + e for t, e in counted]
        train = sum(t for t, _ in counted)
        flops = sum(per_run)
        total += flops
        total_runs += len(runs)
        print(f"| {path.name} | {len(runs)} | {train:.3g} | {flops - train:.3g} | {flops / peak / 3600:.2f} "
              f"| {min(per_run):.3g} | {max(per_run):.3g} |")
    print(f"| all | {total_runs} | | | {total / peak / 3600:.2f} | | |")
    for utilisation in (0.3, 0.1, 0.03):
        print(f"at {utilisation:.0%} of peak: {total / peak / utilisation / 3600:.1f} GPU-h")


if __name__ == "__main__":
    main()
