"""Algorithmic sequence tasks generated from a seed, no downloads (`data.kind`), for the transformer kind.

    modular_addition  inputs (a, b, =) with '=' the token p, label (a + b) mod p, for all p^2 pairs
                      (Power et al. 2022; Nanda et al. 2023): x [N, 3], y [N]. A seeded permutation of the
                      pairs puts the first round(train_fraction p^2) into the training split, the rest into the
                      test split.
    sorting           a sequence s of `length` tokens from 0 .. vocab - 1 and its sorted copy t; the input is
                      s followed by t's first length - 1 tokens, the labels are t, read at the last `length`
                      positions of a causal model (minGPT's sort demo layout; centralflows' task: vocab 4,
                      length 8): x [N, 2 length - 1], y [N, length].
    copying           the same with t = s.

The sequences of one data set are distinct: n_train + n_test of the vocab^length, drawn without replacement
(numpy's Generator.choice, seeded with data.seed), the first n_train for training. Inputs and labels are int64
tokens and class labels, as digits' labels are: half_sum_mse one-hots the labels (1/2 sum over classes,
averaged over examples and, for sorting and copying, over the answer positions), cross_entropy takes them
as they are. Accuracy counts an example right when every one of its answers is.
"""

from typing import Any

import numpy as np
import torch

from extensions.arch_kinds import ModularAdditionConfig, SequenceConfig
from extensions.real_kinds import data_section
from shallownet.registry import FullBatchData


def _split(x: torch.Tensor, y: torch.Tensor, n_train: int) -> FullBatchData:
    test = n_train < len(x)
    return FullBatchData(x[:n_train].contiguous(), y[:n_train].contiguous(),
                         x[n_train:].contiguous() if test else None, y[n_train:].contiguous() if test else None)


def load_modular_addition(cfg: Any, dtype: Any = None) -> FullBatchData:
    """All p^2 pairs (a, b, =) -> (a + b) mod p, shuffled with data.seed; dtype is unused (tokens)."""
    ModularAdditionConfig.validate(cfg)
    d = data_section(cfg)
    p = d.modulus
    order = torch.from_numpy(np.random.default_rng(d.seed).permutation(p * p))
    a, b = order // p, order % p
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    return _split(x, (a + b) % p, round(d.train_fraction * p * p))


def distinct_sequences(vocab: int, length: int, n: int, seed: int) -> torch.Tensor:
    """n distinct sequences [n, length] of tokens 0 .. vocab - 1, drawn uniformly without replacement."""
    numbers = np.random.default_rng(seed).choice(vocab ** length, size=n, replace=False)
    digits = torch.from_numpy(numbers.astype(np.int64))[:, None] // vocab ** torch.arange(length, dtype=torch.int64)
    return digits % vocab


def _answer_task(cfg: Any, answer) -> FullBatchData:
    SequenceConfig.validate(cfg)
    d = data_section(cfg)
    source = distinct_sequences(d.vocab, d.length, d.n_train + d.n_test, d.seed)
    target = answer(source)
    return _split(torch.cat([source, target[:, :-1]], dim=1), target, d.n_train)


def load_sorting(cfg: Any, dtype: Any = None) -> FullBatchData:
    """Sequences and their sorted copies (teacher-forced: the input holds the answer's first length - 1 tokens)."""
    return _answer_task(cfg, lambda s: s.sort(dim=1).values)


def load_copying(cfg: Any, dtype: Any = None) -> FullBatchData:
    """Sequences and themselves, laid out as sorting's."""
    return _answer_task(cfg, lambda s: s.clone())
