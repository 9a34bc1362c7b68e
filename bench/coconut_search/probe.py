"""Learning probe (issue 16): does a from-scratch GPT-2 2 x 64 learn ProsQA-mini given many distinct questions?

One run outside the harness, on the training loop's own pieces (data, collate, model, greedy answers), with
ONE AdamW for the whole run (the harness re-creates it every epoch, as the reference does) and validation
accuracy every --every optimizer steps on 200 generated questions disjoint from training. Stage 0 only
(CoT or No-CoT). Figures of 2026-12-04 in bench/RESULTS.md ("learning probe").

    taskset -c 1 python bench/coconut_search/probe.py --mode no_cot --n_train 40000 --steps 8000 --every 1000
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from coconut.data import SpecialIds, tokenize, tokenizer_for
from coconut.experiment import CoconutExperiment
from coconut.generate import generate_dataset
from coconut.model import build_model
from coconut.train import (
    curriculum_of,
    epoch_batches,
    generated_texts,
    graph_size_of,
    model_config_of,
    scores,
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="cot", choices=["cot", "no_cot"])
    p.add_argument("--n_train", type=int, default=20000, help="distinct generated training questions")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--every", type=int, default=500, help="validate every this many optimizer steps")
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embd", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--names", default="single_token")
    p.add_argument("--nodes", type=int, nargs=2, default=[6, 8])
    p.add_argument("--path", type=int, nargs=2, default=[2, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--schedule", default="constant", choices=["constant", "cosine"],
                   help="cosine: linear warmup over --warmup steps, then cosine decay to 0 at --steps")
    p.add_argument("--warmup", type=int, default=200)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = CoconutExperiment().defaults() | dict(
        feedback_mode=a.mode, n_layer=a.layers, n_embd=a.embd, n_head=a.heads, dropout=0.0, compact_vocab=True,
        graph_names=a.names, graph_min_nodes=a.nodes[0], graph_max_nodes=a.nodes[1], graph_min_path=a.path[0],
        graph_max_path=a.path[1], max_latent_stage=a.path[1], base_model="")
    tok = tokenizer_for(cfg)
    ids, cur, size = SpecialIds.of(tok), curriculum_of(cfg), graph_size_of(cfg)
    train_raw = generate_dataset(a.n_train, seed=0, size=size, name_set=a.names)
    val_raw = generate_dataset(200, [0, 1], size, exclude={e["question"] for e in train_raw}, name_set=a.names)
    train, val = tokenize(train_raw, tok), tokenize(val_raw, tok)
    torch.manual_seed(0)
    model = build_model(model_config_of(cfg), tok)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=a.lr, weight_decay=0.01)
    if a.schedule == "cosine":  # not the reference's protocol (constant lr): a probe of what decay adds
        def factor(s: int) -> float:
            return min(1.0, (s + 1) / a.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    step, epoch, t0 = 0, 0, time.time()
    while step < a.steps:
        for batch in epoch_batches(train, 0, cur, ids, a.bs, np.random.default_rng([0, epoch])):
            model.train()
            loss = model(**batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if a.schedule == "cosine":
                sched.step()
            step += 1
            if step % a.every == 0 or step == a.steps:
                train_s = time.time() - t0
                s = scores(generated_texts(model, tok, val, 0, cur, "cpu", 100, 48), val_raw)
                print(json.dumps({"step": step, "epoch": epoch + 1, "loss": round(float(loss.detach()), 4),
                                  "acc": s["accuracy"] / len(val), "wf": s["well_formed"] / len(val),
                                  "cot_em": s["cot_em"] / len(val), "s": round(train_s, 1)}), flush=True)
            if step >= a.steps:
                break
        epoch += 1


if __name__ == "__main__":
    main()
