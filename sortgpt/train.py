"""The training loop for one sortgpt run, top to bottom.

Protocol (issue 3): AdamW (0.9, 0.95), eps 1e-8, weight decay 0, no clipping;
linear warm-up then cosine decay max_lr -> min_lr at max_iters; every step a fresh
batch of one K; teacher-forced evaluation every eval_every iterations on every
in-distribution K ("test") and every longer K up to test_max_k ("gen");
autoregressive exact match at the end ("test_ar", "gen_ar"); an intermediate
checkpoint after iteration checkpoint_iter and a final one, in the reference's
file names.

Like the reference, iteration ``itr`` (0-based) is logged as step ``itr + 1``
(iterations done), and evaluation runs when ``itr % eval_every == 0`` — so at
steps 1, 251, 501, …. We add one teacher-forced evaluation of the final weights
at step max_iters (the reference's last one is at step max_iters − eval_every + 1).

Two choices of the reference's that the default keeps apart on purpose:

- ``adamw_impl``: "fused" (default) is the reference's ``AdamW(..., fused=True)`` on every
  device; "fused_on_gpu" is torch's per-parameter loop on CPU (the behaviour before the
  knob existed: trees written then keep it, see sortgpt/experiment.py ``later_params``).
- ``data_stream``: "separate" (default) gives data, K and evaluation their own generators,
  so evaluating more or less often, or packing runs, never shifts the training stream.
  "reference" replays the reference's single stream for run-for-run comparisons with
  existing sort-llm runs: ``torch.manual_seed(seed)``, the model's init in the reference's
  draw order (its zeroed positional table of NoPE models is drawn too), then K, every
  batch and every scheduled evaluation (test Ks then gen Ks, lists drawn 100 at a time)
  from the one generator that follows; on a GPU the batches come from the device's
  generator seeded with ``seed`` and K from the CPU one, as in the reference. Our extra
  evaluations (the final weights, the free-running one) draw from their own generators.

Resume: every save_every iterations the full state (model, optimizer, step, all
RNG states) goes to ``<run_dir>/resume_<step>.pt``; a restarted run loads the newest one
and continues bit-identically (on CPU; on GPU up to kernel non-determinism).

Extension (``sweep resume RUN_DIR --steps N``): a new run directory starts from the
parent's *finished* resume state, under a config from ``SortGPTExperiment.extend`` that
differs only in EXTENDABLE fields. A finished state short of max_iters is continued,
not skipped; any other config difference is still an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from launch.checkpoint import (
    check_config_match,
    load_checkpoint,
    load_latest_resume_state,
    prune_resume_states,
    resume_state_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from launch.errors import CheckpointError
from launch.experiment import RunContext, with_later_params
from sortgpt.data import (
    pick_train_k,
    prediction_positions,
    sample_batch,
    sorted_half_loss,
    sorted_targets,
)
from sortgpt.experiment import EXPERIMENT
from sortgpt.model import GPT, GPTConfig
from sortgpt.naming import checkpoint_name

RESUME_KEYS = ("step", "finished", "config", "model", "optimizer", "rng")
# What `sweep resume RUN_DIR --steps N [--lr X]` may change when it continues a finished run.
EXTENDABLE = ("max_iters", "max_lr", "min_lr")
CHECKPOINT_FORMAT = "sortgpt/1"
# Seed offsets so the data, K and evaluation streams of one run never coincide.
K_SEED_OFFSET = 1_000_003
EVAL_SEED_OFFSET = 2_000_029
AR_SEED_OFFSET = 3_000_017
EVAL_SEED_MULTIPLIER = 7_919
REFERENCE_EVAL_BATCH = 100  # the reference's eval_batch_size: its evaluation lists are drawn 100 at a time


# -- pieces the loop uses ----------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_config(cfg: dict[str, Any]) -> GPTConfig:
    longest_k = max(int(cfg["train_max_k"]), int(cfg["test_max_k"]))
    return GPTConfig(
        vocab_size=int(cfg["vocab_n"]) + 1,  # + SEP
        n_embd=int(cfg["n_embd"]), n_heads=int(cfg["n_heads"]), n_layers=int(cfg["n_layers"]),
        use_mlp=bool(cfg["use_mlp"]), use_layernorm=bool(cfg["use_layernorm"]),
        no_pos_emb=bool(cfg["no_pos_emb"]), max_seq_len=2 * longest_k + 1,
    )


def make_optimizer(model: GPT, cfg: dict[str, Any], device: torch.device) -> torch.optim.AdamW:
    # nanoGPT's grouping: matrices (and embeddings) in the decay group, biases and
    # norm gains not. The protocol's weight decay is 0, so the split only matters
    # to someone who changes that.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.0},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = cfg["adamw_impl"] == "fused" or device.type == "cuda"
    return torch.optim.AdamW(groups, lr=float(cfg["max_lr"]), betas=(0.9, 0.95), eps=1e-8, fused=fused)


def init_run(cfg: dict[str, Any], device: torch.device) -> tuple[GPT, dict[str, torch.Generator]]:
    """The run's initial weights and its training generators ("data", "k"), from its seed.
    With data_stream "separate" the init draws from torch's global RNG and data and K
    have generators of their own, so nothing else (evaluation, a library) can shift the
    training stream; with "reference" they are the reference's one stream (module docstring)."""
    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    model = GPT(model_config(cfg))
    if cfg["data_stream"] != "reference":
        generators = {"data": generator_for(device, seed),
                      "k": generator_for(torch.device("cpu"), seed + K_SEED_OFFSET)}
        return model.to(device), generators
    # The reference builds (then apply()-initialises) a positional table even for NoPE models, which it
    # zeroes and freezes: build the model with one, so every draw lands where the reference's does.
    torch.manual_seed(seed)
    drawn = GPT(model_config(cfg | {"no_pos_emb": False}))
    stream = torch.Generator()
    stream.set_state(torch.get_rng_state())  # what the reference's loop draws from next
    model.load_state_dict({k: v for k, v in drawn.state_dict().items() if k in model.state_dict()})
    if device.type == "cpu":
        return model, {"data": stream, "k": stream}
    return model.to(device), {"data": generator_for(device, seed), "k": stream}


def evaluation_stream(cfg: dict[str, Any], step: int, device: torch.device,
                      generators: dict[str, torch.Generator], autoregressive: bool = False
                      ) -> tuple[torch.Generator, int | None]:
    """The generator an evaluation at ``step`` draws its lists from, and the chunk they are
    drawn in (None: all at once). Default: its own, seeded from (seed, step), so a resumed
    run evaluates on exactly the lists the uninterrupted one did. data_stream "reference":
    the scheduled teacher-forced evaluations draw from the training stream, 100 at a time —
    while training; a checkpoint evaluated later (``sweep evaluate``, no "data" generator
    given) holds no stream, so it gets its own lists as any other run."""
    scheduled = (step - 1) % int(cfg["eval_every"]) == 0
    if cfg["data_stream"] == "reference" and scheduled and not autoregressive and "data" in generators:
        return generators["data"], REFERENCE_EVAL_BATCH
    offset = AR_SEED_OFFSET if autoregressive else EVAL_SEED_OFFSET
    return generator_for(device, int(cfg["seed"]) * EVAL_SEED_MULTIPLIER + offset + step), None


def eval_lists(cfg: dict[str, Any], k: int, generator: torch.Generator, chunk: int | None) -> torch.Tensor:
    """eval_samples fresh lists of length k (drawn ``chunk`` at a time when given)."""
    n, vocab_n, no_dup = int(cfg["eval_samples"]), int(cfg["vocab_n"]), bool(cfg["no_dup"])
    if chunk is None:
        return sample_batch(n, k, vocab_n, no_dup, generator)
    return torch.cat([sample_batch(min(chunk, n - i), k, vocab_n, no_dup, generator) for i in range(0, n, chunk)])


def lr_at(itr: int, cfg: dict[str, Any]) -> float:
    """Learning rate for 0-based iteration ``itr``: the reference's warm-up
    max_lr·(itr+1)/(warmup+1), then cosine from max_lr to min_lr at max_iters."""
    max_lr, min_lr = float(cfg["max_lr"]), float(cfg["min_lr"])
    warmup, max_iters = int(cfg["warmup_iters"]), int(cfg["max_iters"])
    if itr < warmup:
        return max_lr * (itr + 1) / (warmup + 1)
    if itr >= max_iters:
        return min_lr
    ratio = (itr - warmup) / max(1, max_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def eval_ks(cfg: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(in-distribution Ks, out-of-distribution Ks): every trained K, then every
    K above the training range up to test_max_k, starting no lower than test_min_k."""
    lo, hi = int(cfg["train_min_k"]), int(cfg["train_max_k"])
    gen_start = max(hi + 1, int(cfg["test_min_k"]))
    return list(range(lo, hi + 1)), list(range(gen_start, int(cfg["test_max_k"]) + 1))


def autocast_for(device: torch.device):
    # bf16 on GPU (as the reference); plain fp32 on CPU, where determinism is tested.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def generator_for(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def prediction_metrics(logits: torch.Tensor, batch: torch.Tensor, k: int) -> dict[str, float]:
    """Teacher-forced metrics from the K scored logits (B, K, V) of a batch."""
    targets = sorted_targets(batch, k)
    preds = logits.argmax(dim=-1)
    right = preds == targets
    abs_err = (preds - targets).abs().sum()
    return {
        "loss": sorted_half_loss(logits, batch, k).item(),
        "exact_match_acc": right.all(dim=1).float().mean().item(),
        "token_acc": right.float().mean().item(),
        "pos_abs_err_sum": abs_err.item(),
        "pos_abs_err_mean": abs_err.item() / targets.numel(),
    }


@torch.no_grad()
def evaluate_teacher_forced(model: GPT, cfg: dict[str, Any], k: int, generator: torch.Generator,
                            device: torch.device, chunk: int | None = None) -> dict[str, float]:
    """Argmax at each sorted position given the true prefix, on eval_samples fresh lists."""
    batch = eval_lists(cfg, k, generator, chunk)
    with autocast_for(device):
        logits = model(batch, positions=prediction_positions(k))
    return prediction_metrics(logits.float(), batch, k)


@torch.no_grad()
def greedy_sort(model: GPT, prompts: torch.Tensor, k: int, device: torch.device) -> torch.Tensor:
    """Free-running decoding: feed ``numbers SEP`` (B, k+1), append the argmax k
    times; returns the k generated tokens (B, k)."""
    seq = prompts
    for _ in range(k):
        with autocast_for(device):
            logits = model(seq, positions=slice(-1, None))
        seq = torch.cat([seq, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return seq[:, k + 1:]


@torch.no_grad()
def evaluate_autoregressive(model: GPT, cfg: dict[str, Any], k: int, generator: torch.Generator,
                            device: torch.device, chunk: int | None = None) -> dict[str, float]:
    batch = eval_lists(cfg, k, generator, chunk)
    right = greedy_sort(model, batch[:, :k + 1], k, device) == sorted_targets(batch, k)
    return {"exact_match_acc": right.all(dim=1).float().mean().item(),
            "token_acc": right.float().mean().item()}


def log_evaluation(model: GPT, cfg: dict[str, Any], ctx: RunContext, step: int, device: torch.device,
                   generators: dict[str, torch.Generator], autoregressive: bool = False) -> float:
    """One evaluation pass at ``step`` over all Ks, on lists from :func:`evaluation_stream`."""
    generator, chunk = evaluation_stream(cfg, step, device, generators, autoregressive)
    evaluate = evaluate_autoregressive if autoregressive else evaluate_teacher_forced
    suffix = "_ar" if autoregressive else ""
    in_dist, out_of_dist = eval_ks(cfg)
    model.eval()
    in_dist_exact: list[float] = []
    for split, ks in (("test", in_dist), ("gen", out_of_dist)):
        for k in ks:
            metrics = evaluate(model, cfg, k, generator, device, chunk)
            ctx.log(step, metrics, split=split + suffix, length=k)
            if split == "test":
                in_dist_exact.append(float(metrics["exact_match_acc"]))
    model.train()
    return sum(in_dist_exact) / len(in_dist_exact)


# -- best so far ----------------------------------------------------------------------
# "Best" = the highest mean in-distribution exact match of a teacher-forced evaluation;
# the earliest step wins ties. Tracked in the resume state; with save_best the weights
# of that evaluation are kept as Best_…_iters{step}.pt (one file, replaced on improvement).

def new_best() -> dict[str, Any]:
    return {"metric": None, "step": None}


def update_best(best: dict[str, Any], metric: float, step: int, model: GPT, cfg: dict[str, Any],
                run_dir: Path) -> dict[str, Any]:
    if best["metric"] is not None and metric <= best["metric"]:
        return best
    if cfg.get("save_best"):
        old = [p for p in run_dir.glob("Best_*.pt")]
        save_checkpoint(checkpoint_payload(model, cfg, step) | {"best_metric": metric},
                        run_dir / checkpoint_name("Best", cfg, step),
                        sidecar={"step": step, "config": dict(cfg), "metrics": {"in_dist_exact_match": metric}})
        for p in old:
            if p.name != checkpoint_name("Best", cfg, step):
                p.unlink(missing_ok=True)
                p.with_name(p.name + ".json").unlink(missing_ok=True)
    return {"metric": metric, "step": step}


def checkpoint_payload(model: GPT, cfg: dict[str, Any], step: int) -> dict[str, Any]:
    """What a Checkpoint_/Final_ file holds: plain data only (weights_only loadable)."""
    return {"format": CHECKPOINT_FORMAT, "step": step, "config": dict(cfg),
            "model_config": model.config.to_dict(),
            "model": to_cpu(model.state_dict())}


def to_cpu(obj: Any) -> Any:
    """Tensors (nested in dicts/lists) moved to CPU, so a state saved on a GPU node
    loads anywhere; load_state_dict moves them back next to the parameters."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict[str, Any]]:
    """A model from a Checkpoint_/Final_ file (or a resume state), and its run config.
    Also reads the sort-llm reference's files (sortgpt/reference.py)."""
    state = load_checkpoint(path, require=("model",))
    from sortgpt.reference import is_reference_state, model_from_reference

    if is_reference_state(state):
        model, cfg, _ = model_from_reference(state, path)
        return model.to(device).eval(), cfg
    state = load_checkpoint(path, require=("model", "model_config", "config")) if not (
        "model_config" in state and "config" in state) else state
    try:
        model = GPT(GPTConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
    except (TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a sortgpt model checkpoint ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), with_later_params(EXPERIMENT, state["config"])


# -- resume states -------------------------------------------------------------

def save_resume_state(run_dir: Path, state: dict[str, Any], keep: int) -> None:
    """``resume_<step>.pt`` in the run directory (launch.checkpoint's convention);
    only the ``keep`` newest stay."""
    save_checkpoint(state, resume_state_path(run_dir, state["step"]),
                    sidecar={"step": state["step"], "finished": state["finished"]})
    prune_resume_states(run_dir, keep)


def load_resume_state(run_dir: Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The newest loadable resume state (None when there is none). A state written
    under a different config is an error, not something to silently continue;
    only the device may change (a requeued job can land elsewhere) — and the
    EXTENDABLE fields when a finished state is continued past its end (an extension)."""
    found = load_latest_resume_state(run_dir, require=RESUME_KEYS)
    if found is None:
        return None
    path, state = found
    free = {"device"}
    if state["finished"] and int(state["step"]) < int(cfg["max_iters"]):
        free |= set(EXTENDABLE)
    saved = with_later_params(EXPERIMENT, state["config"])  # saved before a knob existed: its old value
    fields = sorted((set(cfg) | set(saved)) - free)
    check_config_match(saved, cfg, fields, path=path)
    return state


# -- the run -----------------------------------------------------------------------

def train(cfg: dict[str, Any], ctx: RunContext, on_step: Callable[[int], None] | None = None) -> None:
    """Train (or resume) one run. ``on_step(step)`` is called after every iteration
    (tests use it to interrupt a run)."""
    run_dir = Path(ctx.run_dir)
    device = resolve_device(str(cfg["device"]))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    max_iters = int(cfg["max_iters"])
    batch_size, vocab_n, no_dup = int(cfg["batch_size"]), int(cfg["vocab_n"]), bool(cfg["no_dup"])
    eval_every, save_every = int(cfg["eval_every"]), int(cfg["save_every"])

    model, generators = init_run(cfg, device)
    optimizer = make_optimizer(model, cfg, device)
    data_generator, k_generator = generators["data"], generators["k"]
    step = 0  # iterations done
    best = new_best()

    state = load_resume_state(run_dir, cfg)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], generators)
        step = int(state["step"])
        best = dict(state.get("best") or new_best())
        ctx.truncate_metrics(step)  # drop records logged after this state was saved
        if state["finished"] and step >= max_iters:
            print(f"sortgpt: {run_dir} already finished ({step} iterations)")
            ctx.progress(step, max_iters, force=True)
            return
        verb = "extending a finished run" if state["finished"] else "resuming"
        print(f"sortgpt: {verb} at iteration {step} of {max_iters}")
    else:
        ctx.truncate_metrics(0)  # a fresh start: drop anything an earlier, unsaved attempt logged

    def full_state(finished: bool) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "step": step, "finished": finished, "config": dict(cfg),
                "model_config": model.config.to_dict(), "model": to_cpu(model.state_dict()),
                "optimizer": to_cpu(optimizer.state_dict()), "rng": rng_state(generators), "best": dict(best)}

    model.train()
    while step < max_iters:
        itr = step
        k = pick_train_k(itr, cfg, k_generator)
        batch = sample_batch(batch_size, k, vocab_n, no_dup, data_generator)
        lr = lr_at(itr, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        with autocast_for(device):
            logits = model(batch, positions=prediction_positions(k))
            loss = sorted_half_loss(logits, batch, k)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step = itr + 1

        if itr % eval_every == 0:
            # Train metrics come from this step's batch, scored before the update.
            train_metrics = prediction_metrics(logits.detach().float(), batch, k)
            ctx.log(step, {"loss": loss.item(), "token_acc": train_metrics["token_acc"],
                           "exact_match_acc": train_metrics["exact_match_acc"],
                           "K_mean": float(k), "K_min": k, "K_max": k, "lr": lr}, split="train")
            best = update_best(best, log_evaluation(model, cfg, ctx, step, device, generators), step, model, cfg,
                               run_dir)
        if step == int(cfg["checkpoint_iter"]) and step < max_iters:
            payload = checkpoint_payload(model, cfg, step) | {"optimizer": to_cpu(optimizer.state_dict())}
            save_checkpoint(payload, run_dir / checkpoint_name("Checkpoint", cfg, step),
                            sidecar={"step": step, "config": dict(cfg)})
        # The state at max_iters is saved below, after the final evaluation, marked finished.
        if save_every > 0 and step % save_every == 0 and step < max_iters:
            save_resume_state(run_dir, full_state(finished=False), int(cfg["keep_resume"]))
        ctx.progress(step, max_iters)
        if on_step is not None:
            on_step(step)

    # Final: evaluate the final weights (teacher-forced unless that just happened,
    # then free-running), write the Final_ checkpoint, and mark the run finished.
    if (max_iters - 1) % eval_every != 0:
        best = update_best(best, log_evaluation(model, cfg, ctx, max_iters, device, generators), max_iters, model,
                           cfg, run_dir)
    log_evaluation(model, cfg, ctx, max_iters, device, generators, autoregressive=True)
    save_checkpoint(checkpoint_payload(model, cfg, max_iters), run_dir / checkpoint_name("Final", cfg, max_iters),
                    sidecar={"step": max_iters, "config": dict(cfg)})
    save_resume_state(run_dir, full_state(finished=True), int(cfg["keep_resume"]))
    ctx.progress(max_iters, max_iters, force=True)
