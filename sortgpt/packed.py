"""Packed runs: many sortgpt runs of one architecture trained in one process (issue 7).

One file on purpose (~770 lines): the batched forward, the stacked optimizer, the bucket
planner and the loop are one contract — bit-for-bit what sortgpt/train.py does per run —
and are read and tested together (tests/sortgpt/test_packed.py).

The seed-003 grid's models have 83k–348k parameters; one of them leaves a GPU
mostly idle, bound by kernel launches and Python. Here R runs that share an
architecture train as one batched model: all their parameters live in one
(R, P) matrix — row r is run r's flattened parameters — and the forward pass is
the model of sortgpt/model.py written with batched matmuls (``baddbmm``/``bmm``)
over the run dimension. Nothing else is shared: every run keeps its own data
and K generators, learning-rate schedule, AdamW moments and step, evaluation
lists, metrics, checkpoints and resume states, in exactly the formats
sortgpt/train.py writes (so ``sweep collect``, resume — by either path — and
analysis cannot tell a packed run from a single one).

What may differ inside a pack: seeds, train/test K ranges, length modes,
max_iters (a run that finishes leaves the pack), learning rates and schedules,
eval cadence and sizes, checkpoint/resume settings, no_dup. What must be equal
(:func:`pack_key`): the architecture, batch size and device.

Different K in one step. Every sequence of one run's step has that run's K, but
runs draw K independently. Runs are grouped into *buckets* of nearby K; inside a
bucket shorter sequences are right-padded to the longest. Because attention is
causal and every other layer works position by position, padding after a
sequence changes none of its logits; the loss masks everything but each run's
own sorted half and divides by that run's B·K, so every run's loss and gradient
are the single run's (up to float summation order). Buckets trade padding
(wasted compute) against launches: :func:`plan_buckets` picks the split with the
least estimated cost — exact-K buckets when launches are cheap, one padded
bucket when they dominate (tiny models, GPUs).

Equivalence on CPU (tests/sortgpt/test_packed.py): losses match single runs
step by step within ~1e-6 and AdamW is bit-identical per element (fused, as the
reference, or torch's per-parameter loop: whichever the single run uses); on GPU
bf16 kernels of other shapes make agreement hold up to bf16 rounding.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from launch.checkpoint import rng_state, save_checkpoint, set_rng_state
from launch.errors import UserError
from launch.experiment import NonFiniteLoss, RunContext, with_later_params
from sortgpt import train as single  # the single-run loop: its schedules, seeds and formats are the contract
from sortgpt.data import pick_train_k, sample_batch
from sortgpt.experiment import EXPERIMENT
from sortgpt.model import GPT, GPTConfig
from sortgpt.naming import checkpoint_name

# Config fields that must be equal for runs to share one batched model.
PACK_KEY_FIELDS = ("vocab_n", "n_embd", "n_heads", "n_layers", "use_mlp", "use_layernorm", "no_pos_emb",
                   "batch_size", "device", "adamw_impl")
# `pack: auto`. At the reference config (batch 4096, K ≤ 16) one run's activations
# are ~1 GB in bf16, so 16 runs fit an 80 GB GPU even without chunking, and a
# pack of 16 of the 40k-iteration runs still ends well inside a 2-hour job.
PACK_SIZE_AUTO = 16
# Cost model for bucketing: one bucket's fixed cost (launches, Python) expressed
# as the seconds it takes, and a device's useful FLOP/s on these small matrices.
LAUNCH_SECONDS = {"cuda": 1e-3, "cpu": 3e-3}
FLOPS_PER_SECOND = {"cuda": 5e13, "cpu": 2e10}
# Most tokens (runs x batch x length) one forward/backward chunk may hold on a
# GPU (~20 GB of bf16 activations at d 128, 2 layers); runs beyond that go in
# further chunks whose gradients simply add up (each run is in one chunk).
MAX_CHUNK_TOKENS = {"cuda": 1 << 21, "cpu": None}
# SORTGPT_COMPILE: torch.compile the batched trunk, and in which mode
# ("reduce-overhead" records CUDA graphs on a GPU: for these tiny models a step is
# mostly kernel launches). Off by default: compiling costs a minute per process.
COMPILE_MODES = {"1": "default", "default": "default", "reduce-overhead": "reduce-overhead",
                 "max-autotune": "max-autotune"}
MAX_ATTENTION_BATCH = 32_768  # sequences per attention call (see _attention)


def pack_key(cfg: dict[str, Any]) -> Hashable:
    """Runs with equal keys can train together. A positional table's size
    depends on the longest K, so with positions it is part of the key."""
    cfg = with_later_params(EXPERIMENT, cfg)  # a run.json written before a knob existed
    key: tuple = ("sortgpt",) + tuple((name, cfg[name]) for name in PACK_KEY_FIELDS)
    if not cfg["no_pos_emb"]:
        key += (("max_seq_len", single.model_config(cfg).max_seq_len),)
    return key


# -- the batched model ---------------------------------------------------------------

class Layout:
    """Where each named parameter of a GPT lives in a run's flat row of P numbers
    (``model.parameters()`` order, the tied embedding/head matrix once)."""

    def __init__(self, model: GPT):
        named = list(model.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.total = sum(self.sizes)

    def flatten(self, model: GPT) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflatten(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """(n, P) -> {name: (n, *shape)} views. One ``split`` (not one slice per
        parameter), so the backward pass assembles the (n, P) gradient in one cat."""
        n = rows.shape[0]
        parts = rows.split(self.sizes, dim=1)
        return {name: part.view(n, *shape) for name, part, shape in zip(self.names, parts, self.shapes)}

    def load_into(self, model: GPT, row: torch.Tensor) -> None:
        """Copy one run's row into a GPT (its own storage, so a saved state_dict
        holds that run's weights only, not the pack's matrix)."""
        with torch.no_grad():
            for p, part in zip(model.parameters(), row.detach().split(self.sizes)):
                p.copy_(part.view_as(p))


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """nn.Linear for n runs at once: x (n, B, T, in), weight (n, out, in), bias (n, out)."""
    n, B, T, _ = x.shape
    y = torch.baddbmm(bias.unsqueeze(1), x.reshape(n, B * T, -1), weight.transpose(1, 2))
    return y.view(n, B, T, -1)


def _norm(x: torch.Tensor, p: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """LayerNorm with per-run gain and bias; the identity when the model has none."""
    if name + ".weight" not in p:
        return x
    w, b = p[name + ".weight"], p[name + ".bias"]
    return F.layer_norm(x, x.shape[-1:]) * w[:, None, None] + b[:, None, None]


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Causal attention over a batch that may be larger than one kernel launch takes:
    CUDA's flash and memory-efficient kernels put the batch in a grid dimension
    (at most 65,535; pytorch/pytorch#146704), and a pack of 16 runs at batch 4096
    is 65,536 sequences. Splitting the batch is exact. ``causal=False``: the queries are
    the newest positions and may see every key (cached decoding)."""
    if q.shape[0] <= MAX_ATTENTION_BATCH:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return torch.cat([F.scaled_dot_product_attention(a, b, c, is_causal=causal)
                      for a, b, c in zip(q.split(MAX_ATTENTION_BATCH), k.split(MAX_ATTENTION_BATCH),
                                         v.split(MAX_ATTENTION_BATCH))])


def packed_forward(p: dict[str, torch.Tensor], idx: torch.Tensor, config: GPTConfig,
                   positions: slice | None = None, trunk: Callable[..., torch.Tensor] | None = None
                   ) -> torch.Tensor:
    """GPT.forward (sortgpt/model.py) for n runs: ``p`` maps parameter names to
    (n, *shape) tensors, ``idx`` is (n, B, T); returns logits (n, B, T', V) for
    ``positions``. ``trunk`` replaces :func:`packed_trunk` (e.g. compiled: the
    trunk has no Python slice arguments, so varying K does not recompile it)."""
    x = (trunk or packed_trunk)(p, idx, config)
    if positions is not None:
        x = x[:, :, positions]
    x = _norm(x, p, "ln_f")
    n, B, Tp, C = x.shape
    wte = p["wte.weight"]
    logits = torch.bmm(x.reshape(n, B * Tp, C), wte.transpose(1, 2))  # tied head, no bias
    return logits.view(n, B, Tp, wte.shape[1])


def packed_trunk(p: dict[str, torch.Tensor], idx: torch.Tensor, config: GPTConfig) -> torch.Tensor:
    """Embedding and blocks (the residual stream before the final norm), mirroring
    the model block by block; a test holds them equal."""
    n, B, T = idx.shape
    C, H = config.n_embd, config.n_heads
    wte = p["wte.weight"]  # (n, V, C)
    V = wte.shape[1]
    # Each run looks its tokens up in its own table: offset run i's ids by i·V.
    offsets = (torch.arange(n, device=idx.device) * V).view(n, 1, 1)
    x = F.embedding(idx + offsets, wte.reshape(n * V, C))
    if "wpe.weight" in p:
        x = x + p["wpe.weight"][:, None, :T]
    for i in range(config.n_layers):
        pre = f"blocks.{i}."
        h = _norm(x, p, pre + "ln_1")
        q, k, v = _linear(h, p[pre + "attn.c_attn.weight"], p[pre + "attn.c_attn.bias"]).split(C, dim=-1)
        # Attention has no weights: the run dimension folds into the batch dimension.
        q, k, v = (t.reshape(n * B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        y = _attention(q, k, v).transpose(1, 2).contiguous().view(n, B, T, C)
        x = x + _linear(y, p[pre + "attn.c_proj.weight"], p[pre + "attn.c_proj.bias"])
        if config.use_mlp:
            h = _norm(x, p, pre + "ln_2")
            h = F.gelu(_linear(h, p[pre + "mlp.c_fc.weight"], p[pre + "mlp.c_fc.bias"]), approximate="tanh")
            x = x + _linear(h, p[pre + "mlp.c_proj.weight"], p[pre + "mlp.c_proj.bias"])
    return x


@torch.no_grad()
def packed_generate(p: dict[str, torch.Tensor], prompts: torch.Tensor, k: int, config: GPTConfig) -> torch.Tensor:
    """Greedy free-running decoding for n runs with a key/value cache: ``prompts`` (n, B, T0)
    -> the k generated tokens (n, B, k). The same computation as feeding the whole sequence
    again for every token (``Pack._autoregressive``), position by position, in O(T) instead
    of O(T^2) per token; only float summation order can differ (``sweep evaluate`` uses it)."""
    n, B, _ = prompts.shape
    C, H = config.n_embd, config.n_heads
    wte = p["wte.weight"]
    V = wte.shape[1]
    offsets = (torch.arange(n, device=prompts.device) * V).view(n, 1, 1)
    cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * config.n_layers

    def next_token(tokens: torch.Tensor, start: int) -> torch.Tensor:
        t = tokens.shape[2]
        x = F.embedding(tokens + offsets, wte.reshape(n * V, C))
        if "wpe.weight" in p:
            x = x + p["wpe.weight"][:, None, start:start + t]
        for i in range(config.n_layers):
            pre = f"blocks.{i}."
            h = _norm(x, p, pre + "ln_1")
            q, key, value = _linear(h, p[pre + "attn.c_attn.weight"], p[pre + "attn.c_attn.bias"]).split(C, dim=-1)
            q, key, value = (z.reshape(n * B, t, H, C // H).transpose(1, 2) for z in (q, key, value))
            if cache[i] is not None:
                key, value = torch.cat([cache[i][0], key], dim=2), torch.cat([cache[i][1], value], dim=2)
            cache[i] = (key, value)
            y = _attention(q, key, value, causal=start == 0).transpose(1, 2).contiguous().view(n, B, t, C)
            x = x + _linear(y, p[pre + "attn.c_proj.weight"], p[pre + "attn.c_proj.bias"])
            if config.use_mlp:
                h = _norm(x, p, pre + "ln_2")
                h = F.gelu(_linear(h, p[pre + "mlp.c_fc.weight"], p[pre + "mlp.c_fc.bias"]), approximate="tanh")
                x = x + _linear(h, p[pre + "mlp.c_proj.weight"], p[pre + "mlp.c_proj.bias"])
        last = _norm(x[:, :, -1:], p, "ln_f")
        logits = torch.bmm(last.reshape(n, B, C), wte.transpose(1, 2))  # tied head
        return logits.argmax(dim=-1, keepdim=True)  # (n, B, 1)

    out = [next_token(prompts, 0)]
    for j in range(1, k):
        out.append(next_token(out[-1], prompts.shape[2] + j - 1))
    return torch.cat(out, dim=2)


# -- optimizer -------------------------------------------------------------------

class StackedAdamW:
    """AdamW over the rows of one (runs, P) matrix, each row with its own learning
    rate and step count. Per element it does what torch.optim.AdamW's
    single-tensor path does, in the same order (so on CPU a row is bit-identical
    to a single run's parameter), and its state converts to and from a single
    run's ``optimizer.state_dict()``."""

    def __init__(self, weights: torch.Tensor, betas: tuple[float, float], eps: float,
                 weight_decay: Sequence[float] = (0.0,), group_of_column: torch.Tensor | None = None,
                 fused: bool = False):
        self.beta1, self.beta2 = betas
        self.eps = eps
        # Decoupled weight decay per parameter group; column c belongs to group_of_column[c].
        self.weight_decay = list(weight_decay)
        self.group_of_column = group_of_column
        self.exp_avg = torch.zeros_like(weights)
        self.exp_avg_sq = torch.zeros_like(weights)
        self.steps = [0] * weights.shape[0]
        # fused: torch's fused AdamW kernel (what a single run uses when its optimizer is fused),
        # called on each row's columns, a call per weight-decay group. The kernel works element by
        # element, so a row's columns get exactly the single run's per-parameter results.
        self.fused = fused
        self.segments: list[tuple[float, list[tuple[int, int]]]] = []
        if fused:
            cols = (torch.zeros(weights.shape[1], dtype=torch.long) if group_of_column is None
                    else group_of_column.cpu())
            bounds = [0] + (torch.nonzero(cols[1:] != cols[:-1]).flatten() + 1).tolist() + [len(cols)]
            by_decay: dict[float, list[tuple[int, int]]] = {}
            for a, b in zip(bounds[:-1], bounds[1:]):
                by_decay.setdefault(float(self.weight_decay[int(cols[a])]), []).append((a, b))
            self.segments = list(by_decay.items())

    @torch.no_grad()
    def step(self, weights: torch.Tensor, lrs: Sequence[float]) -> None:
        grad = weights.grad
        self.steps = [s + 1 for s in self.steps]
        if self.fused:
            self._fused_step(weights, grad, lrs)
            return

        def column(values: list[float]) -> torch.Tensor:  # one number per run, float32 like a scalar arg
            return torch.tensor(values, dtype=weights.dtype, device=weights.device).unsqueeze(1)

        if any(self.weight_decay):
            # torch: param.mul_(1 - lr * weight_decay), the factor in double precision
            factors = torch.tensor([[1 - lr * wd for wd in self.weight_decay] for lr in lrs],
                                   dtype=weights.dtype, device=weights.device)
            weights.mul_(factors if self.group_of_column is None else factors[:, self.group_of_column])
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        # Bias corrections in double precision from the step count, as torch does.
        neg_step_size = column([-lr / (1 - self.beta1 ** s) for lr, s in zip(lrs, self.steps)])
        bias_correction2_sqrt = column([(1 - self.beta2 ** s) ** 0.5 for s in self.steps])
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        # torch: param.addcdiv_(exp_avg, denom, value=-step_size) computes p + (value·m)/d
        weights.addcdiv_(self.exp_avg * neg_step_size, denom)

    def _fused_step(self, weights: torch.Tensor, grad: torch.Tensor, lrs: Sequence[float]) -> None:
        for r, lr in enumerate(lrs):
            step = torch.tensor(float(self.steps[r]), dtype=torch.float32, device=weights.device)
            for decay, spans in self.segments:
                torch._fused_adamw_([weights[r, a:b] for a, b in spans], [grad[r, a:b] for a, b in spans],
                                    [self.exp_avg[r, a:b] for a, b in spans],
                                    [self.exp_avg_sq[r, a:b] for a, b in spans], [], [step] * len(spans),
                                    lr=float(lr), beta1=self.beta1, beta2=self.beta2, weight_decay=decay,
                                    eps=self.eps, amsgrad=False, maximize=False)

    def keep(self, rows: list[int]) -> None:
        self.exp_avg, self.exp_avg_sq = self.exp_avg[rows], self.exp_avg_sq[rows]
        self.steps = [self.steps[r] for r in rows]


# -- one run inside the pack ------------------------------------------------------

@dataclass
class PackedRun:
    cfg: dict[str, Any]
    ctx: RunContext
    model: GPT  # holds the run's weights only when saving or loading; the pack's matrix is the truth
    optimizer: torch.optim.AdamW  # likewise: gives the exact single-run state_dict format
    generators: dict[str, torch.Generator]
    step: int = 0  # iterations done
    last_lr: float = 0.0
    train_record: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=lambda: single.new_best())

    @property
    def name(self) -> str:
        return self.ctx.name or str(self.ctx.run_dir)


def _start_run(cfg: dict[str, Any], ctx: RunContext, device: torch.device) -> PackedRun | None:
    """What sortgpt/train.py does before its loop: init from the seed, then load the
    newest resume state (written by either path). None when the run already finished."""
    model, generators = single.init_run(cfg, device)
    optimizer = single.make_optimizer(model, cfg, device)
    run = PackedRun(cfg=cfg, ctx=ctx, model=model, optimizer=optimizer, generators=generators)
    state = single.load_resume_state(Path(ctx.run_dir), cfg)
    if state is None:
        ctx.truncate_metrics(0)  # a fresh start: drop anything an earlier, unsaved attempt logged
        return run
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"], generators)
    run.step = int(state["step"])
    run.best = dict(state.get("best") or single.new_best())
    ctx.truncate_metrics(run.step)
    if state["finished"] and run.step >= int(cfg["max_iters"]):
        print(f"sortgpt: {run.name} already finished ({run.step} iterations)")
        ctx.progress(run.step, int(cfg["max_iters"]), force=True)
        return None
    verb = "extending a finished run" if state["finished"] else "resuming"  # as train.py (sweep resume)
    print(f"sortgpt: {run.name}: {verb} at iteration {run.step} of {cfg['max_iters']}")
    return run


def _optimizer_moments(run: PackedRun, layout: Layout) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A loaded single-run AdamW state as flat rows (zeros and step 0 when fresh)."""
    state = run.optimizer.state
    params = list(run.model.parameters())
    if not all(p in state for p in params):
        zeros = torch.zeros(layout.total, device=params[0].device)
        return zeros, zeros.clone(), 0
    m = torch.cat([state[p]["exp_avg"].reshape(-1) for p in params])
    v = torch.cat([state[p]["exp_avg_sq"].reshape(-1) for p in params])
    step = int(float(state[params[0]]["step"]))
    state.clear()  # the pack's matrices hold it from now on
    return m, v, step


def _optimizer_state_dict(run: PackedRun, layout: Layout, m_row: torch.Tensor, v_row: torch.Tensor,
                          adam_step: int) -> dict[str, Any]:
    """This run's AdamW state exactly as ``optimizer.state_dict()`` of a single run
    gives it (torch builds the dict: same keys, groups and index order)."""
    opt = run.optimizer
    for group in opt.param_groups:
        group["lr"] = run.last_lr
        on_device = group["fused"] or group["capturable"]  # where torch keeps "step"
        for p in group["params"]:
            start = _offset(layout, run.model, p)
            n = p.numel()
            opt.state[p] = {
                "step": torch.tensor(float(adam_step), dtype=torch.float32,
                                     device=p.device if on_device else "cpu"),
                "exp_avg": m_row[start:start + n].view_as(p).clone(),
                "exp_avg_sq": v_row[start:start + n].view_as(p).clone(),
            }
    sd = single.to_cpu(opt.state_dict())
    opt.state.clear()
    return sd


def _offset(layout: Layout, model: GPT, param: torch.nn.Parameter) -> int:
    start = 0
    for p, size in zip(model.parameters(), layout.sizes):
        if p is param:
            return start
        start += size
    raise KeyError("parameter not in the model")


# -- buckets of K ---------------------------------------------------------------

def bucket_overhead_tokens(model: GPT, device: torch.device) -> float:
    """A bucket's fixed cost in tokens of compute: launch seconds x FLOP/s / FLOP per token."""
    flops_per_token = 6 * model.num_params()
    kind = "cuda" if device.type == "cuda" else "cpu"
    return LAUNCH_SECONDS[kind] * FLOPS_PER_SECOND[kind] / flops_per_token


def plan_buckets(ks: Sequence[int], overhead_tokens: float, batch_size: int) -> list[list[int]]:
    """Split runs (indices into ``ks``) into buckets of contiguous K ranges, each
    padded to its largest K, minimising sum(overhead + runs·batch·(2·K_max+1)).
    Dynamic programming over the distinct Ks (at most a few dozen)."""
    distinct = sorted(set(ks))
    count = [sum(1 for k in ks if k == d) for d in distinct]
    best = [0.0] + [float("inf")] * len(distinct)  # best[j]: cost of the first j distinct Ks
    cut = [0] * (len(distinct) + 1)
    for j in range(1, len(distinct) + 1):
        runs = 0
        for i in range(j, 0, -1):  # bucket = distinct[i-1 .. j-1]
            runs += count[i - 1]
            cost = best[i - 1] + overhead_tokens + runs * batch_size * (2 * distinct[j - 1] + 1)
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
    buckets: list[list[int]] = []
    j = len(distinct)
    while j > 0:
        members = set(distinct[cut[j]:j])
        buckets.append([r for r, k in enumerate(ks) if k in members])
        j = cut[j]
    return buckets[::-1]


def _chunks(rows: list[int], tokens_per_run: int, max_tokens: int | None) -> Iterator[list[int]]:
    size = len(rows) if max_tokens is None else max(1, max_tokens // max(1, tokens_per_run))
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def _rows(weights: torch.Tensor, rows: list[int]) -> torch.Tensor:
    if rows == list(range(weights.shape[0])):
        return weights  # the whole pack: no gather, no scatter in backward
    return weights.index_select(0, torch.tensor(rows, device=weights.device))


def _bucket(batches: Sequence[torch.Tensor], ks: Sequence[int], pad: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, slice]:
    """Stack runs' batches right-padded to the longest: tokens (n, B, T), the
    targets of the predicted positions (n, B, P), which of them each run scores
    (n, P), and those positions as a slice."""
    k_lo, k_hi = min(ks), max(ks)
    T = 2 * k_hi + 1
    tokens = torch.stack([F.pad(b, (0, T - b.shape[1]), value=pad) for b in batches])
    positions = slice(k_lo, 2 * k_hi)  # every position some run in the bucket scores
    where = torch.arange(k_lo, 2 * k_hi, device=tokens.device)
    k = torch.tensor(list(ks), device=tokens.device).unsqueeze(1)
    scored = (where >= k) & (where < 2 * k)  # a run scores positions K … 2K−1 (sortgpt.data)
    targets = tokens[:, :, k_lo + 1:2 * k_hi + 1]
    return tokens, targets, scored, positions


def _losses(logits: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Per-run mean cross-entropy over its own B·K scored predictions (n,)."""
    n, B, P, V = logits.shape
    masked = targets.masked_fill(~scored[:, None], -100)
    ce = F.cross_entropy(logits.float().reshape(-1, V), masked.reshape(-1), ignore_index=-100, reduction="none")
    counts = torch.tensor([B * k for k in ks], dtype=torch.float32, device=logits.device)
    return ce.view(n, -1).sum(1) / counts


@torch.no_grad()
def _metrics(logits: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor, ks: Sequence[int]
             ) -> dict[str, torch.Tensor]:
    """sortgpt.train.prediction_metrics for n runs: (n,) tensors."""
    n, B, P, _ = logits.shape
    preds = logits.argmax(dim=-1)
    mask = scored[:, None].expand(n, B, P)
    right = (preds == targets) & mask
    exact = ~((preds != targets) & mask).any(dim=2)
    counts = torch.tensor([B * k for k in ks], dtype=torch.float32, device=logits.device)
    abs_err = ((preds - targets).abs() * mask).sum(dim=(1, 2))
    return {"loss": _losses(logits, targets, scored, ks), "exact_match_acc": exact.float().mean(dim=1),
            "token_acc": right.sum(dim=(1, 2)).float() / counts, "pos_abs_err_sum": abs_err}


# -- the pack ----------------------------------------------------------------------------

class Pack:
    """R runs' weights as one (R, P) matrix, their optimizer, and the batched
    steps; every per-run decision stays with the run."""

    def __init__(self, runs: list[PackedRun], device: torch.device, overhead_tokens: float | None,
                 max_chunk_tokens: int | None, compile_mode: str | None):
        self.runs = runs
        self.device = device
        first = runs[0]
        self.config = first.model.config
        self.layout = Layout(first.model)
        self.batch_size = int(first.cfg["batch_size"])
        self.pad = int(first.cfg["vocab_n"])  # SEP; padded positions are never scored
        self.overhead = bucket_overhead_tokens(first.model, device) if overhead_tokens is None else overhead_tokens
        self.max_chunk_tokens = max_chunk_tokens
        self.trunk = (torch.compile(packed_trunk, dynamic=True, mode=compile_mode) if compile_mode
                      else packed_trunk)
        moments = [_optimizer_moments(r, self.layout) for r in runs]
        self.weights = torch.stack([self.layout.flatten(r.model) for r in runs]).requires_grad_(True)
        group0 = first.optimizer.param_groups[0]
        self.optimizer = StackedAdamW(self.weights, group0["betas"], group0["eps"],
                                      [g["weight_decay"] for g in first.optimizer.param_groups],
                                      self._group_of_column(first), fused=bool(group0["fused"]))
        self.optimizer.exp_avg = torch.stack([m for m, _, _ in moments])
        self.optimizer.exp_avg_sq = torch.stack([v for _, v, _ in moments])
        self.optimizer.steps = [s for _, _, s in moments]

    @classmethod
    def for_evaluation(cls, runs: list[PackedRun], device: torch.device) -> Pack:
        """A pack that only evaluates (``sweep evaluate``): the runs' weights as one
        matrix, no optimizer, free-running decoding with a key/value cache; ``runs``
        need cfg, ctx (with log and run_dir), model, step."""
        pack = cls.__new__(cls)
        first = runs[0].model
        pack.runs, pack.device, pack.config = runs, device, first.config
        pack.layout = Layout(first)
        pack.pad = first.config.vocab_size - 1  # SEP
        pack.max_chunk_tokens = MAX_CHUNK_TOKENS["cuda" if device.type == "cuda" else "cpu"]
        pack.trunk = packed_trunk
        pack.kv_cache = True
        pack.weights = torch.stack([pack.layout.flatten(r.model) for r in runs]).to(device)
        return pack

    def _group_of_column(self, run: PackedRun) -> torch.Tensor:
        group_of = {p: g for g, group in enumerate(run.optimizer.param_groups) for p in group["params"]}
        return torch.cat([torch.full((size,), group_of[p], dtype=torch.long, device=self.device)
                          for p, size in zip(run.model.parameters(), self.layout.sizes)])

    def row(self, run: PackedRun) -> int:
        return next(i for i, r in enumerate(self.runs) if r is run)

    def logits(self, rows: list[int], tokens: torch.Tensor, positions: slice) -> torch.Tensor:
        with single.autocast_for(self.device):
            return packed_forward(self.layout.unflatten(_rows(self.weights, rows)), tokens, self.config, positions,
                                  self.trunk)

    # -- training ------------------------------------------------------------------
    def train_step(self) -> None:
        """One iteration of every run: its own K, batch and learning rate."""
        runs = self.runs
        ks = [pick_train_k(r.step, r.cfg, r.generators["k"]) for r in runs]
        batches = [sample_batch(self.batch_size, k, int(r.cfg["vocab_n"]), bool(r.cfg["no_dup"]),
                                r.generators["data"]) for r, k in zip(runs, ks)]
        lrs = [single.lr_at(r.step, r.cfg) for r in runs]
        wants_metrics = [r.step % int(r.cfg["eval_every"]) == 0 for r in runs]
        losses: dict[int, torch.Tensor] = {}
        metrics: dict[int, dict[str, torch.Tensor]] = {}
        for bucket in plan_buckets(ks, self.overhead, self.batch_size):
            T = 2 * max(ks[i] for i in bucket) + 1
            for rows in _chunks(bucket, self.batch_size * T, self.max_chunk_tokens):
                row_ks = [ks[i] for i in rows]
                tokens, targets, scored, positions = _bucket([batches[i] for i in rows], row_ks, self.pad)
                logits = self.logits(rows, tokens, positions)
                loss = _losses(logits, targets, scored, row_ks)
                # Runs do not interact, so d(sum)/d(row r) is run r's own gradient.
                loss.sum().backward()
                need = [j for j, i in enumerate(rows) if wants_metrics[i]]
                if need:
                    found = _metrics(logits.detach(), targets, scored, row_ks)
                    for j in need:
                        metrics[rows[j]] = {name: value[j] for name, value in found.items()}
                        losses[rows[j]] = loss.detach()[j]
        self.optimizer.step(self.weights, lrs)
        self.weights.grad = None
        for i, (run, k, lr) in enumerate(zip(runs, ks, lrs)):
            run.step += 1
            run.last_lr = lr
            if wants_metrics[i]:
                m = metrics[i]
                # train.py's record, in its key order; scored before the update.
                run.train_record = {"loss": losses[i], "token_acc": m["token_acc"],
                                    "exact_match_acc": m["exact_match_acc"],
                                    "K_mean": float(k), "K_min": k, "K_max": k, "lr": lr}

    # -- evaluation ---------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, runs: list[PackedRun], autoregressive: bool = False) -> None:
        """log_evaluation of sortgpt/train.py for several runs: each draws its lists
        from its own (seed, step) generator in train.py's order; runs sharing a K
        (and sample count) go through the model together; each logs in its order."""
        suffix = "_ar" if autoregressive else ""
        jobs: list[tuple[PackedRun, str, int, torch.Tensor]] = []
        for run in runs:
            generator, chunk = single.evaluation_stream(run.cfg, run.step, self.device, run.generators,
                                                        autoregressive)
            in_dist, out_of_dist = single.eval_ks(run.cfg)
            for split, ks in (("test", in_dist), ("gen", out_of_dist)):
                for k in ks:
                    jobs.append((run, split + suffix, k, single.eval_lists(run.cfg, k, generator, chunk)))
        results: dict[int, dict[str, Any]] = {}
        groups: dict[tuple[int, int], list[int]] = {}
        for j, (_, _, k, batch) in enumerate(jobs):
            groups.setdefault((k, batch.shape[0]), []).append(j)
        for (k, samples), members in groups.items():
            for part in _chunks(members, samples * (2 * k + 1), self.max_chunk_tokens):
                rows = [self.row(jobs[j][0]) for j in part]
                batch = torch.stack([jobs[j][3] for j in part])
                found = (self._autoregressive(rows, batch, k) if autoregressive
                         else self._teacher_forced(rows, batch, k))
                values = {name: value.tolist() for name, value in found.items()}
                for n, j in enumerate(part):
                    results[j] = {name: value[n] for name, value in values.items()}
        in_dist: dict[int, list[float]] = {}
        for j, (run, split, k, _) in enumerate(jobs):
            m = results[j]
            if not autoregressive:
                m["pos_abs_err_mean"] = m["pos_abs_err_sum"] / (int(run.cfg["eval_samples"]) * k)
            run.ctx.log(run.step, m, split=split, length=k)
            if split == "test":
                in_dist.setdefault(id(run), []).append(float(m["exact_match_acc"]))
        if not autoregressive:  # train.py's best-so-far, per run
            for run in runs:
                values = in_dist[id(run)]
                metric = sum(values) / len(values)
                if run.best["metric"] is None or metric > run.best["metric"]:
                    if run.cfg.get("save_best"):
                        self._sync_model(run)
                    run.best = single.update_best(run.best, metric, run.step, run.model, run.cfg,
                                                  Path(run.ctx.run_dir))

    def _teacher_forced(self, rows: list[int], batch: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        tokens, targets, scored, positions = _bucket(list(batch), [k] * len(rows), self.pad)
        return _metrics(self.logits(rows, tokens, positions).float(), targets, scored, [k] * len(rows))

    def _autoregressive(self, rows: list[int], batch: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """greedy_sort: feed ``numbers SEP``, append the argmax k times (with a key/value
        cache in a pack built by :meth:`for_evaluation`)."""
        if getattr(self, "kv_cache", False):
            with single.autocast_for(self.device):
                generated = packed_generate(self.layout.unflatten(_rows(self.weights, rows)), batch[:, :, :k + 1],
                                            k, self.config)
            seq = torch.cat([batch[:, :, :k + 1], generated], dim=2)
        else:
            seq = batch[:, :, :k + 1]
            for _ in range(k):
                logits = self.logits(rows, seq, slice(-1, None))
                seq = torch.cat([seq, logits[:, :, -1].argmax(dim=-1, keepdim=True)], dim=2)
        right = seq[:, :, k + 1:] == batch[:, :, k + 1:]
        return {"exact_match_acc": right.all(dim=2).float().mean(dim=1),
                "token_acc": right.float().mean(dim=(1, 2))}

    # -- saving ---------------------------------------------------------------------
    def _sync_model(self, run: PackedRun) -> None:
        self.layout.load_into(run.model, self.weights[self.row(run)])

    def _optimizer_state(self, run: PackedRun) -> dict[str, Any]:
        i = self.row(run)
        return _optimizer_state_dict(run, self.layout, self.optimizer.exp_avg[i], self.optimizer.exp_avg_sq[i],
                                     self.optimizer.steps[i])

    def full_state(self, run: PackedRun, finished: bool) -> dict[str, Any]:
        """train.py's resume state, key for key."""
        self._sync_model(run)
        return {"format": single.CHECKPOINT_FORMAT, "step": run.step, "finished": finished,
                "config": dict(run.cfg), "model_config": run.model.config.to_dict(),
                "model": single.to_cpu(run.model.state_dict()), "optimizer": self._optimizer_state(run),
                "rng": rng_state(run.generators), "best": dict(run.best)}

    def save_checkpoint_file(self, run: PackedRun, kind: str) -> None:
        self._sync_model(run)
        payload = single.checkpoint_payload(run.model, run.cfg, run.step)
        if kind == "Checkpoint":
            payload |= {"optimizer": self._optimizer_state(run)}
        save_checkpoint(payload, Path(run.ctx.run_dir) / checkpoint_name(kind, run.cfg, run.step),
                        sidecar={"step": run.step, "config": dict(run.cfg)})

    def after_step(self, run: PackedRun) -> None:
        """Everything train.py does after an iteration's update, for one run."""
        cfg, step = run.cfg, run.step
        if step == int(cfg["checkpoint_iter"]) and step < int(cfg["max_iters"]):
            self.save_checkpoint_file(run, "Checkpoint")
        save_every = int(cfg["save_every"])
        if save_every > 0 and step % save_every == 0 and step < int(cfg["max_iters"]):
            single.save_resume_state(Path(run.ctx.run_dir), self.full_state(run, finished=False),
                                     int(cfg["keep_resume"]))
        run.ctx.progress(step, int(cfg["max_iters"]))

    def finish(self, done: list[PackedRun]) -> None:
        """train.py's ending for runs at max_iters, then they leave the pack."""
        self.evaluate([r for r in done if (int(r.cfg["max_iters"]) - 1) % int(r.cfg["eval_every"]) != 0])
        self.evaluate(done, autoregressive=True)
        for run in done:
            self.save_checkpoint_file(run, "Final")
            single.save_resume_state(Path(run.ctx.run_dir), self.full_state(run, finished=True),
                                     int(run.cfg["keep_resume"]))
            run.ctx.progress(run.step, int(run.cfg["max_iters"]), force=True)
        self.leave(done)

    def leave(self, runs: list[PackedRun]) -> None:
        """Take ``runs`` out of the pack (finished, or failed); the others train on unchanged."""
        keep = [i for i, r in enumerate(self.runs) if all(r is not d for d in runs)]
        self.runs = [self.runs[i] for i in keep]
        self.weights = self.weights.detach()[keep].requires_grad_(True)
        self.optimizer.keep(keep)


def compile_mode_of(setting: bool | str) -> str | None:
    """torch.compile's mode for a compile setting (None: do not compile)."""
    if isinstance(setting, bool):
        return "default" if setting else None
    value = setting.strip()
    if value in ("", "0"):
        return None
    if value not in COMPILE_MODES:
        raise UserError(f"SORTGPT_COMPILE={setting!r}: expected 0, 1 or a torch.compile mode "
                        f"({', '.join(m for m in COMPILE_MODES if m != '1')})")
    return COMPILE_MODES[value]


def train_pack(configs: Sequence[dict[str, Any]], ctxs: Sequence[RunContext],
               on_step: Callable[[int], None] | None = None, overhead_tokens: float | None = None,
               max_chunk_tokens: int | None = -1, compile_model: bool | str | None = None) -> None:
    """Train (or resume) several runs of one architecture together. Each run's
    directory ends exactly as ``sortgpt.train.train`` would leave it.
    ``on_step(i)`` is called after every pack iteration i (tests interrupt with it);
    ``overhead_tokens`` overrides the bucketing cost model (0: one bucket per K);
    ``max_chunk_tokens`` caps one forward (-1: the device's default, None: no cap);
    ``compile_model`` runs the batched model through torch.compile: True, a mode
    of :data:`COMPILE_MODES`, or None for the environment's SORTGPT_COMPILE."""
    if len(configs) != len(ctxs):
        raise ValueError(f"{len(configs)} configs but {len(ctxs)} run contexts")
    keys = {pack_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError(f"runs of different architectures cannot be packed: {len(keys)} pack keys")
    device = single.resolve_device(str(configs[0]["device"]))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if max_chunk_tokens == -1:
        max_chunk_tokens = MAX_CHUNK_TOKENS["cuda" if device.type == "cuda" else "cpu"]
    compile_mode = compile_mode_of(os.environ.get("SORTGPT_COMPILE", "") if compile_model is None else compile_model)

    runs = [run for cfg, ctx in zip(configs, ctxs) if (run := _start_run(dict(cfg), ctx, device)) is not None]
    if not runs:
        return
    pack = Pack(runs, device, overhead_tokens, max_chunk_tokens, compile_mode)
    iteration = 0
    while True:
        done = [r for r in pack.runs if r.step >= int(r.cfg["max_iters"])]
        if done:
            pack.finish(done)
        if not pack.runs:
            return
        itrs = [r.step for r in pack.runs]
        pack.train_step()
        evaluating = [r for r, itr in zip(pack.runs, itrs) if itr % int(r.cfg["eval_every"]) == 0]
        failed = []
        for run in evaluating:
            try:
                run.ctx.log(run.step, {k: (v.item() if isinstance(v, torch.Tensor) else v)
                                       for k, v in run.train_record.items()}, split="train")
            except NonFiniteLoss as e:
                # one run's NaN ends that run only: the harness marks it failed with this reason
                print(f"sortgpt: {e}")
                run.ctx.failure = str(e)
                failed.append(run)
        if failed:
            pack.leave(failed)
            evaluating = [r for r in evaluating if all(r is not f for f in failed)]
            if not pack.runs:
                return
        if evaluating:
            pack.evaluate(evaluating)
        for run in pack.runs:
            pack.after_step(run)
        iteration += 1
        if on_step is not None:
            on_step(iteration)
