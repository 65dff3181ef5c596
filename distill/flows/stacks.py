"""Flow stacks over a standard-normal base, and the public vector MAF / IAF.

A stack applies its layers in order in the generative direction ``z -> x`` and passes the context
to every layer itself, so no layer can run unconditioned.

**Per-step Gaussians.** When every layer is affine autoregressive in the *same* order (audio
stacks; vector stacks built with ``permute=False``), the whole stack is Gaussian per step: given
the past, each layer is affine in its current input, so ``x_t = z_t * S_t + M_t`` with
``log S_t = sum_k a^k_t`` and ``M_t`` the fold ``M <- M * exp(a^k_t) + m^k_t`` from 0 through the
layers. :meth:`FlowStack.gaussian_conditionals` returns these for a MAF (teacher, from ``x``)
and :meth:`FlowStack.sample_with_conditionals` for an IAF (student, alongside its sample).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from distill.errors import ConfigError
from distill.flows.autoregressive import AffineAutoregressive
from distill.flows.made import MADE
from distill.precision import at_least_float32

__all__ = [
    "Reverse",
    "FlowStack",
    "VectorFlow",
    "MAF",
    "IAF",
    "standard_normal_log_prob",
    "gaussian_log_prob",
]

_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the event axis: (B, D) -> (B,), in float32 or wider."""
    return -0.5 * (at_least_float32(z).pow(2) + _LOG_2PI).sum(dim=-1)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """``log N(x; mean, diag(e^{2 log_scale}))`` summed over the event axis, float32 or wider.

    All (..., D) -> (...,). The residual ``(x - mean) / sigma`` is formed in the wide dtype: under
    bf16 the shift is compared with the sample on the scale of sigma, often 1/100 of the signal.
    """
    x, mean, log_scale = map(at_least_float32, (x, mean, log_scale))
    residual = (x - mean) * torch.exp(-log_scale)
    return -0.5 * (residual.pow(2) + _LOG_2PI).sum(-1) - log_scale.sum(-1)


class Reverse(nn.Module):
    """Reverse the event axis: a volume-preserving permutation between vector layers."""

    def forward(self, z: torch.Tensor, context: torch.Tensor, naive: bool = False):
        return z.flip(-1), z.new_zeros(z.shape[0])

    def inverse(self, x: torch.Tensor, context: torch.Tensor, naive: bool = False):
        return x.flip(-1), x.new_zeros(x.shape[0])


class FlowStack(nn.Module):
    """A sequence of flow layers over a standard-normal base of shape ``(B, D)``."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, z: torch.Tensor, context: torch.Tensor, naive: bool = False):
        """z: (B, D) -> x: (B, D), log|det dx/dz|: (B,)."""
        log_det = at_least_float32(z.new_zeros(z.shape[0]))
        for layer in self.layers:
            z, ld = layer(z, context, naive=naive)
            log_det = log_det + ld
        return z, log_det

    def inverse(self, x: torch.Tensor, context: torch.Tensor, naive: bool = False):
        """x: (B, D) -> z: (B, D), log|det dz/dx|: (B,)."""
        log_det = at_least_float32(x.new_zeros(x.shape[0]))
        for layer in reversed(self.layers):
            x, ld = layer.inverse(x, context, naive=naive)
            log_det = log_det + ld
        return x, log_det

    def log_prob(
        self, x: torch.Tensor, context: torch.Tensor, base_mean: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(x | context): (B,) in nats. The base is ``N(base_mean, I)`` (default 0)."""
        z, log_det = self.inverse(x, context)
        if base_mean is not None:
            z = z - base_mean
        return standard_normal_log_prob(z) + log_det

    def sample_with_log_prob(self, noise: torch.Tensor, context: torch.Tensor, naive=False):
        """Push base noise (B, D) through the stack; log-density of the result under the model."""
        x, log_det = self.forward(noise, context, naive=naive)
        return x, standard_normal_log_prob(noise) - log_det

    # --- per-step Gaussian conditionals (same-order stacks only) -------------------------------

    def _affine_layers(self) -> list[AffineAutoregressive]:
        others = {type(x).__name__ for x in self.layers if not isinstance(x, AffineAutoregressive)}
        if others:
            raise ConfigError(
                "per-step Gaussian conditionals need every layer autoregressive in the same "
                f"order (no permutations between layers; found {', '.join(sorted(others))}); "
                "build a MAF / IAF with permute=False (coupling flows have no per-step form) "
                "or use the Monte Carlo estimator (distill.estimator=monte_carlo)"
            )
        return list(self.layers)

    def gaussian_conditionals(self, x: torch.Tensor, context: torch.Tensor):
        """MAF stack: ``mu_t, log_sigma_t`` of ``p(x_t | x_{<t})`` from one density pass.

        x: (B, D) -> mu (B, D), log_sigma (B, D).
        """
        layers = self._affine_layers()
        params = []
        h = x
        for layer in reversed(layers):
            if layer.mode != "maf":
                raise ConfigError("gaussian_conditionals(x) is for MAF stacks")
            shift, log_scale = layer.params(h, context)
            params.append((shift, log_scale))
            h = (h - shift) * torch.exp(-log_scale)
        return _fold(reversed(params))

    def sample_with_conditionals(
        self, noise: torch.Tensor, context: torch.Tensor, base_mean: torch.Tensor | None = None
    ):
        """Sampling stack: sample x, its log-density, and the per-step ``M_t, log S_t`` given
        ``z_{<t}``.

        noise: (B, D) -> x, log_prob (B,), mean (B, D), log_scale (B, D). With ``base_mean`` the
        base is ``N(base_mean, I)``: the stack reads ``noise + base_mean``, a shift that folds
        in as a first affine step with unit scale. IAF layers read their parameters from their
        input; a MAF layer (one that samples in blocks, as the student's long-term feedback)
        from its output's past, which is as much a function of ``z_{<t}``.
        """
        layers = self._affine_layers()
        params = []
        h = noise
        if base_mean is not None:
            params.append((base_mean, torch.zeros_like(base_mean)))
            h = noise + base_mean
        for layer in layers:
            if layer.mode == "iaf":
                shift, log_scale = layer.params(h, context)
                h = h * torch.exp(log_scale) + shift
            else:
                h, _ = layer(h, context)
                shift, log_scale = layer.params(h, context)
            params.append((shift, log_scale))
        mean, log_scale = _fold(params)
        log_prob = standard_normal_log_prob(noise) - at_least_float32(log_scale).sum(-1)
        return h, log_prob, mean, log_scale


def _fold(params) -> tuple[torch.Tensor, torch.Tensor]:
    """Compose per-step affine maps ``y = u * exp(a) + m`` (first layer first) into one."""
    mean, log_scale = None, None
    for shift, a in params:
        if mean is None:
            mean, log_scale = shift, a
        else:
            mean = mean * torch.exp(a) + shift
            log_scale = log_scale + a
    return mean, log_scale


class VectorFlow(nn.Module):
    """A conditional flow over vectors (B, D): a :class:`FlowStack` of any layers behind the
    ``ConditionalFlow`` protocol of :mod:`distill.losses`, so MAF, IAF and the coupling flows
    of :mod:`distill.flows.coupling` are trained, distilled and timed by the same code."""

    def __init__(self, features: int, layers: list[nn.Module]):
        super().__init__()
        self.features = features
        self.flow = FlowStack(layers)

    def noise_shape(self, context: torch.Tensor) -> tuple[int, int]:
        """Shape of the base noise for one sample per context row: (B, D)."""
        return context.shape[0], self.features

    def _noise(self, context: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn(
                self.noise_shape(context), dtype=context.dtype, device=context.device
            )
        return noise

    def log_prob(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: (B, D), context: (B, C) -> (B,)."""
        return self.flow.log_prob(x, context)

    def sample_with_log_prob(self, context: torch.Tensor, noise: torch.Tensor | None = None):
        """One sample per context row: (x (B, D), log_prob (B,))."""
        return self.flow.sample_with_log_prob(self._noise(context, noise), context)

    def sample(self, context: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One sample per context row: (B, D)."""
        return self.sample_with_log_prob(context, noise)[0]

    def gaussian_conditionals(self, x: torch.Tensor, context: torch.Tensor):
        """MAF without permutations: per-step ``mu, log_sigma`` (B, D) of ``p(x_i | x_{<i})``."""
        return self.flow.gaussian_conditionals(x, context)

    def sample_with_conditionals(self, context: torch.Tensor, noise: torch.Tensor | None = None):
        """IAF without permutations: x, log_prob (B,), per-step mean and log-scale (B, D)."""
        return self.flow.sample_with_conditionals(self._noise(context, noise), context)


class _VectorFlow(VectorFlow):
    """Conditional flow over vectors with MADE conditioners; see :class:`MAF` and :class:`IAF`."""

    mode = "maf"

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden_features: int = 64,
        num_layers: int = 4,
        permute: bool = True,
        num_hidden: int = 2,
        log_scale_min: float = -7.0,
    ):
        layers: list[nn.Module] = []
        for i in range(num_layers):
            if permute and i > 0:
                layers.append(Reverse())
            made = MADE(features, context_features, hidden_features, num_hidden)
            layers.append(AffineAutoregressive(made, self.mode, log_scale_min))
        super().__init__(features, layers)


class MAF(_VectorFlow):
    """Conditional masked autoregressive flow: parallel density, sequential sampling."""

    mode = "maf"


class IAF(_VectorFlow):
    """Conditional inverse autoregressive flow: parallel sampling with its log-density."""

    mode = "iaf"
