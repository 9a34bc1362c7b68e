"""Training and evaluation of one COCONUT run (Meta's run.py, as a flat loop).

Per epoch: stage = epoch // epochs_per_stage (0 forever for the baselines); a fresh AdamW (the reference
re-creates the optimizer every epoch: no LR schedule, no clipping); shuffled training batches with
gradient accumulation; then the validation loss at the same stage, and the validation answer accuracy
(greedy generation after question + latents; for the CoT baseline also run.py's CoT exact match,
``cot_em``). After each epoch: ``checkpoint_<epoch>`` (weights), ``checkpoint_best`` when validation
accuracy beat every earlier epoch's and 0 (run.py's ``best_acc`` starts at 0: a run that never answers
right has no best checkpoint), and a resume state. Epochs count from 1 in file
names and metric steps (``checkpoint_1`` / step 1 = after the first epoch, as in run.py).

Randomness is keyed so that a resumed run is bit-identical to an uninterrupted one: the data order and
the ``uniform_prob`` draws come from ``(seed, epoch)``; dropout draws from torch's RNG, saved in the
resume state.

Data parallel: with several processes (torchrun, or a submitit job with several tasks) every rank trains
on its shard of each batch list and gradients are averaged with an all-reduce before each optimizer step.
Rank 0 writes metrics and checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from coconut.data import (
    CompactTokenizer,
    Curriculum,
    SpecialIds,
    Tokenized,
    collate,
    collate_prompts,
    extract_answer,
    find_data_dir,
    load_prosqa,
    question_example,
    tokenize,
    tokenizer_for,
    training_example,
    well_formed,
)
from coconut.generate import GraphSize, generate_dataset
from coconut.model import BASELINES, NO_LATENT_TOKENS, Coconut, ModelConfig, ThoughtFn, build_model
from launch.checkpoint import (
    load_checkpoint,
    load_latest_resume_state,
    prune_resume_states,
    read_sidecar,
    resume_state_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from launch.errors import CheckpointError
from launch.experiment import RunContext

BEST = "checkpoint_best"


# --- config pieces -----------------------------------------------------------------------------------

def curriculum_of(config: dict[str, Any]) -> Curriculum:
    mode = config["feedback_mode"]
    return Curriculum(
        # no_thoughts: the stages drop steps as usual but put no latent in their place (run.py: c_thought = 0)
        c_thought=0 if mode == "no_thoughts" else config["c_thought"], max_latent_stage=config["max_latent_stage"],
        pad_latent_to_max=config["pad_latent_to_max"],
        uniform_prob=0.0 if mode in BASELINES else config["uniform_prob"],
        markers=mode not in NO_LATENT_TOKENS, no_cot=mode == "no_cot",
    )


def model_config_of(config: dict[str, Any]) -> ModelConfig:
    return ModelConfig(feedback_mode=config["feedback_mode"], base_model=config["base_model"],
                       n_layer=config["n_layer"], n_embd=config["n_embd"], n_head=config["n_head"],
                       dropout=config["dropout"])


def stage_of(config: dict[str, Any], epoch: int) -> int:
    """Curriculum stage of 0-based ``epoch``."""
    return 0 if config["feedback_mode"] in BASELINES else epoch // config["epochs_per_stage"]


# --- distributed -------------------------------------------------------------------------------------

def init_distributed(device: str) -> tuple[int, int]:
    """(rank, world size). Sets up torch.distributed when several processes run this task: torchrun's
    environment, or a submitit job with several tasks (exported the way torchrun would)."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        try:
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        except (ImportError, RuntimeError):
            pass
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _all_reduce_mean(values: list[torch.Tensor], world: int) -> None:
    if world > 1:
        for v in values:
            dist.all_reduce(v)
            v.div_(world)


# --- data --------------------------------------------------------------------------------------------

def graph_size_of(config: dict[str, Any]) -> GraphSize:
    """The generator's size knobs of a run (ProsQA-mini when smaller than the defaults)."""
    return GraphSize(min_nodes=config["graph_min_nodes"], max_nodes=config["graph_max_nodes"],
                     min_path=config["graph_min_path"], max_path=config["graph_max_path"])


# Seeds of the generated evaluation splits (eval_data: generated), derived from data_seed so that every
# run of a sweep sees the same splits; disjoint from the training questions by construction (excluded).
VAL_STREAM, TEST_STREAM = 1, 2
GENERATED_VAL_SIZE, GENERATED_TEST_SIZE = 300, 500  # the real splits' sizes


def eval_split(config: dict[str, Any], split: str, train_questions: set[str] | None = None) -> list[dict]:
    """The validation or test examples: the real files (``eval_data: real``), or generated with the
    run's graph size from their own seeds, excluding every training question (and, for test, every
    validation question). ``train_questions`` saves regenerating the training set when known."""
    if config["eval_data"] == "real":
        data = load_prosqa(find_data_dir(config["data_dir"]) / f"prosqa_{'valid' if split == 'val' else split}.json")
        return data[: config["val_size"] or None] if split == "val" else data
    size = graph_size_of(config)
    if train_questions is None:
        train_questions = {ex["question"] for ex in training_examples(config)}
    names = config["graph_names"]
    val = generate_dataset(config["val_size"] or GENERATED_VAL_SIZE, [config["data_seed"], VAL_STREAM], size,
                           exclude=train_questions, name_set=names)
    if split == "val":
        return val
    return generate_dataset(GENERATED_TEST_SIZE, [config["data_seed"], TEST_STREAM], size,
                            exclude=train_questions | {ex["question"] for ex in val}, name_set=names)


def training_examples(config: dict[str, Any]) -> list[dict]:
    """The training set: generated from ``data_seed`` with the run's graph size (the same for every run
    of a sweep), unless ``train_path`` names a ProsQA JSON file."""
    if config["train_path"]:
        return load_prosqa(config["train_path"])[: config["train_size"] or None]
    return generate_dataset(config["train_size"], seed=config["data_seed"], size=graph_size_of(config),
                            name_set=config["graph_names"])


def load_splits(config: dict[str, Any], tok: Any) -> tuple[list[Tokenized], list[dict], list[Tokenized]]:
    """(train tokens, validation examples, validation tokens); see training_examples and eval_split."""
    train = training_examples(config)
    valid = eval_split(config, "val", {ex["question"] for ex in train})
    return tokenize(train, tok), valid, tokenize(valid, tok)


def epoch_batches(examples: list[Tokenized], stage: int, cur: Curriculum, ids: SpecialIds, batch_size: int,
                  rng: np.random.Generator | None, rank: int = 0, world: int = 1) -> list[dict[str, torch.Tensor]]:
    """This rank's batches for one epoch: shuffled when ``rng`` is given (a DistributedSampler-like split:
    the order padded to a multiple of the world size by repeating its start, rank r takes r::world)."""
    order = list(rng.permutation(len(examples))) if rng is not None else list(range(len(examples)))
    if world > 1:
        order += order[: (-len(order)) % world]
        order = order[rank::world]
    feats_rng = rng if rng is not None else np.random.default_rng(0)
    feats = [training_example(examples[i], stage, cur, ids, feats_rng) for i in order]
    return [collate(feats[i:i + batch_size], ids.eos, ids.latent) for i in range(0, len(feats), batch_size)]


def _to(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


# --- evaluation --------------------------------------------------------------------------------------

@torch.no_grad()
def validation_loss(model: Coconut, batches: list[dict[str, torch.Tensor]], device: str) -> float:
    model.eval()
    losses = [float(model(**_to(b, device))) for b in batches]
    return sum(losses) / max(1, len(losses))


@torch.no_grad()
def generated_texts(model: Coconut, tok: Any, examples: list[Tokenized], stage: int, cur: Curriculum,
                    device: str, batch_size: int = 64, max_new_tokens: int = 128,
                    thought_fn: ThoughtFn | None = None) -> list[str]:
    """For each example, greedy generation after question + latents, decoded with the prompt (special
    tokens skipped), as run.py decodes it. Batched with a KV cache; prompts are grouped by latent count and
    sorted by length to keep the padding small."""
    model.eval()
    ids = model.ids
    prompts = [question_example(ex, stage, cur, ids) for ex in examples]
    order = sorted(range(len(prompts)), key=lambda i: (prompts[i].count(ids.latent), len(prompts[i])))
    answers: list[str] = [""] * len(prompts)
    i = 0
    while i < len(order):
        n_latent = prompts[order[i]].count(ids.latent)
        chunk = [j for j in order[i:i + batch_size] if prompts[j].count(ids.latent) == n_latent]
        batch = _to(collate_prompts([prompts[j] for j in chunk], ids.eos), device)
        outputs = model.generate(**batch, max_new_tokens=max_new_tokens, thought_fn=thought_fn)
        for j, out in zip(chunk, outputs, strict=True):
            answers[j] = tok.decode(prompts[j] + out, skip_special_tokens=True)
        i += len(chunk)
    return answers


def answer_questions(model: Coconut, tok: Any, examples: list[Tokenized], stage: int, cur: Curriculum,
                     device: str, batch_size: int = 64, max_new_tokens: int = 128,
                     thought_fn: ThoughtFn | None = None) -> list[str]:
    """The extracted answer for each example: the text after the last '#' (run.py) of generated_texts."""
    return [extract_answer(t) for t in generated_texts(model, tok, examples, stage, cur, device, batch_size,
                                                       max_new_tokens, thought_fn)]


def cot_exact_match(text: str, example: dict[str, Any]) -> bool:
    """run.py's CoT match: the decoded text (question included) after its first line, up to the first '#',
    stripped, equals the reference steps joined by newlines."""
    return "\n".join(text.split("\n")[1:]).split("#")[0].strip() == "\n".join(example["steps"])


def accuracy(answers: list[str], gold: list[dict]) -> float:
    return sum(a == ex["answer"].replace(",", "").strip() for a, ex in zip(answers, gold, strict=True)) / len(gold)


def scores(texts: list[str], gold: list[dict]) -> dict[str, float]:
    """Counts over generated texts: correct answers, well-formed answers, CoT exact matches."""
    answers = [extract_answer(t) for t in texts]
    return {"accuracy": sum(a == g["answer"].replace(",", "").strip() for a, g in zip(answers, gold, strict=True)),
            "well_formed": sum(map(well_formed, answers, gold)),
            "cot_em": sum(map(cot_exact_match, texts, gold))}


def sharded_scores(model: Coconut, tok: Any, examples: list[Tokenized], gold: list[dict], stage: int,
                   cur: Curriculum, device: str, config: dict[str, Any], rank: int, world: int) -> dict[str, float]:
    """Accuracy, well-formed fraction and CoT exact match on validation, each rank answering every
    world-th question; counts summed over ranks."""
    mine = list(range(rank, len(examples), world))
    texts = generated_texts(model, tok, [examples[i] for i in mine], stage, cur, device,
                            config["eval_batch_size"], config["max_new_tokens"])
    counts = scores(texts, [gold[i] for i in mine])
    summed = torch.tensor(list(counts.values()), dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(summed)
    return {k: float(v) / len(examples) for k, v in zip(counts, summed.tolist(), strict=True)}


# --- checkpoints -------------------------------------------------------------------------------------

def _weights(model: Coconut, tok: Any, config: dict[str, Any], epoch: int, stage: int, metrics: dict[str, float],
             pause_init: torch.Tensor | None) -> dict[str, Any]:
    state = {
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "gpt2_config": model.base_causallm.config.to_dict(),
        "config": dict(config), "epoch": epoch, "stage": stage, "metrics": dict(metrics),
    }
    if isinstance(tok, CompactTokenizer):  # the GPT-2 id of every row, so loading needs no recomputation
        state["compact_vocab_ids"] = list(tok.gpt2_ids[: tok.vocab_size])
    if pause_init is not None:
        state["pause_embedding_init"] = pause_init.cpu().clone()
    return state


def _plain_json(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool, type(None), list))}


def load_weights(path: str | Path, device: str = "cpu") -> tuple[Coconut, Any, dict[str, Any]]:
    """A model saved by training (``checkpoint_<n>`` / ``checkpoint_best``), without any hub access:
    the GPT-2 architecture comes from the checkpoint itself."""
    state = load_checkpoint(path, require=WEIGHTS_KEYS)  # verified before the slow import
    return model_from_state(path, state, device)


WEIGHTS_KEYS = ("model", "config", "gpt2_config")


def model_from_state(path: str | Path, state: dict[str, Any], device: str = "cpu") -> tuple[Coconut, Any, dict[str, Any]]:
    """load_weights for a checkpoint already read (``path`` names it in errors)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tokenizer_for(state["config"], state.get("compact_vocab_ids"))
    gpt2_config = {k: v for k, v in state["gpt2_config"].items() if k not in ("transformers_version",)}
    base = GPT2LMHeadModel(GPT2Config(**gpt2_config))
    model = Coconut(base, state["config"]["feedback_mode"], SpecialIds.of(tok))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), tok, state


def find_run_dir(name: str, root: str | Path = "checkpoints", seed: int | None = None) -> Path:
    """The run directory for ``name``: a path, ``<root>/<name>``, or ``<root>/coconut/<name>``; when that
    holds ``seed<N>`` folders, ``seed<seed>`` (default: the lowest seed)."""
    root = Path(root)
    for base in (Path(name), root / name, root / "coconut" / name):
        if not base.is_dir():
            continue
        seeds = sorted((p for p in base.glob("seed*") if p.is_dir() and p.name[4:].isdigit()),
                       key=lambda p: int(p.name[4:]))
        if seed is not None and (base / f"seed{seed}").is_dir():
            return base / f"seed{seed}"
        if seed is None and seeds and not list(base.glob("checkpoint_*")):
            return seeds[0]
        if list(base.glob("checkpoint_*")):
            return base
    raise CheckpointError(f"no run named {name!r} under {root} (looked for {name}, {root / name}, "
                          f"{root / 'coconut' / name})")


def checkpoint_for(run_dir: Path) -> Path:
    """checkpoint_best, else the final epoch's checkpoint, else the highest-numbered one."""
    if (run_dir / BEST).is_file():
        return run_dir / BEST
    numbered = sorted((int(p.name.split("_")[1]), p) for p in run_dir.glob("checkpoint_*")
                      if p.name.split("_")[1].isdigit())
    if not numbered:
        raise CheckpointError(f"{run_dir} has no checkpoint_best and no checkpoint_<epoch>")
    for _, path in reversed(numbered):  # the newest sidecar that records the run's config
        final = ((read_sidecar(path) or {}).get("config") or {}).get("num_epochs")
        if final is not None:
            if (run_dir / f"checkpoint_{final}").is_file():
                return run_dir / f"checkpoint_{final}"
            break
    return numbered[-1][1]


def load_model_by_name(name: str, root: str | Path = "checkpoints", seed: int | None = None,
                       device: str = "cpu") -> tuple[Coconut, Any, dict[str, Any]]:
    """(model, tokenizer, checkpoint contents) for a model name such as ``coconut`` or ``pause-curriculum``."""
    return load_weights(checkpoint_for(find_run_dir(name, root, seed)), device)


# --- the run -----------------------------------------------------------------------------------------

def train(config: dict[str, Any], ctx: RunContext, device: str) -> Coconut:
    """Train (or resume) one run in ``ctx.run_dir``; rank 0 logs through ``ctx.log``. Returns the model."""
    run_dir = ctx.run_dir
    rank, world = init_distributed(device)
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
        torch.cuda.set_device(device)
    lead = rank == 0
    tok = tokenizer_for(config)
    ids = SpecialIds.of(tok)
    cur = curriculum_of(config)
    train_set, valid_raw, valid = load_splits(config, tok)

    torch.manual_seed(config["seed"])
    model = build_model(model_config_of(config), tok).to(device)
    pause = model.pause_vector()
    pause_init = None if pause is None else pause.detach().clone()
    # run.py's best_acc starts at 0: an epoch must answer something right to be the best
    start_epoch, best = 0, {"accuracy": 0.0, "epoch": 0}

    found = load_latest_resume_state(run_dir, require=("model", "epoch", "rng", "config"))
    if found is not None:
        path, state = found
        # A state saved before a knob existed ran with the knob's old value (the experiment's later_params).
        from coconut.experiment import CoconutExperiment

        # a cosine schedule spans num_epochs: resuming with another count would change what it computes
        free = RESUME_FREE - ({"num_epochs"} if config.get("lr_schedule") == "cosine" else set())
        saved = {k: v for k, v in (CoconutExperiment.later_params | state["config"]).items() if k not in free}
        now = {k: v for k, v in config.items() if k not in free}
        if saved != now:
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise CheckpointError(f"{path} was saved with a different config ({', '.join(diff)})")
        model.load_state_dict(state["model"])
        start_epoch, best = int(state["epoch"]), dict(state["best"])
        best["accuracy"] = max(float(best["accuracy"]), 0.0)  # states saved when the search started at -1
        if state.get("pause_embedding_init") is not None:
            pause_init = state["pause_embedding_init"].to(device)
        set_rng_state(state["rng"])
        if lead:
            print(f"coconut: resuming after epoch {start_epoch} from {path.name}")
    if lead:
        ctx.truncate_metrics(start_epoch)  # records after the resume point would be duplicated

    params = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(start_epoch, config["num_epochs"]):
        t0 = time.time()
        stage = stage_of(config, epoch)
        rng = np.random.default_rng([config["seed"], epoch])
        batches = epoch_batches(train_set, stage, cur, ids, config["batch_size"], rng, rank, world)
        # A fresh optimizer every epoch (run.py's reset_optimizer): no state carries across stages.
        optimizer = torch.optim.AdamW(params, lr=config["lr"], weight_decay=config["weight_decay"])
        steps_per_epoch = -(-len(batches) // config["grad_accum"])  # optimizer steps (every epoch has as many)
        opt_step = epoch * steps_per_epoch
        model.train()
        train_losses = []
        for step, batch in enumerate(batches):
            loss = model(**_to(batch, device))
            (loss / config["grad_accum"]).backward()
            train_losses.append(loss.detach())
            if (step + 1) % config["grad_accum"] == 0 or step == len(batches) - 1:
                if world > 1:
                    _sync_grads(params, world)
                if config.get("lr_schedule") == "cosine":
                    lr = scheduled_lr(config["lr"], opt_step, steps_per_epoch * config["num_epochs"])
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                optimizer.step()
                opt_step += 1
                optimizer.zero_grad(set_to_none=True)
        train_loss = torch.stack(train_losses).mean()
        _all_reduce_mean([train_loss], world)

        # Validation examples in their own order; the reference applies uniform_prob to them too.
        val_rng = np.random.default_rng([config["seed"], epoch, 1]) if cur.uniform_prob > 0 else None
        val_batches = epoch_batches(valid, stage, cur, ids, config["batch_size"], val_rng, rank, world)
        val_loss = torch.tensor(validation_loss(model, val_batches, device), device=device)
        _all_reduce_mean([val_loss], world)
        val_scores = sharded_scores(model, tok, valid, valid_raw, stage, cur, device, config, rank, world)
        val_acc = val_scores["accuracy"]

        done = epoch + 1
        val_metrics = {"loss": float(val_loss), "accuracy": val_acc, "well_formed": val_scores["well_formed"],
                       "stage": stage}
        if config["feedback_mode"] == "cot":  # run.py logs it for every mode; only CoT writes the steps out
            val_metrics["cot_em"] = val_scores["cot_em"]
        if pause_init is not None:
            val_metrics["pause_embedding_drift"] = float((model.pause_vector().detach() - pause_init).norm())
        if lead:
            ctx.log(done, {"loss": float(train_loss), "stage": stage, "epoch_time_s": time.time() - t0}, "train")
            ctx.log(done, val_metrics, "val")
            weights = _weights(model, tok, config, done, stage, val_metrics, pause_init)
            meta = {"config": _plain_json(config), "epoch": done, "stage": stage, "metrics": val_metrics}
            save_checkpoint(weights, run_dir / f"checkpoint_{done}", sidecar=meta)
            if val_acc > best["accuracy"]:  # strictly better than every earlier epoch and than 0 (run.py)
                best = {"accuracy": val_acc, "epoch": done}
                save_checkpoint(weights, run_dir / BEST, sidecar=meta)
            _prune_epoch_checkpoints(run_dir, config["keep_checkpoints"], config["epochs_per_stage"], done)
            resume = {"model": weights["model"], "epoch": done, "best": best, "rng": rng_state(),
                      "config": dict(config)}
            if pause_init is not None:
                resume["pause_embedding_init"] = pause_init.cpu().clone()
            save_checkpoint(resume, resume_state_path(run_dir, done), sidecar={"epoch": done})
            prune_resume_states(run_dir, keep_last=1)
            ctx.progress(done, config["num_epochs"], force=True)
            print(f"coconut: epoch {done}/{config['num_epochs']} stage {stage} train loss {float(train_loss):.4f} "
                  f"val loss {float(val_loss):.4f} val acc {val_acc:.3f} ({time.time() - t0:.1f}s)", flush=True)
        if world > 1:
            dist.barrier()

    if config["test_at_end"] and lead and config["num_epochs"] > start_epoch:
        final_test(config, ctx, device)
    return model


def scheduled_lr(lr: float, step: int, total: int) -> float:
    """The cosine schedule's rate at optimizer step ``step`` (0-based) of ``total``: ``lr`` at the first,
    decaying to 0 after the last. No warmup: the optimizer is re-created every epoch anyway."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * step / total))


# Settings that may change between a run and its resumption without changing what it computes.
RESUME_FREE = {"device", "eval_batch_size", "keep_checkpoints", "test_at_end", "data_dir", "num_epochs",
               "model_name"}


def _sync_grads(params: list[torch.nn.Parameter], world: int) -> None:
    """Average gradients over ranks (a parameter unused on some rank counts as a zero gradient)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world)


def _prune_epoch_checkpoints(run_dir: Path, keep: int, epochs_per_stage: int, done: int) -> None:
    """keep <= 0: keep every checkpoint_<n> (run.py). Otherwise the newest ``keep`` plus the last epoch of
    every stage (what the gates and the corruption test look at); checkpoint_best is a separate file."""
    if keep <= 0:
        return
    for p in run_dir.glob("checkpoint_*"):
        n = p.name.split("_")[1].split(".")[0]
        if n.isdigit() and int(n) <= done - keep and int(n) % epochs_per_stage != 0:
            p.unlink(missing_ok=True)
            Path(str(p) + ".json").unlink(missing_ok=True)


def final_test(config: dict[str, Any], ctx: RunContext, device: str) -> None:
    """Accuracy of checkpoint_best on the test split (the real 500, or the generated 500 with
    ``eval_data: generated``), logged as split "test" at the final step. A run with no checkpoint_best (no
    epoch answered anything right) is tested with its final epoch's weights and logs best_epoch 0."""
    best = ctx.run_dir / BEST
    model, tok, state = load_weights(best if best.is_file() else ctx.run_dir / f"checkpoint_{config['num_epochs']}",
                                     device)
    test_raw = eval_split(config, "test")
    test = tokenize(test_raw, tok)
    stage = int(state["stage"])
    texts = generated_texts(model, tok, test, stage, curriculum_of(config), device, config["eval_batch_size"],
                            config["max_new_tokens"])
    counts = scores(texts, test_raw)
    metrics = {"accuracy": counts["accuracy"] / len(test_raw), "well_formed": counts["well_formed"] / len(test_raw),
               "best_epoch": int(state["epoch"]) if best.is_file() else 0, "stage": stage}
    if config["feedback_mode"] == "cot":
        metrics["cot_em"] = counts["cot_em"] / len(test_raw)
    ctx.log(config["num_epochs"], metrics, "test")
