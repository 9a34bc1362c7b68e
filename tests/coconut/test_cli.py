"""sweep gates / answer / corruption."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from coconut.cli import DEFAULT_THRESHOLDS as T
from coconut.cli import answer_command, corruption_command, evaluate_gates, gates_command, same_norm_noise


def results(cont_acc: list[float], pause_acc: list[float], spike: bool = False, drift: float = 0.5) -> pd.DataFrame:
    """Collected rows for two modes x 2 seeds, 4 epochs, epochs_per_stage 1: accuracies per epoch given."""
    rows = []
    for mode, accs in (("continuous", cont_acc), ("pause_curriculum", pause_acc)):
        for seed in (0, 1):
            run_dir = f"coconut/{mode}/seed{seed}"
            for step, acc in enumerate(accs, start=1):
                stage = step - 1
                train_loss = 3.0 / step * (4.0 if spike and mode == "continuous" and step == 3 else 1.0)
                common = {"feedback_mode": mode, "run_dir": run_dir, "seed": seed, "step": step, "stage": stage,
                          "num_epochs": len(accs)}
                rows.append(common | {"split": "train", "loss": train_loss, "accuracy": float("nan"),
                                      "pause_embedding_drift": float("nan")})
                rows.append(common | {"split": "val", "loss": 2.0 / step, "accuracy": acc,
                                      "pause_embedding_drift": drift if mode == "pause_curriculum" else float("nan")})
    return pd.DataFrame(rows)


def status(rows: list[dict], prefix: str) -> str:
    return next(r["status"] for r in rows if r["check"].startswith(prefix))


def test_gates_pass():
    rows = evaluate_gates(results([0.3, 0.5, 0.7, 0.8], [0.3, 0.4, 0.5, 0.6]), None, T)
    assert status(rows, "Gate 3: continuous acc") == "PASS"       # 0.7 at the end of stage 2
    assert status(rows, "Gate 3b: pause_curriculum acc") == "PASS"
    assert status(rows, "Gate 4: either") == "PASS"                 # 0.8 - 0.6 >= 0.05
    assert status(rows, "Gate 4b: pause_curriculum") == "PASS"
    assert all(r["status"] != "RED" for r in rows)


def test_gates_fail_and_red_flags(tmp_path):
    frame = results([0.3, 0.5, 0.55, 0.6], [0.3, 0.5, 0.6, 1.0], spike=True, drift=0.001)
    rows = evaluate_gates(frame, None, T)
    assert status(rows, "Gate 3: continuous acc") == "FAIL"       # 0.55 <= 0.58
    assert status(rows, "Gate 4: either") == "FAIL"
    assert status(rows, "Gate 4b: pause_curriculum") == "FAIL"
    assert status(rows, "Red flag: pause_curriculum above") == "RED"
    assert status(rows, "Red flag: a model at 100%") == "RED"
    assert status(rows, "Red flag: loss spike") == "RED"
    # the corruption gap rescues Gate 4 when the accuracy gap does not
    for mode, drop in (("continuous", 0.3), ("pause_curriculum", 0.05)):
        for seed in (0, 1):
            d = tmp_path / "coconut" / mode / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "corruption.json").write_text(json.dumps({"drop": drop}))
    assert status(evaluate_gates(frame, tmp_path, T), "Gate 4: either") == "PASS"
    # exit codes through the command, from a Parquet file
    frame.to_parquet(tmp_path / "r.parquet")
    out = CliRunner().invoke(gates_command, [str(tmp_path / "r.parquet")])
    assert out.exit_code == 1 and "Gate 3b" in out.output
    ok = results([0.3, 0.5, 0.7, 0.8], [0.3, 0.4, 0.5, 0.6])
    ok.to_parquet(tmp_path / "ok.parquet")
    assert CliRunner().invoke(gates_command, [str(tmp_path / "ok.parquet")]).exit_code == 0
    # thresholds from the options
    assert CliRunner().invoke(gates_command, [str(tmp_path / "ok.parquet"), "--gate3-acc", "0.75"]).exit_code == 1


def test_gates_pending_until_stage_2_ends(tmp_path):
    rows = evaluate_gates(results([0.3, 0.5, 0.7], [0.3, 0.4, 0.5]).assign(num_epochs=10), None, T)
    assert status(rows, "Gate 3: continuous acc") == "n/a"
    bad = tmp_path / "x.parquet"
    bad.write_text("not parquet")
    out = CliRunner().invoke(gates_command, [str(bad)])
    assert out.exit_code == 2 and "not a Parquet file" in out.output


def test_same_norm_noise_keeps_norms():
    h = torch.randn(5, 16) * torch.arange(1, 6)[:, None]
    noisy = same_norm_noise(torch.Generator().manual_seed(0))(h, 0)
    torch.testing.assert_close(noisy.norm(dim=-1), h.norm(dim=-1))
    assert (noisy - h).abs().max() > 0.1


def test_answer_and_corruption_commands(tiny_run):
    ckpt = tiny_run / "checkpoint_2"    # stage 1: one latent in the prompt
    question = "Every wumpus is a dumpus. Tom is a wumpus. Sam is a rempus. Is Tom a dumpus or rempus?"
    out = CliRunner().invoke(answer_command, [str(ckpt), question, "--max-new-tokens", "5"])
    assert out.exit_code == 0 and out.output.strip()
    by_name = CliRunner().invoke(answer_command, ["coconut", question, "--root", str(tiny_run.parents[2]),
                                                  "--max-new-tokens", "5", "--stage", "1"])
    assert by_name.exit_code == 0
    out = CliRunner().invoke(corruption_command, [str(ckpt), "-n", "4", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    saved = json.loads((tiny_run / "corruption.json").read_text())
    assert saved["n"] == 4 and saved["stage"] == 1 and saved["drop"] == pytest.approx(
        saved["accuracy"] - saved["corrupted_accuracy"])
    missing = CliRunner().invoke(answer_command, ["no-such-model", question, "--root", str(tiny_run.parents[2])])
    assert missing.exit_code == 2 and "no run named" in missing.output
