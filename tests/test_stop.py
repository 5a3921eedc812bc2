"""One stop rule: the edge cases fed to every implementation (StopRule, the Lightning module, figure1's
paths, the numba / torch / batched sweep engines) give identical outcomes and step counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shallownet.figure1 import DIVERGENCE_NORM, process_path
from shallownet.losses import half_mse
from shallownet.model import ScalarLinearNet
from shallownet.module import FullBatchModule
from shallownet.processes.descent import GradientDescentProcess
from shallownet.registry import FullBatchData
from shallownet.stop import CONVERGED, DIVERGED, GO_ON, INTERRUPTED, MAX_STEPS, MAX_TIME, OUTCOMES, StopRule
from shallownet.sweep.engine import simulate
from shallownet.training import fit

TOL = 2.0**-20
ETA = 0.1
MAX = 3
# (a, b) for d = 1 and phi = 1, and what the rule says at step 0 (None: the run takes steps)
CASES = {
    "minimum with a runaway norm": ((2.0**21, 2.0**-21), CONVERGED),  # eps = 0 exactly, lam = 4.4e12
    "inf": ((math.inf, 1.0), DIVERGED),
    "nan": ((math.nan, 1.0), DIVERGED),
    "exactly tol": ((1.0 + TOL, 1.0), CONVERGED),  # eps = 2^-20 exactly
    "just above tol": ((1.0 + 2 * TOL, 1.0), None),
    "runaway, not converged": ((2.0e6, 0.0), DIVERGED),
    "budget": ((0.3, 0.2), MAX_STEPS),  # eta = 0.1 does not converge in 3 steps
}
RULE = StopRule(TOL, DIVERGENCE_NORM, MAX)


def test_rule_table_and_precedence():
    assert RULE.judge(0.0, 4e12) == CONVERGED  # a minimum is a minimum, whatever its norm
    assert RULE.judge(math.nan, 1.0) == RULE.judge(0.0, math.inf) == DIVERGED
    assert RULE.judge(TOL, 1.0) == CONVERGED and RULE.judge(np.nextafter(TOL, 1), 1.0) is None
    assert RULE.judge(1.0, 2e12) == DIVERGED
    timed = StopRule(TOL, 1e12, 10, max_time=5.0)
    assert timed.judge(1.0, 1.0, steps=10, time=5.0) == MAX_TIME  # the time budget names the flow's end
    assert timed.judge(1.0, 1.0, steps=10) == MAX_STEPS
    assert timed.judge(1.0, 1.0, steps=3, interrupted=True) == INTERRUPTED
    assert timed.judge(0.0, 1.0, steps=3, interrupted=True) == CONVERGED  # an outcome beats a stop request
    codes = RULE.classify([0.0, math.nan, 1.0, 1.0], [4e12, 1.0, 2e12, 1.0], [0, 0, 0, MAX])
    assert [OUTCOMES[c] for c in codes] == [CONVERGED, DIVERGED, DIVERGED, MAX_STEPS]


def test_the_scalar_and_the_vectorised_forms_of_the_rule_agree():
    rule = StopRule(TOL, 1e12, 10, max_time=5.0)
    values = [0.0, TOL, np.nextafter(TOL, 1), -TOL, 1.0, -1.0, 1e13, math.inf, -math.inf, math.nan]
    cases = [(e, n, s, t, i) for e in values for n in values if not n < 0 for s in (3, 10) for t in (0.0, 5.0)
             for i in (False, True)]
    codes = rule.classify(*map(np.array, zip(*cases, strict=True)))
    for case, code in zip(cases, codes, strict=True):
        assert rule.judge(*case) == (None if code == GO_ON else OUTCOMES[code]), case


def lightning_outcome(a: float, b: float) -> tuple[str, int]:
    net = ScalarLinearNet(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))
    module = FullBatchModule(net, half_mse, GradientDescentProcess(lr=ETA), RULE, convergence="residual")
    data = FullBatchData(torch.ones(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), target=1.0)
    module.use_data(data)
    from shallownet.data import FullBatchDataModule

    trainer = fit(module, FullBatchDataModule(data, MAX), max_steps=MAX,
                  trainer_options={"accelerator": "cpu", "precision": "64-true"})
    return module.outcome, trainer.global_step


def engine_outcomes(backend: str) -> dict[str, tuple[str, int]]:
    a0 = np.array([[a] for (a, _), _ in CASES.values()])
    b0 = np.array([[b] for (_, b), _ in CASES.values()])
    n = len(CASES)
    runs = simulate(np.full(n, ETA), np.arange(n), a0, b0, 1.0, RULE, backend=backend)
    outcomes = [OUTCOMES[c] for c in runs.outcome(RULE)]
    return dict(zip(CASES, zip(outcomes, runs.steps.tolist(), strict=True), strict=True))


@pytest.mark.filterwarnings("ignore")
def test_every_implementation_agrees_on_the_edge_cases():
    results = {
        "lightning": {name: lightning_outcome(*ab) for name, (ab, _) in CASES.items()},
        "figure1": {name: (lambda p: (p[1], len(p[0]) - 1))(
            process_path(*ab, 1.0, GradientDescentProcess(lr=ETA), RULE))
            for name, (ab, _) in CASES.items()},
        **{backend: engine_outcomes(backend) for backend in ("numba", "torch", "batched")},
    }
    reference = results["lightning"]
    for name, (_, expected) in CASES.items():
        if expected is not None and expected != MAX_STEPS:
            assert reference[name] == (expected, 0), name
    assert reference["budget"] == (MAX_STEPS, MAX)
    for implementation, outcomes in results.items():
        assert outcomes == reference, implementation
