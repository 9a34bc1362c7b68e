"""COCONUT per-epoch time on CPU, per feedback mode: the levers of issue 16 (compact vocabulary, dropout).

One "epoch" here = training on ``--train`` generated ProsQA-mini examples (batch ``--batch``, AdamW, at
the mode's last latent stage; stage 0 for the baselines) + validation loss on ``--val`` examples + greedy
answers for the same ``--val`` questions — the work of one epoch of coconut.train, measured with the
training loop's own functions. Single-threaded (torch.set_num_threads(1)): pin the process to one core,

    taskset -c 1 python bench/bench_coconut_epoch.py                         # compact vs full, dropout 0
    taskset -c 1 python bench/bench_coconut_epoch.py --dropout 0.1 --modes cot continuous

Prints markdown rows for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coconut.data import SpecialIds, tokenize, tokenizer_for  # noqa: E402
from coconut.experiment import EXPERIMENT  # noqa: E402
from coconut.generate import GraphSize, generate_dataset  # noqa: E402
from coconut.model import BASELINES, FEEDBACK_MODES, ModelConfig, build_model  # noqa: E402
from coconut.train import answer_questions, curriculum_of, epoch_batches, validation_loss  # noqa: E402


def epoch_seconds(mode: str, compact: bool, args: argparse.Namespace) -> tuple[float, float]:
    """(training seconds, evaluation seconds) of one epoch."""
    cfg = EXPERIMENT.defaults() | {"feedback_mode": mode, "compact_vocab": compact,
                                   "max_latent_stage": args.stage}
    tok = tokenizer_for(cfg)
    ids = SpecialIds.of(tok)
    size = GraphSize(*args.graph)
    train = tokenize(generate_dataset(args.train, 0, size), tok)
    val = tokenize(generate_dataset(args.val, [0, 1], size), tok)
    stage = 0 if mode in BASELINES else args.stage
    cur = curriculum_of(cfg)
    torch.manual_seed(0)
    model = build_model(ModelConfig(feedback_mode=mode, n_layer=args.layers, n_embd=args.dim, n_head=args.heads,
                                    dropout=args.dropout), tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    t0 = time.perf_counter()
    model.train()
    for batch in epoch_batches(train, stage, cur, ids, args.batch, np.random.default_rng(0)):
        model(**batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    t1 = time.perf_counter()
    validation_loss(model, epoch_batches(val, stage, cur, ids, args.batch, None), "cpu")
    answer_questions(model, tok, val, stage, cur, "cpu", batch_size=100, max_new_tokens=args.new_tokens)
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=list(FEEDBACK_MODES))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--graph", type=int, nargs=4, default=[8, 10, 2, 3], metavar=("MIN_N", "MAX_N", "MIN_P", "MAX_P"))
    ap.add_argument("--stage", type=int, default=3, help="latent stage timed for the latent modes")
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=48)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread; model "
          f"{args.layers}x{args.dim}, dropout {args.dropout}, graphs {args.graph}, stage {args.stage}, "
          f"{args.train} train + {args.val} val examples, batch {args.batch}")
    print("| mode | train s (full vocab) | train s (compact) | speed-up | eval s (full) | eval s (compact) | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.modes:
        (tf, ef), (tc, ec) = epoch_seconds(mode, False, args), epoch_seconds(mode, True, args)
        print(f"| {mode} | {tf:.1f} | {tc:.1f} | {tf / tc:.1f}x | {ef:.1f} | {ec:.1f} | {ef / ec:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
