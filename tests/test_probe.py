"""The HVP capability probe (shallownet.curvature.probe): which method a curvature monitor uses, its fallbacks
when one fails or is wrong, and its refusals, on models where a method really fails (an op without forward-mode
AD, F.scaled_dot_product_attention's CPU kernel) and where one is made wrong (monkeypatched)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from extensions.mlp import mlp
from extensions.transformer import causal_attention
from shallownet.callbacks.sharpness import SharpnessMonitor
from shallownet.curvature import HessianOperator, dense_hessian, top_eigenvalue
from shallownet.curvature.probe import HvpProbeWarning, probe_hvp
from tests.test_block_sharpness import Wrapper

DB, FWD, FD = "double-backward", "forward-over-reverse", "finite-difference"


def mse(outputs, targets):
    return 0.5 * ((outputs - targets) ** 2).mean()


def regression(n=10, d_in=3, d_out=2, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype) for d in (d_in, d_out))


class Cube(torch.autograd.Function):
    """x^3 with a differentiable backward (so double backward works) and no jvp: no forward-mode AD."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x ** 2 * grad


class CubeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = (nn.Linear(*shape, dtype=torch.float64) for shape in ((3, 4), (4, 2)))

    def forward(self, x):
        return self.fc2(Cube.apply(self.fc1(x)))


class Attention(nn.Module):
    """One causal self-attention head on [N, L, 4] inputs, read at the last position: through torch's SDPA or
    the written-out attention; `relu` adds a kink (finite differences no longer apply)."""

    def __init__(self, sdpa=True, relu=False, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(0)
        self.qkv, self.out = nn.Linear(4, 12, dtype=dtype), nn.Linear(4, 2, dtype=dtype)
        self.act = nn.ReLU() if relu else nn.Identity()
        self.attend = F.scaled_dot_product_attention if sdpa else causal_attention
        self.sdpa = sdpa

    def forward(self, x):
        q, k, v = (t[:, None] for t in self.qkv(x).chunk(3, dim=-1))
        h = self.attend(q, k, v, is_causal=True) if self.sdpa else self.attend(q, k, v)
        return self.out(self.act(h[:, 0, -1]))


def sequences(dtype=torch.float64):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(6, 5, 4, generator=gen, dtype=torch.float64).to(dtype), torch.randn(
        6, 2, generator=gen, dtype=torch.float64).to(dtype)


def test_all_methods_agree_on_a_smooth_net_and_double_backward_is_used():
    with warnings.catch_warnings():
        warnings.simplefilter("error", HvpProbeWarning)  # nothing to say
        probe = probe_hvp(mlp([3, 5, 2], "tanh"), mse, regression())
    assert probe.method == DB and probe.checked and probe.failed == [] and probe.refusal is None
    assert probe.tolerance == pytest.approx(6.06e-6, rel=1e-2)
    assert set(probe.differences) == {(DB, FWD), (DB, FD), (FWD, FD)}
    assert probe.differences[(DB, FWD)] < 1e-14 and 0 < probe.differences[(DB, FD)] < 1e-8
    assert "\n" not in probe.message and "using double-backward" in probe.message


def test_the_probe_runs_once_per_model_device_and_dtype():
    model, data = mlp([3, 4, 2], "tanh"), regression()
    assert probe_hvp(model, mse, data) is probe_hvp(model, mse, data)
    assert probe_hvp(model, mse, data, cache=False) is not probe_hvp(model, mse, data)
    model32 = mlp([3, 4, 2], "tanh", dtype=torch.float32)
    probe = probe_hvp(model32, mse, regression(dtype=torch.float32))
    assert probe.tolerance == pytest.approx(4.92e-3, rel=1e-2) and "float32, cpu" in probe.message


def test_an_op_without_forward_mode_ad_falls_back_to_double_backward_checked_by_finite_differences():
    model, data = CubeNet(), regression()
    with pytest.warns(HvpProbeWarning, match="forward-over-reverse fails .*using double-backward"):
        probe = probe_hvp(model, mse, data)
    assert probe.method == DB and probe.checked and probe.failed == [FWD]
    assert "forward AD" in probe.outcomes[FWD] or "jvp" in probe.outcomes[FWD]
    assert probe.differences[(DB, FD)] < 1e-8
    # and the sharpness monitor measures with it (against Lanczos on central differences)
    monitor = SharpnessMonitor(tol=1e-10)
    module = Wrapper(model, data, mse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HvpProbeWarning)
        assert monitor.refusal(module, None) is None
        value = monitor.solve(module).value
    assert monitor._operator.method == DB
    reference = top_eigenvalue(HessianOperator(model, mse, data, method=FD), tol=1e-8).value
    assert value == pytest.approx(reference, rel=1e-7)


def test_a_wrong_method_is_outvoted_and_the_next_one_used(monkeypatch):
    right = HessianOperator._hvp_double_backward
    monkeypatch.setattr(HessianOperator, "_hvp_double_backward", lambda self, flat, v: 1.5 * right(self, flat, v))
    with pytest.warns(HvpProbeWarning, match="using forward-over-reverse"):
        probe = probe_hvp(mlp([3, 5, 2], "tanh"), mse, regression())
    assert probe.method == FWD and probe.checked and probe.failed == [DB]
    assert probe.differences[(DB, FWD)] == pytest.approx(1 / 3, rel=1e-6)
    assert probe.differences[(FWD, FD)] < 1e-8


def test_sdpa_on_the_cpu_fails_both_ad_methods_and_finite_differences_take_over():
    x, y = sequences()
    model = Attention(sdpa=True)
    with pytest.warns(HvpProbeWarning, match="unchecked"):
        probe = probe_hvp(model, mse, (x, y))
    assert probe.method == FD and not probe.checked and probe.failed == [DB, FWD]
    assert "scaled_dot_product" in probe.outcomes[DB] and "scaled_dot_product" in probe.outcomes[FWD]
    # the sharpness measured through SDPA by finite differences equals the written-out attention's dense one
    eager = Attention(sdpa=False)
    eager.load_state_dict(model.state_dict())
    expected = float(torch.linalg.eigvalsh(dense_hessian(eager, mse, (x, y)))[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HvpProbeWarning)
        value = SharpnessMonitor(tol=1e-9).solve(Wrapper(model, (x, y), mse)).value
    assert value == pytest.approx(expected, rel=1e-6)


def test_nothing_to_trust_is_refused_with_the_reason():
    x, y = sequences()
    probe = probe_hvp(Attention(sdpa=True, relu=True), mse, (x, y))  # no AD through SDPA, kinks for FD
    assert probe.method is None and "\n" not in probe.refusal
    assert probe.refusal.startswith("no HVP method can be trusted here: HVP probe (float64, cpu")
    assert "finite-difference not applicable (wrong across the kinks of ReLU 'act')" in probe.refusal
    module = Wrapper(Attention(sdpa=True, relu=True), (x, y), mse)
    assert SharpnessMonitor().refusal(module, None).startswith("no HVP method")


def test_methods_that_disagree_with_nothing_to_break_the_tie_are_refused(monkeypatch):
    right = HessianOperator._hvp_double_backward
    monkeypatch.setattr(HessianOperator, "_hvp_double_backward", lambda self, flat, v: 1.5 * right(self, flat, v))
    probe = probe_hvp(mlp([3, 5, 2], "relu"), mse, regression())
    assert probe.method is None and "double-backward vs forward-over-reverse: 3.3e-01" in probe.refusal


def test_a_run_without_a_trustworthy_method_exits_2_before_any_work(cli, monkeypatch):
    def fails(self, flat, v):
        raise RuntimeError("derivative for aten::something is not implemented")

    monkeypatch.setattr(HessianOperator, "_hvp_double_backward", fails)
    monkeypatch.setattr(HessianOperator, "_hvp_forward_over_reverse", fails)
    code, out, err, dirs = cli("train", "model.kind=mlp", "data.n_train=50", "train.max_steps=2",
                               "monitor.sharpness.every_n_steps=1")
    assert code == 2 and not dirs
    line = err.strip()
    assert "\n" not in line and "monitor.sharpness.every_n_steps" in line and "no HVP method can be trusted" in line
    assert "double-backward fails (RuntimeError: derivative for aten::something" in line
