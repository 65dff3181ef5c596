"""Mel-conditioned linear prediction around a WaveNet conditioner (LPCNet's split, in a flow).

``shift_t = WaveNet(u_{<t}, c)_t + sum_k w_k(c_t) u_{t-k}`` for ``k = 1 .. order``, where the
coefficients ``w(c)`` are a 1x1 projection of the frame-rate features, interpolated like the
WaveNet's own conditioning. A mel frame fixes the spectral envelope, and the envelope fixes the
short-term linear predictor, so this path reaches linear-prediction quality in a few hundred
steps; the WaveNet is left to learn what is not linear (excitation, pitch). Still causal: the
shift at ``t`` sees ``u_{<t}`` only. The coefficients start at zero, so a fresh layer is still
the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distill.flows.wavenet import CausalWaveNet

__all__ = ["LinearPredictive"]


@dataclass
class _LPState:
    inner: object  # the WaveNet's own step state
    coefs: torch.Tensor  # (B, order, T): window order, oldest sample first
    window: torch.Tensor  # (B, order): u_{t-order} .. u_{t-1}
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
        nn.init.zeros_(self.coef_proj.weight)
        nn.init.zeros_(self.coef_proj.bias)

    @property
    def receptive_field(self) -> int:
        return max(self.wavenet.receptive_field, self.order)

    def _coefs(self, cond: torch.Tensor, length: int) -> torch.Tensor:
        c = self.coef_proj(cond)
        if c.shape[-1] != length:
            c = F.interpolate(c, size=length, mode="linear", align_corners=False)
        return c

    def _predict(self, u: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
        """sum_k coefs[k, t] * u_{t-order+k}: (B, T)."""
        windows = F.pad(u, (self.order, 0)).unfold(-1, self.order, 1)[:, : u.shape[-1]]
        return (windows * coefs.transpose(1, 2)).sum(-1)

    def forward(self, u: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u: (B, T), cond: (B, C, F) -> shift (B, T), raw log-scale (B, T)."""
        shift, raw = self.wavenet(u, cond)
        return shift + self._predict(u, self._coefs(cond, u.shape[-1])), raw

    # --- one sample at a time (same protocol as CausalWaveNet) ---------------------------------

    def condition(self, cond: torch.Tensor, length: int):
        return self.wavenet.condition(cond, length), self._coefs(cond, length)

    def naive_step(self, u: torch.Tensor, c, t: int):
        shift, raw = self.wavenet.naive_step(u, c[0], t)
        past = u[:, max(0, t - self.order) : t]
        window = F.pad(past, (self.order - past.shape[-1], 0))
        return shift + (window * c[1][:, :, t]).sum(-1), raw

    def start(self, cond: torch.Tensor, length: int) -> _LPState:
        inner = self.wavenet.start(cond, length)
        coefs = self._coefs(cond, length)
        return _LPState(inner, coefs, coefs.new_zeros(coefs.shape[0], self.order))

    def step(self, state: _LPState):
        shift, raw = self.wavenet.step(state.inner)
        return shift + (state.window * state.coefs[:, :, state.t]).sum(-1), raw

    def push(self, state: _LPState, u_t: torch.Tensor) -> None:
        self.wavenet.push(state.inner, u_t)
        state.window = torch.cat([state.window[:, 1:], u_t[:, None]], dim=1)
        state.t += 1
