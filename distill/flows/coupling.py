"""Coupling flows on vectors: NICE, RealNVP and Glow's layers, beside MAF and IAF.

A coupling layer passes some features through and transforms the others with an affine map
whose shift and log-scale are read from the passed-through ones: ``x_T = z_T * exp(a) + m``,
``x_K = z_K``, ``(m, a) = NN(z_K, c) = NN(x_K, c)``. So sampling *and* density are one parallel
pass each (a MAF is parallel only for the density, an IAF only for sampling), at the price of
transforming half the features per layer. Masks alternate between layers so every feature is
transformed.

* :class:`AffineCoupling` -- RealNVP (Dinh et al. 2017); ``additive=True`` is NICE's additive
  coupling (Dinh et al. 2015), volume-preserving.
* :class:`ActNorm` -- Glow's per-feature affine, initialised from its first batch.
* :class:`InvertibleLinear` -- Glow's invertible 1x1 convolution on vectors, LU-parametrised.
* :class:`NICE`, :class:`RealNVP`, :class:`Glow` -- conditional vector flows with the interface
  of :class:`~distill.flows.MAF` (:class:`~distill.flows.stacks.VectorFlow`).

Every layer follows the flow contract: ``forward(z, context) -> (x, log|dx/dz|)``,
``inverse(x, context) -> (z, log|dz/dx|)``, ``log_det`` (B,) in float32 or wider, generative
direction ``z -> x``. Every log-scale is bounded by :func:`bound_log_scale`, so wild weights
cannot overflow a sample. ActNorm and the 1x1 mixing take the context for the contract and,
like :class:`~distill.flows.Reverse`, do not read it; the coupling networks add it into every
hidden layer.
"""

from __future__ import annotations

import torch
from torch import nn

from distill.flows.autoregressive import (
    LOG_SCALE_KNEE,
    LOG_SCALE_MAX,
    _sum_events,
    bound_log_scale,
)
from distill.flows.stacks import VectorFlow
from distill.precision import at_least_float32

__all__ = [
    "coupling_mask",
    "unbound_log_scale",
    "CouplingNet",
    "AffineCoupling",
    "ActNorm",
    "InvertibleLinear",
    "alternating_couplings",
    "NICE",
    "RealNVP",
    "Glow",
]


def coupling_mask(features: int, parity: int) -> torch.Tensor:
    """Alternating (checkerboard) mask: True where a feature is passed through (kept)."""
    return (torch.arange(features) + parity) % 2 == 0


def unbound_log_scale(a: torch.Tensor, minimum: float) -> torch.Tensor:
    """The raw value that :func:`bound_log_scale` maps to ``a`` (clamped inside the bounds):
    data-dependent initialisations set a bounded log-scale exactly."""
    width = LOG_SCALE_MAX - LOG_SCALE_KNEE
    a = a.clamp(minimum + 1e-6, LOG_SCALE_MAX - 1e-6)
    knee = LOG_SCALE_KNEE + width * torch.atanh(((a - LOG_SCALE_KNEE) / width).clamp(0, 1 - 1e-12))
    a = torch.where(a > LOG_SCALE_KNEE, knee, a)
    return minimum + torch.log(torch.expm1(a - minimum))


class CouplingNet(nn.Module):
    """Conditioner of a coupling layer: ``(u (B, D), context (B, C)) -> (shift, raw log-scale)``,
    each (B, D), read from the kept features only and zero on them.

    Dense layers on the kept features with the context added into every hidden layer (as in
    :class:`~distill.flows.MADE`); the last layer starts at zero.
    """

    def __init__(
        self,
        keep: torch.Tensor,
        context_features: int,
        hidden_features: int,
        num_hidden: int = 2,
        outputs_per_feature: int = 2,
    ):
        super().__init__()
        if keep.all() or not keep.any():
            raise ValueError(f"a coupling mask must keep some features and not all, found {keep}")
        self.register_buffer("kept", torch.nonzero(keep).flatten(), persistent=False)
        self.register_buffer("transformed", torch.nonzero(~keep).flatten(), persistent=False)
        self.features = keep.numel()
        self.outputs_per_feature = outputs_per_feature
        widths = [len(self.kept)] + [hidden_features] * num_hidden
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.context = nn.ModuleList(
            nn.Linear(context_features, hidden_features) for _ in range(num_hidden)
        )
        self.out = nn.Linear(hidden_features, outputs_per_feature * len(self.transformed))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, u: torch.Tensor, context: torch.Tensor) -> list[torch.Tensor]:
        """u: (B, D), context: (B, C) -> ``outputs_per_feature`` tensors (B, D), 0 where kept."""
        h = u[:, self.kept]
        for layer, ctx in zip(self.hidden, self.context):
            h = torch.relu(layer(h) + ctx(context))
        full = u.new_zeros(u.shape[0], self.features)
        return [
            full.index_copy(1, self.transformed, part)
            for part in self.out(h).chunk(self.outputs_per_feature, dim=-1)
        ]


class AffineCoupling(nn.Module):
    """RealNVP's affine coupling, or NICE's additive one (``additive=True``: unit scale).

    ``parity`` picks which alternating half is kept; stacks alternate it layer by layer.
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden_features: int = 64,
        parity: int = 0,
        num_hidden: int = 2,
        additive: bool = False,
        log_scale_min: float = -7.0,
    ):
        super().__init__()
        if features < 2:
            raise ValueError(f"a coupling layer needs features >= 2, found {features}")
        keep = coupling_mask(features, parity)
        self.additive = additive
        self.log_scale_min = log_scale_min
        self.conditioner = CouplingNet(
            keep, context_features, hidden_features, num_hidden, 1 if additive else 2
        )
        self.register_buffer("transform_mask", (~keep).float(), persistent=False)
        if not additive:  # raw log-scale bias at bound^-1(0): a fresh layer is the identity
            with torch.no_grad():
                bias = self.conditioner.out.bias.view(2, -1)[1]
                bias.copy_(unbound_log_scale(torch.zeros_like(bias), log_scale_min))

    def params(self, u: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shift and bounded log-scale (B, D) from the kept features; both 0 where kept."""
        if self.additive:
            (shift,) = self.conditioner(u, context)
            return shift, torch.zeros_like(shift)
        shift, raw = self.conditioner(u, context)
        return shift, bound_log_scale(raw, self.log_scale_min) * self.transform_mask.to(raw)

    def forward(self, z: torch.Tensor, context: torch.Tensor, naive: bool = False):
        """z: (B, D) -> x: (B, D), log|det dx/dz|: (B,). One parallel pass."""
        shift, log_scale = self.params(z, context)
        return z * torch.exp(log_scale) + shift, _sum_events(log_scale)

    def inverse(self, x: torch.Tensor, context: torch.Tensor, naive: bool = False):
        """x: (B, D) -> z: (B, D), log|det dz/dx|: (B,). One parallel pass."""
        shift, log_scale = self.params(x, context)
        return (x - shift) * torch.exp(-log_scale), -_sum_events(log_scale)


class ActNorm(nn.Module):
    """Glow's per-feature affine ``x = z * exp(a) + b``, set from the first batch it sees.

    Whichever direction that batch goes (density from data, or sampling from noise for a
    student), ``a`` and ``b`` are chosen so the layer's output on it has zero mean and unit
    variance per feature: a deep stack then starts well scaled. ``initialized`` is a buffer, so
    a loaded model is never re-initialised from the batch it is first run on.
    """

    def __init__(self, features: int, log_scale_min: float = -7.0):
        super().__init__()
        self.log_scale_min = log_scale_min
        raw = unbound_log_scale(torch.zeros(features), log_scale_min)
        self.raw_log_scale = nn.Parameter(raw)
        self.shift = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))

    def log_scale(self) -> torch.Tensor:
        """(D,) bounded."""
        return bound_log_scale(self.raw_log_scale, self.log_scale_min)

    @torch.no_grad()
    def _initialize(self, u: torch.Tensor, inverse: bool) -> None:
        mean, std = u.mean(0), u.std(0, unbiased=False)
        a = torch.log(std) if inverse else -torch.log(std)
        self.raw_log_scale.copy_(unbound_log_scale(a, self.log_scale_min))
        a = self.log_scale()
        self.shift.copy_(mean if inverse else -mean * torch.exp(a))
        self.initialized.fill_(True)

    def forward(self, z: torch.Tensor, context: torch.Tensor, naive: bool = False):
        """z: (B, D) -> x: (B, D), log|det dx/dz|: (B,)."""
        if not self.initialized:
            self._initialize(z, inverse=False)
        a = self.log_scale()
        return z * torch.exp(a) + self.shift, _batch_log_det(a, z)

    def inverse(self, x: torch.Tensor, context: torch.Tensor, naive: bool = False):
        """x: (B, D) -> z: (B, D), log|det dz/dx|: (B,)."""
        if not self.initialized:
            self._initialize(x, inverse=True)
        a = self.log_scale()
        return (x - self.shift) * torch.exp(-a), -_batch_log_det(a, x)


class InvertibleLinear(nn.Module):
    """Glow's invertible 1x1 convolution on vectors: ``x = W z``, ``W = P L (U + diag(s e^v))``.

    ``P`` is a fixed permutation and ``s`` fixed signs (buffers, from the LU factors of a random
    rotation); ``L`` unit lower and ``U`` strictly upper triangular hold only their free entries,
    ``v`` is a bounded log-scale. So ``W`` is invertible whatever the parameters, its log-det is
    ``sum(v)`` (no determinant is computed), and the inverse is two triangular solves.
    """

    def __init__(self, features: int, log_scale_min: float = -7.0):
        super().__init__()
        self.log_scale_min = log_scale_min
        rotation = torch.linalg.qr(torch.randn(features, features))[0]
        perm, lower, upper = torch.linalg.lu(rotation)
        diag = upper.diagonal()
        self.register_buffer("permutation", perm)
        self.register_buffer("sign", torch.sign(diag))
        self.register_buffer("lower_index", torch.tril_indices(features, features, -1), False)
        self.register_buffer("upper_index", torch.triu_indices(features, features, 1), False)
        self.lower = nn.Parameter(lower[tuple(self.lower_index)])
        self.upper = nn.Parameter(upper[tuple(self.upper_index)])
        self.raw_log_scale = nn.Parameter(unbound_log_scale(diag.abs().log(), log_scale_min))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``L`` (D, D) unit lower, ``U + diag(s e^v)`` (D, D) upper, ``v`` (D,)."""
        v = bound_log_scale(self.raw_log_scale, self.log_scale_min)
        eye = torch.eye(len(v), dtype=v.dtype, device=v.device)
        lower = eye.index_put(tuple(self.lower_index), self.lower)
        upper = torch.diag(self.sign * torch.exp(v)).index_put(tuple(self.upper_index), self.upper)
        return lower, upper, v

    def weight(self) -> torch.Tensor:
        """W (D, D)."""
        lower, upper, _ = self.factors()
        return self.permutation @ lower @ upper

    def forward(self, z: torch.Tensor, context: torch.Tensor, naive: bool = False):
        """z: (B, D) -> x = z W^T: (B, D), log|det dx/dz|: (B,)."""
        lower, upper, v = self.factors()
        x = z @ (self.permutation @ lower @ upper).T
        return x, _batch_log_det(v, z)

    def inverse(self, x: torch.Tensor, context: torch.Tensor, naive: bool = False):
        """x: (B, D) -> z: (B, D), log|det dz/dx|: (B,)."""
        lower, upper, v = self.factors()
        y = (x @ self.permutation).T  # P^T x, (D, B)
        y = torch.linalg.solve_triangular(lower, y, upper=False, unitriangular=True)
        z = torch.linalg.solve_triangular(upper, y, upper=True).T
        return z, -_batch_log_det(v, x)


def _batch_log_det(log_scale: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A per-feature log-scale (D,) as the log-det of every row of ``u`` (B, D): (B,)."""
    return at_least_float32(log_scale).sum().expand(u.shape[0])


def alternating_couplings(
    features: int,
    context_features: int,
    hidden_features: int,
    num_layers: int,
    num_hidden: int = 2,
    additive: bool = False,
    log_scale_min: float = -7.0,
) -> list[AffineCoupling]:
    """``num_layers`` coupling layers whose kept halves alternate, so each feature is
    transformed by every other layer."""
    return [
        AffineCoupling(
            features, context_features, hidden_features, i % 2, num_hidden, additive, log_scale_min
        )
        for i in range(num_layers)
    ]


class NICE(VectorFlow):
    """Additive couplings with alternating masks, then NICE's diagonal scaling (an
    :class:`ActNorm`, the only layer that changes volume)."""

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden_features: int = 64,
        num_layers: int = 4,
        num_hidden: int = 2,
        log_scale_min: float = -7.0,
    ):
        couplings = alternating_couplings(
            features, context_features, hidden_features, num_layers, num_hidden, additive=True
        )
        super().__init__(features, [ActNorm(features, log_scale_min), *couplings])


class RealNVP(VectorFlow):
    """Affine couplings with alternating masks."""

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden_features: int = 64,
        num_layers: int = 4,
        num_hidden: int = 2,
        log_scale_min: float = -7.0,
    ):
        couplings = alternating_couplings(
            features,
            context_features,
            hidden_features,
            num_layers,
            num_hidden,
            False,
            log_scale_min,
        )
        super().__init__(features, couplings)


class Glow(VectorFlow):
    """Glow steps on vectors: ActNorm, invertible 1x1 mixing, affine coupling, in the density
    direction (``x -> z``), so the data meet an ActNorm first."""

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden_features: int = 64,
        num_layers: int = 4,
        num_hidden: int = 2,
        log_scale_min: float = -7.0,
    ):
        layers: list[nn.Module] = []
        for coupling in alternating_couplings(
            features,
            context_features,
            hidden_features,
            num_layers,
            num_hidden,
            False,
            log_scale_min,
        ):
            mix = InvertibleLinear(features, log_scale_min)
            layers += [coupling, mix, ActNorm(features, log_scale_min)]
        super().__init__(features, layers)
