"""The resnet kind: its structure, its skip connections, its curvature against a dense Hessian (with and without
BatchNorm on full-batch statistics) and a short `shallownet train` on digits."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from extensions.arch_kinds import ResNetConfig
from extensions.real_data import load_digits_data
from extensions.real_kinds import DigitsConfig
from extensions.resnet import BasicBlock, build_resnet, build_resnet_net
from shallownet.checks import ConfigError
from shallownet.curvature import HessianOperator, dense_hessian, flat_parameters, top_eigenvalue
from shallownet.curvature.operators import full_precision
from shallownet.losses import half_sum_mse
from shallownet.registry import FullBatchData
from tests.conftest import read_summary


@pytest.fixture(scope="module")
def digits():
    return load_digits_data(OmegaConf.create({"data": OmegaConf.structured(DigitsConfig(n_train=12, n_test=5))}))


def resnet(data, **fields):
    return build_resnet(OmegaConf.structured(ResNetConfig(**fields)), data)


def test_structure_strides_and_seed(digits):
    net = resnet(digits, depth=2, width=4, stages=3, batch_norm=True, seed=2)
    assert [name for name, _ in net.named_children()] == ["conv1", "bn1", "act1", "stage1", "stage2", "stage3",
                                                          "pool", "flatten", "out"]
    assert [len(stage) for stage in (net.stage1, net.stage2, net.stage3)] == [2, 2, 2]
    assert isinstance(net.stage1.block1.shortcut, torch.nn.Identity)  # same shape: the identity skip
    projection = net.stage2.block1.shortcut
    assert projection.conv.stride == (2, 2) and projection.conv.out_channels == 8
    assert isinstance(projection.bn, torch.nn.BatchNorm2d) and projection.conv.bias is None
    assert isinstance(net.stage2.block2.shortcut, torch.nn.Identity)
    assert net.out.in_features == 16 and all(m.bias is None for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    features = torch.nn.Sequential(*list(net.children())[:6])(digits.x)
    assert features.shape == (12, 16, 2, 2)  # 8x8 -> 4x4 -> 2x2
    assert net(digits.x).shape == (12, 10) and net(digits.x).dtype == torch.float64
    again, other = resnet(digits, depth=2, width=4, batch_norm=True, seed=2), resnet(digits, depth=2, width=4, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), again.parameters(), strict=True))
    assert not torch.equal(net.conv1.weight, other.conv1.weight)
    plain = resnet(digits, width=4)
    assert plain.conv1.bias is not None and isinstance(plain.stage1.block1.bn1, torch.nn.Identity)


def test_a_block_is_relu_of_residual_plus_skip():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    block = BasicBlock(4, 4, 1, False, torch.float64)
    with torch.no_grad():  # no residual branch: the block is ReLU of its input
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
    torch.testing.assert_close(block(x), x.relu(), rtol=0, atol=0)
    down = BasicBlock(4, 6, 2, False, torch.float64)
    residual = down.conv2(down.conv1(x).relu())
    torch.testing.assert_close(down(x), (residual + down.shortcut.conv(x)).relu(), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_hvps_and_sharpness_match_the_dense_hessian(digits, batch_norm):
    net = resnet(digits, depth=1, width=2, stages=2, batch_norm=batch_norm, seed=1)
    data = (digits.x, digits.y)
    buffers = [b.clone() for b in net.buffers()]
    dense = dense_hessian(net, half_sum_mse, data)
    assert all(torch.equal(a, b) for a, b in zip(buffers, net.buffers(), strict=True))  # running stats untouched
    assert dense.shape[0] == sum(p.numel() for p in net.parameters())
    torch.testing.assert_close(dense, dense.T, rtol=0, atol=1e-12)
    v = torch.randn(dense.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    exact = dense @ v
    for method in ("double-backward", "forward-over-reverse"):
        product = HessianOperator(net, half_sum_mse, data, method=method)(v)
        assert torch.linalg.vector_norm(product - exact) <= 1e-10 * torch.linalg.vector_norm(exact), method
    # and against central differences of gradients (ReLU kinks are not crossed at this step, checked by the bound)
    op = HessianOperator(net, half_sum_mse, data)
    flat, step = flat_parameters(net), 1e-6
    with full_precision():
        differences = (op._gradient_at(flat + step * v) - op._gradient_at(flat - step * v)) / (2 * step)
    assert torch.linalg.vector_norm(differences - exact) <= 1e-6 * torch.linalg.vector_norm(exact)
    result = top_eigenvalue(op, tol=1e-10)
    assert result.converged
    assert result.value == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), rel=1e-9)


def test_bad_keys_and_flat_data_are_one_line(digits):
    for fields, key in (({"depth": 0}, "model.depth"), ({"stages": 9}, "model.stages"), ({"width": 0}, "model.width")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
            resnet(digits, **fields)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"\[N, C, H, W\]"):
        resnet(FullBatchData(digits.x.reshape(12, -1), digits.y))


def test_resnet20_shape():
    """He et al.'s ResNet-20 on CIFAR-10's shape: 19 convolutions plus 2 projections, 64 channels at the end."""
    net = build_resnet_net((3, 32, 32), 10, depth=3, width=16, stages=3, batch_norm=True)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 3 * 3 * 2 + 2 and net.out.in_features == 64
    assert net(torch.zeros(2, 3, 32, 32, dtype=torch.float64)).shape == (2, 10)


def test_train_on_digits(cli):
    code, out, err, dirs = cli("train", "model.kind=resnet", "model.depth=1", "model.width=4", "model.stages=2",
                               "model.batch_norm=true", "data.n_train=64", "data.n_test=32", "optim.lr=0.1",
                               "train.max_steps=6", "train.tol=1e-300", "monitor.sharpness.every_n_steps=3",
                               "output.progress=false")
    assert code == 0, err
    summary = read_summary(dirs[0])
    assert summary["status"] == "max_steps" and summary["final"]["loss"] < summary["init"]["loss"]
    assert summary["final"]["sharpness"] > 0 and 0 <= summary["final"]["accuracy"] <= 1
    code, _, err, _ = cli("train", "model.kind=resnet", "model.batch_norm=true", "train.chunk_size=10")
    assert code == 2 and "train.chunk_size" in err and len(err.strip().splitlines()) == 1
