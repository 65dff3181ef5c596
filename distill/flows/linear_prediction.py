"""Source-filter prediction around a WaveNet conditioner (LPCNet's split, in a flow).

A flow layer's shift is ``p_t + l_t + WaveNet(e_{<t}, c)_t`` where, all from the past of the
layer's input ``u``:

- ``p_t = sum_k a_k(c_t) u_{t-k}``, ``k = 1 .. order``: the short-term **linear prediction**
  (the spectral envelope). Its coefficients come from *reflection coefficients*
  ``k_i = K_MAX tanh(raw_i(c_t))`` through the Levinson step-up recursion, so the polynomial
  ``1 - sum_k a_k z^-k`` has every zero inside the unit circle whatever the weights: used for
  generation by a MAF it is an all-pole filter, and it can never blow up (a free projection
  of the mel could, and did: 3-6 % of the frames of a trained teacher had a pole outside the
  unit circle, up to +100 dB bursts).
- ``l_t = sum_j b_j(c_t) r_{t - L_t + j}``, ``j = -J .. J``: the **long-term (pitch)
  prediction** of the LP residual ``r = u - p`` from one pitch period ``L_t`` back (a CELP
  codec's adaptive codebook). The lag is conditioning: the period of the F0 a pitch
  predictor reads from the mel (:func:`distill.pitch.pitch_lags`), 0 where unvoiced (no
  term). The taps are a mel-conditioned FIR, so the model learns how much of each band
  repeats: in voiced speech the low band of the residual repeats from period to period, the
  top does not. In generation it is what makes the output periodic at the mel's pitch.
- the WaveNet reads what is left, ``e = u - p - l``, whose structure (pulses, noise bursts)
  is plain there and hidden under the formants in the waveform.

A second 1x1 projection adds a log-scale offset, so the frame's loudness sets the scale (down
to digital silence) as soon as it is learned. Still autoregressive: every term at ``t`` reads
``u_{<t}`` only (lags are at least :data:`distill.pitch.MIN_LAG` > J), so the layer keeps
per-step Gaussians, cached generation, and the Jacobian tests apply unchanged. All projections
start at zero (``k = 0``, no taps): a fresh layer is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from distill.flows.wavenet import CausalWaveNet, full_precision

__all__ = [
    "AudioContext",
    "LinearPredictive",
    "LongTermFeedback",
    "K_MAX",
    "MAX_LAG_TAPS",
    "step_up",
    "step_down",
    "tap_index",
    "long_term",
    "bounded_taps",
]

K_MAX = 0.999
"""Largest reflection coefficient magnitude: poles stay at least ~1e-3 inside the unit circle
(float32's tanh reaches 1.0 exactly near 9, which would put a pole on it)."""

MAX_LAG_TAPS = 16
"""Largest half-width ``J`` of the long-term predictor: its taps must stay in the past for the
shortest pitch period (see :data:`distill.pitch.MIN_LAG`)."""


class AudioContext(NamedTuple):
    """What an audio flow layer is conditioned on: frame-rate mel features for every layer and,
    with a long-term predictor, the pitch lag of every sample (0 where unvoiced)."""

    features: torch.Tensor  # (B, C, F)
    lags: torch.Tensor | None = None  # (B, T) int64


def _split(cond) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(cond, AudioContext):
        return cond.features, cond.lags
    return cond, None


def step_up(k: torch.Tensor) -> torch.Tensor:
    """Reflection coefficients (..., order) -> predictor ``a`` (..., order), ``a[..., 0]`` the
    weight of ``u_{t-1}``: the Levinson recursion ``a_j <- a_j - k_i a_{i-j}``, ``a_i = k_i``.
    ``|k_i| < 1`` for all ``i`` <=> every zero of ``1 - sum a_j z^-j`` inside the unit circle."""
    a = k[..., :1]
    for i in range(1, k.shape[-1]):
        ki = k[..., i : i + 1]
        a = torch.cat([a - ki * a.flip(-1), ki], dim=-1)
    return a


def step_down(a: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`step_up`: predictor (..., order) -> reflection coefficients."""
    a = a.clone()
    ks = []
    for i in range(a.shape[-1] - 1, -1, -1):
        ki = a[..., i : i + 1]
        ks.append(ki)
        if i:
            prev = a[..., :i]
            a = (prev + ki * prev.flip(-1)) / (1 - ki * ki)
    return torch.cat(ks[::-1], dim=-1)


def bounded_taps(raw: torch.Tensor) -> torch.Tensor:
    """Long-term taps (B, 2J + 1, T) with ``sum_j |b_j| < 1`` at every sample, whatever the
    weights: ``b = raw / (1 + sum_j |raw_j|)``, about ``raw`` while it is small.

    In generation the long-term term is a feedback loop one period long (an IIR comb); with
    ``sum |b| < 1`` its gain is below 1 at every frequency, so it can ring but never grow.
    Unbounded, a trained teacher's free-running samples came out 6 dB too loud.
    """
    return raw / (1 + raw.abs().sum(1, keepdim=True))


def tap_index(lags: torch.Tensor, half_width: int) -> torch.Tensor:
    """(B, T) lags -> (B, T, 2J + 1) positions ``t - L_t + j``, ``j = -J .. J``, or ``T`` (a
    zero appended after the signal) where the lag is 0 or the tap reaches before the start."""
    length = lags.shape[-1]
    j = torch.arange(-half_width, half_width + 1, device=lags.device)
    t = torch.arange(length, device=lags.device)
    index = t[None, :, None] - lags[..., None] + j
    valid = (lags[..., None] > 0) & (index >= 0)
    return torch.where(valid, index, length)


def long_term(signal: torch.Tensor, taps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``sum_j taps[j, t] * signal[index[t, j]]``: signal (B, T), taps (B, 2J + 1, T), index
    from :func:`tap_index` -> (B, T)."""
    padded = F.pad(signal, (0, 1))  # the zero that invalid taps read
    past = padded.gather(1, index.flatten(1)).view(index.shape)
    return (past * taps.transpose(1, 2)).sum(-1)


@dataclass
class _LPState:
    inner: object  # the WaveNet's own step state
    coefs: torch.Tensor  # (B, order, T): window order, oldest sample first
    scale: torch.Tensor  # (B, T): log-scale offset
    window: torch.Tensor  # (B, order): u_{t-order} .. u_{t-1}
    taps: torch.Tensor | None  # (B, 2J + 1, T): long-term taps, or None
    index: torch.Tensor | None  # (B, T, 2J + 1): where in `residual` each tap reads
    residual: torch.Tensor | None  # (B, T + 1): r_0 .. r_{T-1}, then a zero that lag 0 reads
    prediction: torch.Tensor | None = None  # p_t + l_t, set by step, used by push
    short: torch.Tensor | None = None  # p_t alone
    t: int = 0

    def t_index(self) -> torch.Tensor:
        return torch.tensor([self.t], device=self.coefs.device)


class LinearPredictive(nn.Module):
    """``(u (B, T), cond) -> (shift, raw log-scale)``, each (B, T); ``cond`` is the frame-rate
    features (B, C, F) or an :class:`AudioContext` (with lags when ``long_term_taps > 0``)."""

    def __init__(
        self,
        wavenet: CausalWaveNet,
        cond_channels: int,
        order: int = 32,
        long_term_taps: int = 0,
        max_lag: int = 441,
    ):
        super().__init__()
        if order < 1:
            raise ValueError(f"linear prediction order must be >= 1, found {order}")
        if not 0 <= long_term_taps <= MAX_LAG_TAPS:
            raise ValueError(
                f"long_term_taps must be in [0, {MAX_LAG_TAPS}], found {long_term_taps}"
            )
        self.wavenet = wavenet
        self.order = order
        self.long_term_taps = long_term_taps
        self.max_lag = max_lag
        self.coef_proj = nn.Conv1d(cond_channels, order, 1)  # raw reflection coefficients
        # a linear path from the features to the log-scale: the frame's loudness sets the
        # scale, down to digital silence, without waiting for the WaveNet to learn it
        self.scale_proj = nn.Conv1d(cond_channels, 1, 1)
        projs = [self.coef_proj, self.scale_proj]
        if long_term_taps:
            self.lag_proj = nn.Conv1d(cond_channels, 2 * long_term_taps + 1, 1)
            projs.append(self.lag_proj)
        for proj in projs:
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    @property
    def receptive_field(self) -> int:
        """Past samples of ``u`` the shift at ``t`` reads: the WaveNet's (on the residual,
        itself ``order`` back), and with a long-term predictor the residual a period back."""
        return self.wavenet.receptive_field + self._reach

    @property
    def _reach(self) -> int:
        """How far back one residual ``e_s`` reads the input: ``order``, and with a long-term
        predictor the longest lag and its taps on top."""
        if self.long_term_taps:
            return self.max_lag + self.long_term_taps + self.order
        return self.order

    def _linear_terms(self, features: torch.Tensor, length: int):
        """Predictor coefficients (B, order, T) in window order (oldest first), log-scale
        offset (B, T), long-term taps (B, 2J + 1, T) or None; all at the sample rate."""
        projs = [self.coef_proj, self.scale_proj]
        if self.long_term_taps:
            projs.append(self.lag_proj)
        c = torch.cat([full_precision(p, features) for p in projs], dim=1)
        if c.shape[-1] != length:
            c = F.interpolate(c, size=length, mode="linear", align_corners=False)
        o = self.order
        a = step_up(K_MAX * torch.tanh(c[:, :o].transpose(1, 2)))  # (B, T, order): a_1 first
        taps = bounded_taps(c[:, o + 1 :]) if self.long_term_taps else None
        return a.flip(-1).transpose(1, 2), c[:, o], taps

    def _predict(self, u: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
        """sum_k coefs[k, t] * u_{t-order+k}: (B, T)."""
        windows = F.pad(u, (self.order, 0)).unfold(-1, self.order, 1)[:, : u.shape[-1]]
        return (windows * coefs.transpose(1, 2)).sum(-1)

    def _tap_index(self, lags: torch.Tensor) -> torch.Tensor:
        return tap_index(lags, self.long_term_taps)

    def _long_term(self, residual, taps, lags) -> torch.Tensor:
        return long_term(residual, taps, tap_index(lags, self.long_term_taps))

    def forward(self, u: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """u: (B, T), cond -> shift (B, T), raw log-scale (B, T)."""
        features, lags = _split(cond)
        coefs, scale, taps = self._linear_terms(features, u.shape[-1])
        prediction = self._predict(u, coefs)
        if taps is not None and lags is not None:
            prediction = prediction + self._long_term(u - prediction, taps, lags)
        shift, raw = self.wavenet(u - prediction, features)
        return shift + prediction, raw + scale

    # --- one sample at a time (same protocol as CausalWaveNet) ---------------------------------

    def condition(self, cond, length: int):
        features, lags = _split(cond)
        return (
            self.wavenet.condition(features, length),
            *self._linear_terms(features, length),
            lags,
        )

    def naive_step(self, u: torch.Tensor, c, t: int):
        """Output at ``t`` from ``u[:, :t]`` alone, recomputing every residual it reads from
        scratch (for benchmarks and the cached-equals-naive tests)."""
        wavenet_c, coefs, scale, taps, lags = c
        # the WaveNet at t reads e over its receptive field; each e_s reads u back to
        # s - order (short term) or s - L_s - J - order (long term)
        lo = max(0, t - self.wavenet.receptive_field)
        start = max(0, lo - (self.receptive_field - self.wavenet.receptive_field))
        window_u = u[:, start : t + 1]
        prediction = self._predict(window_u, coefs[:, :, start : t + 1])
        if taps is not None and lags is not None:
            residual = window_u - prediction
            # lags index from the window's start: positions before it read as zero, which
            # only happens at s < lo, whose e the WaveNet never reads
            window_lags = lags[:, start : t + 1]
            prediction = prediction + self._long_term(
                residual, taps[:, :, start : t + 1], window_lags
            )
        e = F.pad((window_u - prediction)[:, lo - start :], (lo, 0))
        shift, raw = self.wavenet.naive_step(e, wavenet_c, t)
        return shift + prediction[:, -1], raw + scale[:, t]

    def start(self, cond, length: int) -> _LPState:
        features, lags = _split(cond)
        inner = self.wavenet.start(features, length)
        coefs, scale, taps = self._linear_terms(features, length)
        window = coefs.new_zeros(coefs.shape[0], self.order)
        if taps is None or lags is None:
            return _LPState(inner, coefs, scale, window, None, None, None)
        residual = coefs.new_zeros(coefs.shape[0], length + 1)
        return _LPState(inner, coefs, scale, window, taps, self._tap_index(lags), residual)

    def step(self, state: _LPState):
        shift, raw = self.wavenet.step(state.inner)
        t = state.t
        state.short = (state.window * state.coefs[:, :, t]).sum(-1)
        state.prediction = state.short
        if state.taps is not None:
            past = state.residual.gather(1, state.index[:, t])  # (B, 2J + 1)
            state.prediction = state.short + (past * state.taps[:, :, t]).sum(-1)
        return shift + state.prediction, raw + state.scale[:, t]

    def push(self, state: _LPState, u_t: torch.Tensor) -> None:
        self.wavenet.push(state.inner, u_t - state.prediction)
        if state.residual is not None:
            r_t = u_t - state.short
            if torch.is_grad_enabled():  # autograd (tests) must not see the buffer change
                state.residual = state.residual.index_copy(1, state.t_index(), r_t[:, None])
            else:
                state.residual[:, state.t] = r_t
        state.window = torch.cat([state.window[:, 1:], u_t[:, None]], dim=1)
        state.t += 1


class LongTermFeedback(nn.Module):
    """A conditioner of the long-term term alone, for a MAF layer in a *sampling* stack:
    ``shift_t = sum_j b_j(c_t) u_{t - L_t + j}``, raw log-scale 0, ``u`` the layer's output.

    As the last layer of the IAF student it is an IIR comb filter at the mel's pitch,
    ``x_t = v_t + sum_j b_j x_{t - L + j}``: what the teacher's long-term predictor does in
    free-running generation, and what a stack of IAF layers, each an FIR of its input, can only
    approximate with as many echoes as it has layers. Its sampling is sequential, but every
    term reads at least :attr:`delay` samples back (the shortest lag less ``J``), so a whole
    block of ``delay`` samples is solved at once (:meth:`block`): a second of audio is a few
    hundred small steps, not 22,050. Its per-step Gaussians are those of any MAF layer (shift
    from the past output, scale 1), so the closed-form KL holds.
    """

    def __init__(self, cond_channels: int, half_width: int, min_lag: int, max_lag: int):
        super().__init__()
        if not 0 <= half_width < min_lag:
            raise ValueError(
                f"the long-term taps' half width must be in [0, {min_lag}) (the shortest lag), "
                f"found {half_width}"
            )
        self.half_width = half_width
        self.delay = min_lag - half_width
        self.max_lag = max_lag
        self.lag_proj = nn.Conv1d(cond_channels, 2 * half_width + 1, 1)
        nn.init.zeros_(self.lag_proj.weight)
        nn.init.zeros_(self.lag_proj.bias)

    @property
    def receptive_field(self) -> int:
        return self.max_lag + self.half_width

    def condition(self, cond, length: int):
        """Taps (B, 2J + 1, T) and tap positions (B, T, 2J + 1) for a clip of ``length``."""
        features, lags = _split(cond)
        if lags is None:
            raise ValueError("LongTermFeedback needs an AudioContext with pitch lags")
        taps = full_precision(self.lag_proj, features)
        if taps.shape[-1] != length:
            taps = F.interpolate(taps, size=length, mode="linear", align_corners=False)
        return bounded_taps(taps), tap_index(lags, self.half_width)

    def forward(self, u: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """u: (B, T) -> shift (B, T), raw log-scale (B, T) (zeros)."""
        taps, index = self.condition(cond, u.shape[-1])
        shift = long_term(u, taps, index)
        return shift, torch.zeros_like(shift)

    def block(self, u: torch.Tensor, c, t0: int, t1: int):
        """Shift and raw log-scale of samples ``[t0, t1)`` (``t1 - t0 <= delay``) from ``u``
        (B, T), the layer's output so far: zero from ``t0`` on, which is what a tap reaching
        past the start or with no lag reads (position ``T`` clamps onto a zero)."""
        taps, index = c
        where = index[:, t0:t1].clamp(max=u.shape[-1] - 1)
        past = u.gather(1, where.flatten(1)).view(where.shape)
        shift = (past * taps[:, :, t0:t1].transpose(1, 2)).sum(-1)
        return shift, torch.zeros_like(shift)
