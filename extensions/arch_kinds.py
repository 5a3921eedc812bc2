"""Registry entries of the edge-of-stability literature's other architectures (light: no torch at import):
model kinds transformer (extensions/transformer.py), vit (extensions/vit.py) and resnet (extensions/resnet.py),
and the algorithmic
sequence data the transformer trains on, generated from a seed (extensions/sequence_data.py):
modular_addition, sorting, copying. Omegaconf structured configs: no `from __future__ import annotations`.
"""

from dataclasses import dataclass
from typing import Any, Optional  # noqa: UP035  (omegaconf reads typing.Optional)

from extensions.real_kinds import DEFAULT_DATA, LOSS, data_section, model_section, require_init_scale
from shallownet.checks import require, require_memory
from shallownet.registry import register_data, register_model

POSITIONS = ("learned", "sinusoidal")


@dataclass
class TransformerConfig:
    layers: int = 2  # pre-norm blocks: x + attention(LN(x)), then x + MLP(LN(x))
    d_model: int = 32  # width of the residual stream (token and position embeddings)
    heads: int = 4  # d_model / heads dimensions each
    mlp_width: int = 128  # Linear(d_model, mlp_width), GELU, Linear(mlp_width, d_model)
    seq_len: Optional[int] = None  # noqa: UP045  longest input the positions cover; null: the data's length
    positions: str = "learned"  # learned | sinusoidal
    layer_norm: bool = True  # false: no LayerNorm anywhere (blocks x + attention(x), x + MLP(x))
    seed: int = 0  # random seed of the initialisation (global RNG untouched)
    init_scale: float = 1.0  # every parameter of that initialisation times this
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
        require_init_scale(m)


@dataclass
class ViTConfig:
    patch: int = 2  # side of the square patches (Conv2d kernel = stride); digits 8x8: 16 tokens of 4 pixels
    layers: int = 2  # pre-norm blocks with bidirectional attention (the transformer kind's blocks)
    d_model: int = 32  # width of the residual stream (patch embeddings plus positions)
    heads: int = 4  # d_model / heads dimensions each
    mlp_width: int = 64  # Linear(d_model, mlp_width), GELU, Linear(mlp_width, d_model)
    positions: str = "learned"  # learned | sinusoidal
    layer_norm: bool = True  # false: no LayerNorm anywhere
    seed: int = 0  # random seed of the initialisation (global RNG untouched)
    init_scale: float = 1.0  # every parameter of that initialisation times this
    num_outputs: Optional[int] = None  # noqa: UP045  null: number of classes in the labels

    @staticmethod
    def validate(cfg: Any) -> None:
        m = model_section(cfg)
        for key in ("patch", "layers", "d_model", "heads", "mlp_width"):
            require(m[key] >= 1, f"model.{key}", "an integer >= 1", m[key])
        require(m.d_model % m.heads == 0, "model.heads", f"a divisor of model.d_model={m.d_model}", m.heads)
        require(m.positions in POSITIONS, "model.positions", f"one of {', '.join(POSITIONS)}", m.positions)
        require(m.num_outputs is None or m.num_outputs >= 1, "model.num_outputs", "null or an integer >= 1",
                m.num_outputs)
        require_init_scale(m)


@dataclass
class ModularAdditionConfig:
    modulus: int = 23  # p: sequences (a, b, =) for all p^2 pairs, label (a + b) mod p
    train_fraction: float = 0.5  # of the p^2 pairs, drawn with `seed`; the rest is the test split
    seed: int = 0  # random seed of the shuffle that splits the pairs

    @staticmethod
    def validate(cfg: Any) -> None:
        d = data_section(cfg)
        require(2 <= d.modulus <= 4096, "data.modulus", "an integer in [2, 4096]", d.modulus)
        require(0 < d.train_fraction <= 1 and round(d.train_fraction * d.modulus ** 2) >= 1, "data.train_fraction",
                f"in (0, 1], at least one of the {d.modulus ** 2} pairs", d.train_fraction)


MAX_SEQUENCES = 2 ** 62  # vocab^length distinct sequences are numbered in int64


@dataclass
class SequenceConfig:
    vocab: int = 4  # tokens 0 .. vocab - 1 (centralflows' sorting task: 4 and 8)
    length: int = 8  # of the sequence to sort / copy; the input is it plus the answer's first length - 1 tokens
    n_train: int = 1000  # distinct sequences, drawn without replacement with `seed`
    n_test: int = 500  # further distinct sequences (0: no test split)
    seed: int = 0  # random seed of the sequences drawn

    @staticmethod
    def validate(cfg: Any) -> None:
        d = data_section(cfg)
        require(d.vocab >= 2, "data.vocab", "an integer >= 2", d.vocab)
        require(d.length >= 1, "data.length", "an integer >= 1", d.length)
        require(d.vocab ** d.length <= MAX_SEQUENCES, "data.length",
                f"such that data.vocab^data.length <= 2^62 (data.vocab={d.vocab})", d.length)
        require(d.n_train >= 1, "data.n_train", "an integer >= 1", d.n_train)
        require(d.n_test >= 0, "data.n_test", "an integer >= 0", d.n_test)
        total = d.vocab ** d.length
        require(d.n_train + d.n_test <= total, "data.n_train",
                f"at most the {total} distinct sequences minus data.n_test={d.n_test}", d.n_train)
        require_memory(8.0 * 6 * (d.n_train + d.n_test) * d.length, "the sequences (int64)", "data.n_train")


@dataclass
class ResNetConfig:
    depth: int = 3  # BasicBlocks per stage (ResNet-20: 3)
    width: int = 16  # channels of the first stage, doubled at each next one
    stages: int = 3  # the first block of stages 2.. halves the image
    batch_norm: bool = False  # BatchNorm on full-batch statistics (and conv biases dropped)
    seed: int = 0  # random seed of PyTorch's default initialisation
    init_scale: float = 1.0  # every parameter of that initialisation times this (a sweep cell rerun alone)
    num_outputs: Optional[int] = None  # noqa: UP045  null: number of classes in the labels

    @staticmethod
    def validate(cfg: Any) -> None:
        m = model_section(cfg)
        for key in ("depth", "width", "stages"):
            require(m[key] >= 1, f"model.{key}", "an integer >= 1", m[key])
        require(m.stages <= 8, "model.stages", "an integer in [1, 8] (the widths double per stage)", m.stages)
        require(m.num_outputs is None or m.num_outputs >= 1, "model.num_outputs", "null or an integer >= 1",
                m.num_outputs)
        require_init_scale(m)


register_data("modular_addition", ModularAdditionConfig, "extensions.sequence_data:load_modular_addition")
register_data("sorting", SequenceConfig, "extensions.sequence_data:load_sorting")
register_data("copying", SequenceConfig, "extensions.sequence_data:load_copying")
register_model("transformer", TransformerConfig, "extensions.transformer:build_transformer",
               default_data="modular_addition", convergence="loss", loss=LOSS)
register_model("vit", ViTConfig, "extensions.vit:build_vit", default_data=DEFAULT_DATA, convergence="loss",
               loss=LOSS)
register_model("resnet", ResNetConfig, "extensions.resnet:build_resnet", default_data=DEFAULT_DATA,
               convergence="loss", loss=LOSS)
