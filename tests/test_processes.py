"""The processes (shallownet.processes): each optimiser against torch.optim's own loop, each stability
threshold on a quadratic, the preconditioned sharpness against a dense P^-1/2 H P^-1/2, the views of plain
torch optimizers, and the monitors' refusals before any work."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from shallownet import events, registry
from shallownet.callbacks.sharpness import SharpnessMonitor
from shallownet.config import RunConfig, load_config
from shallownet.curvature.dense import dense_hessian
from shallownet.processes import descent
from shallownet.processes.base import FLOW_IDENTITIES, GD_IDENTITIES, Process, describe_optimizer
from shallownet.processes.flows import GradientFlow
from shallownet.training import build, fit

# each process's keys and the torch.optim optimizer it must equal
OPTIMISERS = {
    "gd": (["optim.lr=0.1"], lambda p: torch.optim.SGD(p, lr=0.1)),
    "momentum": (["optim.lr=0.05", "optim.momentum=0.8"], lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8)),
    "nesterov": (["optim.lr=0.05", "optim.momentum=0.8"],
                 lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True)),
    "rmsprop": (["optim.lr=0.01", "optim.alpha=0.9", "optim.eps=1e-6"],
                lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-6)),
    "adam": (["optim.lr=0.01", "optim.betas=[0.8,0.99]", "optim.eps=1e-7"],
             lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-7)),
}
MODELS = {
    "shallow": ["model.width=5"],
    "mlp": ["model.kind=mlp", "model.widths=[6]", "data.n_train=40", "data.n_test=0", "train.dtype=float64"],
}
STEPS = 25


def run_config(*overrides: str):
    return load_config(RunConfig, None, ["monitor.sharpness.every_n_steps=0", f"train.max_steps={STEPS}",
                                         "train.tol=1e-300", *overrides])


def torch_loop(model, loss_fn, data, make_optimizer, steps):
    optimizer = make_optimizer(list(model.parameters()))
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(model(data.x), data.y).backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", OPTIMISERS)
def test_each_optimiser_is_torch_optim_bit_for_bit(method, model):
    keys, make_optimizer = OPTIMISERS[method]
    pieces = build(run_config(f"optim.method={method}", *keys, *MODELS[model]))
    module = pieces.module
    initial = [p.detach().clone() for p in module.model.parameters()]
    reference = torch_loop(copy.deepcopy(module.model), module.loss_fn, module.data, make_optimizer, STEPS)
    trainer = fit(module, pieces.datamodule, max_steps=STEPS)
    assert trainer.global_step == STEPS and module.final_outcome() == "max_steps"
    for (name, ours), theirs, start in zip(module.model.named_parameters(), reference.parameters(), initial,
                                           strict=True):
        assert torch.equal(ours, theirs), f"{method} on {model}: {name} differs from torch.optim's"
        assert not torch.equal(ours, start), f"{name} never moved"


# --- stability thresholds on a quadratic ------------------------------------------------------------

EPS_LARGE = 1.0e3  # eps >> sqrt(v): the adaptive preconditioners stay frozen at (about) eps
QUADRATIC = {
    "gd": (lambda: descent.GradientDescentProcess(lr=0.1), 2 / 0.1),
    "momentum": (lambda: descent.Momentum(lr=0.1, momentum=0.9), (2 + 2 * 0.9) / 0.1),
    "nesterov": (lambda: descent.Nesterov(lr=0.1, momentum=0.9), (2 + 2 * 0.9) / (0.1 * (1 + 2 * 0.9))),
    "rmsprop": (lambda: descent.RMSprop(lr=0.1, alpha=0.99, eps=EPS_LARGE), 2 / 0.1),
    "adam": (lambda: descent.Adam(lr=0.1, betas=(0.9, 0.999), eps=EPS_LARGE), (2 + 2 * 0.9) / ((1 - 0.9) * 0.1)),
}


def growth_on_quadratic(process: Process, curvature: float, steps: int) -> float:
    """|theta_T| / |theta_0| under the process on f(theta) = curvature theta^2 / 2 from theta_0 = 1e-9.

    First 300 steps with zero gradient: they move nothing, and they bring Adam's bias corrections 1 - beta^t to
    1, so that its preconditioner is the P_t of the threshold from the first real step on."""
    theta = torch.full((1,), 1e-9, dtype=torch.float64, requires_grad=True)
    optimizer = process.make_optimizer([theta])
    for _ in range(300):
        theta.grad = torch.zeros_like(theta)
        optimizer.step()
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * curvature * theta.square().sum()).backward()
        optimizer.step()
        if abs(float(theta.detach())) > 1e-5:
            break  # grown 1e4-fold: diverging (run on, it would overflow, and grow RMSprop's P)
    return abs(float(theta.detach())) / 1e-9


@pytest.mark.parametrize("method", QUADRATIC)
def test_each_threshold_splits_convergence_from_divergence_on_a_quadratic(method):
    make, threshold = QUADRATIC[method]
    process = make()
    assert process.threshold() == pytest.approx(threshold, rel=1e-15)
    scale = EPS_LARGE if process.preconditioned else 1.0  # the threshold is for lambda / P there
    below = growth_on_quadratic(make(), 0.99 * threshold * scale, 6000)
    probe = make()
    above = growth_on_quadratic(probe, 1.01 * threshold * scale, 6000)
    assert below < 1e-3 and above > 1e3, (below, above)
    if process.preconditioned:  # P stayed eps to well within the 1% margin, so the test measures the threshold
        assert float(probe.preconditioner()) == pytest.approx(EPS_LARGE, rel=1e-3)


def test_adam_threshold_is_38_over_eta_at_the_default_betas():
    assert descent.Adam(lr=0.01, betas=(0.9, 0.999), eps=1e-8).threshold() == pytest.approx(3800, rel=1e-14)


# --- preconditioned sharpness ----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["rmsprop", "adam"])
@pytest.mark.parametrize("model", MODELS)
def test_preconditioned_sharpness_is_the_dense_top_eigenvalue(method, model):
    keys, _ = OPTIMISERS[method]
    pieces = build(run_config(f"optim.method={method}", *keys, *MODELS[model], "train.max_steps=6",
                              "monitor.sharpness.every_n_steps=1", "monitor.sharpness.tol=1e-12"))
    module, monitor = pieces.module, pieces.sharpness
    fit(module, pieces.datamodule, max_steps=6, callbacks=[monitor])
    hessian = dense_hessian(module.model, module.loss_fn, (module.data.x, module.data.y))
    p = module.process.preconditioner()  # that of step 6, which produced the parameters measured last
    inv_sqrt = p.rsqrt()
    pre = inv_sqrt[:, None] * hessian * inv_sqrt[None, :]
    expected = float(torch.linalg.eigvalsh(pre)[-1])
    last = monitor.last
    assert monitor.last_step == 6
    assert last["curvature/preconditioned_sharpness"] == pytest.approx(expected, rel=1e-8)
    assert last["curvature/sharpness"] == pytest.approx(float(torch.linalg.eigvalsh(hessian)[-1]), rel=1e-8)
    assert last["curvature/stability_threshold"] == module.process.threshold()
    assert last["curvature/sharpness_over_threshold"] == pytest.approx(expected / module.process.threshold(),
                                                                       rel=1e-8)


def test_preconditioner_matches_the_optimizer_state_formulas():
    pieces = build(run_config("optim.method=adam", *OPTIMISERS["adam"][0], "train.max_steps=4"))
    fit(pieces.module, pieces.datamodule, max_steps=4)
    optimizer = pieces.module.process.optimizer
    b1, b2 = 0.8, 0.99
    expected = []
    for p in pieces.module.model.parameters():
        state = optimizer.state[p]
        t = float(state["step"])
        expected.append(((1 - b1 ** t) * ((state["exp_avg_sq"] / (1 - b2 ** t)).sqrt() + 1e-7)).flatten())
    torch.testing.assert_close(pieces.module.process.preconditioner(), torch.cat(expected), rtol=1e-15, atol=0)


# --- views of plain torch optimizers ----------------------------------------------------------------

def test_describe_optimizer_names_what_the_thresholds_cover():
    p = [torch.zeros(2, requires_grad=True)]
    sgd = describe_optimizer(torch.optim.SGD(p, lr=0.2, momentum=0.5))
    assert isinstance(sgd, descent.Momentum) and sgd.threshold() == pytest.approx(3 / 0.2)
    assert describe_optimizer(torch.optim.SGD(p, lr=0.2)).identities == GD_IDENTITIES
    nesterov = describe_optimizer(torch.optim.SGD(p, lr=0.2, momentum=0.5, nesterov=True))
    assert isinstance(nesterov, descent.Nesterov) and nesterov.threshold() == pytest.approx(3 / (0.2 * 2))
    adam = describe_optimizer(torch.optim.Adam(p, lr=0.01))
    assert adam.preconditioned and adam.threshold() == pytest.approx(3800)
    assert describe_optimizer(torch.optim.RMSprop(p, lr=0.01)).threshold() == pytest.approx(200)
    for other in (torch.optim.SGD(p, lr=0.1, weight_decay=1e-3), torch.optim.SGD(p, lr=0.1, momentum=0.9,
                                                                                   dampening=0.5),
                  torch.optim.RMSprop(p, lr=0.01, centered=True), torch.optim.AdamW(p), torch.optim.LBFGS(p)):
        view = describe_optimizer(other)
        assert view.threshold() is None and view.identities is None, other
    assert describe_optimizer(GradientFlow(rtol=1e-8, atol=1e-10, max_step=None).make_optimizer(p)).identities \
        == FLOW_IDENTITIES


def test_sharpness_monitor_in_a_plain_lightning_module_logs_the_momentum_threshold():
    import lightning as L

    class Plain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(3, 1).double()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            return torch.nn.functional.mse_loss(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    x = torch.randn(16, 3, dtype=torch.float64)
    y = x.sum(1, keepdim=True)
    monitor = SharpnessMonitor(every_n_steps=2, data=(x, y), loss_fn=torch.nn.functional.mse_loss)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[monitor]).fit(Plain(), loader)
    assert monitor.last["curvature/stability_threshold"] == pytest.approx(3.8 / 0.05)
    lam = monitor.last["curvature/sharpness"]
    assert monitor.last["curvature/sharpness_over_threshold"] == pytest.approx(lam * 0.05 / 3.8)
    design = torch.cat([x, torch.ones(16, 1, dtype=x.dtype)], 1)  # mean squared error of (w, b): H = 2 A^T A / N
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(2 * design.T @ design / 16)[-1]), rel=1e-8)


# --- refusals before any work ------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, words", [
    (["monitor.balance.every_n_steps=1"], "balance"),
    (["monitor.deep_theory.every_n_steps=1"], "deep_theory"),
    (["optim.method=adam", "monitor.theory.every_n_steps=1"], "theory"),
    (["optim.method=flow", "monitor.theory.every_n_steps=1"], "theory"),
])
def test_a_monitor_that_does_not_apply_is_refused_in_one_line_with_no_folder(cli, overrides, words):
    code, out, err, dirs = cli("train", *overrides)
    assert code == 2 and err.count("\n") == 1, err
    assert f"'monitor.{words}.every_n_steps'" in err and dirs == []


def test_compare_logs_every_tag_on_the_one_time_axis(cli):
    code, _, err, dirs = cli("compare", "model.width=3", "train.max_steps=60", "monitor.sharpness.every_n_steps=5",
                             "processes=[{method: gd, lr: 0.2}, {method: momentum, lr: 0.05, momentum: 0.5},"
                             " {method: adam, lr: 0.05}, {method: flow}]")
    assert code == 0, err
    unit = 0.05  # the smallest time per step: adam's lr (momentum's is lr / (1 - beta) = 0.1)
    for sub in ("gd_lr=0.2", "momentum_lr=0.05_momentum=0.5", "adam_lr=0.05", "flow"):
        tags = events.read_metrics(dirs[0] / sub)
        times = dict(zip(*tags["process/time"], strict=True))
        for name, (steps, _) in tags.items():
            if name.startswith(("dynamics/", "curvature/", "theory/", "process/")):
                for x in steps:  # every tag at x stands for process time x * unit: the time logged there
                    assert x == round(times[x] / unit), (sub, name, x)
        # the process's own step count is a tag of its own, and the last logged point is the end of the run
        last_x = tags["process/time"][0][-1]
        assert tags["dynamics/residual"][0][-1] == last_x == tags["curvature/sharpness"][0][-1]
        if sub != "flow":
            per_step = {"gd_lr=0.2": 0.2, "momentum_lr=0.05_momentum=0.5": 0.1, "adam_lr=0.05": 0.05}[sub]
            np.testing.assert_allclose(tags["process/time"][1], tags["process/step"][1] * per_step, rtol=1e-12)


# --- the registry stays light ------------------------------------------------------------------------

def test_validating_a_config_imports_no_torch():
    code = ("import sys\nfrom shallownet.config import RunConfig, load_config, validate_run\n"
            "cfg = load_config(RunConfig, None, ['optim.method=adam', 'model.kind=mlp'])\nvalidate_run(cfg)\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr


def test_every_process_kind_is_registered_with_its_schema():
    assert set(registry.known("process")) >= {"gd", "momentum", "nesterov", "rmsprop", "adam", "flow"}
    for name in registry.known("process"):
        process = registry.process_kind(name).build(load_config(RunConfig, None, [f"optim.method={name}"]).optim)
        assert process.method == name
        assert (process.time_per_step() is None) == process.integrates
        assert math.isfinite(process.threshold()) if process.threshold() is not None else process.integrates
