"""Full-batch data: univariate regression points, and a DataModule whose every batch is "the full batch".

The data lives on the module (placed on its device once, in FullBatchModule.setup); the loader only
yields `steps_per_epoch` step tokens per epoch, so nothing is copied per step and per-epoch overhead,
which would dominate GD on a handful of points, is paid once.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from shallownet.registry import FullBatchData


def regression_points(n_points: int, phi: float, noise: float, seed: int,
                      dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (x_i, y_i), x of shape [n, 1], y of shape [n].

    One point is (1, phi), so the loss is exactly 1/2 (a.b - phi)^2. More points have y = phi x + noise,
    with x rescaled so that mean(x^2) = 1: then the data loss is 1/2 (a.b - Phi)^2 plus a constant,
    with Phi = sum x y / sum x^2, and a GD step size means the same as in theory.md.
    """
    if n_points == 1:
        return torch.ones(1, 1, dtype=dtype), torch.full((1,), float(phi), dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_points, generator=gen, dtype=dtype)
    x = x / x.square().mean().sqrt()
    y = phi * x + noise * torch.randn(n_points, generator=gen, dtype=dtype)
    return x[:, None], y


def effective_phi(x: torch.Tensor, y: torch.Tensor) -> float:
    """Phi = sum x y / sum x^2: the product a.b that minimises the loss."""
    x = x.reshape(-1)
    return float((x @ y) / (x @ x))


class _StepTokens(IterableDataset):
    def __init__(self, repeats: int):
        self.repeats = repeats

    def __len__(self) -> int:
        return self.repeats

    def __iter__(self):
        return iter(range(self.repeats))


class FullBatchDataModule(L.LightningDataModule):
    """Holds the full data set; an epoch is `steps_per_epoch` GD steps on all of it."""

    def __init__(self, data: FullBatchData, steps_per_epoch: int):
        super().__init__()
        self.data, self.steps_per_epoch = data, steps_per_epoch

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_StepTokens(self.steps_per_epoch), batch_size=None)
