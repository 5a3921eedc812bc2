"""The HVP capability probe: which Hessian-vector product method works through a model, checked once per
model, device and dtype before curvature is measured on it.

    probe = probe_hvp(model, loss_fn, (X, Y))   # ProbeResult: .method (None: none works), .message
    HessianOperator(model, loss_fn, (X, Y), method=probe.method)

Every method of HessianOperator is tried on one seeded random unit direction v at the current parameters:
double-backward, forward-over-reverse (without the operator's fallback to double-backward) and
finite-difference (central differences of gradients, not applicable to models with kinks,
operators.NON_SMOOTH). Some fail outright: F.scaled_dot_product_attention on the CPU (its flash kernel) has
neither forward-mode AD nor double backward; others run and are wrong: torch.func's
vmapped second derivatives through BatchNorm (shallownet/curvature/dense.py). Two products agree when

    |H_a v - H_b v| <= tol max(|H_a v|, |H_b v|),   tol = cbrt(eps) of the dtype (6.1e-6 float64, 4.9e-3 float32),

the finite-difference step: far above the error of central differences (~eps^(2/3) relative; measured on a
random direction at initialisation: 4e-11 / 3e-5 on the digits tanh MLP, 2e-10 / 1.3e-4 on the modular-addition
transformer, float64 / float32; the two AD methods agree to 1e-16 / 7e-8) and far below an O(1) wrong
derivative. A method is confirmed when it agrees with another one. The choice: the first confirmed method in
the order above; where none is confirmed and exactly one method gave a finite product, that one, unchecked;
where the methods that ran disagree, or none ran, none (`refusal` says why). A probe that finds a method
failing, or can check none, warns (HvpProbeWarning) with its one-line message.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from shallownet.curvature.operators import (
    DOUBLE_BACKWARD,
    FINITE_DIFFERENCE,
    FORWARD_OVER_REVERSE,
    HessianOperator,
    LossFn,
    flat_parameters,
    full_precision,
)

PREFERENCE = (DOUBLE_BACKWARD, FORWARD_OVER_REVERSE, FINITE_DIFFERENCE)  # the fastest first (operators.py)

_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(device, dtype): ProbeResult}


class HvpProbeWarning(RuntimeWarning):
    """A method failed the probe, or the one used could not be checked (the message says which)."""


@dataclass(frozen=True)
class ProbeResult:
    """What the probe found. outcomes: {method: "" (gave a finite product) or why not}; differences:
    {(a, b): relative difference of their products}; method: the one to use (None: none)."""

    method: str | None
    checked: bool  # the method agrees with another one
    tolerance: float
    outcomes: dict[str, str]
    differences: dict[tuple[str, str], float] = field(default_factory=dict)
    where: str = ""  # dtype and device

    @property
    def failed(self) -> list[str]:
        """The methods that were applicable and did not work, or disagree with the chosen one."""
        wrong = [m for m in PREFERENCE if self.outcomes[m] and not self.outcomes[m].startswith("not applicable")]
        if self.method is not None and self.checked:
            wrong += [m for m in PREFERENCE if not self.outcomes[m] and m != self.method
                      and self._difference(m, self.method) > self.tolerance]
        return [m for m in PREFERENCE if m in wrong]

    @property
    def refusal(self) -> str | None:
        return None if self.method is not None else f"no HVP method can be trusted here: {self.message}"

    @property
    def message(self) -> str:
        """One line: what each method did and which one is used."""
        parts = [f"{m} {why}" for m, why in self.outcomes.items() if why]
        parts += [f"{a} vs {b}: {d:.1e}" for (a, b), d in self.differences.items()]
        verdict = ("none used" if self.method is None else
                   f"using {self.method}" + ("" if self.checked else " (unchecked: no other method to compare)"))
        return (f"HVP probe ({self.where}, relative tolerance {self.tolerance:.1e} on a random direction): "
                f"{'; '.join(parts)}; {verdict}")

    def _difference(self, a: str, b: str) -> float:
        return self.differences.get((a, b), self.differences.get((b, a), math.inf))


def probe_hvp(model: nn.Module, loss_fn: LossFn, data, *, chunk_size: int | None = None, seed: int = 0,
              cache: bool = True) -> ProbeResult:
    """Try every HVP method on a random direction (module docstring); the result is cached per model, device
    and dtype (the capability is the ops', not the point's), unless cache is False."""
    reference = HessianOperator(model, loss_fn, data, chunk_size=chunk_size)
    key = (reference.device, reference.dtype)
    if cache and key in _PROBES.get(model, {}):
        return _PROBES[model][key]
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(reference.dim, generator=generator, dtype=torch.float64)
    direction = (direction / torch.linalg.vector_norm(direction)).to(reference.device, reference.dtype)
    products, outcomes = {}, {}
    for method in PREFERENCE:
        outcomes[method], product = _try(model, loss_fn, data, chunk_size, method, direction)
        if product is not None:
            products[method] = product
    tolerance = torch.finfo(reference.dtype).eps ** (1 / 3)
    differences = {(a, b): float(torch.linalg.vector_norm(products[a] - products[b])
                                 / max(float(torch.linalg.vector_norm(products[a])),
                                       float(torch.linalg.vector_norm(products[b])), 1e-300))
                   for i, a in enumerate(products) for b in list(products)[i + 1:]}
    confirmed = [m for m in products if any(d <= tolerance for pair, d in differences.items() if m in pair)]
    if confirmed:
        method, checked = confirmed[0], True
    else:
        method, checked = (next(iter(products)) if len(products) == 1 else None), False
    result = ProbeResult(method, checked, tolerance, outcomes, differences, f"{reference.dtype}, {reference.device}"
                         .replace("torch.", ""))
    if cache:
        _PROBES.setdefault(model, {})[key] = result
    if result.method is not None and (result.failed or not result.checked):
        warnings.warn(result.message, HvpProbeWarning, stacklevel=2)
    return result


def probes_of(model: nn.Module) -> list[dict]:
    """The cached probe results of model (one per device and dtype it was probed on), as a run summary
    records them: where, method (None: none trusted), checked, failed (the methods that failed or disagreed).
    Without the differences: they depend on the parameters probed at, which a resumed run does not share."""
    return [{"where": r.where, "method": r.method, "checked": r.checked, "failed": r.failed}
            for r in _PROBES.get(model, {}).values()]


def _try(model, loss_fn, data, chunk_size, method, direction) -> tuple[str, torch.Tensor | None]:
    """("", H v) by `method`, or (why not, None)."""
    try:
        op = HessianOperator(model, loss_fn, data, chunk_size=chunk_size, method=method)
    except ValueError as error:  # finite differences across kinks
        return f"not applicable ({_first_line(error).split(';')[0].removeprefix('finite-difference HVPs are ')})", None
    try:
        if method == FORWARD_OVER_REVERSE:  # without the operator's fallback to double-backward
            with full_precision():
                product = op._hvp_forward_over_reverse(flat_parameters(model), direction)
        else:
            product = op(direction)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, NotImplementedError) as error:
        return f"fails ({type(error).__name__}: {_first_line(error)})", None
    if not bool(torch.isfinite(product).all()):
        return "fails (a non-finite product)", None
    return "", product


def _first_line(error) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:160]

