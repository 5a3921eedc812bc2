"""A plain MLP builder and scikit-learn's digits data (1797 images of 8x8 pixels, 10 classes)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU}


def mlp(sizes: Sequence[int], activation: str = "tanh", *, seed: int = 0,
        dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Linear layers sizes[0] -> sizes[1] -> ... -> sizes[-1], the activation between them (not after
    the last); PyTorch's default initialisation drawn from `seed`."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must hold at least two positive widths, got {list(sizes)}")
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out, dtype=dtype), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers[:-1])


def load_digits(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, y): X of shape (1797, 64) standardised per pixel (constant pixels stay 0), y int64 labels."""
    from sklearn.datasets import load_digits as sklearn_digits  # optional dependency: import on use

    digits = sklearn_digits()
    features = torch.tensor(digits.data, dtype=torch.float64)
    std = features.std(dim=0)
    features = (features - features.mean(dim=0)) / torch.where(std > 0, std, torch.ones_like(std))
    return features.to(dtype), torch.tensor(digits.target, dtype=torch.int64)
