"""Full-batch univariate regression data as a Lightning DataModule.

The loader yields the whole data set as one batch, `steps_per_epoch` times per epoch: per-epoch
overhead would otherwise dominate GD on a handful of points.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset


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


class _RepeatedBatch(IterableDataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, repeats: int):
        self.x, self.y, self.repeats = x, y, repeats

    def __len__(self) -> int:
        return self.repeats

    def __iter__(self):
        for _ in range(self.repeats):
            yield self.x, self.y


class FullBatchDataModule(L.LightningDataModule):
    """Serves the full batch (x, y) as every batch of an epoch of `steps_per_epoch` GD steps."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps_per_epoch: int):
        super().__init__()
        self.x, self.y, self.steps_per_epoch = x, y, steps_per_epoch

    @property
    def phi(self) -> float:
        return effective_phi(self.x, self.y)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_RepeatedBatch(self.x, self.y, self.steps_per_epoch), batch_size=None)
