"""sort-llm checkpoint files (issue 13): read as sortgpt models by load_model, `sweep sort`
and `sweep evaluate`. The files are built here with torch.save in the reference's layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from launch.errors import CheckpointError
from sortgpt.cli import sort_command
from sortgpt.model import GPT
from sortgpt.naming import checkpoint_name
from sortgpt.reference import to_reference_state
from sortgpt.train import load_model, model_config
from tests.sortgpt.reference_files import reference_file

ARCHS = [dict(n_layers=2, use_mlp=True, use_layernorm=True, no_pos_emb=True),
         dict(n_layers=1, use_mlp=False, use_layernorm=True, no_pos_emb=True),
         dict(n_layers=2, use_mlp=True, use_layernorm=False, no_pos_emb=True),
         dict(n_layers=1, use_mlp=True, use_layernorm=True, no_pos_emb=False)]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: "-".join(f"{k}{int(v)}" for k, v in a.items()))
def test_reference_file_loads_to_the_same_logits(tmp_path: Path, make_config, arch: dict) -> None:
    cfg = make_config(**arch)
    torch.manual_seed(3)
    model = GPT(model_config(cfg)).eval()
    path = reference_file(tmp_path / "g" / "task_0000" / "saved_models" / checkpoint_name("Final", cfg, 40),
                          model, cfg, 40)
    loaded, loaded_cfg = load_model(path)
    x = torch.randint(0, cfg["vocab_n"] + 1, (4, 2 * cfg["test_max_k"] + 1))
    assert torch.equal(loaded(x), model(x))
    assert loaded.config == model.config
    assert {k: loaded_cfg[k] for k in arch} == arch
    assert loaded_cfg["seed"] == cfg["seed"] and loaded_cfg["no_dup"] is True
    # the writer used by the bench produces the same file contents
    ours = to_reference_state(model, cfg, 40)
    theirs = torch.load(path, weights_only=True)
    assert sorted(ours["model"]) == sorted(theirs["model"])
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in ours["model"])


def test_other_reference_spellings_load(tmp_path: Path, make_config) -> None:
    """MLP as fc_1/fc_2 (the stored public script), a torch.compile prefix, and a
    Checkpoint_ file with itr and optimizer."""
    cfg = make_config(use_mlp=True)
    torch.manual_seed(4)
    model = GPT(model_config(cfg)).eval()
    path = reference_file(tmp_path / checkpoint_name("Checkpoint", cfg, 21), model, cfg, 21, final=False,
                          mlp_names=("fc_1", "fc_2"))
    state = torch.load(path, weights_only=True)
    state["model"] = {"_orig_mod." + k: v for k, v in state["model"].items()}
    state["optimizer"] = {"state": {}, "param_groups": []}
    torch.save(state, path)
    loaded, _ = load_model(path)
    x = torch.randint(0, cfg["vocab_n"] + 1, (2, 9))
    assert torch.equal(loaded(x), model(x))


def test_config_from_the_file_name_when_the_checkpoint_lacks_it(tmp_path: Path, make_config) -> None:
    cfg = make_config(n_layers=2, use_mlp=False, length_mode="curriculum")
    torch.manual_seed(5)
    model = GPT(model_config(cfg)).eval()
    path = reference_file(tmp_path / checkpoint_name("Final", cfg, 40), model, cfg, 40, with_config=False)
    loaded, loaded_cfg = load_model(path)
    x = torch.randint(0, cfg["vocab_n"] + 1, (2, 9))
    assert torch.equal(loaded(x), model(x))
    for key in ("vocab_n", "n_embd", "n_heads", "n_layers", "use_mlp", "use_layernorm", "no_pos_emb", "length_mode",
                "train_min_k", "train_max_k", "test_min_k", "test_max_k", "no_dup"):
        assert loaded_cfg[key] == cfg[key], key
    assert loaded_cfg["seed"] is None and loaded_cfg["max_iters"] == 40


def test_sweep_sort_reads_a_reference_file(tmp_path: Path, make_config) -> None:
    cfg = make_config()
    torch.manual_seed(6)
    path = reference_file(tmp_path / checkpoint_name("Final", cfg, 40), GPT(model_config(cfg)), cfg, 40)
    result = CliRunner().invoke(sort_command, [str(path), "9", "3", "12", "0"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[2] == "expected: 0 3 9 12"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s["model"].__setitem__("transformer.wpe.weight", torch.ones_like(s["model"]["transformer.wpe.weight"])),
     "model: transformer.wpe.weight: model_config says no positional embedding (without_pos) but the table is not zero"),
    (lambda s: s["model"].__setitem__("lm_head.weight", s["model"]["lm_head.weight"] + 1),
     "model: lm_head.weight: differs from transformer.wte.weight"),
    (lambda s: s["model_config"].pop("vocab_size"), "model_config: missing 'vocab_size'"),
    (lambda s: s["model"].pop("transformer.h.0.attn.c_attn.weight"), "model: does not fit the GPT"),
])
def test_bad_reference_files_are_one_line_errors(tmp_path: Path, make_config, edit, message: str) -> None:
    cfg = make_config()
    path = reference_file(tmp_path / checkpoint_name("Final", cfg, 40), GPT(model_config(cfg)), cfg, 40)
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)
