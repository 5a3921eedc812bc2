"""Deep linear networks: the paper's model at depth L, the scalar chain, and deep matrix regression.

Model kinds (`model.kind`), each a plain nn.Module created in the data's dtype:

    deep_scalar_linear  x -> w_L^T W_(L-1) ... W_2 w_1 x, hidden width d (theory.md 8.3); scalar in and out.
                        At depth 2 it is ScalarLinearNet (w_1 = a, w_2 = b) number for number.
                        Fields: depth, width, phi, init.   Default data `points`, convergence on the residual.
    scalar_chain        x -> w_1 w_2 ... w_L x, every width 1 (theory.md 8.2): one parameter vector w of length L.
                        Fields: depth, phi, init.          Default data `points`, convergence on the residual.
                        Same initialisation as deep_scalar_linear at width 1 (same scheme, scale, seed).
    deep_linear         x -> W_L ... W_1 x with widths [d_in, *hidden, d_out] (d_in, d_out from the data),
                        loss half_sum_mse: 1/(2n) sum_i |W_L ... W_1 x_i - y_i|^2 (half the squared error
                        summed over the outputs, averaged over the rows). Fields: hidden, init.
                        Default data `matrix_regression` (extensions/deep_data.py), convergence on the loss.

Every layer is a matrix W_l of shape (d_l, d_(l-1)) (nn.Linear's convention; for deep_scalar_linear the
first and last are stored as vectors w_1 = W_1[:, 0] and w_L = W_L[0, :]); `matrices()` returns them
as such, and the layer imbalance is D_l = W_(l+1)^T W_(l+1) - W_l W_l^T (shallownet.deep_theory).

Initialisation (`model.init`): scheme, scale (s), seed, imbalance, weights.

    gaussian    i.i.d. normal entries: N(0, s^2 / d) for deep_scalar_linear and scalar_chain (d = width; 1 for
                the chain), N(0, s^2 / d_(l-1)) (fan-in) for deep_linear. Depth 2 of deep_scalar_linear is
                shallownet.model.initial_vectors(width, "gaussian", s, seed): the same a, b.
    balanced    every D_l = 0 (to round-off) and every |W_l|_F = s, so the norm sum_l |W_l|_F^2 = L s^2:
                W_l = U_l diag(sigma) U_(l-1)^T with orthonormal frames U_l (d_l x k), k = min(widths), the
                intermediate ones Haar-random. deep_linear: U_0, U_L and the shape of sigma from the SVD
                of a Gaussian (d_out x d_in) matrix G, sigma_i proportional to sigma_i(G)^(1/L). The scalar
                models: k = 1, w_1 = s u_1, W_l = s u_l u_(l-1)^T, w_L = sign(Phi) s u_(L-1) with random
                unit vectors u_l, so the product is sign(Phi) s^L (scalar_chain: |w_l| = s exactly).
    imbalanced  for each layer pair l = 1..L-1, exactly (to round-off)
                    (|W_l|_F^2 - |W_(l+1)|_F^2) / (|W_l|_F^2 + |W_(l+1)|_F^2) = imbalance_l   in (-1, 1),
                i.e. tr D_l = -imbalance_l (|W_l|_F^2 + |W_(l+1)|_F^2), and lambda(0) = sum_l |W_l|_F^2 = L s^2;
                directions random (each W_l a Gaussian matrix rescaled to its norm). `imbalance` holds L-1
                numbers, or one used for every pair. At depth 2 this is the shallow net's convention,
                Q(0) = imbalance * lambda(0) with Q = |a|^2 - |b|^2, and deep_scalar_linear is
                initial_vectors(width, "imbalanced", s, seed, imbalance): the same a, b.
    explicit    `weights`: every parameter entry, layer by layer (w_1, W_2 row-major, ..., w_L), the chain's
                w_1..w_L. At depth 2 deep_scalar_linear takes a = weights[:d], b = weights[d:].

Quantities (the model protocol: `quantities()`, logged by the DynamicsMonitor as dynamics/<name>); the tag
table is docs/tags.md's (the deep linear nets). At depth 2 deep_scalar_linear gives
ScalarLinearNet's residual, norm, imbalance, imbalance_norm and imbalance_per_unit, computed by the same
functions (shallownet.quantities).
"""

import math

import torch
from torch import nn

from extensions.deep_data import orthonormal_frame, target_map
from extensions.deep_kinds import INIT_SCHEMES
from shallownet import deep_theory
from shallownet import quantities as shallow
from shallownet.registry import FullBatchData

F64 = torch.float64


# --- initialisation -----------------------------------------------------------------------------------

def layer_norms_squared(depth: int, scale: float, imbalance) -> list[float]:
    """|W_l|_F^2 for the imbalanced scheme: (|W_l|^2 - |W_(l+1)|^2) / (|W_l|^2 + |W_(l+1)|^2) = imbalance_l
    for every pair and sum_l |W_l|^2 = L s^2 (one imbalance value: the same for every pair).

    Each pair fixes the ratio |W_(l+1)|^2 / |W_l|^2 = (1 - q_l) / (1 + q_l), so every q_l in (-1, 1) works.
    """
    values = [float(q) for q in imbalance]
    values = values * (depth - 1) if len(values) == 1 else values
    if len(values) != depth - 1:
        raise ValueError(f"imbalance needs 1 or depth - 1 = {depth - 1} numbers, got {len(values)}")
    if not all(-1.0 < q < 1.0 for q in values):
        raise ValueError(f"model.init.imbalance must hold numbers in (-1, 1), got {values}")
    relative = [1.0]
    for q in values:
        relative.append(relative[-1] * (1.0 - q) / (1.0 + q))
    total = sum(relative)
    return [depth * scale * scale * r / total for r in relative]


def _sign(x: float) -> float:
    return -1.0 if x < 0 else 1.0


def init_matrices(widths: list[int], init, *, fan_in: bool, phi: float | None = None) -> list[torch.Tensor]:
    """The initial W_l (d_l x d_(l-1)), float64, for widths [d_0, ..., d_L] and a `model.init` section.

    fan_in: gaussian entries N(0, s^2 / d_(l-1)) (deep_linear) rather than N(0, s^2 / d) with d = max
    hidden width (the scalar models, whose hidden widths are all d). phi: the scalar models' target, whose
    sign the balanced scheme gives the product (None: deep_linear, frames from an SVD).
    """
    depth = len(widths) - 1
    shapes = [(d_out, d_in) for d_in, d_out in zip(widths[:-1], widths[1:], strict=True)]
    gen = torch.Generator().manual_seed(int(init.seed))
    scale = float(init.scale)
    if init.scheme == "gaussian":
        width = max(widths[1:-1])
        return [torch.randn(*shape, generator=gen, dtype=F64) * (scale / math.sqrt(shape[1] if fan_in else width))
                for shape in shapes]
    if init.scheme == "balanced":
        k = min(widths)
        if phi is None:
            left, sigma, right_h = torch.linalg.svd(torch.randn(widths[-1], widths[0], generator=gen, dtype=F64))
            first, last = right_h[:k].T, left[:, :k]
            sigma = sigma[:k] ** (1.0 / depth)
            sigma = scale * sigma / torch.linalg.vector_norm(sigma)
        else:
            first = torch.ones(1, 1, dtype=F64)
            last = torch.full((1, 1), _sign(phi), dtype=F64)
            sigma = torch.full((1,), scale, dtype=F64)
        frames = [first] + [orthonormal_frame(d, k, gen) for d in widths[1:-1]] + [last]
        return [(frames[i + 1] * sigma) @ frames[i].T for i in range(depth)]
    if init.scheme == "imbalanced":
        squares = layer_norms_squared(depth, scale, init.imbalance)
        matrices = []
        for shape, sq in zip(shapes, squares, strict=True):
            g = torch.randn(*shape, generator=gen, dtype=F64)
            matrices.append(g * (math.sqrt(sq) / torch.linalg.vector_norm(g)))
        return matrices
    if init.scheme == "explicit":
        flat = torch.tensor(list(init.weights), dtype=F64)
        sizes = [a * b for a, b in shapes]
        if flat.numel() != sum(sizes):
            raise ValueError(f"model.init.weights needs {sum(sizes)} numbers, got {flat.numel()}")
        return [piece.reshape(shape) for piece, shape in zip(flat.split(sizes), shapes, strict=True)]
    raise ValueError(f"unknown init scheme {init.scheme!r}; allowed: {', '.join(INIT_SCHEMES)}")


def deep_scalar_init(depth: int, width: int, init, phi: float) -> list[torch.Tensor]:
    """The parameters [w_1 (d,), W_2 (d, d), ..., W_(L-1), w_L (d,)] of deep_scalar_linear, float64.

    At depth 2 the gaussian, imbalanced and explicit schemes are shallownet.model.initial_vectors: a, b.
    """
    if depth == 2 and init.scheme != "balanced":
        from shallownet.model import initial_vectors

        weights = None if init.weights is None else list(init.weights)
        imbalance = list(init.imbalance)
        if init.scheme == "imbalanced" and len(imbalance) != 1:
            raise ValueError(f"model.init.imbalance needs 1 number at depth 2, got {imbalance}")
        a, b = initial_vectors(width, init.scheme, float(init.scale), int(init.seed), float(imbalance[0]),
                               weights[:width] if weights else None, weights[width:] if weights else None,
                               dtype=F64)
        return [a, b]
    matrices = init_matrices([1] + [width] * (depth - 1) + [1], init, fan_in=False, phi=phi)
    return [matrices[0][:, 0], *matrices[1:-1], matrices[-1][0, :]]


# --- the models ---------------------------------------------------------------------------------------

class LinearChainQuantities:
    """The quantities every linear chain reports, from `matrices()` (the W_l, autograd-connected views).

    Subclasses define matrices() and may add their own entries (`_extra_quantities`).
    """

    # dynamics/imbalance_ratio: each hidden unit's imbalance relative to its initial value, on the unit
    # with the largest initial |imbalance| (at depth 2: the shallow net's Q_k(t)/Q_k(0), the same for all k)
    ratios = {"imbalance_ratio": "imbalance_per_unit"}

    def matrices(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def gradient_matrices(self) -> list[torch.Tensor]:
        """The G_l = dL/dW_l from the parameters' .grad, shaped like matrices() (zeros where .grad is None)."""
        raise NotImplementedError

    @property
    def depth(self) -> int:
        return len(self.matrices())

    def end_to_end(self) -> torch.Tensor:
        """W_L ... W_1, (d_L x d_0)."""
        return deep_theory.end_to_end(self.matrices())

    @torch.no_grad()
    def quantities(self) -> dict[str, torch.Tensor]:
        mats = [w.detach() for w in self.matrices()]
        imbalances = deep_theory.layer_imbalances(mats)
        values = {
            "norm": sum((w * w).sum() for w in mats),
            "imbalance": (mats[0] * mats[0]).sum() - (mats[-1] * mats[-1]).sum(),
            "imbalance_norm": sum(torch.linalg.eigvalsh(d).abs().sum() for d in imbalances),
        }
        for pair, d in enumerate(imbalances, start=1):
            values[f"imbalance_fro_{pair}"] = torch.linalg.matrix_norm(d)
            values[f"imbalance_trace_{pair}"] = torch.diagonal(d).sum()
        values["imbalance_per_unit"] = torch.cat([(cur * cur).sum(dim=1) - (nxt * nxt).sum(dim=0)
                                                  for cur, nxt in zip(mats[:-1], mats[1:], strict=True)])
        values.update(self._extra_quantities(mats))
        return values

    def _extra_quantities(self, mats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}


class DeepScalarLinearNet(LinearChainQuantities, nn.Module):
    """x -> w_L^T W_(L-1) ... W_2 w_1 x: parameters `layers` = [w_1 (d,), W_2 (d, d), ..., w_L (d,)].

    At depth 2 the product is w_1 . w_2 and every quantity is computed as ScalarLinearNet computes it, so
    both give the same numbers (GD trajectories included) bit for bit.
    """

    def __init__(self, layers: list[torch.Tensor], phi: float = 1.0):
        super().__init__()
        if len(layers) < 2 or layers[0].dim() != 1 or layers[-1].dim() != 1:
            raise ValueError("layers must be [w_1 (d,), W_2 (d, d), ..., w_L (d,)] with depth >= 2")
        width = layers[0].numel()
        for w in layers[1:-1]:
            if tuple(w.shape) != (width, width):
                raise ValueError(f"hidden layers must be ({width}, {width}), got {tuple(w.shape)}")
        if layers[-1].numel() != width:
            raise ValueError(f"w_L must have {width} entries, got {layers[-1].numel()}")
        self.layers = nn.ParameterList([nn.Parameter(w.clone()) for w in layers])
        self.phi = float(phi)

    @property
    def width(self) -> int:
        return self.layers[0].numel()

    def _as_matrices(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [tensors[0][:, None], *tensors[1:-1], tensors[-1][None, :]]

    def matrices(self) -> list[torch.Tensor]:
        return self._as_matrices(list(self.layers))

    def gradient_matrices(self) -> list[torch.Tensor]:
        return self._as_matrices([torch.zeros_like(p) if p.grad is None else p.grad for p in self.layers])

    def product(self) -> torch.Tensor:
        """The end-to-end scalar p = w_L^T W_(L-1) ... W_2 w_1 (at depth 2: w_1 . w_2, as a . b)."""
        # index, never slice: a sliced ParameterList re-wraps its entries as new Parameters, which cuts them
        # out of torch.func.functional_call's graph (dense Hessians and HVPs would miss those layers)
        v = self.layers[0]
        for i in range(1, len(self.layers) - 1):
            v = self.layers[i] @ v
        return v @ self.layers[len(self.layers) - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product() * x

    @torch.no_grad()
    def quantities(self) -> dict[str, torch.Tensor]:
        if len(self.layers) == 2:  # the shallow net's own functions: the same numbers, bit for bit
            a, b = self.layers[0], self.layers[1]
            values = {
                "residual": shallow.residual(a, b, self.phi),
                "norm": shallow.norm(a, b),
                "imbalance": shallow.imbalance(a, b),
                "imbalance_norm": shallow.imbalance_norm(a, b),
                "imbalance_per_unit": shallow.imbalance_per_unit(a, b),
            }
            d = deep_theory.layer_imbalances(self.matrices())[0]
            values.update(imbalance_fro_1=torch.linalg.matrix_norm(d), imbalance_trace_1=torch.diagonal(d).sum(),
                          end_to_end=a @ b)
            return values
        return super().quantities()

    def _extra_quantities(self, mats):
        p = self.product()
        return {"end_to_end": p, "residual": p - self.phi}


class ScalarChain(LinearChainQuantities, nn.Module):
    """x -> w_1 w_2 ... w_L x: one parameter vector `w` of length L (every width 1)."""

    def __init__(self, w0: torch.Tensor, phi: float = 1.0):
        super().__init__()
        if w0.dim() != 1 or w0.numel() < 2:
            raise ValueError(f"w0 must be 1-D with at least 2 entries, got shape {tuple(w0.shape)}")
        self.w = nn.Parameter(w0.clone())
        self.phi = float(phi)

    def matrices(self) -> list[torch.Tensor]:
        return [self.w[i].reshape(1, 1) for i in range(self.w.numel())]

    def gradient_matrices(self) -> list[torch.Tensor]:
        grad = torch.zeros_like(self.w) if self.w.grad is None else self.w.grad
        return [grad[i].reshape(1, 1) for i in range(grad.numel())]

    def product(self) -> torch.Tensor:
        """p = w_1 w_2 ... w_L, as a chain of products (the gradient of each factor is then exactly the
        product of the others, with no division)."""
        p = self.w[0]
        for i in range(1, self.w.numel()):
            p = p * self.w[i]
        return p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product() * x

    def _extra_quantities(self, mats):
        p = self.product()
        values = {"end_to_end": p, "residual": p - self.phi}
        values.update({f"weight_{i + 1}": self.w[i] for i in range(self.w.numel())})
        return values


class DeepLinearNet(LinearChainQuantities, nn.Module):
    """x -> W_L ... W_1 x on rows: forward(X) = X W_1^T ... W_L^T for X of shape (n, d_0).

    target_map: the end-to-end map the data was made from, (d_L x d_0) in this convention (the transpose of
    deep_data's A*), for the end_to_end_distance quantity; None leaves that quantity out.
    """

    def __init__(self, weights: list[torch.Tensor], target_map: torch.Tensor | None = None):
        super().__init__()
        for cur, nxt in zip(weights[:-1], weights[1:], strict=True):
            if cur.dim() != 2 or nxt.dim() != 2 or nxt.shape[1] != cur.shape[0]:
                raise ValueError(f"layer shapes do not chain: {tuple(cur.shape)} then {tuple(nxt.shape)}")
        self.layers = nn.ParameterList([nn.Parameter(w.clone()) for w in weights])
        self.register_buffer("target_map", None if target_map is None else target_map.clone())

    @property
    def widths(self) -> list[int]:
        return [self.layers[0].shape[1]] + [w.shape[0] for w in self.layers]

    def matrices(self) -> list[torch.Tensor]:
        return list(self.layers)

    def gradient_matrices(self) -> list[torch.Tensor]:
        return [torch.zeros_like(p) if p.grad is None else p.grad for p in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for w in self.layers:
            x = x @ w.T
        return x

    def _extra_quantities(self, mats):
        end = deep_theory.end_to_end(mats)
        values = {"end_to_end_norm": torch.linalg.matrix_norm(end)}
        if self.target_map is not None:
            values["end_to_end_distance"] = torch.linalg.matrix_norm(end - self.target_map)
        return values


# --- builders (registered by extensions.deep_kinds) -------------------------------------------------

def _phi(cfg, data: FullBatchData) -> float:
    """The target product: the data's Phi where it has one (the points data's effective Phi), else model.phi."""
    return float(cfg.model.phi if data.target is None else data.target)


def build_deep_scalar_linear(cfg, data: FullBatchData) -> DeepScalarLinearNet:
    m, phi = cfg.model, _phi(cfg, data)
    layers = deep_scalar_init(m.depth, m.width, m.init, phi)
    return DeepScalarLinearNet([w.to(data.x.dtype) for w in layers], phi=phi).to(data.x.device)


def build_scalar_chain(cfg, data: FullBatchData) -> ScalarChain:
    m, phi = cfg.model, _phi(cfg, data)
    w0 = torch.cat([w.reshape(-1) for w in deep_scalar_init(m.depth, 1, m.init, phi)])
    return ScalarChain(w0.to(data.x.dtype), phi=phi).to(data.x.device)


def build_deep_linear(cfg, data: FullBatchData) -> DeepLinearNet:
    x, y = data.x, data.y
    if x.dim() != 2 or y.dim() != 2 or not y.is_floating_point():
        raise ValueError("model.kind deep_linear needs inputs (n, d_in) and float targets (n, d_out), as "
                         "data.kind matrix_regression gives; got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)} ({y.dtype})")
    widths = [x.shape[1], *cfg.model.hidden, y.shape[1]]
    weights = init_matrices(widths, cfg.model.init, fan_in=True)
    target = None
    if cfg.data.get("kind") == "matrix_regression":
        target = target_map(cfg).T
    return DeepLinearNet([w.to(x.dtype) for w in weights],
                         None if target is None else target.to(x.dtype)).to(x.device)
