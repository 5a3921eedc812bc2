"""The registration module shallownet imports (entry point or $SHALLOWNET_PLUGINS): the config schema and
the builder's name, nothing heavy, so configs are checked and refused before torch is imported."""

from dataclasses import dataclass

from shallownet.checks import require
from shallownet.registry import register_model


@dataclass
class DiagonalConfig:
    width: int = 5  # number of units: f(x) = (|u|^2 - |v|^2) x
    phi: float = 1.0  # the target slope (data.kind=points reads it)
    scale: float = 0.5  # every u_i and v_i starts at scale times a standard normal draw
    seed: int = 0  # random seed of the init

    @staticmethod
    def validate(cfg) -> None:
        require(cfg.model.width >= 1, "model.width", "an integer >= 1", cfg.model.width)
        require(cfg.model.scale > 0, "model.scale", "> 0", cfg.model.scale)


register_model("diagonal", DiagonalConfig, "tiny_plugin.model:build", default_data="points", convergence="loss")
