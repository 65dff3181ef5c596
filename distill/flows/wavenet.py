"""Causal WaveNet conditioner: a MADE over time for waveforms.

``(u (B, T), cond (B, C, F)) -> (shift (B, T), log_scale (B, T))`` where the output at ``t``
depends on ``u_{<t}`` only (never ``u_t``) and on the conditioning, which is given and may look
ahead. The input is shifted right by one sample, then passes gated dilated causal convolutions
with residual and skip paths.

Conditioning is projected for *all* layers by one 1x1 convolution at the rate it is given (mel
frames), then linearly interpolated to the sample rate. Projection and interpolation are both
linear, so this equals projecting the interpolated features per sample, at ``1/hop`` of the
cost; it is computed once per utterance and kept out of the per-sample path of generation.

Generation one sample at a time uses :meth:`CausalWaveNet.start` / ``step`` / ``push``: each
dilated layer keeps a ring buffer of its past inputs, so a step costs one column per layer
rather than a pass over the receptive field (Fast WaveNet / the "cached" generation of the
Parallel WaveNet paper).

The code below is the plain, differentiable definition; it runs whenever autograd records
(training, Jacobian tests). Without autograd (``torch.no_grad`` / ``torch.inference_mode``:
synthesis, generation, benchmarks) the same function runs through the fused paths of
:mod:`distill.flows.wavenet_fused`, several times faster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from distill.flows import wavenet_fused
from distill.flows.interpolation import upsample_frames

__all__ = ["CausalWaveNet", "StepState", "pointwise"]


@dataclass
class StepState:
    """Everything generation needs between steps: conditioning, ring buffers, weights.

    ``fused`` holds the precomputed tensors of the fused (no-autograd) step; it is ``None`` for
    the plain step, which uses ``cond``, ``buffers`` and ``weights``.
    """

    cond: torch.Tensor | None  # (B, L * G, T): per-layer conditioning at the sample rate
    buffers: list[torch.Tensor]  # per layer (B, R, (k - 1) * d): past inputs of that layer
    weights: list[torch.Tensor]  # per layer (k * R, G): dilated taps stacked, oldest first
    t: int = 0
    u_prev: torch.Tensor | None = None  # (B,) the input at t - 1 (zero at t = 0)
    fused: wavenet_fused.FusedStep | None = field(default=None, repr=False)


def full_precision(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in float32 even under (bf16) autocast.

    For the layers whose outputs become a flow's shift and log-scale: the shift is compared
    with the sample at the scale of sigma, often ~1/100 of the signal, so bf16's ~3 significant
    digits would put errors of several percent of sigma into every likelihood and KL term
    (measured on the demo teacher: mean |d mu| / sigma 0.05, at most 0.9). Outside autocast it is
    just ``layer(x)`` in the model's own dtype.
    """
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return layer(x)
    with torch.autocast(device, enabled=False):
        return layer(x.float())


def pointwise(layer: nn.Conv1d, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """``layer(x) + add`` for a 1x1 convolution, as one batched matrix product.

    x (B, C_in, T), add (B, C_out, T) or None -> (B, C_out, T). The same function as
    ``layer(x) + add``; on CPU ``conv1d`` with kernel 1 takes a slow im2col path in float32
    and a slow oneDNN one in bf16, forward and backward (docs/design.md, "Training speed on
    CPU"). Under autocast it runs in the half dtype, as the convolution would.
    """
    weight = layer.weight[:, :, 0].expand(x.shape[0], -1, -1)
    bias = layer.bias[:, None]
    return torch.baddbmm(bias if add is None else add + bias.to(add.dtype), weight, x)


class CausalWaveNet(nn.Module):
    """Gated dilated causal convolutions; see the module docstring for the contract."""

    cpu_block = 4096
    """Samples per time block of the fused one-pass path on CPU (cache-sized); GPU: one block."""

    def __init__(
        self,
        cond_channels: int,
        residual_channels: int = 64,
        gate_channels: int = 128,
        skip_channels: int = 64,
        kernel_size: int = 2,
        dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    ):
        super().__init__()
        if gate_channels % 2:
            raise ValueError(f"gate_channels must be even, found {gate_channels}")
        self.kernel_size = kernel_size
        self.dilations = tuple(int(d) for d in dilations)
        self.residual_channels = residual_channels
        self.gate_channels = gate_channels
        half = gate_channels // 2
        self.front = nn.Conv1d(1, residual_channels, 1)
        self.dilated = nn.ModuleList(
            nn.Conv1d(residual_channels, gate_channels, kernel_size, dilation=d)
            for d in self.dilations
        )
        self.cond_proj = nn.Conv1d(cond_channels, gate_channels * len(self.dilations), 1)
        # The last layer feeds only the skip path: a residual output there would be dead weight.
        self.res = nn.ModuleList(nn.Conv1d(half, residual_channels, 1) for _ in self.dilations[:-1])
        self.skip = nn.ModuleList(nn.Conv1d(half, skip_channels, 1) for _ in self.dilations)
        self.head = nn.Conv1d(skip_channels, skip_channels, 1)
        self.out = nn.Conv1d(skip_channels, 2, 1)
        # A fresh flow layer is the identity (shift 0, log-scale 0): stable start for both stages.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self._derived = None  # rearranged weights of the fused paths (see wavenet_fused)

    @property
    def receptive_field(self) -> int:
        """Number of past samples ``u_{t-R} .. u_{t-1}`` that output ``t`` can see."""
        return 1 + (self.kernel_size - 1) * sum(self.dilations)

    def condition(self, cond: torch.Tensor, length: int) -> torch.Tensor:
        """cond (B, C, F) with ``length % F == 0`` -> per-layer conditioning (B, L * G, length)."""
        frames = cond.shape[-1]
        if length % frames:
            raise ValueError(f"audio length {length} is not a multiple of {frames} cond frames")
        c = self.cond_proj(cond)
        if frames != length:
            c = upsample_frames(c, length // frames)
        return c

    def forward(self, u: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u: (B, T), cond: (B, C, F) -> shift (B, T), raw log-scale (B, T)."""
        if wavenet_fused.enabled():
            length, frames = u.shape[-1], cond.shape[-1]
            if length % frames:
                raise ValueError(f"audio length {length} is not a multiple of {frames} cond frames")
            return wavenet_fused.run(self, u, frames=cond)
        return self.run(u, self.condition(cond, u.shape[-1]))

    def run(self, u: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`forward` with conditioning already at the sample rate: c (B, L * G, T)."""
        if wavenet_fused.enabled():
            return wavenet_fused.run(self, u, c=c)
        shifted = F.pad(u, (1, 0))[:, :-1].unsqueeze(1)  # (B, 1, T): position t holds u_{t-1}
        h = self.front(shifted)
        skips = None
        # one split, not a slice per layer: a slice's backward fills a zero gradient of all of
        # c, L times over (43% of a paper-size teacher's training step on CPU)
        conds = c.split(self.gate_channels, dim=1)
        last = len(self.dilated) - 1
        for i, (conv, skip) in enumerate(zip(self.dilated, self.skip)):
            x = conv(F.pad(h, ((self.kernel_size - 1) * conv.dilation[0], 0)))
            x = x + conds[i]
            a, b = x.chunk(2, dim=1)
            z = torch.tanh(a) * torch.sigmoid(b)
            skips = pointwise(skip, z, skips)
            if i < last:
                h = pointwise(self.res[i], z, h) * math.sqrt(0.5)
        out = full_precision(self.out, torch.relu(pointwise(self.head, torch.relu(skips))))
        return out[:, 0], out[:, 1]

    # --- one sample at a time -----------------------------------------------------------------

    def start(self, cond: torch.Tensor, length: int) -> StepState:
        """Prepare cached generation of ``length`` samples: conditioning computed once."""
        if wavenet_fused.enabled():
            state = wavenet_fused.start(self, cond, length)
            return StepState(None, [], [], u_prev=cond.new_zeros(cond.shape[0]), fused=state)
        c = self.condition(cond, length)
        batch = c.shape[0]
        buffers, weights = [], []
        for conv in self.dilated:
            span = (self.kernel_size - 1) * conv.dilation[0]
            buffers.append(c.new_zeros(batch, self.residual_channels, span))
            # (G, R, k) -> (k * R, G) so that concat(taps oldest..newest) @ W is the conv column
            weights.append(conv.weight.permute(2, 1, 0).reshape(-1, conv.weight.shape[0]))
        return StepState(cond=c, buffers=buffers, weights=weights, u_prev=c.new_zeros(batch))

    def step(self, state: StepState) -> tuple[torch.Tensor, torch.Tensor]:
        """Shift and raw log-scale (B,) at time ``state.t`` from the inputs before it.

        Call :meth:`push` with the input at ``t`` before the next step.
        """
        if state.fused is not None:
            return wavenet_fused.step(state.fused, state.t)
        t = state.t
        h = self.front.weight[:, 0, 0] * state.u_prev[:, None] + self.front.bias  # (B, R)
        skips = 0.0
        g = self.gate_channels
        k = self.kernel_size
        last = len(self.dilated) - 1
        for i, (conv, skip) in enumerate(zip(self.dilated, self.skip)):
            d = conv.dilation[0]
            buf = state.buffers[i]
            span = buf.shape[-1]
            taps = [buf[:, :, (t - j * d) % span] for j in range(k - 1, 0, -1)] + [h]
            x = torch.addmm(conv.bias, torch.cat(taps, dim=1), state.weights[i])
            if span:
                buf[:, :, t % span] = h
            x = x + state.cond[:, i * g : (i + 1) * g, t]
            a, b = x.chunk(2, dim=1)
            z = torch.tanh(a) * torch.sigmoid(b)
            skips = skips + F.linear(z, skip.weight[:, :, 0], skip.bias)
            if i < last:
                res = self.res[i]
                h = (h + F.linear(z, res.weight[:, :, 0], res.bias)) * math.sqrt(0.5)
        hid = torch.relu(F.linear(torch.relu(skips), self.head.weight[:, :, 0], self.head.bias))
        out = F.linear(hid, self.out.weight[:, :, 0], self.out.bias)
        return out[:, 0], out[:, 1]

    def push(self, state: StepState, u_t: torch.Tensor) -> None:
        """Record the input at the current step and advance the clock."""
        if state.fused is not None:
            state.fused.u_prev.copy_(u_t.view(-1, 1))
        state.u_prev = u_t
        state.t += 1

    def naive_step(self, u: torch.Tensor, c: torch.Tensor, t: int) -> tuple[torch.Tensor, ...]:
        """Output at ``t`` by a full pass over the receptive field window (no cache)."""
        lo = max(0, t - self.receptive_field)
        shift, log_scale = self.run(u[:, lo : t + 1], c[:, :, lo : t + 1])
        return shift[:, -1], log_scale[:, -1]
