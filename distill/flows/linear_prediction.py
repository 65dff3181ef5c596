"""Mel-conditioned linear prediction around a WaveNet conditioner (LPCNet's split, in a flow).

``p_t = sum_k w_k(c_t) u_{t-k}`` for ``k = 1 .. order`` is the linear prediction, with
coefficients ``w(c)`` a 1x1 projection of the frame-rate features, interpolated like the
WaveNet's own conditioning. The WaveNet reads the prediction *residual* ``e = u - p`` instead
of the waveform, and ``shift_t = p_t + WaveNet(e_{<t}, c)_t``.

Why: a mel frame fixes the spectral envelope, and the envelope fixes the short-term linear
predictor, so this path reaches linear-prediction quality in a few hundred steps. What is
left (excitation: pulses, pitch, the local scale) is plain to see in the residual, which is
nearly white, while in the waveform it hides under the formants; LPCNet feeds its network the
excitation for the same reason. A second 1x1 projection adds a log-scale offset, so the
frame's loudness sets the scale (down to digital silence) as soon as it is learned, without
waiting for the WaveNet. Still causal: ``e_{<t}`` depends on ``u_{<t}`` only, so the
shift at ``t`` sees ``u_{t-R-order} .. u_{t-1}``. Both projections start at zero, so a fresh
layer is still the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distill.flows.wavenet import CausalWaveNet, full_precision

__all__ = ["LinearPredictive"]


@dataclass
class _LPState:
    inner: object  # the WaveNet's own step state
    coefs: torch.Tensor  # (B, order, T): window order, oldest sample first
    scale: torch.Tensor  # (B, T): log-scale offset
    window: torch.Tensor  # (B, order): u_{t-order} .. u_{t-1}
    prediction: torch.Tensor | None = None  # p_t, set by step, used by push
    t: int = 0


class LinearPredictive(nn.Module):
    """``(u (B, T), cond (B, C, F)) -> (shift, raw log-scale)``, each (B, T)."""

    def __init__(self, wavenet: CausalWaveNet, cond_channels: int, order: int = 32):
        super().__init__()
        if order < 1:
            raise ValueError(f"linear prediction order must be >= 1, found {order}")
        self.wavenet = wavenet
        self.order = order
        self.coef_proj = nn.Conv1d(cond_channels, order, 1)
        # a linear path from the features to the log-scale: the frame's loudness sets the
        # scale, down to digital silence, without waiting for the WaveNet to learn it
        self.scale_proj = nn.Conv1d(cond_channels, 1, 1)
        for proj in (self.coef_proj, self.scale_proj):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    @property
    def receptive_field(self) -> int:
        return self.wavenet.receptive_field + self.order

    def _linear_terms(self, cond: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Coefficients (B, order, T) and log-scale offset (B, T) at the sample rate."""
        c = torch.cat([full_precision(p, cond) for p in (self.coef_proj, self.scale_proj)], dim=1)
        if c.shape[-1] != length:
            c = F.interpolate(c, size=length, mode="linear", align_corners=False)
        return c[:, : self.order], c[:, self.order]

    def _predict(self, u: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
        """sum_k coefs[k, t] * u_{t-order+k}: (B, T)."""
        windows = F.pad(u, (self.order, 0)).unfold(-1, self.order, 1)[:, : u.shape[-1]]
        return (windows * coefs.transpose(1, 2)).sum(-1)

    def forward(self, u: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u: (B, T), cond: (B, C, F) -> shift (B, T), raw log-scale (B, T)."""
        coefs, scale = self._linear_terms(cond, u.shape[-1])
        prediction = self._predict(u, coefs)
        shift, raw = self.wavenet(u - prediction, cond)
        return shift + prediction, raw + scale

    # --- one sample at a time (same protocol as CausalWaveNet) ---------------------------------

    def condition(self, cond: torch.Tensor, length: int):
        return (self.wavenet.condition(cond, length), *self._linear_terms(cond, length))

    def naive_step(self, u: torch.Tensor, c, t: int):
        """Output at ``t`` from ``u[:, :t]`` alone, recomputing the residual from scratch."""
        lo = max(0, t - self.receptive_field)  # residuals before lo + order are never read
        window_u = u[:, lo : t + 1]
        prediction = self._predict(window_u, c[1][:, :, lo : t + 1])  # p_lo .. p_t
        shift, raw = self.wavenet.naive_step(F.pad(window_u - prediction, (lo, 0)), c[0], t)
        return shift + prediction[:, -1], raw + c[2][:, t]

    def start(self, cond: torch.Tensor, length: int) -> _LPState:
        inner = self.wavenet.start(cond, length)
        coefs, scale = self._linear_terms(cond, length)
        return _LPState(inner, coefs, scale, coefs.new_zeros(coefs.shape[0], self.order))

    def step(self, state: _LPState):
        shift, raw = self.wavenet.step(state.inner)
        state.prediction = (state.window * state.coefs[:, :, state.t]).sum(-1)
        return shift + state.prediction, raw + state.scale[:, state.t]

    def push(self, state: _LPState, u_t: torch.Tensor) -> None:
        self.wavenet.push(state.inner, u_t - state.prediction)
        state.window = torch.cat([state.window[:, 1:], u_t[:, None]], dim=1)
        state.t += 1
