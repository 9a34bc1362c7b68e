"""COCONUT speed: training step time in continuous mode and evaluation throughput, optimised vs baseline.

Training step: forward + backward + AdamW step on one batch of generated ProsQA examples at a curriculum
stage with latents (continuous mode). Evaluation: greedy answers for validation questions (examples/s),
batched with a KV cache vs one at a time without a cache (bench/coconut_baseline.py). The two paths are
checked to agree (loss within float tolerance, identical answers) before they are timed.

    python bench/bench_coconut.py                       # tiny GPT-2 (2 x 64) on CPU
    python bench/bench_coconut.py --device cuda --gpt2-small --batch 32 --eval-n 64

Prints markdown rows for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from coconut_baseline import baseline_answers, baseline_loss  # noqa: E402

from coconut.data import Curriculum, SpecialIds, build_tokenizer, find_data_dir, load_prosqa, tokenize  # noqa: E402
from coconut.generate import generate_dataset  # noqa: E402
from coconut.model import ModelConfig, build_model  # noqa: E402
from coconut.train import answer_questions, epoch_batches  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_train_step(model, batch, loss_fn, device: str, repeats: int) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    times = []
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpt2-small", action="store_true", help="12 x 768 (GPT-2 small shape, random init)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--stage", type=int, default=3, help="curriculum stage (latents = stage x c_thought)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eval-n", type=int, default=16)
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--skip-baseline-eval", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    shape = dict(n_layer=12, n_embd=768, n_head=12) if args.gpt2_small else dict(n_layer=2, n_embd=64, n_head=2)
    tok = build_tokenizer()
    ids = SpecialIds.of(tok)
    cur = Curriculum(c_thought=1, max_latent_stage=6)
    torch.manual_seed(0)
    model = build_model(ModelConfig(feedback_mode="continuous", dropout=0.0, **shape), tok).to(device)

    train = tokenize(generate_dataset(args.batch, seed=0), tok)
    batch = {k: v.to(device) for k, v in
             epoch_batches(train, args.stage, cur, ids, args.batch, np.random.default_rng(0))[0].items()}
    with torch.no_grad():
        fast, slow = model(**batch), baseline_loss(model, **batch)
    assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-5), (float(fast), float(slow))
    t_fast = time_train_step(model, batch, lambda m, b: m(**b), device, args.repeats)
    t_slow = time_train_step(model, batch, lambda m, b: baseline_loss(m, **b), device, args.repeats)

    valid_raw = load_prosqa(find_data_dir() / "prosqa_valid.json")[: args.eval_n]
    valid = tokenize(valid_raw, tok)
    model.eval()
    answer_questions(model, tok, valid[:2], args.stage, cur, device, args.eval_batch, 2)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    fast_answers = answer_questions(model, tok, valid, args.stage, cur, device, args.eval_batch, args.max_new_tokens)
    sync(device)
    eval_fast = len(valid) / (time.perf_counter() - t0)
    eval_slow = float("nan")
    if not args.skip_baseline_eval:
        sync(device)
        t0 = time.perf_counter()
        slow_answers = baseline_answers(model, tok, valid, args.stage, cur, args.max_new_tokens)
        sync(device)
        eval_slow = len(valid) / (time.perf_counter() - t0)
        assert slow_answers == fast_answers

    seq = batch["input_ids"].shape[1]
    name = "GPT-2 small shape 12x768" if args.gpt2_small else "tiny 2x64"
    where = f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)" \
        if device == "cpu" else torch.cuda.get_device_name()
    print("| model | device | batch x seq | latents | train step optimised | train step baseline | "
          "eval ex/s optimised | eval ex/s baseline |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {name} | {where} | {args.batch} x {seq} | {args.stage} | {t_fast * 1000:.0f} ms | "
          f"{t_slow * 1000:.0f} ms | {eval_fast:.2f} | {eval_slow:.2f} |")
    print(f"(eval: {len(valid)} validation questions, max_new_tokens {args.max_new_tokens}, "
          f"eval batch {args.eval_batch})")


if __name__ == "__main__":
    main()
