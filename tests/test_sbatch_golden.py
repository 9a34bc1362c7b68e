"""The sbatch script the launcher generates, against a golden file (as submitit does).

Regenerate after an intended change: SWEEP_REGEN_GOLDEN=1 pytest tests/test_sbatch_golden.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from launch.executors import chunks, render_sbatch, slurm_parameters

GOLDEN = Path(__file__).parent / "golden" / "sbatch_array.txt"

RESOURCES = {"partition": "gpu", "time_min": 120, "gpus": 1, "cpus": 4, "mem_gb": 16, "account": "lab",
             "qos": "normal", "constraint": "a100", "setup": ["module load cuda/12.4", "source ~/venv/bin/activate"],
             "array_parallelism": 64}


def test_sbatch_script_matches_golden():
    params = slurm_parameters(RESOURCES, "len_gen_dynamic_ln")
    text = render_sbatch(params, Path("/TREE/.sweep/submitit/%j"), 168).replace(sys.executable, "PYTHON")
    if os.environ.get("SWEEP_REGEN_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_every_resource_reaches_sbatch():
    text = render_sbatch(slurm_parameters(RESOURCES, "x"), Path("/TREE/%j"), 3)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=120", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16G", "#SBATCH --account=lab", "#SBATCH --qos=normal",
                 "#SBATCH --constraint=a100", "#SBATCH --array=0-2%3", "module load cuda/12.4"):
        assert line in text, line


def test_chunks_restart_at_zero():
    units = [[f"r{i}"] for i in range(2503)]
    arrays = chunks(units, 1001)
    assert [len(a) for a in arrays] == [1001, 1001, 501]
    assert arrays[1][0] == ["r1001"] and sum(arrays, []) == units


def test_the_signal_lead_follows_a_short_time_limit():
    """submitit's fixed USR2@90 signals a 1-minute job at once: the lead is a quarter of the limit,
    at most 90 s, unless the spec (or --signal-delay) names one."""
    def lead(**res: int) -> str:
        text = render_sbatch(slurm_parameters(res, "x"), Path("/TREE"), 2)
        return next(line for line in text.splitlines() if line.startswith("#SBATCH --signal="))

    assert lead(time_min=1) == "#SBATCH --signal=USR2@15"
    assert lead(time_min=2) == "#SBATCH --signal=USR2@30"
    assert lead(time_min=5) == "#SBATCH --signal=USR2@75"
    assert lead(time_min=120) == lead() == "#SBATCH --signal=USR2@90"
    assert lead(time_min=2, signal_delay_s=60) == "#SBATCH --signal=USR2@60"
