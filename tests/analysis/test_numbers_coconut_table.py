"""`python -m analysis.coconut_table`: every number of a row is over the n runs it shows. A run still
running (no test record yet) was counted in n while its NaN dropped out of the test mean: "n 3" above
a test accuracy over 2 runs. A rerun that logged its test record twice must not count twice either."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from launch.collect import PROVENANCE, write_table

CONFIG = {"feedback_mode": "cot", "epochs_per_stage": 1, "max_latent_stage": 1, "num_epochs": 2}


def _run(seed: int, state: str, test: float | None, rerun: bool = False) -> tuple[dict, dict, list[dict]]:
    prov = {c: None for c in PROVENANCE} | {"spec": "c", "experiment": "coconut", "group": "cot", "task": 0,
                                           "seed": seed, "run_key": f"cot{seed}".ljust(12, "0"),
                                           "run_dir": f"cot/seed{seed}", "started_at": 1.7e9,
                                           "ended_at": 1.7e9 + 1, "wall_s": 1.0, "state": state}
    recs = [{"step": e, "split": "val", "length": None, "time": float(e), "metrics": {"accuracy": 0.5, "loss": 1.0}}
            for e in (1, 2)]
    if test is not None:
        recs += [{"step": 2, "split": "test", "length": None, "time": 3.0,
                  "metrics": {"accuracy": test, "well_formed": 1.0}}] * (2 if rerun else 1)
    return prov, CONFIG, recs


def _table(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "analysis.coconut_table", str(path)], capture_output=True, text=True)


def test_n_is_the_number_of_runs_every_mean_is_over(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    write_table([_run(0, "completed", 0.4, rerun=True), _run(1, "completed", 0.6), _run(2, "running", None)],
                list(CONFIG), out)
    p = _table(out)
    assert p.returncode == 0, p.stderr
    assert "| cot | 2 | 50.0 ± 0.0 % | 50.0 ± 14.1 % | 100.0 % |" in p.stdout, p.stdout
    assert "note: coconut run cot/seed2: state running, no test accuracy; left out" in p.stderr, p.stderr


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    p = _table(tmp_path / "missing.parquet")
    assert p.returncode == 2 and p.stderr.strip() == f"error: {tmp_path / 'missing.parquet'}: no such file", p.stderr
    out = tmp_path / "r.parquet"
    write_table([_run(2, "running", None)], list(CONFIG), out)
    p = _table(out)
    assert p.returncode == 2 and p.stdout == "", p
    assert p.stderr.strip() == f"error: {out}: no completed coconut run with validation and test accuracy"
