"""sortgpt as a sweep experiment: defaults, config checks, run, progress."""

from __future__ import annotations

from typing import Any

from launch.experiment import RunContext

LENGTH_MODES = ("mix", "curriculum")
DEVICES = ("auto", "cpu", "cuda")
ADAMW_IMPLS = ("fused", "fused_on_gpu")  # sortgpt/train.py make_optimizer
DATA_STREAMS = ("separate", "reference")  # sortgpt/train.py init_run


class SortGPTExperiment:
    name = "sortgpt"
    # Knobs added after trees were written, with the value that gives the old behaviour
    # (launch/experiment.py later_params): such runs keep their run keys.
    later_params = {"adamw_impl": "fused_on_gpu", "data_stream": "separate"}

    def defaults(self) -> dict[str, Any]:
        # The reference protocol (issue 3); "fixed" K is mix with train_min_k == train_max_k.
        return {
            "vocab_n": 128, "n_embd": 128, "n_heads": 1, "n_layers": 2,
            "use_mlp": True, "use_layernorm": True, "no_pos_emb": True,
            "length_mode": "mix", "train_min_k": 2, "train_max_k": 8, "test_min_k": 17, "test_max_k": 32,
            "no_dup": True,
            "max_iters": 40000, "batch_size": 4096, "max_lr": 1e-4, "min_lr": 1e-6, "warmup_iters": 400,
            "curriculum_warmup_iters": 0, "curriculum_span_iters": 20000,
            "eval_every": 250, "eval_samples": 100, "checkpoint_iter": 20001,
            "save_every": 1000, "keep_resume": 2, "save_best": False,
            "seed": 1337, "device": "auto",
            # the reference's fused AdamW on every device; "fused_on_gpu": torch's loop on CPU (older trees)
            "adamw_impl": "fused",
            # "reference": the reference's one RNG stream for init, K, data and evaluation (sortgpt/train.py)
            "data_stream": "separate",
        }

    def check(self, config: dict[str, Any]) -> list[str]:
        c = config
        problems: list[str] = []
        for name in ("vocab_n", "n_embd", "n_heads", "n_layers", "max_iters", "batch_size",
                     "eval_every", "eval_samples", "keep_resume", "curriculum_span_iters"):
            if c[name] < 1:
                problems.append(f"{name}: must be at least 1, got {c[name]}")
        for name in ("warmup_iters", "curriculum_warmup_iters", "checkpoint_iter", "save_every"):
            if c[name] < 0:
                problems.append(f"{name}: must be >= 0, got {c[name]} (0 switches it off)"
                                if name in ("checkpoint_iter", "save_every") else
                                f"{name}: must be >= 0, got {c[name]}")
        if c["n_heads"] >= 1 and c["n_embd"] % c["n_heads"]:
            problems.append(f"n_embd: {c['n_embd']} is not divisible by n_heads={c['n_heads']}")
        if c["length_mode"] not in LENGTH_MODES:
            problems.append(f"length_mode: must be one of {', '.join(LENGTH_MODES)}, got {c['length_mode']!r}")
        if c["device"] not in DEVICES:
            problems.append(f"device: must be one of {', '.join(DEVICES)}, got {c['device']!r}")
        for lo, hi in (("train_min_k", "train_max_k"), ("test_min_k", "test_max_k")):
            if c[lo] < 1:
                problems.append(f"{lo}: must be at least 1, got {c[lo]}")
            if c[lo] > c[hi]:
                problems.append(f"{lo}: {c[lo]} is larger than {hi}={c[hi]}")
        longest = max(c["train_max_k"], c["test_max_k"])
        if c["no_dup"] and longest > c["vocab_n"]:
            which = "train_max_k" if c["train_max_k"] >= c["test_max_k"] else "test_max_k"
            problems.append(f"{which}: {c[which]} distinct numbers cannot be drawn from vocab_n={c['vocab_n']} "
                            "(no_dup is on)")
        for name, allowed in (("adamw_impl", ADAMW_IMPLS), ("data_stream", DATA_STREAMS)):
            if c[name] not in allowed:
                problems.append(f"{name}: must be one of {', '.join(allowed)}, got {c[name]!r}")
        if c["data_stream"] == "reference" and c["train_max_k"] > c["test_max_k"]:
            problems.append(f"data_stream: 'reference' needs train_max_k <= test_max_k (the reference's model "
                            f"has positions up to test_max_k={c['test_max_k']} only)")
        if not c["max_lr"] > 0:
            problems.append(f"max_lr: must be > 0, got {c['max_lr']}")
        if not 0 <= c["min_lr"] <= c["max_lr"]:
            problems.append(f"min_lr: must be between 0 and max_lr={c['max_lr']}, got {c['min_lr']}")
        return problems

    def total_steps(self, config: dict[str, Any]) -> int:
        return int(config["max_iters"])

    def extend(self, config: dict[str, Any], steps: int, lr: float | None) -> dict[str, Any]:
        """The config of a finished run continued for ``steps`` more iterations
        (``sweep resume``). The extra iterations train at a constant learning rate:
        ``lr`` when given, else the parent's min_lr, where its cosine ended — so
        without --lr the schedule simply goes on flat, with no re-warm-up jump.
        Written as max_lr = min_lr = that rate (lr_at's cosine between equal ends
        is a constant); the iterations already done are not replayed, so their
        schedule is in the parent's run.json. Fields changed: train.EXTENDABLE."""
        from launch.errors import UserError

        if int(config["warmup_iters"]) > int(config["max_iters"]):
            raise UserError(f"cannot extend: the run ended inside its warm-up (warmup_iters="
                            f"{config['warmup_iters']} > max_iters={config['max_iters']})")
        rate = float(config["min_lr"]) if lr is None else float(lr)
        if not rate > 0:
            raise UserError(f"cannot extend at the parent's final learning rate min_lr={config['min_lr']}: "
                            "pass --lr")
        return {**config, "max_iters": int(config["max_iters"]) + int(steps), "max_lr": rate, "min_lr": rate}

    def run(self, config: dict[str, Any], ctx: RunContext) -> None:
        from sortgpt.train import train  # torch is imported only when a run starts

        train(config, ctx)

    # Packing (issue 7): runs of one architecture train together in one process;
    # sortgpt/packed.py (imported on use, so a plain launch never loads torch).
    @property
    def pack_size_auto(self) -> int:
        from sortgpt.packed import PACK_SIZE_AUTO

        return PACK_SIZE_AUTO

    def pack_key(self, config: dict[str, Any]) -> Any:
        from sortgpt.packed import pack_key

        return pack_key(config)

    def run_pack(self, configs: list[dict[str, Any]], ctxs: list[RunContext]) -> None:
        from sortgpt.packed import train_pack

        train_pack(configs, ctxs)


EXPERIMENT = SortGPTExperiment()
