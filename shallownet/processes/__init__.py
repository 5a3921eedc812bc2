"""The built-in processes, chosen by `optim.method` (compare and eos: by each entry of `processes`).

Each schema is the config section of its process without `method`; the builders import the torch-side
classes (shallownet.processes.descent, .flows) only when a run is built. The discrete ones follow
torch.optim's update rule of the same name exactly (they are those optimizers); docs/theory.md section 9
derives each stability threshold.

    gd        p -= lr g                                  (hand-rolled: shallownet.optim.GradientDescent)
    momentum  torch.optim.SGD(momentum=beta)              heavy ball, dampening 0
    nesterov  torch.optim.SGD(momentum=beta, nesterov=True)
    rmsprop   torch.optim.RMSprop(alpha, eps)             no momentum, not centred
    adam      torch.optim.Adam(betas, eps)                bias-corrected
    sgd       torch.optim.SGD(momentum=beta) on mini-batches drawn without replacement (processes.stochastic)
    flow      gradient flow d(theta)/dt = -g, adaptive Dormand-Prince 5(4)
    modified_flow  d(theta)/dt = -(g + (lr/2) H g), the modified equation of GD at lr (Barrett & Dherin 2021)
    central_flow   d(theta)/dt = -(g + 1/2 sum_ij X_ij grad(u_i^T H u_j)), GD's time average at the edge of
                   stability (Cohen et al. 2025)
"""

from dataclasses import dataclass, field
from typing import List, Optional  # noqa: UP035 (omegaconf reads typing.List / Optional only)

from shallownet.checks import require
from shallownet.registry import register_process


def _positive(section, prefix: str, *keys: str) -> None:
    for key in keys:
        require(section[key] > 0, f"{prefix}.{key}", "> 0", section[key])


def _in_unit_interval(key: str, value) -> None:
    require(0 <= value < 1, key, "in [0, 1)", value)


@dataclass
class GDConfig:
    lr: float = 0.1  # step size eta

    @staticmethod
    def validate(section, prefix: str = "optim") -> None:
        _positive(section, prefix, "lr")


@dataclass
class MomentumConfig:
    lr: float = 0.1  # step size eta
    momentum: float = 0.9  # beta: buf <- beta buf + g, p <- p - lr buf

    @staticmethod
    def validate(section, prefix: str = "optim") -> None:
        _positive(section, prefix, "lr")
        _in_unit_interval(f"{prefix}.momentum", section.momentum)


@dataclass
class SGDConfig:
    lr: float = 0.1  # step size eta
    momentum: float = 0.0  # beta of torch.optim.SGD's heavy ball (0: plain SGD)
    batch_size: int = 32  # rows per step, drawn without replacement within an epoch
    batch_seed: int = 0  # seed of the batch order's torch.Generator (checkpointed with the run)
    drop_last: bool = False  # drop an epoch's last batch when it is short

    @staticmethod
    def validate(section, prefix: str = "optim") -> None:
        _positive(section, prefix, "lr")
        _in_unit_interval(f"{prefix}.momentum", section.momentum)
        require(section.batch_size >= 1, f"{prefix}.batch_size", "an integer >= 1", section.batch_size)


@dataclass
class RMSpropConfig:
    lr: float = 0.01  # torch.optim.RMSprop's defaults
    alpha: float = 0.99  # smoothing constant of the squared-gradient average
    eps: float = 1.0e-8  # added to the denominator

    @staticmethod
    def validate(section, prefix: str = "optim") -> None:
        _positive(section, prefix, "lr", "eps")
        _in_unit_interval(f"{prefix}.alpha", section.alpha)


@dataclass
class AdamConfig:
    lr: float = 0.001  # torch.optim.Adam's defaults
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # noqa: UP006  [beta1, beta2]: decay of the first
    # and second moment averages
    eps: float = 1.0e-8  # added to the denominator

    @staticmethod
    def validate(section, prefix: str = "optim") -> None:
        _positive(section, prefix, "lr", "eps")
        require(len(section.betas) == 2, f"{prefix}.betas", "a pair [beta1, beta2]", list(section.betas))
        for i, beta in enumerate(section.betas):
            _in_unit_interval(f"{prefix}.betas[{i}]", beta)


@dataclass
class FlowConfig:
    rtol: float = 1.0e-10  # Dormand-Prince local error per coordinate <= atol + rtol |theta_i|
    atol: float = 1.0e-12  # absolute error tolerance of each step
    max_step: Optional[float] = None  # noqa: UP045  cap on the integration step (null: none)

    @staticmethod
    def validate(section, prefix: str = "optim") -> None:
        _positive(section, prefix, "rtol", "atol")
        require(section.max_step is None or section.max_step > 0, f"{prefix}.max_step", "> 0 or null",
                section.max_step)


@dataclass
class ModifiedFlowConfig(FlowConfig):
    lr: float = 0.1  # the GD step size eta the flow models (its clock is GD's, t = eta k)

    @staticmethod
    def validate(section, prefix: str = "optim") -> None:
        FlowConfig.validate(section, prefix)
        _positive(section, prefix, "lr")


@dataclass
class CentralFlowConfig(ModifiedFlowConfig):
    top_k: int = 4  # top Hessian eigenpairs tracked (warm-started block Lanczos); the critical ones, lr lambda >= 2,
    # span U
    relaxation: float = 1.0  # tau / lr: an eigenvalue above 2/lr is pulled back at rate 1/tau (GD steps)
    eigen_tol: float = 1.0e-9  # relative residual of each eigenpair

    @staticmethod
    def validate(section, prefix: str = "optim") -> None:
        ModifiedFlowConfig.validate(section, prefix)
        _positive(section, prefix, "relaxation", "eigen_tol")
        require(section.top_k >= 1, f"{prefix}.top_k", "an integer >= 1", section.top_k)


@register_process("gd", GDConfig)
def build_gd(section):
    from shallownet.processes.descent import GradientDescentProcess

    return GradientDescentProcess(lr=section.lr)


@register_process("momentum", MomentumConfig)
def build_momentum(section):
    from shallownet.processes.descent import Momentum

    return Momentum(lr=section.lr, momentum=section.momentum)


@register_process("nesterov", MomentumConfig)
def build_nesterov(section):
    from shallownet.processes.descent import Nesterov

    return Nesterov(lr=section.lr, momentum=section.momentum)


@register_process("sgd", SGDConfig)
def build_sgd(section):
    from shallownet.processes.stochastic import SGD

    return SGD(lr=section.lr, momentum=section.momentum, batch_size=section.batch_size,
               batch_seed=section.batch_seed, drop_last=section.drop_last)


@register_process("rmsprop", RMSpropConfig)
def build_rmsprop(section):
    from shallownet.processes.descent import RMSprop

    return RMSprop(lr=section.lr, alpha=section.alpha, eps=section.eps)


@register_process("adam", AdamConfig)
def build_adam(section):
    from shallownet.processes.descent import Adam

    return Adam(lr=section.lr, betas=tuple(section.betas), eps=section.eps)


@register_process("flow", FlowConfig)
def build_flow(section):
    from shallownet.processes.flows import GradientFlow

    return GradientFlow(rtol=section.rtol, atol=section.atol, max_step=section.max_step)


@register_process("modified_flow", ModifiedFlowConfig)
def build_modified_flow(section):
    from shallownet.processes.flows import ModifiedFlow

    return ModifiedFlow(lr=section.lr, rtol=section.rtol, atol=section.atol, max_step=section.max_step)


@register_process("central_flow", CentralFlowConfig)
def build_central_flow(section):
    from shallownet.processes.flows import CentralFlow

    return CentralFlow(lr=section.lr, rtol=section.rtol, atol=section.atol, max_step=section.max_step,
                       top_k=section.top_k, relaxation=section.relaxation, eigen_tol=section.eigen_tol)
