"""Loss functions by name (a config's `loss`): each maps (outputs, targets) to the mean over the rows.

Mean-reduced on purpose: chunked gradients and Hessian-vector products weight chunk i by n_i / N,
which is exact only for a mean over rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a loss is computed: config checks name losses without it
    import torch


def half_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1/2 mean (output - target)^2: for one point (1, phi) exactly L = 1/2 (a.b - phi)^2."""
    return 0.5 * (outputs.reshape(targets.shape) - targets).square().mean()


def half_sum_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1/2 sum over classes of (output - one_hot(target))^2, averaged over the rows (Cohen et al. 2021).

    torch's MSELoss would also average over the classes, which divides the sharpness by their number.
    Integer targets are class labels; float targets are used as they are.
    """
    import torch

    if not targets.is_floating_point():
        # one_hot by comparison: F.one_hot reads the labels' max (.item()), which torch.func.vmap refuses
        classes = torch.arange(outputs.shape[-1], device=targets.device)
        targets = (targets.unsqueeze(-1) == classes).to(outputs.dtype)
    return 0.5 * (outputs - targets).square().sum(dim=-1).mean()


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [..., V] against integer class labels [...] (or probabilities [..., V]).

    Classes are the last dimension (not F.cross_entropy's second): a sequence task's logits [N, k, V] with
    labels [N, k] give the mean over the N k answers, which is the mean over rows of each row's mean, so
    chunk weights n_i / N stay exact.
    """
    from torch.nn import functional as F

    classes = outputs.shape[-1]
    flat = targets.reshape(-1, classes) if targets.is_floating_point() else targets.reshape(-1)
    return F.cross_entropy(outputs.reshape(-1, classes), flat)


LOSSES = {"half_mse": half_mse, "half_sum_mse": half_sum_mse, "cross_entropy": cross_entropy}
