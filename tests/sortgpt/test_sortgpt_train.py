"""Training runs on CPU: records, checkpoints, determinism, bit-identical resume, learning."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from launch.checkpoint import load_checkpoint, resume_states
from launch.errors import CheckpointError
from launch.experiment import RunContext
from sortgpt.data import sample_batch
from sortgpt.experiment import EXPERIMENT
from sortgpt.model import GPT
from sortgpt.naming import checkpoint_name
from sortgpt.train import K_SEED_OFFSET, load_model, model_config, train


class Interrupt(Exception):
    pass


def records(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock time."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec.pop("time")
        out.append(rec)
    return out


def final_weights(run_dir: Path, cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / checkpoint_name("Final", cfg, cfg["max_iters"]))["model"]


def run(cfg: dict[str, Any], run_dir: Path, **kw: Any) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    train(cfg, RunContext(run_dir=run_dir), **kw)
    return run_dir


def test_a_run_writes_the_protocol_records_and_checkpoints(tmp_path: Path, tiny: dict) -> None:
    EXPERIMENT.run(tiny, RunContext(run_dir=tmp_path))
    recs = records(tmp_path)
    train_recs = [r for r in recs if r["split"] == "train"]
    # Reference cadence: iteration itr % eval_every == 0, logged as step itr + 1.
    assert [r["step"] for r in train_recs] == [1, 11, 21, 31]
    for r in train_recs:
        m = r["metrics"]
        assert set(m) == {"loss", "token_acc", "exact_match_acc", "K_mean", "K_min", "K_max", "lr"}
        assert m["K_min"] == m["K_max"] == m["K_mean"] and 2 <= m["K_min"] <= 4  # one K per step
    by_split: dict[str, set] = {}
    for r in recs:
        by_split.setdefault(r["split"], set()).add((r["step"], r["length"]))
    assert by_split["test"] == {(s, k) for s in (1, 11, 21, 31, 40) for k in (2, 3, 4)}
    assert by_split["gen"] == {(s, k) for s in (1, 11, 21, 31, 40) for k in (5, 6)}
    assert by_split["test_ar"] == {(40, k) for k in (2, 3, 4)}
    assert by_split["gen_ar"] == {(40, k) for k in (5, 6)}
    eval_metrics = {"exact_match_acc", "token_acc", "loss", "pos_abs_err_sum", "pos_abs_err_mean"}
    assert all(set(r["metrics"]) == eval_metrics for r in recs if r["split"] in ("test", "gen"))
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert names == sorted([checkpoint_name("Checkpoint", tiny, 21), checkpoint_name("Final", tiny, 40),
                            "resume_00000030.pt", "resume_00000040.pt"])  # keep_resume = 2
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert (progress["step"], progress["total"]) == (40, 40)


def test_checkpoint_round_trip(tmp_path: Path, tiny: dict) -> None:
    run(tiny, tmp_path)
    path = tmp_path / checkpoint_name("Final", tiny, 40)
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["config"] == tiny and raw["step"] == 40
    model, config = load_model(path)
    assert config == tiny
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, raw["model"][name]), name
    idx = torch.randint(0, 17, (2, 9))
    again, _ = load_model(path)
    assert torch.equal(model(idx), again(idx))
    intermediate = torch.load(tmp_path / checkpoint_name("Checkpoint", tiny, 21), weights_only=True)
    assert intermediate["step"] == 21 and "optimizer" in intermediate
    assert not all(torch.equal(intermediate["model"][k], raw["model"][k]) for k in raw["model"])
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "junk.pt")


def test_same_seed_same_run_other_seed_other_run(tmp_path: Path, tiny: dict) -> None:
    a, b = run(tiny, tmp_path / "a"), run(tiny, tmp_path / "b")
    c = run(tiny | {"seed": 7}, tmp_path / "c")
    wa, wb, wc = (final_weights(d, tiny) for d in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["wte.weight"], wc["wte.weight"])
    assert records(a) == records(b) and records(a) != records(c)


def test_evaluation_does_not_touch_the_training_stream(tmp_path: Path, tiny: dict) -> None:
    often = run(tiny | {"eval_every": 3}, tmp_path / "often")
    rarely = run(tiny | {"eval_every": 1000}, tmp_path / "rarely")
    wo, wr = final_weights(often, tiny), final_weights(rarely, tiny)
    assert all(torch.equal(wo[k], wr[k]) for k in wo)


@pytest.mark.parametrize("mode", ["mix", "curriculum"])
def test_interrupted_run_resumes_bit_identically(tmp_path: Path, mode: str, make_config) -> None:
    cfg = make_config(length_mode=mode, curriculum_span_iters=30)
    straight = run(cfg, tmp_path / "straight")

    def stop_at_25(step: int) -> None:
        if step == 25:
            raise Interrupt

    resumed = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        run(cfg, resumed, on_step=stop_at_25)
    assert [p.name for p in resume_states(resumed)] == ["resume_00000010.pt", "resume_00000020.pt"]
    assert max(r["step"] for r in records(resumed)) == 21  # logged past the last save
    run(cfg, resumed)  # picks up at step 20, drops the records after it

    ws, wr = final_weights(straight, cfg), final_weights(resumed, cfg)
    assert all(torch.equal(ws[k], wr[k]) for k in ws)
    assert records(resumed) == records(straight)


def test_finished_run_is_not_trained_again(tmp_path: Path, tiny: dict) -> None:
    run(tiny, tmp_path)
    before = (tmp_path / "metrics.jsonl").read_text()
    stamp = (tmp_path / checkpoint_name("Final", tiny, 40)).stat().st_mtime_ns
    run(tiny, tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == before
    assert (tmp_path / checkpoint_name("Final", tiny, 40)).stat().st_mtime_ns == stamp


def test_resume_under_another_config_is_refused(tmp_path: Path, tiny: dict) -> None:
    with pytest.raises(Interrupt):
        run(tiny, tmp_path, on_step=lambda s: (_ for _ in ()).throw(Interrupt) if s == 12 else None)
    with pytest.raises(CheckpointError, match="max_lr"):
        run(tiny | {"max_lr": 5e-4}, tmp_path)


def test_a_short_cpu_run_learns_to_sort(tmp_path: Path, make_config) -> None:
    # vocab 32, K 2–6: chance exact match is below 1/32**2 even at K = 2.
    cfg = make_config(vocab_n=32, n_embd=32, n_layers=2, train_min_k=2, train_max_k=6, test_min_k=7,
                      test_max_k=8, batch_size=64, max_iters=300, warmup_iters=20, max_lr=1e-3,
                      eval_every=100, eval_samples=100, save_every=0, checkpoint_iter=0)
    run(cfg, tmp_path)
    final = [r for r in records(tmp_path) if r["split"] == "test" and r["step"] == 300]
    first = [r for r in records(tmp_path) if r["split"] == "test" and r["step"] == 1]
    exact = sum(r["metrics"]["exact_match_acc"] for r in final) / len(final)
    tokens = sum(r["metrics"]["token_acc"] for r in final) / len(final)
    assert sum(r["metrics"]["exact_match_acc"] for r in first) == 0
    assert exact > 0.2 and tokens > 0.6, (exact, tokens)


def test_training_steps_are_the_protocols(tmp_path: Path, make_config) -> None:
    """The loop against the protocol written out independently: fused AdamW (0.9, 0.95), eps 1e-8,
    weight decay 0 on the 2-D group and the rest, no clipping, warm-up then cosine, the
    curriculum's K, cross-entropy of positions K … T−2 against the tokens K+1 … T−1."""
    cfg = make_config(max_iters=8, warmup_iters=3, max_lr=3e-3, min_lr=1e-4, length_mode="curriculum",
                      curriculum_span_iters=4, eval_every=1000, save_every=0, checkpoint_iter=0)
    run(cfg, tmp_path)

    torch.manual_seed(cfg["seed"])
    model = GPT(model_config(cfg))
    assert model.config.vocab_size == cfg["vocab_n"] + 1
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() == 2], "weight_decay": 0.0},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=cfg["max_lr"], betas=(0.9, 0.95), eps=1e-8, fused=True)  # as the reference
    data = torch.Generator().manual_seed(cfg["seed"])
    k_stream = torch.Generator().manual_seed(cfg["seed"] + K_SEED_OFFSET)
    lo, hi, warmup, n = cfg["train_min_k"], cfg["train_max_k"], cfg["warmup_iters"], cfg["max_iters"]
    for itr in range(n):
        frac = min(1.0, max(0, itr - cfg["curriculum_warmup_iters"]) / cfg["curriculum_span_iters"])
        largest = lo + round(frac * (hi - lo))
        k = int(torch.randint(lo, largest + 1, (1,), generator=k_stream).item())
        batch = sample_batch(cfg["batch_size"], k, cfg["vocab_n"], True, data)
        if itr < warmup:
            lr = cfg["max_lr"] * (itr + 1) / (warmup + 1)
        else:
            lr = cfg["min_lr"] + 0.5 * (1 + math.cos(math.pi * (itr - warmup) / (n - warmup))) * (
                cfg["max_lr"] - cfg["min_lr"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        T = 2 * k + 1
        logits = model(batch)  # every position; the protocol's slice taken here
        loss = torch.nn.functional.cross_entropy(logits[:, k:T - 1].reshape(-1, logits.shape[-1]),
                                                 batch[:, k + 1:T].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    trained = final_weights(tmp_path, cfg)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(trained[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_check_names_each_problem() -> None:
    ok = EXPERIMENT.defaults()
    assert EXPERIMENT.check(ok) == []
    assert EXPERIMENT.total_steps(ok) == 40000
    bad = {
        "test_max_k": 200, "train_min_k": 9, "length_mode": "zigzag", "n_embd": 100, "n_heads": 3,
        "batch_size": 0, "device": "tpu", "min_lr": 1.0,
    }
    problems = EXPERIMENT.check(ok | bad)
    joined = "\n".join(problems)
    for fragment in ("test_max_k: 200 distinct", "train_min_k: 9 is larger than train_max_k=8",
                     "length_mode: must be one of", "n_embd: 100 is not divisible by n_heads=3",
                     "batch_size: must be at least 1", "device: must be one of", "min_lr:"):
        assert fragment in joined, fragment
    assert all(p.split(":")[0] in ok for p in problems)
    # Without no_dup, K may exceed the vocabulary.
    assert EXPERIMENT.check(ok | {"no_dup": False, "test_max_k": 200}) == []
