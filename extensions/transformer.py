"""A small decoder-only Transformer (`model.kind=transformer`) whose curvature can be measured anywhere.

    tokens [N, L] -> embed + positions -> layers x Block -> LayerNorm -> Linear out, read at the answer positions
    Block:  h = h + attention(LN(h));  h = h + MLP(LN(h))          (pre-norm; MLP: Linear, GELU, Linear)

Attention and LayerNorm are written out in elementary operations, so that every derivative the curvature
code takes through them exists and is right, on CPU and CUDA alike (measured with torch 2.13 on CPU):

  - attention: softmax(Q K^T / sqrt(d_head), causal mask) V. F.scaled_dot_product_attention in float32 runs
    a flash kernel with neither double backward nor forward-mode AD (both HVP methods fail; on CUDA the
    flash and memory-efficient kernels lack double backward too, pytorch/pytorch#116350, #98164);
  - LayerNorm: torch's fused kernel gives second derivatives right but third derivatives wrong (off by
    O(1) against the written-out formula, in forward and reverse mode alike; centralflows reports the
    same), which third-order products need. `LayerNorm` here is an nn.LayerNorm with an elementary forward.

The answers: with 1-D labels [N] (modular addition) the output is the logits at the last position [N, V];
with labels [N, k] (sorting, copying) the logits at the last k positions [N, k, V]. Token vocabulary: the
largest token in the data + 1; outputs: model.num_outputs or the number of classes in the labels.
Initialisation: PyTorch's defaults (embeddings and learned positions N(0, 1)) drawn from model.seed inside
torch.random.fork_rng; parameters in train.dtype (float64 when the builder is given a bare model section).
"""

import math
from typing import Any

import torch
from torch import nn

from extensions.arch_kinds import TransformerConfig
from extensions.real_kinds import model_section
from extensions.real_models import init_scaled, num_outputs
from shallownet.checks import ConfigError, require
from shallownet.registry import FullBatchData


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) [+ causal mask]) v over [..., L, d]; causal: position i attends to positions <= i."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        length = q.shape[-2]
        future = torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=-1) @ v


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return attention(q, k, v, causal=True)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the last dimension, computed in elementary operations (exact third derivatives)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=-1, keepdim=True)
        normed = centred * torch.rsqrt(centred.square().mean(dim=-1, keepdim=True) + self.eps)
        return normed * self.weight + self.bias


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dtype: torch.dtype, causal: bool = True):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(d_model, 3 * d_model, dtype=dtype)
        self.proj = nn.Linear(d_model, d_model, dtype=dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, length, d = h.shape
        q, k, v = self.qkv(h).view(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(attention(q, k, v, self.causal).transpose(1, 2).reshape(n, length, d))


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, mlp_width: int, layer_norm: bool, dtype: torch.dtype,
                 causal: bool = True):
        super().__init__()
        norm = (lambda: LayerNorm(d_model, dtype=dtype)) if layer_norm else nn.Identity
        self.norm1, self.attn, self.norm2 = norm(), SelfAttention(d_model, heads, dtype, causal), norm()
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_width, dtype=dtype), nn.GELU(),
                                 nn.Linear(mlp_width, d_model, dtype=dtype))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


def sinusoidal(length: int, d_model: int, dtype: torch.dtype) -> torch.Tensor:
    """Vaswani et al.'s positions: sin(pos / 10000^(2i/d)) in column 2i, cos in column 2i + 1."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
    return table.to(dtype)


class Transformer(nn.Module):
    """answers None: logits at the last position [N, V]; an integer k: at the last k positions [N, k, V]."""

    def __init__(self, vocab: int, outputs: int, answers: int | None, *, layers: int, d_model: int, heads: int,
                 mlp_width: int, seq_len: int, positions: str = "learned", layer_norm: bool = True,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        self.answers = answers
        self.embed = nn.Embedding(vocab, d_model, dtype=dtype)
        if positions == "learned":
            self.positions = nn.Parameter(torch.randn(seq_len, d_model, dtype=dtype))
        else:  # a constant: a buffer outside the Hessian's parameters
            self.register_buffer("positions", sinusoidal(seq_len, d_model, dtype), persistent=False)
        self.blocks = nn.Sequential(*(Block(d_model, heads, mlp_width, layer_norm, dtype) for _ in range(layers)))
        self.norm = LayerNorm(d_model, dtype=dtype) if layer_norm else nn.Identity()
        self.out = nn.Linear(d_model, outputs, dtype=dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.positions[: tokens.shape[1]]
        h = self.norm(self.blocks(h))
        return self.out(h[:, -1]) if self.answers is None else self.out(h[:, -self.answers:])


def build_transformer(cfg: Any, data: FullBatchData) -> nn.Module:
    TransformerConfig.validate(cfg)  # also when called directly, not through a config
    m = model_section(cfg)
    x, y = torch.as_tensor(data.x), torch.as_tensor(data.y)
    if x.ndim != 2 or x.is_floating_point():
        raise ConfigError(f"config key 'model.kind' transformer needs token data [N, L] of integers (data.kind "
                          f"modular_addition, sorting, copying); the data give {x.dtype} examples of shape "
                          f"{list(x.shape[1:])}")
    length = int(x.shape[1])
    seq_len = length if m.seq_len is None else int(m.seq_len)
    require(seq_len >= length, "model.seq_len", f"null or at least the data's sequence length {length}", m.seq_len)
    answers = None if y.ndim == 1 else int(y.shape[1])
    vocab = 1 + max(int(t.max()) for t in (x, data.x_test) if t is not None and t.numel())
    train = getattr(cfg, "train", None)  # the tokens carry no dtype: the run's train.dtype does
    dtype = torch.float64 if train is None else getattr(torch, train.dtype)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(m.seed)
        model = Transformer(vocab, num_outputs(m, data), answers, layers=m.layers, d_model=m.d_model,
                            heads=m.heads, mlp_width=m.mlp_width, seq_len=seq_len, positions=m.positions,
                            layer_norm=bool(m.layer_norm), dtype=dtype)
    return init_scaled(model, m)
