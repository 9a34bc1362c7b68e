"""Which torch device a run uses: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import re
import sys

import torch

from launch.errors import UserError

_warned_cpu_fallback = False


def resolve_device(requested: str) -> str:
    """Turn a config's ``device`` into a torch device string.

    ``auto`` picks ``cuda`` when a GPU is visible and otherwise ``cpu`` (saying
    so once on stderr: a GPU job that silently trains on CPU is hours lost).
    An explicit ``cuda`` without a GPU is an error, not a silent fallback.
    """
    global _warned_cpu_fallback
    value = str(requested).strip()
    if value == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if not _warned_cpu_fallback:
            _warned_cpu_fallback = True
            print("warning: device=auto and no GPU is visible: running on CPU", file=sys.stderr)
        return "cpu"
    if value == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", value)
    if match is None:
        raise UserError(f"unknown device {requested!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"CUDA was asked for (device={value}) but no GPU is visible; "
                        "use --device auto to fall back to CPU")
    if match.group(1) is not None:
        index, count = int(match.group(1)), torch.cuda.device_count()
        if index >= count:
            raise UserError(f"device={value} asked for GPU {index} but only {count} "
                            f"GPU{'s are' if count != 1 else ' is'} visible (cuda:0..cuda:{count - 1})")
    return value
