"""A nanoGPT-style decoder that learns to sort: one readable file.

Pre-norm blocks (attention, then an optional MLP), an optional LayerNorm that
becomes the identity when switched off (the final norm included), weight tying
between the token embedding and the output head, and — by default — no
positional embedding at all (``npos1``): the causal mask is the only source of
order information, which is what lets some of these models sort lists longer
than any they were trained on.

Bias convention (pinned by the parameter counts in issue 3): every ``nn.Linear``
inside the blocks has a bias, LayerNorm has weight and bias, the tied output head
has no bias. With vocab_n 128, d 128: L1 no-MLP 83,072; L1 MLP 182,144;
L2 no-MLP 149,376; L2 MLP 347,520 trainable parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 129  # vocab_n numbers + the separator
    n_embd: int = 128
    n_heads: int = 1
    n_layers: int = 2
    use_mlp: bool = True
    use_layernorm: bool = True
    no_pos_emb: bool = True
    # Longest sequence the model is meant for (2K+1 for the largest K it was
    # trained or tested on). Sizes the positional table when there is one, and
    # is the limit `sweep sort` enforces either way.
    max_seq_len: int = 65

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _norm(config: GPTConfig) -> nn.Module:
    return nn.LayerNorm(config.n_embd) if config.use_layernorm else nn.Identity()


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_heads == 0
        self.n_heads = config.n_heads
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE_INIT = True  # see GPT._init_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 3 * config.n_embd)  # 3x, not nanoGPT's 4x: the reference's width
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(3 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = CausalSelfAttention(config)
        # A block without MLP has no second norm either: nothing would read it.
        self.ln_2 = _norm(config) if config.use_mlp else None
        self.mlp = MLP(config) if config.use_mlp else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        if self.mlp is not None:
            x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = None if config.no_pos_emb else nn.Embedding(config.max_seq_len, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layers)])
        self.ln_f = _norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one matrix reads and writes tokens
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = 0.02
        if isinstance(module, nn.Linear):
            # GPT-2's trick: each residual branch's output projection is scaled down
            # so the residual stream's variance does not grow with depth.
            if getattr(module, "RESIDUAL_SCALE_INIT", False):
                std *= (2 * self.config.n_layers) ** -0.5
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        # LayerNorm keeps PyTorch's init: weight 1, bias 0.

    def forward(self, idx: torch.Tensor, positions: slice | None = None) -> torch.Tensor:
        """Logits (B, T', vocab) for the positions in ``positions`` (all by default).
        Training only needs the sorted half, so the head runs on that slice alone."""
        T = idx.shape[1]
        x = self.wte(idx)
        if self.wpe is not None:
            if T > self.config.max_seq_len:
                raise ValueError(f"sequence length {T} exceeds the positional table ({self.config.max_seq_len})")
            x = x + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        if positions is not None:
            x = x[:, positions]
        return self.lm_head(self.ln_f(x))

    def num_params(self) -> int:
        """Trainable parameters, the tied embedding/head matrix counted once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
