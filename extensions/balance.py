"""Per-unit balance of positively homogeneous networks (theory.md 8.4) and a Lightning monitor for it.

For a hidden unit j (a neuron of a Linear layer, or an output channel of a convolution) with incoming
weights and bias w_j and outgoing weights v_j,

    C_j = |w_j|^2 - |v_j|^2

is conserved by gradient flow when everything between the two layers is positively homogeneous, and one
GD step of size eta changes it by exactly eta^2 (|dL/dw_j|^2 - |dL/dv_j|^2). Summed over a layer's units
it is the layer-norm balance |W_l|^2 + |b_l|^2 - |W_(l+1)|^2.

Supported architectures: any net torch.fx can trace (names are module paths such as "fc1", "features.0" or
"stage1.block2.conv1") built of

    weight layers   nn.Linear, nn.Conv1d/2d/3d (groups = 1), each called once
    between them    nn.ReLU, nn.LeakyReLU, nn.PReLU, max- and average-pools (also adaptive),
                    nn.Identity, nn.Dropout, nn.Flatten (start_dim 1, end_dim -1)   -> the identity holds
                    tanh, sigmoid, GELU, SiLU, ELU, ... and BatchNorm/LayerNorm/GroupNorm,
                    sums (x + f(x): residual connections)                          -> measured only

The units of weight layer l are read by the weight layers its outputs reach through the modules between
(Linear or conv after a Linear, conv after a conv, Linear after a conv with an nn.Flatten on the way: then
unit j owns the block of columns j*s .. (j+1)*s - 1 of the Linear, s = in_features / channels: Flatten is
channel-major), through sums as well; v_j is their columns (input channels) j, all of them. A layer whose
outputs reach the network's output is not a hidden layer. Anything else (a Linear right after a conv, a
grouped or transposed conv, a module with parameters that is no weight layer, a function or method other
than a sum such as torch.cat, a module called twice) is refused with a ValueError naming it.

Where the identity does not hold (unit_applies() says why, per layer; applies() for the whole net):
non-homogeneous activations (C_j drifts already under gradient flow), normalisation layers (BatchNorm makes
the incoming weights scale invariant, so |w_j|^2 grows by eta^2 |dL/dw_j|^2 per step; w_j is still the conv's
own weights and bias, BatchNorm's affine parameters belong to no unit), and units feeding a skip sum (in a
ResNet's BasicBlock, conv2's units and the shortcut's, and every layer whose outputs enter the residual
stream: rescaling unit j and its readers leaves what the other path adds unscaled). In a BasicBlock without
BatchNorm conv1's units (conv1, ReLU, conv2) satisfy it. Where it does not hold C_j is measured, never
compared with the prediction.
"""

from __future__ import annotations

import math
import operator
import weakref
from dataclasses import dataclass

import lightning as L
import torch
from torch import fx, nn

from shallownet.callbacks.periodic import PeriodicMonitor
from shallownet.callbacks.tensorboard import find_writer, log_histogram, log_step
from shallownet.processes.base import FLOW_IDENTITIES, GD_IDENTITIES, process_of

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
               nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
               nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Identity, nn.Dropout,
               nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Flatten)
NOT_HOMOGENEOUS = (nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.CELU, nn.SELU, nn.Softplus, nn.Mish,
                   nn.Hardtanh, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Softsign, nn.Tanhshrink,
                   nn.LogSigmoid, nn.Softmax, nn.LogSoftmax)
NORMALISATIONS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
                  nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm)


# --- the unit structure ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Units:
    """The hidden units produced by weight layer `name`: `incoming` makes them; `outgoing` are the weight
    layers that read them, each with its columns per unit (1, or H*W*... when a Flatten after a conv lies
    between); `between` the modules on the way; `skip` whether the way passes a sum (a residual connection)."""

    name: str
    incoming: nn.Module
    outgoing: tuple[tuple[str, nn.Module, int], ...]
    between: tuple[tuple[str, nn.Module], ...]
    skip: bool = False

    @property
    def size(self) -> int:
        return self.incoming.weight.shape[0]


_SUMS = (operator.add, torch.add)
_UNITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (its modules, its units)


def _trace(model: nn.Module) -> tuple[fx.Graph, dict[str, nn.Module]]:
    """The model's graph (torch.fx; torch.nn's modules, nn.Sequential excepted, stay whole), every node checked."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as err:  # noqa: BLE001  any tracing failure: the structure cannot be read
        said = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"balance: cannot read the structure of {type(model).__name__} with torch.fx "
                         f"({type(err).__name__}: {said})") from None
    modules, parameters, called = dict(model.named_modules()), dict(model.named_parameters()), set()
    for node in graph.nodes:
        if node.op == "call_module":
            name, module = node.target, modules[node.target]
            if name in called:
                raise ValueError(f"balance: module '{name}' is called more than once; its units are not defined")
            called.add(name)
            _check_module(name, module)
        elif node.op in ("call_function", "call_method") and node.target not in _SUMS and node.target != "add":
            what = getattr(node.target, "__name__", node.target)
            raise ValueError(f"balance: operation '{what}' is not supported; between weight layers allowed are "
                             "modules (activations, pools, Dropout, Flatten, normalisations) and sums")
        elif node.op == "get_attr" and node.target in parameters:
            raise ValueError(f"balance: parameter '{node.target}' is used outside a Linear or a convolution")
    return graph, modules


def _check_module(name: str, module: nn.Module) -> None:
    if isinstance(module, WEIGHT_LAYERS):
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups != 1:
            raise ValueError(f"balance: convolution '{name}' has groups={module.groups}; only groups=1 is supported")
    elif isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise ValueError(f"balance: Flatten '{name}' must flatten dims 1..-1, got "
                             f"{module.start_dim}..{module.end_dim}")
    elif not isinstance(module, HOMOGENEOUS + NOT_HOMOGENEOUS + NORMALISATIONS):
        if any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"balance: module '{name}' ({type(module).__name__}) has parameters and is not a "
                             "Linear or a convolution; it belongs to no supported unit structure")
        raise ValueError(f"balance: module '{name}' ({type(module).__name__}) is not supported; between weight "
                         "layers allowed are activations, pools, Dropout, Flatten and normalisations")


def _units_of(node: fx.Node, modules: dict[str, nn.Module], order: dict[fx.Node, int]) -> Units | None:
    """The units made by weight-layer node `node`: follow its output to the weight layers that read it (None
    when it reaches the network's output: the last layer's outputs are not units)."""
    name, incoming = node.target, modules[node.target]
    readers: dict[fx.Node, bool] = {}  # reading weight-layer node -> a Flatten on the way
    between: dict[str, nn.Module] = {}
    skip, stack, seen = False, [(user, False) for user in node.users], set()
    while stack:
        here, flattened = stack.pop()
        if (here, flattened) in seen:
            continue
        seen.add((here, flattened))
        if here.op == "output":
            return None
        if here.op == "call_module":
            module = modules[here.target]
            if isinstance(module, WEIGHT_LAYERS):
                readers[here] = readers.get(here, False) or flattened
                continue
            between[here.target] = module
            flattened = flattened or isinstance(module, nn.Flatten)
        else:  # a sum (the only other operation _trace lets through)
            skip = True
        stack.extend((user, flattened) for user in here.users)
    if not readers:
        return None
    out, outgoing = incoming.weight.shape[0], []
    for reader in sorted(readers, key=order.get):
        next_name, layer, flattened = reader.target, modules[reader.target], readers[reader]
        fan_in = layer.weight.shape[1]
        conv_in, conv_out = not isinstance(incoming, nn.Linear), not isinstance(layer, nn.Linear)
        if conv_out and (not conv_in or flattened):
            raise ValueError(f"balance: '{next_name}' ({type(layer).__name__}) after '{name}' "
                             f"({type(incoming).__name__}){' and a Flatten' if flattened else ''} is not supported")
        if conv_in and not conv_out and not flattened:
            raise ValueError(f"balance: Linear '{next_name}' after convolution '{name}' needs an nn.Flatten "
                             "between them")
        if fan_in % out:
            raise ValueError(f"balance: '{next_name}' takes {fan_in} inputs, not a multiple of the {out} units "
                             f"of '{name}'")
        if not (conv_in and flattened) and fan_in != out:
            raise ValueError(f"balance: '{next_name}' takes {fan_in} inputs but '{name}' has {out} outputs")
        outgoing.append((next_name, layer, fan_in // out))
    return Units(name, incoming, tuple(outgoing), tuple(between.items()), skip)


def hidden_units(model: nn.Module) -> list[Units]:
    """The hidden units of every weight layer whose outputs other weight layers read, in the order of the
    forward (raises ValueError where the structure is unsupported). Read once per model (its modules)."""
    signature = tuple((name, type(m)) for name, m in model.named_modules())
    cached = _UNITS.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    graph, modules = _trace(model)
    order = {node: i for i, node in enumerate(graph.nodes)}
    layers = [n for n in graph.nodes if n.op == "call_module" and isinstance(modules[n.target], WEIGHT_LAYERS)]
    units = [unit for node in layers if (unit := _units_of(node, modules, order)) is not None]
    _UNITS[model] = (signature, units)
    return units


def unit_applies(unit: Units) -> tuple[bool, str]:
    """(True, "") when the identity of theory.md 8.4 holds for these units, else (False, why)."""
    if unit.skip:
        return False, (f"the units of '{unit.name}' feed a skip sum: rescaling them and their readers changes what "
                       "the other path adds, so |w_j|^2 - |v_j|^2 is no conserved quantity")
    for name, module in unit.between:
        kind = type(module).__name__
        if isinstance(module, NORMALISATIONS):
            return False, (f"'{name}' ({kind}) normalises the units of '{unit.name}': their incoming weights are "
                           "scale invariant, |w_j|^2 grows by eta^2 |dL/dw_j|^2 per step")
        if isinstance(module, NOT_HOMOGENEOUS):
            return False, f"'{name}' ({kind}) is not positively homogeneous: C_j drifts already under gradient flow"
    return True, ""


def layer_applies(model: nn.Module) -> dict[str, tuple[bool, str]]:
    """{layer: unit_applies of its units} for every hidden layer (raises ValueError where unsupported)."""
    return {unit.name: unit_applies(unit) for unit in hidden_units(model)}


def applies(model: nn.Module) -> tuple[bool, str]:
    """(True, "") when the per-unit identity of theory.md 8.4 holds for every hidden layer, else (False, why
    for the first layer where it does not)."""
    try:
        units = hidden_units(model)
    except ValueError as err:
        return False, str(err)
    if not units:
        return False, "no hidden units: the net has fewer than two Linear/conv layers"
    for unit in units:
        holds, why = unit_applies(unit)
        if not holds:
            return False, why
    return True, ""


# --- per-unit squared norms --------------------------------------------------------------------------

def _tensor(module: nn.Module, attr: str, grad: bool) -> torch.Tensor | None:
    param = getattr(module, attr, None)
    if param is None:
        return None
    if not grad:
        return param.detach()
    if param.grad is None:
        raise ValueError(f"balance: {type(module).__name__}.{attr} has no gradient; call backward() first")
    return param.grad.detach()


def _incoming_sq(unit: Units, grad: bool = False) -> torch.Tensor:
    weight = _tensor(unit.incoming, "weight", grad)
    total = weight.reshape(weight.shape[0], -1).square().sum(dim=1)
    bias = _tensor(unit.incoming, "bias", grad)
    return total if bias is None else total + bias.square()


def _outgoing_sq(unit: Units, grad: bool = False) -> torch.Tensor:
    total = 0
    for _, layer, block in unit.outgoing:
        per_input = _tensor(layer, "weight", grad).square().sum(dim=0)  # Linear: [in]; conv: [in, *kernel]
        total = total + per_input.reshape(unit.size, block if isinstance(layer, nn.Linear) else -1).sum(dim=1)
    return total


@torch.no_grad()
def unit_balance(model: nn.Module) -> dict[str, torch.Tensor]:
    """{layer name: C_j of its units} with C_j = |w_j|^2 - |v_j|^2 (w_j with the bias), in the model's dtype."""
    return {u.name: _incoming_sq(u) - _outgoing_sq(u) for u in hidden_units(model)}


@torch.no_grad()
def balance_step(model: nn.Module) -> dict[str, torch.Tensor]:
    """{layer name: |dL/dw_j|^2 - |dL/dv_j|^2} from the current .grad: one GD step adds eta^2 times it."""
    return {u.name: _incoming_sq(u, grad=True) - _outgoing_sq(u, grad=True) for u in hidden_units(model)}


@torch.no_grad()
def predict_balance(model: nn.Module, eta: float) -> dict[str, torch.Tensor]:
    """C_j after one GD step of size eta from the current parameters and .grad (theory.md 8.4):
    C_j + eta^2 (|dL/dw_j|^2 - |dL/dv_j|^2). Exact only where applies(model) holds."""
    now, change = unit_balance(model), balance_step(model)
    return {name: now[name] + eta**2 * change[name] for name in now}


def mean_abs(balance: dict[str, torch.Tensor]) -> dict[str, float]:
    """{layer: mean_j |C_j|}."""
    return {name: float(c.abs().mean()) for name, c in balance.items()}


def layer_sums(balance: dict[str, torch.Tensor]) -> dict[str, float]:
    """{layer: sum_j C_j} = |W_l|^2 + |b_l|^2 - |W_(l+1)|^2 (the next layer's bias is in no unit)."""
    return {name: float(c.sum()) for name, c in balance.items()}


# --- the Lightning monitor ---------------------------------------------------------------------------

APPLIES = "balance/applies"
LAYER_APPLIES = "balance/applies_{}"
MEAN_ABS_ALL = "balance/mean_abs"
MEAN_ABS = "balance/mean_abs_{}"
MEAN_ABS_RATIO = "balance/mean_abs_ratio_{}"
SUM = "balance/sum_{}"
PRED_ERROR = "balance/pred_error_{}"
PER_UNIT = "balance/per_unit_{}"


class BalanceMonitor(PeriodicMonitor):
    """Logs the per-unit balance C_j of `pl_module.<attr>` (default `model`), at PeriodicMonitor's cadence,
    on the x-axis of shallownet.callbacks.tensorboard.log_step:

        balance/applies                1 if the identity of theory.md 8.4 holds for every layer of this net, else 0
        balance/applies_<layer>        1 if it holds for the units of weight layer <layer>, else 0 (unit_applies)
        balance/mean_abs               mean |C_j| over every hidden unit of the net
        balance/mean_abs_<layer>       mean_j |C_j| over the units of weight layer <layer>
        balance/mean_abs_ratio_<layer> that, over its first logged value (skipped when that is 0)
        balance/sum_<layer>            sum_j C_j = |W_l|^2 + |b_l|^2 - |W_(l+1)|^2
        balance/pred_error_<layer>     only for layers where the identity holds, at steps >= 1, for a process with GD's
                                       one-step identities: max_j |predicted - measured C_j| for the step that
                                       ended here, predicted before it from .grad and the process's lr; for
                                       gradient flow, which conserves C_j: the drift of C_j over one
                                       integrator step; for other processes (momentum, Adam, ...): not logged
        balance/per_unit_<layer>       histogram of the C_j (only with a TensorBoard logger; finite values)

    Refuses (before the run) a net whose unit structure it cannot read (see hidden_units). The prediction
    assumes one optimizer step per training batch (full-batch GD, or one integrator step).
    """

    columns = (("mean |C_j|", MEAN_ABS_ALL),)  # what compare's table shows of it (header, tag)

    def __init__(self, every_n_steps: int = 1, histograms: bool = True, attr: str = "model"):
        super().__init__(every_n_steps)
        self.histograms, self.attr = histograms, attr
        self.initial_mean_abs: dict[str, float] = {}
        self._applies: dict[str, bool] = {}  # by layer
        self._process = None
        self._before: dict[str, torch.Tensor] | None = None  # C_j at the start of the current step
        self._prediction: dict[str, torch.Tensor] | None = None  # and after it, as the identity predicts

    def net(self, pl_module: L.LightningModule) -> nn.Module:
        return getattr(pl_module, self.attr)

    def refusal(self, pl_module, process) -> str | None:
        try:
            units = hidden_units(self.net(pl_module))
        except (AttributeError, ValueError) as err:
            return str(err)
        return None if units else "balance: no hidden units: the net has fewer than two Linear/conv layers"

    def start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._applies = {name: holds for name, (holds, _) in layer_applies(self.net(pl_module)).items()}
        self._process = process_of(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        # every step: whether it ends logged (at the end of a run too) is not known before it is taken
        predicting = any(self._applies.values()) and self._process.identities in (GD_IDENTITIES, FLOW_IDENTITIES)
        self._prediction = None
        self._before = unit_balance(self.net(pl_module)) if predicting else None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        # An ODE integrator calls the closure (and so this hook) at several stages: the first call counts.
        if self._before is None or self._prediction is not None:
            return
        if self._process.identities == FLOW_IDENTITIES:
            self._prediction = dict(self._before)
            return
        lr, change = self._process.lr, balance_step(self.net(pl_module))
        self._prediction = {name: c + lr**2 * change[name] for name, c in self._before.items()}

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        balance = unit_balance(self.net(pl_module))
        values = {APPLIES: float(all(self._applies.values()))}
        values.update({LAYER_APPLIES.format(name): float(holds) for name, holds in self._applies.items()})
        every = torch.cat([c.reshape(-1) for c in balance.values()])
        values[MEAN_ABS_ALL] = float(every.abs().mean())
        for name, value in mean_abs(balance).items():
            values[MEAN_ABS.format(name)] = value
            first = self.initial_mean_abs.setdefault(name, value)
            if first != 0 and math.isfinite(first):
                values[MEAN_ABS_RATIO.format(name)] = value / first
        values.update({SUM.format(name): value for name, value in layer_sums(balance).items()})
        if self._prediction is not None and trainer.global_step > 0:
            for name, measured in balance.items():
                if self._applies[name]:
                    values[PRED_ERROR.format(name)] = float((self._prediction[name] - measured).abs().max())
        self._prediction = None
        writer = find_writer(trainer) if self.histograms else None
        if writer is not None:
            x = log_step(trainer, pl_module)
            for name, c in balance.items():
                if c.numel():
                    log_histogram(writer, PER_UNIT.format(name), c.detach().cpu().double().numpy(), x)
        return values

    def extra_state(self) -> dict:
        return {"initial_mean_abs": dict(self.initial_mean_abs)}

    def load_extra_state(self, state: dict) -> None:
        self.initial_mean_abs = dict(state["initial_mean_abs"])


def build_monitor(cfg, section) -> BalanceMonitor | None:
    """The registry's builder for `monitor.balance` (extensions.real_kinds)."""
    return BalanceMonitor(section.every_n_steps) if section.every_n_steps else None
