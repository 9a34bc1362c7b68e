"""data_stream: "reference" (issue 13): K, training batches and evaluation lists drawn from
torch's global generator in the reference's order, and its initialisation, so that a run
can be compared run for run with a sort-llm run. The loop below is the reference's
(sortGPT_len_generalization.py: train_sorting_gpt) written out with sortgpt's pieces."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from launch.experiment import RunContext
from sortgpt.data import sorted_half_loss
from sortgpt.experiment import EXPERIMENT
from sortgpt.model import GPT
from sortgpt.train import lr_at, make_optimizer, model_config, train


def reference_loop(cfg: dict) -> tuple[GPT, list[int]]:
    """torch.manual_seed(seed); GPT with a positional table (zeroed and unused when NoPE);
    per iteration K = torch.randint, a batch from torch.rand(...).topk, one AdamW step, and
    at every eval_every-th iteration the evaluation draws: eval_samples lists per K, the
    trained Ks then the gen Ks. Returns the model and the Ks drawn."""
    torch.manual_seed(cfg["seed"])
    config = model_config(cfg)
    model = GPT(model_config(cfg | {"no_pos_emb": False}))  # the reference always builds the table
    if config.no_pos_emb:
        model.wpe = None  # the reference zeroes it: it adds nothing
        model.config = config
    V, B = cfg["vocab_n"], cfg["batch_size"]
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))

    def batch(n: int, k: int) -> torch.Tensor:
        x = torch.rand(n, V).topk(k, dim=1).indices
        return torch.cat([x, torch.full((n, 1), V), x.sort(dim=1).values], dim=1)

    ks = []
    for itr in range(cfg["max_iters"]):
        k = int(torch.randint(cfg["train_min_k"], cfg["train_max_k"] + 1, (1,)).item())
        ks.append(k)
        b = batch(B, k)
        loss = sorted_half_loss(model(b, positions=slice(k, 2 * k)), b, k)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(itr, cfg)
        optimizer.step()
        if itr % cfg["eval_every"] == 0:
            gen_start = max(cfg["train_max_k"] + 1, cfg["test_min_k"])
            for ek in [*range(cfg["train_min_k"], cfg["train_max_k"] + 1), *range(gen_start, cfg["test_max_k"] + 1)]:
                batch(cfg["eval_samples"], ek)  # drawn (and scored) between training steps
    return model, ks


@pytest.mark.parametrize("no_pos_emb", [True, False])
def test_reference_stream_trains_as_the_reference_loop(tmp_path: Path, make_config, no_pos_emb: bool) -> None:
    cfg = make_config(data_stream="reference", no_pos_emb=no_pos_emb, max_iters=25, eval_every=10,
                      checkpoint_iter=0, save_every=0)
    expected, ks = reference_loop(cfg)
    tmp_path.mkdir(exist_ok=True)
    train(cfg, RunContext(run_dir=tmp_path))
    from sortgpt.naming import checkpoint_name
    from sortgpt.train import load_model

    trained, _ = load_model(tmp_path / checkpoint_name("Final", cfg, 25))
    ours, theirs = trained.state_dict(), expected.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert len(set(ks)) > 1  # K really varied


def test_the_default_stream_is_unchanged_and_reference_runs_are_not_packed(make_config) -> None:
    assert EXPERIMENT.defaults()["data_stream"] == "separate"
    assert EXPERIMENT.pack_key(make_config(data_stream="reference")) is None
    assert EXPERIMENT.pack_key(make_config()) is not None
    assert EXPERIMENT.check(make_config() | {"data_stream": "global"}) == [
        "data_stream: must be one of separate, reference, got 'global'"]


class Interrupt(Exception):
    pass


def test_a_reference_stream_run_resumes_bit_identically(tmp_path: Path, make_config) -> None:
    """The global generators' states travel in the resume state like the separate ones."""
    from sortgpt.naming import checkpoint_name
    from sortgpt.train import load_model

    cfg = make_config(data_stream="reference", max_iters=25, eval_every=10, save_every=10, checkpoint_iter=0)
    for name in ("straight", "resumed"):
        (tmp_path / name).mkdir()
    train(cfg, RunContext(run_dir=tmp_path / "straight"))

    def stop(step: int) -> None:
        if step == 15:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, RunContext(run_dir=tmp_path / "resumed"), on_step=stop)
    torch.rand(100)  # the process's global stream moves on meanwhile; the resume state restores it
    train(cfg, RunContext(run_dir=tmp_path / "resumed"))
    straight, _ = load_model(tmp_path / "straight" / checkpoint_name("Final", cfg, 25))
    resumed, _ = load_model(tmp_path / "resumed" / checkpoint_name("Final", cfg, 25))
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ((tmp_path / "straight" / "metrics.jsonl").read_text().count("\n")
            == (tmp_path / "resumed" / "metrics.jsonl").read_text().count("\n"))
