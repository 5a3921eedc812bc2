"""Registry entries of the edge-of-stability literature's other architectures (light: no torch at import):
model kind transformer (extensions/transformer.py). Omegaconf structured configs: no `from __future__ import
annotations`.
"""

from dataclasses import dataclass
from typing import Any, Optional  # noqa: UP035  (omegaconf reads typing.Optional)

from extensions.real_kinds import LOSS, model_section
from shallownet.checks import require
from shallownet.registry import register_model

POSITIONS = ("learned", "sinusoidal")


@dataclass
class TransformerConfig:
    layers: int = 2  # pre-norm blocks: x + attention(LN(x)), then x + MLP(LN(x))
    d_model: int = 32
    heads: int = 4  # d_model / heads dimensions each
    mlp_width: int = 128  # Linear(d_model, mlp_width), GELU, Linear(mlp_width, d_model)
    seq_len: Optional[int] = None  # noqa: UP045  longest input the positions cover; null: the data's length
    positions: str = "learned"  # learned | sinusoidal
    layer_norm: bool = True  # false: no LayerNorm anywhere (blocks x + attention(x), x + MLP(x))
    seed: int = 0
    num_outputs: Optional[int] = None  # noqa: UP045  null: number of classes in the labels

    @staticmethod
    def validate(cfg: Any) -> None:
        m = model_section(cfg)
        for key in ("layers", "d_model", "heads", "mlp_width"):
            require(m[key] >= 1, f"model.{key}", "an integer >= 1", m[key])
        require(m.d_model % m.heads == 0, "model.heads", f"a divisor of model.d_model={m.d_model}", m.heads)
        require(m.seq_len is None or m.seq_len >= 1, "model.seq_len", "null or an integer >= 1", m.seq_len)
        require(m.positions in POSITIONS, "model.positions", f"one of {', '.join(POSITIONS)}", m.positions)
        require(m.num_outputs is None or m.num_outputs >= 1, "model.num_outputs", "null or an integer >= 1",
                m.num_outputs)


register_model("transformer", TransformerConfig, "extensions.transformer:build_transformer",
               default_data="modular_addition", convergence="loss", loss=LOSS)
