"""The model: parameter counts of issue 3, initialisation, tying, causality, no positions."""

from __future__ import annotations

import pytest
import torch

from sortgpt.model import GPT, GPTConfig


def reference(n_layers: int, use_mlp: bool, use_layernorm: bool = True, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=129, n_embd=128, n_heads=1, n_layers=n_layers, use_mlp=use_mlp,
                         use_layernorm=use_layernorm, **kw))


@pytest.mark.parametrize(("n_layers", "use_mlp", "expected"), [
    (1, False, 83_072), (1, True, 182_144), (2, False, 149_376), (2, True, 347_520),
])
def test_parameter_counts_match_the_reference(n_layers: int, use_mlp: bool, expected: int) -> None:
    assert reference(n_layers, use_mlp).num_params() == expected
    # Without LayerNorm: 256 fewer per norm removed (ln_1 per block, ln_2 per MLP block, ln_f).
    n_norms = n_layers * (2 if use_mlp else 1) + 1
    assert reference(n_layers, use_mlp, use_layernorm=False).num_params() == expected - 256 * n_norms


def test_positional_embedding_only_when_asked() -> None:
    with_pos = reference(1, False, no_pos_emb=False, max_seq_len=65)
    assert with_pos.num_params() == 83_072 + 65 * 128
    assert reference(1, False).wpe is None


def test_weight_tying_and_init() -> None:
    model = reference(2, True)
    assert model.lm_head.weight is model.wte.weight
    assert model.lm_head.bias is None
    for name, p in model.named_parameters():
        if name.endswith(".bias") and "ln_" not in name:
            assert torch.count_nonzero(p) == 0, name
    # Residual output projections start smaller by (2 * n_layers) ** -0.5.
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in model.blocks])
    qkv = torch.cat([b.attn.c_attn.weight.flatten() for b in model.blocks])
    assert proj.std().item() == pytest.approx(0.02 / 2, rel=0.05)
    assert qkv.std().item() == pytest.approx(0.02, rel=0.05)
    # Only the attention output projection is scaled (not the MLP's, as nanoGPT would).
    mlp_proj = torch.cat([b.mlp.c_proj.weight.flatten() for b in model.blocks])
    assert mlp_proj.std().item() == pytest.approx(0.02, rel=0.05)


def test_mlp_is_d_3d_d_with_tanh_gelu_and_no_dropout() -> None:
    model = reference(1, True)
    mlp = model.blocks[0].mlp
    x = 20 * torch.randn(2, 5, 128)  # pre-activations of a few units, where tanh-GELU and GELU differ
    h = x @ mlp.c_fc.weight.T + mlp.c_fc.bias
    assert h.shape[-1] == 3 * 128
    gelu_tanh = 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h ** 3)))
    torch.testing.assert_close(mlp(x), gelu_tanh @ mlp.c_proj.weight.T + mlp.c_proj.bias)
    model.train()  # no dropout anywhere: training mode is deterministic
    idx = torch.randint(0, 129, (3, 9))
    assert torch.equal(model(idx), model(idx))


def test_layernorm_off_is_identity() -> None:
    model = reference(2, True, use_layernorm=False)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert isinstance(model.ln_f, torch.nn.Identity)


def test_attention_is_causal() -> None:
    model = reference(2, True)
    idx = torch.randint(0, 129, (3, 11))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 129
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_without_positions_a_one_layer_model_sees_a_set() -> None:
    # With no positional embedding, one attention layer's output at the last
    # position cannot depend on the order of the tokens before it.
    model = reference(1, True)
    idx = torch.randint(0, 128, (4, 9))
    shuffled = torch.cat([idx[:, :8][:, torch.randperm(8)], idx[:, 8:]], dim=1)
    torch.testing.assert_close(model(idx)[:, -1], model(shuffled)[:, -1], rtol=1e-4, atol=1e-5)
    with_pos = reference(1, True, no_pos_emb=False, max_seq_len=9)
    assert not torch.allclose(with_pos(idx)[:, -1], with_pos(shuffled)[:, -1], atol=1e-5)


def test_positions_argument_slices_before_the_head() -> None:
    model = reference(1, False)
    idx = torch.randint(0, 129, (2, 9))
    torch.testing.assert_close(model(idx, positions=slice(4, 8)), model(idx)[:, 4:8])
