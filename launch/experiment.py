"""The one small interface between the harness and an experiment family.

An experiment is an object with

* ``name``: the value of ``experiment:`` in a spec;
* ``defaults() -> dict``: every parameter it accepts with its default value.
  The default's type is the parameter's type in spec validation
  (an int default accepts ints; a float default accepts ints and floats;
  ``None`` accepts anything);
* ``check(config) -> list[str]``: problems with a fully resolved config, each
  ``"<param>: <what is wrong>"`` (unknown choice, K larger than the vocabulary…);
* ``run(config, ctx)``: train — or resume, if ``ctx.run_dir`` holds a resume
  state — and write metrics through ``ctx.log``. It must be safe to call again
  after being killed at any moment (that is how requeue works);
* optionally ``total_steps(config) -> int`` for progress in ``sweep status``;
* optionally packing (many small runs in one process, issue 7):
  ``pack_key(config) -> Hashable | None`` — runs with equal keys can train
  together (None: never packed) — and ``run_pack(configs, ctxs)``, which must
  leave every run's directory exactly as ``run`` would (same metrics, same
  checkpoints, same resume behaviour). ``pack_size_auto`` (int) is the pack size
  that ``pack: auto`` in a spec means.

Families register in ``pyproject.toml`` under ``[project.entry-points."sweep.experiments"]``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from launch.errors import UserError


@runtime_checkable
class Experiment(Protocol):
    """What an experiment provides. Optional: ``later_params`` (see :func:`later_params`), ``total_steps``,
    ``extend``, ``run_pack``/``pack_key``/``pack_size_auto``."""

    name: str

    def defaults(self) -> dict[str, Any]: ...

    def check(self, config: dict[str, Any]) -> list[str]: ...

    def run(self, config: dict[str, Any], ctx: RunContext) -> None: ...


def later_params(experiment: object) -> dict[str, Any]:
    """Parameters an experiment gained after trees were written with it, each with the value that gives
    the old behaviour (``later_params`` on the experiment object). A run whose value equals it leaves the
    parameter out of its run key, so adding a knob does not change the identity of every existing run;
    a run.json written before the knob existed gets that value when it runs (or resumes)."""
    return dict(getattr(experiment, "later_params", None) or {})


def with_later_params(experiment: object, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as the experiment of today reads it: later parameters it lacks take their old value."""
    return later_params(experiment) | config


def load_experiment(name: str) -> Experiment:
    """Find an experiment by entry-point name, or by ``module:attribute``."""
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"experiment {name!r} cannot be imported: {e}") from None
    found = {ep.name: ep for ep in entry_points(group="sweep.experiments")}
    if name not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise UserError(f"unknown experiment {name!r} (known: {known})")
    return found[name].load()


class NonFiniteLoss(RuntimeError):
    """A training loss became NaN or ±inf: the run ends ``failed`` with the step (ctx.log raises it)."""


METRICS_FILE = "metrics.jsonl"
TOP_LEVEL_WANDB = {"lr", "iter"}
PROGRESS_FILE = "progress.json"


@dataclass
class RunContext:
    """What a running experiment gets from the harness."""

    run_dir: Path
    run_key: str = ""
    group: str = ""
    name: str = ""  # human-readable run name (the run dir relative to the tree root)
    wandb: dict[str, Any] | None = None  # the spec's wandb block, or None when disabled
    wandb_config: dict[str, Any] | None = None  # the run's hyperparameters, shown and filtered on in W&B
    device: str = "cpu"
    # a train-split ``loss`` that is NaN or ±inf ends the run (the spec's fail_on_nonfinite_loss)
    fail_on_nonfinite_loss: bool = True
    # set by an experiment that ends this run as failed while the other runs of its pack go on
    failure: str | None = None
    _wandb_run: Any = field(default=None, repr=False)
    _last_progress: float = field(default=0.0, repr=False)
    _unwritten_progress: tuple[int, int] | None = field(default=None, repr=False)

    # -- metrics ---------------------------------------------------------
    def log(
        self,
        step: int,
        metrics: dict[str, float],
        split: str = "train",
        length: int | None = None,
    ) -> None:
        """Append one metrics record: ``metrics`` measured at ``step`` on ``split``
        (``train``, ``test``, ``gen``, ``val``…), optionally for one eval ``length``
        (e.g. K). One JSON line in ``metrics.jsonl``; also sent to W&B as
        ``{split}/K{length}/{name}`` or ``{split}/{name}``."""
        rec = {"step": int(step), "split": split, "length": length, "time": time.time(),
               "metrics": {k: _plain(v) for k, v in metrics.items()}}
        with open_append(self.run_dir / METRICS_FILE) as f:
            f.write(json.dumps(rec) + "\n")
        loss = rec["metrics"].get("loss")
        if self.fail_on_nonfinite_loss and split == "train" and isinstance(loss, float) and not math.isfinite(loss):
            raise NonFiniteLoss(f"training loss of {self.name or self.run_dir} is {loss} at step {int(step)}: "
                                "the run is stopped (fail_on_nonfinite_loss: false in the spec lets it go on)")
        if self.wandb is not None:
            prefix = f"{split}/K{length}/" if length is not None else f"{split}/"
            # lr and iter are top-level W&B keys (the reference's names); the rest are split/…
            self._wandb().log({(k if k in TOP_LEVEL_WANDB else prefix + k): v
                               for k, v in rec["metrics"].items()} | {"iter": step})

    def truncate_metrics(self, after_step: int) -> None:
        """Drop records with ``step > after_step``: call on resume so that the
        records logged after the last checkpoint are not duplicated."""
        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return
        keep = [line for line in path.read_text().splitlines()
                if line.strip() and _step_of(line) is not None and _step_of(line) <= after_step]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)

    def progress(self, step: int, total: int, force: bool = False) -> None:
        """Record how far the run is (read by ``sweep status``); at most every 5 s."""
        now = time.time()
        if not force and now - self._last_progress < 5.0:
            self._unwritten_progress = (step, total)
            return
        self._last_progress, self._unwritten_progress = now, None
        tmp = self.run_dir / (PROGRESS_FILE + ".tmp")
        tmp.write_text(json.dumps({"step": int(step), "total": int(total), "time": now}))
        os.replace(tmp, self.run_dir / PROGRESS_FILE)

    def finish(self) -> None:
        if self._unwritten_progress is not None:
            self.progress(*self._unwritten_progress, force=True)
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def _wandb(self) -> Any:
        if self._wandb_run is None:
            import wandb  # optional: imported only when a spec enables it

            cfg = self.wandb or {}
            self._wandb_run = wandb.init(
                project=cfg.get("project", "sweep"), entity=cfg.get("entity"),
                mode=cfg.get("mode", "offline"), group=self.group, name=self.name,
                id=self.run_key, resume="allow", dir=str(self.run_dir),
                config=self.wandb_config, tags=cfg.get("tags"),
                reinit="create_new",  # packs hold several runs at once
            )
            # Plot against the training iteration, not W&B's record counter (log() sends
            # one record per split and K, so several records share an iteration).
            self._wandb_run.define_metric("iter")
            self._wandb_run.define_metric("*", step_metric="iter")
        return self._wandb_run


def open_append(path: Path) -> Any:
    """``open(path, "a")`` that refuses to write through a symlink (OSError ELOOP): a run's
    files never lead out of its directory. A symlinked run directory or tree root is fine."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    return os.fdopen(fd, "a")


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _plain(v: Any) -> Any:
    """Tensors and NumPy scalars -> Python numbers, so the JSON stays plain."""
    if hasattr(v, "item"):
        return v.item()
    return v
