"""The vit kind: its bidirectional attention against SDPA's, the patches it sees, and its curvature (both HVP
methods, sharpness) against a dense Hessian on a tiny instance, under MSE and cross-entropy."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from extensions.arch_kinds import ViTConfig
from extensions.transformer import attention
from extensions.vit import build_vit
from shallownet.checks import ConfigError
from shallownet.curvature import HessianOperator, dense_hessian, top_eigenvalue
from shallownet.losses import cross_entropy, half_sum_mse
from shallownet.registry import FullBatchData


def images(n: int, side: int = 4, channels: int = 1, seed: int = 0) -> FullBatchData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, side, side, generator=g, dtype=torch.float64)
    return FullBatchData(x, torch.randint(0, 3, (n,), generator=g))


def model_cfg(**fields):
    return OmegaConf.structured(ViTConfig(**fields))


def tiny(positions="learned", layer_norm=True):
    """A 1-layer, d_model 4 ViT on 5 random 4x4 images in 2x2 patches (a few hundred parameters)."""
    data = images(5)
    cfg = model_cfg(patch=2, layers=1, d_model=4, heads=2, mlp_width=6, positions=positions,
                    layer_norm=layer_norm, seed=3)
    return build_vit(cfg, data), (data.x, data.y)


def test_bidirectional_attention_equals_sdpa_forward():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 5, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v), F.scaled_dot_product_attention(q, k, v), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize(("positions", "layer_norm", "loss"), [
    ("learned", True, half_sum_mse), ("sinusoidal", True, cross_entropy), ("learned", False, half_sum_mse)])
def test_hvps_and_sharpness_match_the_dense_hessian(positions, layer_norm, loss):
    model, data = tiny(positions, layer_norm)
    dense = dense_hessian(model, loss, data)
    assert dense.shape[0] == sum(p.numel() for p in model.parameters())
    v = torch.randn(dense.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = dense @ v
    for method in ("double-backward", "forward-over-reverse"):
        product = HessianOperator(model, loss, data, method=method)(v)
        assert torch.linalg.vector_norm(product - exact) <= 1e-11 * torch.linalg.vector_norm(exact), method
    result = top_eigenvalue(HessianOperator(model, loss, data), tol=1e-10)
    assert result.converged
    assert result.value == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), rel=1e-9)


def test_each_token_is_one_patch():
    """Changing one pixel changes the embedding of its patch's token only (before the attention mixes them)."""
    model, (x, _) = tiny()
    changed = x.clone()
    changed[:, 0, 3, 1] += 1.0  # row 3, column 1: patch (1, 0), token 2 of 4
    before, after = model.patch(x).flatten(2), model.patch(changed).flatten(2)
    moved = (after - before).abs().amax(dim=(0, 1))
    assert moved[2] > 1e-3 and torch.equal(moved[[0, 1, 3]], torch.zeros(3, dtype=torch.float64))


def test_shapes_seed_and_rng():
    data = images(6, side=8, channels=3)
    state = torch.random.get_rng_state()
    model = build_vit(model_cfg(patch=4, seed=1), data)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model(data.x).shape == (6, 3) and model.positions.shape == (4, 32)
    again = build_vit(model_cfg(patch=4, seed=1), data)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(), strict=True))
    fixed = build_vit(model_cfg(positions="sinusoidal"), data)
    assert "positions" not in dict(fixed.named_parameters()) and fixed.positions.shape == (16, 32)


@pytest.mark.parametrize(("fields", "key"), [
    ({"patch": 3}, "model.patch"), ({"heads": 3}, "model.heads"), ({"layers": 0}, "model.layers"),
    ({"positions": "rotary"}, "model.positions")])
def test_bad_model_keys_are_one_line(fields, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        build_vit(model_cfg(**fields), images(3))
    assert "\n" not in str(info.value)


def test_token_data_is_refused():
    data = FullBatchData(torch.zeros(3, 5, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ConfigError, match="image data"):
        build_vit(model_cfg(), data)
