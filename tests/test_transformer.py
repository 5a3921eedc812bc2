"""The transformer kind: its written-out attention and LayerNorm against torch's, and its curvature (both HVP
methods, sharpness) against a dense Hessian on a tiny instance."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch.func import jacfwd, jacrev
from torch.nn import functional as F

from extensions.arch_kinds import TransformerConfig
from extensions.transformer import LayerNorm, build_transformer, causal_attention, sinusoidal
from shallownet.checks import ConfigError
from shallownet.curvature import HessianOperator, dense_hessian, top_eigenvalue
from shallownet.losses import cross_entropy, half_sum_mse
from shallownet.registry import FullBatchData


def tokens(n: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def model_cfg(**fields):
    return OmegaConf.structured(TransformerConfig(**fields))


def tiny(positions="learned", sequence=False, layer_norm=True):
    """A 1-layer, d_model 4 transformer on 6 random sequences of length 3 (a few hundred parameters)."""
    x = tokens(6, 3, 5)
    y = tokens(6, 2, 4, seed=1) if sequence else tokens(6, 1, 4, seed=1)[:, 0]
    data = FullBatchData(x, y)
    cfg = model_cfg(layers=1, d_model=4, heads=2, mlp_width=6, positions=positions, layer_norm=layer_norm, seed=3)
    return build_transformer(cfg, data), (x, y)


def test_eager_attention_equals_sdpa_forward():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 5, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(causal_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True),
                               rtol=1e-13, atol=1e-14)
    # and not just any attention: without the mask the first position would see the others
    unmasked = F.scaled_dot_product_attention(q, k, v)
    assert (causal_attention(q, k, v)[..., 0, :] - unmasked[..., 0, :]).abs().max() > 1e-2


def test_layer_norm_equals_torch_and_has_exact_third_derivatives():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    ours = LayerNorm(6, dtype=torch.float64)
    with torch.no_grad():
        ours.weight.normal_(generator=g)
        ours.bias.normal_(generator=g)
    theirs = torch.nn.LayerNorm(6, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-13, atol=1e-14)

    scale = torch.randn(6, generator=g, dtype=torch.float64)

    def third(norm):  # d^3/ds^3 of a smooth scalar of norm(x * s), by reverse and by forward mode
        f = lambda s: norm(x * s).sin().sum()  # noqa: E731
        return jacrev(jacrev(jacrev(f)))(scale), jacfwd(jacfwd(jacfwd(f)))(scale)

    reverse, forward = third(ours)
    torch.testing.assert_close(forward, reverse, rtol=1e-10, atol=1e-10)  # two modes agree: exact
    torch_reverse, torch_forward = third(theirs)
    # torch 2.13's fused kernel: right second, wrong third derivatives (what our LayerNorm is for); if a
    # later torch fixes them, the written-out LayerNorm can go
    assert (torch_forward - torch_reverse).abs().max() > 1e-3 or (torch_reverse - reverse).abs().max() > 1e-3


@pytest.mark.cuda
def test_layer_norm_third_derivatives_on_cuda(capsys):
    """The written-out LayerNorm on CUDA: forward and reverse third derivatives agree and equal the CPU's;
    torch's own LayerNorm's disagreement on CUDA is printed for gpu_check.sh's report."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    scale = torch.randn(6, generator=g, dtype=torch.float64)
    ours = LayerNorm(6, dtype=torch.float64)
    theirs = torch.nn.LayerNorm(6, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())

    def third(norm, device):
        xd, sd, nd = x.to(device), scale.to(device), norm.to(device)
        f = lambda s: nd(xd * s).sin().sum()  # noqa: E731
        return jacrev(jacrev(jacrev(f)))(sd).cpu(), jacfwd(jacfwd(jacfwd(f)))(sd).cpu()

    cpu_reverse, _ = third(ours, "cpu")
    reverse, forward = third(ours, "cuda")
    torch.testing.assert_close(forward, reverse, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(reverse, cpu_reverse, rtol=1e-10, atol=1e-10)
    torch_reverse, torch_forward = third(theirs, "cuda")
    with capsys.disabled():
        modes, exact = (torch_forward - torch_reverse).abs().max(), (torch_reverse - reverse).abs().max()
        print(f"\ntorch.nn.LayerNorm on CUDA, third derivatives: forward - reverse {float(modes):.2e}, "
              f"reverse - exact {float(exact):.2e}")


def test_sinusoidal_positions():
    table = sinusoidal(5, 6, torch.float64)
    assert table.shape == (5, 6)
    torch.testing.assert_close(table[0], torch.tensor([0.0, 1.0] * 3, dtype=torch.float64))
    torch.testing.assert_close(table[3, 2], torch.sin(torch.tensor(3 / 10000 ** (2 / 6), dtype=torch.float64)))
    assert sinusoidal(4, 5, torch.float64).shape == (4, 5)  # odd width: the last column is a sine


@pytest.mark.parametrize(("positions", "sequence", "layer_norm"), [
    ("learned", False, True), ("sinusoidal", True, True), ("learned", True, False)])
def test_hvps_and_sharpness_match_the_dense_hessian(positions, sequence, layer_norm):
    model, data = tiny(positions, sequence, layer_norm)
    dense = dense_hessian(model, half_sum_mse, data)
    dim = dense.shape[0]
    assert dim == sum(p.numel() for p in model.parameters() if p.requires_grad)
    v = torch.randn(dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = dense @ v
    for method in ("double-backward", "forward-over-reverse"):
        product = HessianOperator(model, half_sum_mse, data, method=method)(v)
        assert torch.linalg.vector_norm(product - exact) <= 1e-11 * torch.linalg.vector_norm(exact), method
    result = top_eigenvalue(HessianOperator(model, half_sum_mse, data), tol=1e-10)
    assert result.converged
    assert result.value == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), rel=1e-9)


def test_forward_over_reverse_needs_no_fallback():
    """The written-out path has forward-mode AD everywhere: the operator never falls back (it would warn)."""
    import warnings

    model, data = tiny("sinusoidal", True)
    op = HessianOperator(model, half_sum_mse, data, method="forward-over-reverse")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op(torch.ones(op.dim, dtype=torch.float64))
    assert op.method == "forward-over-reverse"


def test_shapes_seed_and_positions():
    data = FullBatchData(tokens(5, 4, 7), tokens(5, 3, 7, seed=1))
    state = torch.random.get_rng_state()
    model = build_transformer(model_cfg(seed=1), data)
    assert torch.equal(torch.random.get_rng_state(), state)
    out = model(data.x)
    assert out.shape == (5, 3, int(data.y.max()) + 1) and out.dtype == torch.float64
    again = build_transformer(model_cfg(seed=1), data)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(), strict=True))
    assert model.embed.num_embeddings == int(data.x.max()) + 1 and model.positions.shape == (4, 32)
    assert build_transformer(model_cfg(seq_len=9), data).positions.shape == (9, 32)
    fixed = build_transformer(model_cfg(positions="sinusoidal"), data)
    assert "positions" not in dict(fixed.named_parameters()) and "positions" not in fixed.state_dict()
    last = build_transformer(model_cfg(), FullBatchData(data.x, data.y[:, 0]))
    assert last(data.x).shape == (5, int(data.y[:, 0].max()) + 1)
    whole = OmegaConf.create({"model": model_cfg(), "train": {"dtype": "float32"}})
    assert all(p.dtype == torch.float32 for p in build_transformer(whole, data).parameters())


def test_causality():
    """Changing the last token leaves the earlier positions' outputs unchanged."""
    x = tokens(4, 5, 6)
    model = build_transformer(model_cfg(), FullBatchData(x, tokens(4, 5, 6, seed=1)))
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 6
    before, after = model(x), model(changed)
    torch.testing.assert_close(after[:, :-1], before[:, :-1], rtol=0, atol=1e-14)
    assert (after[:, -1] - before[:, -1]).abs().max() > 1e-3


@pytest.mark.parametrize(("fields", "key"), [
    ({"heads": 3}, "model.heads"), ({"layers": 0}, "model.layers"), ({"positions": "rotary"}, "model.positions"),
    ({"seq_len": 2}, "model.seq_len")])
def test_bad_model_keys_are_one_line(fields, key):
    data = FullBatchData(tokens(3, 4, 5), tokens(3, 1, 5)[:, 0])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        build_transformer(model_cfg(**fields), data)
    assert "\n" not in str(info.value)


def test_image_data_is_refused():
    with pytest.raises(ConfigError, match="token data"):
        build_transformer(model_cfg(), FullBatchData(torch.zeros(3, 1, 8, 8, dtype=torch.float64),
                                                     torch.zeros(3, dtype=torch.int64)))


def test_cross_entropy_on_sequence_answers_is_the_mean_over_rows_and_positions():
    """Logits [N, k, V] against labels [N, k]: each row's mean of -log softmax at its answers, averaged over
    the rows (what chunk weights n_i / N need); the sharpness under it matches the dense Hessian."""
    model, (x, y) = tiny("learned", sequence=True)
    with torch.no_grad():
        logits = model(x)
    by_hand = -logits.log_softmax(dim=-1).gather(-1, y[..., None])[..., 0].mean(dim=1).mean()
    torch.testing.assert_close(cross_entropy(logits, y), by_hand, rtol=1e-14, atol=0)
    torch.testing.assert_close(cross_entropy(logits[0, 0], y[0, 0]), by_hand.new_tensor(
        float(-logits[0, 0].log_softmax(-1)[y[0, 0]])), rtol=1e-14, atol=0)  # one answer: the plain case
    dense = dense_hessian(model, cross_entropy, (x, y))
    result = top_eigenvalue(HessianOperator(model, cross_entropy, (x, y)), tol=1e-10)
    assert result.value == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), rel=1e-9)
