"""The affine autoregressive transform shared by MAF and IAF.

Generative direction ``z -> x``: ``x_i = z_i * exp(a_i) + m_i`` with ``(m, a) = NN(u_{<i}, c)``.

* MAF (``mode="maf"``, the teacher): ``u = x``. Density (``x -> z``) is one parallel pass;
  sampling is sequential.
* IAF (``mode="iaf"``, the student): ``u = z``. Sampling (``z -> x``) is one parallel pass with
  its log-determinant; the inverse (density of an arbitrary ``x``) is sequential.

The event axis is the last one: ``(B, D)`` for vectors (MADE conditioner) and ``(B, T)`` for
waveforms (WaveNet conditioner). The sequential direction uses the conditioner's cached
``start/step/push`` when it has them (WaveNet), else recomputes a full pass per position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.precision import at_least_float32

__all__ = ["AffineAutoregressive", "bound_log_scale", "LOG_SCALE_MAX", "LOG_SCALE_KNEE"]

LOG_SCALE_MAX = 12.0
"""Upper bound on every layer's log-scale. With it, K layers scale their input by at most
``e^(12 K)`` (a 6-flow student: ``e^72``, inside float32), where an unbounded log-scale let wild
weights overflow samples to inf."""

LOG_SCALE_KNEE = 6.0
"""Below this the upper bound is the identity. Training never comes near it (audio flows sit
between about -10 and 2, vector flows within a few units of 0), so it changes no number of a
trained model; it only catches wild weights."""


def bound_log_scale(raw: torch.Tensor, minimum: float) -> torch.Tensor:
    """Smooth bounds on both sides of a layer's log-scale.

    Below: ``a = minimum + softplus(raw - minimum)``, ~the identity well above ``minimum``.
    Above: ``a`` itself up to :data:`LOG_SCALE_KNEE`, then ``knee + w tanh((a - knee) / w)``
    with ``w = LOG_SCALE_MAX - knee``, which meets the identity with equal first and second
    derivatives and approaches :data:`LOG_SCALE_MAX` without reaching it. Neither is a clamp,
    so a step near a bound keeps its gradient.
    """
    a = minimum + F.softplus(raw - minimum)
    width = LOG_SCALE_MAX - LOG_SCALE_KNEE
    above = LOG_SCALE_KNEE + width * torch.tanh((a - LOG_SCALE_KNEE) / width)
    return torch.where(a > LOG_SCALE_KNEE, above, a)


class AffineAutoregressive(nn.Module):
    """One flow layer; ``forward(z, c) -> (x, log|dx/dz|)``, ``inverse(x, c) -> (z, log|dz/dx|)``.

    ``log_det`` is summed over the event axis in float32 or wider, shape ``(B,)``.
    """

    def __init__(self, conditioner: nn.Module, mode: str, log_scale_min: float = -7.0):
        super().__init__()
        if mode not in ("maf", "iaf"):
            raise ValueError(f"mode must be 'maf' or 'iaf', found {mode!r}")
        self.conditioner = conditioner
        self.mode = mode
        self.log_scale_min = log_scale_min

    def params(self, u: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shift and bounded log-scale of every position from ``u`` in one parallel pass."""
        shift, raw = self.conditioner(u, context)
        return shift, bound_log_scale(raw, self.log_scale_min)

    def forward(self, z: torch.Tensor, context: torch.Tensor, naive: bool = False):
        """z: (B, D) -> x: (B, D), log|det dx/dz|: (B,)."""
        if self.mode == "iaf":
            shift, log_scale = self.params(z, context)
            x = z * torch.exp(log_scale) + shift
        else:
            x, log_scale = self._sequential(z, context, lambda y, m, a: y * torch.exp(a) + m, naive)
        return x, _sum_events(log_scale)

    def inverse(self, x: torch.Tensor, context: torch.Tensor, naive: bool = False):
        """x: (B, D) -> z: (B, D), log|det dz/dx|: (B,)."""
        if self.mode == "maf":
            shift, log_scale = self.params(x, context)
            z = (x - shift) * torch.exp(-log_scale)
        else:
            z, log_scale = self._sequential(
                x, context, lambda y, m, a: (y - m) * torch.exp(-a), naive
            )
        return z, -_sum_events(log_scale)

    def solve_blocks(self, u, y, c, start: int, solve):
        """Fill ``u[:, start : start + T]`` (``y`` is (B, T)) in blocks of the conditioner's
        ``delay``: every term reads at least that many samples back, so a block is solved at
        once from what precedes it in ``u`` (the past before ``start``, zeros from the block on).
        ``c`` is ``conditioner.condition`` over all of ``u``. Returns ``u`` and the log-scales
        used (B, T). Synthesis streams through it with a chunk's past outputs before ``start``.
        """
        cond, log_scales = self.conditioner, []
        stop = start + y.shape[-1]
        for t0 in range(start, stop, cond.delay):
            t1 = min(stop, t0 + cond.delay)
            shift, raw = cond.block(u, c, t0, t1)
            a = bound_log_scale(raw, self.log_scale_min)
            u_block = solve(y[:, t0 - start : t1 - start], shift, a)
            if torch.is_grad_enabled():  # autograd (tests) must not see u change in place
                u = torch.cat([u[:, :t0], u_block, u[:, t1:]], dim=-1)
            else:
                u[:, t0:t1] = u_block
            log_scales.append(a)
        return u, torch.cat(log_scales, dim=-1)

    def _sequential(self, y, context, solve, naive: bool):
        """Build ``u`` in order: ``u_i = solve(y_i, m_i, a_i)`` with ``(m, a) = NN(u_{<i})``.

        Returns ``u`` and the log-scales used. ``naive`` recomputes over the receptive field at
        each step instead of using the conditioner's cache (for benchmarks and tests). A
        conditioner with a ``block`` method (a minimum ``delay`` > 1 between what it reads and
        what it predicts) is solved ``delay`` samples at a time.
        """
        length = y.shape[-1]
        cond = self.conditioner
        outputs, log_scales = [], []
        if hasattr(cond, "block") and not naive:
            c = cond.condition(context, length)
            return self.solve_blocks(y.new_zeros(y.shape), y, c, 0, solve)
        if hasattr(cond, "start") and not naive:
            state = cond.start(context, length)
            for t in range(length):
                shift, raw = cond.step(state)
                a = bound_log_scale(raw, self.log_scale_min)
                u_t = solve(y[:, t], shift, a)
                cond.push(state, u_t)
                outputs.append(u_t)
                log_scales.append(a)
        elif hasattr(cond, "naive_step"):
            c = cond.condition(context, length)
            u = y.new_zeros(y.shape)
            for t in range(length):
                shift, raw = cond.naive_step(u, c, t)
                a = bound_log_scale(raw, self.log_scale_min)
                u_t = solve(y[:, t], shift, a)
                u = u.clone()
                u[:, t] = u_t
                outputs.append(u_t)
                log_scales.append(a)
        else:
            u = y.new_zeros(y.shape)
            for t in range(length):
                shift, raw = cond(u, context)
                a = bound_log_scale(raw[:, t], self.log_scale_min)
                u_t = solve(y[:, t], shift[:, t], a)
                u = u.clone()
                u[:, t] = u_t
                outputs.append(u_t)
                log_scales.append(a)
        return torch.stack(outputs, dim=-1), torch.stack(log_scales, dim=-1)


def _sum_events(log_scale: torch.Tensor) -> torch.Tensor:
    """Sum over the event axis, never in half precision."""
    return at_least_float32(log_scale).sum(dim=-1)
