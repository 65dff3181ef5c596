"""Stage-two losses: probability density distillation and spectral losses.

One code path serves the audio models (:class:`distill.models.Student` / ``Teacher`` over
``(B, T)`` waveforms, conditioned on a mel) and the vector flows (:class:`distill.flows.IAF` /
``MAF`` over ``(B, D)``, conditioned on a context vector), because both speak one protocol,
:class:`ConditionalFlow`, in which every method takes the context (as in zuko).
:class:`DistillationLoss` draws one student sample per row, runs the frozen teacher on it in one
parallel pass, and returns every term as a named tensor with
``total = sum(weights[k] * terms[k])``.

Two estimators of ``KL(q_S || p_T) = E_{x ~ q_S}[log q_S(x) - log p_T(x)]``:

* ``closed_form`` (ClariNet): when every student and teacher layer is autoregressive in the same
  order, both are Gaussian per step given the past, and the KL is the sum over steps of the
  Gaussian KL between the student's ``N(M_t, S_t^2)`` and the teacher's ``N(mu_t, sigma_t^2)``,
  evaluated at one student sample. Same expectation as Monte Carlo (chain rule), lower variance.
* ``monte_carlo``: ``log q_S(x) - log p_T(x)`` on whole samples; works for any flows.

Units: the ``kl`` term is in nats **per sample** (per dimension for vectors): the sum over
time divided by ``T``, averaged over the batch, so loss weights do not depend on the segment
length. KL and log-densities are always computed in float32 (or wider).

The objective is one function, :func:`weighted_total`, over the terms by name with the weights
of :meth:`distill.config.DistillLossConfig.weights`: training and validation both call it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from distill.adversarial import feature_matching_loss, generator_loss
from distill.audio import log_mel
from distill.config import AudioConfig, DistillLossConfig
from distill.errors import ConfigError
from distill.flows import AffineAutoregressive, gaussian_log_prob
from distill.precision import at_least_float32
from distill.spectral import multi_resolution_stft, stft_magnitude

__all__ = [
    "ConditionalFlow",
    "gaussian_kl",
    "closed_form_kl",
    "monte_carlo_kl",
    "power_loss",
    "spectral_loss",
    "mel_loss",
    "weighted_total",
    "check_estimator",
    "DistillResult",
    "DistillationLoss",
]


class ConditionalFlow(Protocol):
    """What density distillation asks of a student and a teacher; every method takes the
    context (a mel (B, n_mels, F) for the audio models, a vector (B, C) for MAF / IAF).

    A student needs the sampling side (one pass for an IAF), a teacher the density side (one
    pass for a MAF); the per-step Gaussians exist for stacks without permutations and raise a
    ConfigError otherwise. ``noise`` is standard normal of :meth:`noise_shape`.
    """

    def noise_shape(self, context: torch.Tensor) -> tuple[int, ...]: ...

    def sample_with_log_prob(self, context: torch.Tensor, noise: torch.Tensor | None = None):
        """-> x (B, D), log q(x) (B,)."""

    def sample_with_conditionals(self, context: torch.Tensor, noise: torch.Tensor | None = None):
        """-> x, log q(x) (B,), per-step mean and log-scale (B, D) given ``z_{<t}``."""

    def log_prob(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor: ...

    def gaussian_conditionals(self, x: torch.Tensor, context: torch.Tensor):
        """-> per-step mu and log-sigma (B, D) of ``p(x_t | x_{<t})``."""


def gaussian_kl(
    mean_q: torch.Tensor,
    log_scale_q: torch.Tensor,
    mean_p: torch.Tensor,
    log_scale_p: torch.Tensor,
) -> torch.Tensor:
    """Elementwise ``KL(N(mean_q, e^{2 log_scale_q}) || N(mean_p, e^{2 log_scale_p}))`` in nats.

    ``log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2``; all inputs broadcast, the
    result is float32 (or float64 for float64 inputs) and exactly 0 for equal Gaussians.
    """
    mean_q, log_scale_q, mean_p, log_scale_p = map(
        at_least_float32, (mean_q, log_scale_q, mean_p, log_scale_p)
    )
    log_ratio = log_scale_q - log_scale_p
    # s_q^2 / s_p^2 and (m_q - m_p)^2 / s_p^2 without forming s_p^2 (which underflows near -7).
    var_ratio = torch.exp(2 * log_ratio)
    dist = ((mean_q - mean_p) * torch.exp(-log_scale_p)).square()
    return -log_ratio + 0.5 * (var_ratio + dist) - 0.5


def closed_form_kl(
    mean_q: torch.Tensor,
    log_scale_q: torch.Tensor,
    mean_p: torch.Tensor,
    log_scale_p: torch.Tensor,
    log_sigma_reg: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step Gaussian KL summed over the event axis, and ClariNet's regulariser.

    All inputs (B, T). Returns ``kl`` (B,) = ``sum_t gaussian_kl(...)`` and ``reg`` (B,) =
    ``log_sigma_reg * sum_t (log_scale_p - log_scale_q)^2`` (zeros when the weight is 0).
    The regulariser (ClariNet, Ping et al. 2019) pulls the two scales together early in
    training, when the KL's ``1 / sigma^2`` factor makes its gradients large.
    """
    kl = gaussian_kl(mean_q, log_scale_q, mean_p, log_scale_p).sum(dim=-1)
    if log_sigma_reg:
        diff = at_least_float32(log_scale_p) - at_least_float32(log_scale_q)
        reg = log_sigma_reg * diff.square().sum(dim=-1)
    else:
        reg = torch.zeros_like(kl)
    return kl, reg


def monte_carlo_kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """One-sample estimate per row, ``log q_S(x) - log p_T(x)`` (B,), for ``x ~ q_S``."""
    return at_least_float32(log_q) - at_least_float32(log_p)


def power_loss(
    pred: torch.Tensor, target: torch.Tensor, resolutions: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Parallel WaveNet's power loss: ``|| phi(pred) - phi(target) ||^2``, averaged.

    ``phi(x) = |STFT(x)|^2`` averaged over time, per frequency (van den Oord et al. 2018, eq. 4),
    normalised by the window energy so that a white signal of variance ``v`` has ``phi = v`` in
    every bin whatever the resolution. The squared difference is averaged over frequency bins,
    resolutions and the batch. pred, target: (B, T) -> scalar, float32.
    """
    total = pred.new_zeros((), dtype=torch.float32)
    for n_fft, hop_length, win_length in resolutions:
        energy = torch.hann_window(win_length, dtype=torch.float32).square().sum()
        phi_pred = stft_magnitude(pred, n_fft, hop_length, win_length).square().mean(-1) / energy
        phi_true = stft_magnitude(target, n_fft, hop_length, win_length).square().mean(-1) / energy
        total = total + (phi_pred - phi_true).square().mean()
    return total / len(resolutions)


def spectral_loss(
    pred: torch.Tensor, target: torch.Tensor, resolutions: Sequence[Sequence[int]]
) -> dict[str, torch.Tensor]:
    """Multi-resolution STFT loss (:func:`distill.spectral.multi_resolution_stft`).

    pred, target: (B, T). Returns scalars ``sc``, ``mag`` and ``stft = sc + mag``.

    The batch is scored as one signal (segments laid end to end, in both arguments alike), so
    spectral convergence is ``||S_t - S_p||_F / ||S_t||_F`` over the whole batch, as in the
    Parallel WaveGAN reference code, rather than a mean of per-segment ratios: a near-silent
    training segment (``||S_t||`` at the floor) would otherwise make the ratio, and its
    gradient, explode. For one clip (B = 1) the two are the same.
    """
    d = multi_resolution_stft(pred.reshape(1, -1), target.reshape(1, -1), resolutions)
    return {"sc": d["sc"], "mag": d["mag"], "stft": d["sc"] + d["mag"]}


def mel_loss(pred: torch.Tensor, target: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """HiFi-GAN's mel loss: ``mean |log_mel(pred) - log_mel(target)|`` on the project's own
    feature (:func:`distill.audio.log_mel`, natural log, floored at ``cfg.log_floor``).

    The envelope term a linear-frequency STFT distance lacks: a mel band pools the bins between
    harmonics, so the band's level is the envelope, and a log of it weighs a formant and the
    valley beside it alike. pred, target: (B, T), cropped to whole hops -> scalar, float32.
    """
    n = pred.shape[-1] - pred.shape[-1] % cfg.hop_length
    if n == 0:
        raise ValueError(
            f"the mel loss needs at least hop_length={cfg.hop_length} samples, "
            f"found {pred.shape[-1]}"
        )
    return (log_mel(pred[..., :n], cfg) - log_mel(target[..., :n], cfg)).abs().mean()


def weighted_total(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The objective: ``sum(weights[k] * terms[k])`` over the terms present with a nonzero
    weight; a zero that still backpropagates when there is none. Training and validation both
    call it, so the number that selects ``best.pt`` is the one the student minimises."""
    present = [(terms[k], w) for k, w in weights.items() if w and k in terms]
    if not present:
        return next(iter(terms.values())) * 0.0
    return sum(w * t for t, w in present)


# --- which flows the closed form holds for --------------------------------------------------


def check_estimator(student, teacher, estimator: str) -> None:
    """Fail early, with the fix, when ``estimator`` cannot work for this student and teacher.

    The closed form needs every layer of both stacks affine autoregressive in one order (no
    permutations between layers), MAF layers in the teacher, and in the student IAF layers or
    MAF layers that sample in blocks (a conditioner with ``block``, as the long-term
    feedback). (Which names ``estimator`` may take is checked with the config.)
    """
    if estimator != "closed_form":
        return
    for name, model, mode in (("student", student, "iaf"), ("teacher", teacher, "maf")):
        for i, layer in enumerate(model.flow.layers):
            if not isinstance(layer, AffineAutoregressive):
                raise ConfigError(
                    f"distill.estimator=closed_form needs every {name} layer autoregressive in "
                    f"the same order, but {name} layer {i} is a {type(layer).__name__} "
                    "(a permutation between layers changes the order); use "
                    "distill.estimator=monte_carlo, or build the flows with permute=False"
                )
            sampled_in_blocks = name == "student" and hasattr(layer.conditioner, "block")
            if layer.mode != mode and not sampled_in_blocks:
                raise ConfigError(
                    f"distill.estimator=closed_form needs {mode.upper()} layers in the {name}, "
                    f"but {name} layer {i} is {layer.mode.upper()}"
                )


# --- the distillation loss --------------------------------------------------------------------


@dataclass
class DistillResult:
    """What one distillation pass returns.

    ``total`` (scalar, differentiable) = :func:`weighted_total` of ``terms`` and ``weights``.
    ``terms`` are the differentiable loss terms (scalars, averaged over the batch); ``metrics``
    are detached diagnostics (scalars, nats per sample/dimension); ``kl_per_row`` (B,) the
    per-row KL per sample, detached; ``sample`` the student's sample (B, D), differentiable.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    weights: dict[str, float]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    kl_per_row: torch.Tensor | None = None
    sample: torch.Tensor | None = None

    def scalars(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat, detached ``{name: scalar}`` for logging: ``loss``, ``loss/<term>``, metrics."""
        out = {f"{prefix}loss": self.total.detach()}
        out.update({f"{prefix}loss/{k}": v.detach() for k, v in self.terms.items()})
        out.update({f"{prefix}{k}": v for k, v in self.metrics.items()})
        return out


class DistillationLoss:
    """KL(student || teacher) by the configured estimator, plus spectral terms against ``real``
    and, given a discriminator, the adversarial ones.

    ``loss(student, teacher, context, real=None, noise=None, discriminator=None)
    -> DistillResult``, for any student and teacher of the :class:`ConditionalFlow` protocol.

    * ``real``: the real audio (B, T) for the same mel, for the spectral terms (audio only;
      without it, e.g. for vectors, there are none); the mel term needs ``audio``, the feature
      config.
    * ``noise`` (standard normal, the student's :meth:`~ConditionalFlow.noise_shape`) makes the
      pass deterministic.
    * ``discriminator`` (:class:`distill.adversarial.SpectrogramDiscriminator`): adds the
      least-squares ``adversarial`` and the ``feature_matching`` terms (training only: they are
      judged by a discriminator that moves, so they are not comparable from step to step).

    The teacher should be frozen (eval mode, ``requires_grad_(False)``); gradients still flow
    through it into the student's sample (not when ``kl_weight`` is 0: the KL is then logged
    only). Spectral terms whose weight is 0 are computed without gradient, for logging only.
    ``config.temperature`` scales the student's noise; the KL is then that of the tempered
    student.
    """

    def __init__(self, config: DistillLossConfig, audio: AudioConfig | None = None):
        if config.mel_weight > 0 and audio is None:
            raise ConfigError(
                "distill.mel_weight > 0 needs the feature config: build the loss with "
                "DistillationLoss(config.distill, config.audio)"
            )
        self.config = config
        self.audio = audio

    @property
    def weights(self) -> dict[str, float]:
        return self.config.weights()

    def __call__(
        self, student, teacher, context, real=None, noise=None, discriminator=None
    ) -> DistillResult:
        c = self.config
        teacher_grad = torch.is_grad_enabled() and c.kl_weight > 0
        if noise is None:
            shape = student.noise_shape(context)
            noise = torch.randn(shape, dtype=context.dtype, device=context.device)
        eps = noise
        z = eps * c.temperature if c.temperature != 1.0 else eps
        dims = z.shape[-1]

        terms: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        if c.estimator == "closed_form":
            try:
                x, log_q, mean_q, log_scale_q = student.sample_with_conditionals(context, z)
                with torch.set_grad_enabled(teacher_grad):
                    mu, log_sigma = teacher.gaussian_conditionals(x, context)
            except ConfigError as err:
                raise ConfigError(f"distill.estimator=closed_form does not apply: {err}") from err
            log_q = self._temper(log_q, z, eps)
            if c.temperature != 1.0:  # x_t = z_t S_t + M_t with z_t ~ N(0, T^2)
                log_scale_q = log_scale_q + math.log(c.temperature)
            # Unit regulariser here; its weight kl_weight * log_sigma_reg is applied in `total`.
            floored = log_sigma.clamp_min(c.teacher_log_scale_floor)
            kl, reg = closed_form_kl(mean_q, log_scale_q, mu, floored, log_sigma_reg=1.0)
            terms["kl"] = (kl / dims).mean()
            terms["log_sigma_reg"] = (reg / dims).mean()
            log_p = gaussian_log_prob(x, mu, log_sigma).detach()
            metrics["student/log_scale_mean"] = at_least_float32(log_scale_q).detach().mean()
            metrics["teacher/log_sigma_mean"] = at_least_float32(log_sigma).detach().mean()
            metrics["kl/monte_carlo_per_sample"] = (
                (at_least_float32(log_q).detach() - log_p) / dims
            ).mean()
        else:
            x, log_q = student.sample_with_log_prob(context, z)
            log_q = self._temper(log_q, z, eps)
            with torch.set_grad_enabled(teacher_grad):
                log_p = teacher.log_prob(x, context)
            kl = monte_carlo_kl(log_q, log_p)
            terms["kl"] = (kl / dims).mean()
            log_p = log_p.detach()

        if real is not None:
            spectral = [("stft", c.stft_weight, self._stft_terms)]
            spectral.append(("power", c.power_weight, self._power_term))
            if self.audio is not None:
                spectral.append(("mel", c.mel_weight, self._mel_term))
            for name, weight, fn in spectral:
                with torch.set_grad_enabled(torch.is_grad_enabled() and weight > 0):
                    out = fn(x, real)
                terms[name] = out.pop(name)
                metrics.update({f"{name}/{k}": v.detach() for k, v in out.items()})
            if discriminator is not None:
                terms.update(self._adversarial_terms(discriminator, x, real))

        weights = {k: w for k, w in self.weights.items() if k in terms}
        total = weighted_total(terms, weights)
        kl_per_row = (kl / dims).detach()
        metrics["kl/per_sample"] = kl_per_row.mean()
        metrics["student/entropy_per_sample"] = (-at_least_float32(log_q).detach() / dims).mean()
        metrics["teacher/nll_per_sample"] = (-log_p / dims).mean()
        return DistillResult(total, terms, weights, metrics, kl_per_row, x)

    def _temper(self, log_q: torch.Tensor, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The models return ``log N(z; 0, I) - log|det|``; the tempered student, whose noise is
        ``z = T * eps``, has ``log q_T(x) = log N(eps; 0, I) - D log T - log|det|``."""
        t = self.config.temperature
        if t == 1.0:
            return log_q
        correction = 0.5 * (at_least_float32(z).square() - at_least_float32(eps).square()).sum(-1)
        return at_least_float32(log_q) + correction - z.shape[-1] * math.log(t)

    def _stft_terms(self, x, real):
        return spectral_loss(x, real.to(x.dtype), self.config.stft_resolutions)

    def _power_term(self, x, real):
        return {"power": power_loss(x, real.to(x.dtype), self.config.stft_resolutions)}

    def _mel_term(self, x, real):
        return {"mel": mel_loss(x, real.to(x.dtype), self.audio)}

    @staticmethod
    def _adversarial_terms(discriminator, x, real) -> dict[str, torch.Tensor]:
        """LSGAN's generator loss and feature matching; the real audio's judgement is a
        constant here (no gradient into the discriminator from it)."""
        with torch.no_grad():
            _, real_features = discriminator(real.to(x.dtype))
        fake_scores, fake_features = discriminator(x)
        return {
            "adversarial": generator_loss(fake_scores),
            "feature_matching": feature_matching_loss(real_features, fake_features),
        }
