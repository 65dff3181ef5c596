"""The WaveNet's one pass in bfloat16 on CPU: stacked-tap matrix products, time-major.

Runs when :func:`distill.flows.wavenet_fused.run` is called under CPU autocast (a
``dtype="bfloat16"`` Synthesizer). It computes the function of the plain code in ``wavenet.py``
with the network body in the autocast dtype and its edges in float32, as autocast does in
training (``docs/design.md``, "Mixed precision"): the input samples, the ``out`` layer that
makes the shift and the log-scale, and both results stay float32.

Why a layout of its own: on CPU the bf16 matrix units (AMX, AVX-512-bf16) run a matrix product
several times faster than float32, but only when the product is large; the float32 fused path
issues one small product per tap, and ``conv1d`` does not use them at all. Here every matrix
is time-major, ``(n, channels)`` for a block of ``n`` samples, so that

* a dilated layer is **one** product ``(n, k R) @ (k R, G)``: its ``k`` taps, ``u_{t - (k-1) d}
  .. u_t``, are copied side by side (cheap next to the product), and the sum over taps is
  accumulated in float32 inside the product;
* the first layer's input is ``w u + b``, rank one in the scalar input, so its taps are a
  product with ``2 k`` columns (the delayed samples and whether each is inside the clip)
  instead of ``k R``;
* the per-layer conditioning (with every bias) is interpolated from the frame rate by one
  batched product per layer and block, in float32, and added in float32 to the tap product,
  which is rounded to bf16 once;
* every layer's gate ``z_i`` is written into one ``(n, L G / 2)`` matrix, and the skip path
  is one product with ``L G / 2`` columns at the end of the block (one rounding, not ``L``);
* the gate is one sigmoid and one ``addcmul``: ``tanh(a) = 2 sigmoid(2 a) - 1``, with the
  ``a`` columns of every term pre-doubled, gives ``-z``, which negated residual and skip
  weights undo (as in the float32 fused path). The sigmoid runs on that float32 sum: in
  bf16, ``2 sigmoid(2 a) - 1`` cancels for small ``a`` and lost ~5 dB of the output's SNR
  against float32 (paper-size student, random output layers).

Time runs in blocks of :attr:`CausalWaveNet.cpu_block` samples (whole frames) so that a
block's activations stay in cache; each layer keeps the last ``(k - 1) d`` rows of its input
as the history of the next block. Items of a batch run one after another.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.flows.interpolation import frame_kernel
from distill.precision import HALF_DTYPES, at_least_float32

__all__ = ["run", "LowpWeights"]

_SQRT_HALF = math.sqrt(0.5)


def run(net, u: torch.Tensor, w: LowpWeights, frames=None, c=None):
    """u (B, T) float32, conditioning at the frame rate ``frames`` (B, C, F) or at the sample
    rate ``c`` (B, L * G, T) -> shift (B, T), raw log-scale (B, T), both float32; the body in
    ``w.dtype``. No autograd; call with autocast disabled."""
    outs = [
        _one(
            net,
            w,
            at_least_float32(u[b]),
            None if frames is None else at_least_float32(frames[b]),
            None if c is None else c[b],
        )
        for b in range(u.shape[0])
    ]
    out = torch.stack(outs)  # (B, T, 2)
    return out[..., 0], out[..., 1]


def _one(net, w: LowpWeights, u, frames, c):
    """One item: u (T,), frames (C, F) or c (L * G, T) -> (T, 2) float32."""
    dtype = w.dtype
    L, R, G, k = len(net.dilations), net.residual_channels, net.gate_channels, net.kernel_size
    half = G // 2
    length = u.shape[0]
    spans = [(k - 1) * d for d in net.dilations]
    block = min(length, net.cpu_block)
    if frames is not None:
        hop = length // frames.shape[-1]
        m = max(1, block // hop)
        block = m * hop
        # frame-rate projection with the layer biases folded in, edge-padded for the
        # interpolation, as (F + 2, L, G) windows, all in float32
        cf = torch.addmm(w.cond_b, w.cond_w, frames)  # (L * G, F)
        cf = F.pad(cf[None], (1, 1), mode="replicate")[0].T.contiguous().view(-1, L, G)
        kernel = frame_kernel(hop, u.dtype, u.device).T  # (hop, 3)
    u_prev = F.pad(u, (1, 0))[:-1]  # position t holds u_{t-1}
    taps0 = _first_layer_inputs(u_prev, k, net.dilations[0], dtype)  # (T, 2k)
    hist = [u.new_empty(spans[i] + block, R, dtype=dtype) for i in range(1, L)]
    for buf, pad, span in zip(hist, w.pad, spans[1:]):
        buf[:span] = pad
    stacked = u.new_empty(block, k * R, dtype=dtype)
    gates = u.new_empty(block, L * half, dtype=dtype)
    x = u.new_empty(block, G, dtype=dtype)
    x32 = u.new_empty(block, G)
    out = u.new_empty(length, 2)
    for t0 in range(0, length, block):
        n = min(block, length - t0)
        h = u_prev[t0 : t0 + n, None].to(dtype) * w.front_w  # (n, R): h~_0
        xi = x[:n]
        for i in range(L):
            # the conditioning and biases in float32, the taps' product in the body's dtype;
            # their sum and the gate's sigmoid in float32 (2 sigmoid(2a) - 1 cancels near 0)
            s = x32[:n]
            if frames is not None:
                f0, mf = t0 // hop, n // hop
                win = cf[f0 : f0 + mf + 2, i].unfold(0, 3, 1)  # (mf, G, 3)
                torch.matmul(kernel, win.transpose(1, 2), out=s.view(mf, hop, G))
            else:
                torch.addcmul(w.bias[i], c[i * G : (i + 1) * G, t0 : t0 + n].T, w.gate2, out=s)
            if i == 0:
                torch.mm(taps0[t0 : t0 + n], w.first, out=xi)
            else:
                buf, d = hist[i - 1], net.dilations[i]
                span = spans[i]
                parts = [buf[span - (k - 1 - j) * d :][:n] for j in range(k)]
                torch.cat(parts, dim=1, out=stacked[:n])
                torch.mm(stacked[:n], w.taps[i - 1], out=xi)
            s.add_(xi).sigmoid_()
            z = gates[:n, i * half : (i + 1) * half]
            torch.addcmul(s[:, half:], s[:, :half], s[:, half:], value=-2.0, out=z)  # -z
            if i < L - 1:
                nxt = hist[i][spans[i + 1] :][:n]
                torch.addmm(h, z, w.res[i], beta=_SQRT_HALF, alpha=_SQRT_HALF, out=nxt)
                h = nxt
        if t0 + n < length:  # the last rows of every layer's input: the next block's history
            for i in range(1, L):
                buf, span = hist[i - 1], spans[i]
                if span:
                    tail = buf[n : n + span]
                    buf[:span] = tail.clone() if n < span else tail
        skips = torch.addmm(w.skip_b, gates[:n], w.skip).relu_()
        hid = torch.addmm(w.head_b, skips, w.head).relu_()
        torch.addmm(w.out_b, hid.to(out.dtype), w.out, out=out[t0 : t0 + n])
    return out


def _first_layer_inputs(u_prev: torch.Tensor, k: int, dilation: int, dtype) -> torch.Tensor:
    """(T, 2 k): tap j's input sample ``u_prev[t - (k-1-j) d]`` (0 before the clip) and, in
    column ``k + j``, 1 where that tap lies inside the clip (the layer's input there is
    ``w u + b``; before the clip it is zero padding, bias included)."""
    length = u_prev.shape[0]
    cols = []
    inside = []
    for j in range(k):
        back = (k - 1 - j) * dilation
        cols.append(F.pad(u_prev, (back, 0))[:length])
        inside.append((torch.arange(length, device=u_prev.device) >= back).to(u_prev.dtype))
    return torch.stack(cols + inside, dim=1).to(dtype)


@dataclass
class LowpWeights:
    """Parameters in the time-major layout: in the body's dtype, or in the model's own (float32)
    where the module docstring says so.

    Every product is ``rows (n, in) @ weight (in, out)``. The ``a`` half of every term that
    feeds a gate is doubled (``gate2``) and residual and skip weights are negated (the gate
    computes ``-z``); see the module docstring.
    """

    dtype: torch.dtype
    cond_w: torch.Tensor  # (L * G, C) float32: cond_proj, a rows doubled
    cond_b: torch.Tensor  # (L * G, 1) float32: cond_proj bias + the layers' biases, doubled
    bias: list[torch.Tensor]  # per layer (G,) float32: conv bias + taps @ offset, doubled
    gate2: torch.Tensor  # (G,) float32: 2 on the a half, 1 on the b half
    pad: list[torch.Tensor]  # layers 1.., (R,): -offset_i, the input before the clip
    front_w: torch.Tensor  # (1, R)
    first: torch.Tensor  # (2 k, G): layer 0's taps through the front layer, then its bias
    taps: list[torch.Tensor]  # layers 1.., (k R, G): taps stacked oldest first
    res: list[torch.Tensor]  # (G / 2, R), negated
    skip: torch.Tensor  # (L G / 2, S), negated, layers stacked
    skip_b: torch.Tensor  # (S,): all skip biases summed
    head: torch.Tensor  # (S, S)
    head_b: torch.Tensor
    out: torch.Tensor  # (S, 2) float32
    out_b: torch.Tensor  # (2,) float32

    @staticmethod
    def build(net, dtype: torch.dtype) -> LowpWeights:
        if net.front.weight.dtype in HALF_DTYPES:  # fold in float32
            net = copy.deepcopy(net).float()
        L, G, k = len(net.dilations), net.gate_channels, net.kernel_size
        half = G // 2
        ref = net.front.weight
        gate2 = torch.cat([ref.new_full((half,), 2.0), ref.new_ones(half)])
        w_f, b_f = net.front.weight[:, 0, 0], net.front.bias
        conv0 = net.dilated[0].weight  # (G, R, k)
        first = torch.cat(
            [
                torch.stack([conv0[:, :, j] @ w_f for j in range(k)]),
                torch.stack([conv0[:, :, j] @ b_f for j in range(k)]),
            ]
        )  # (2k, G)
        # h_i = h~_i + offset_i: the constant part of every layer's input rides in its bias
        offsets = [b_f]
        for res in net.res:
            offsets.append(_SQRT_HALF * (offsets[-1] + res.bias))
        bias = [net.dilated[0].bias] + [
            conv.bias + conv.weight.sum(-1) @ o for conv, o in zip(net.dilated[1:], offsets[1:])
        ]
        bias = [b * gate2 for b in bias]
        taps = [(conv.weight.permute(2, 1, 0).reshape(-1, G) * gate2) for conv in net.dilated[1:]]

        def low(t: torch.Tensor) -> torch.Tensor:
            return t.contiguous().to(dtype)

        return LowpWeights(
            dtype=dtype,
            cond_w=net.cond_proj.weight[:, :, 0] * gate2.repeat(L)[:, None],
            cond_b=(net.cond_proj.bias * gate2.repeat(L) + torch.cat(bias))[:, None],
            bias=bias,
            gate2=gate2,
            pad=[low(-o) for o in offsets[1:]],
            front_w=low(w_f[None]),
            first=low(first * gate2),
            taps=[low(t) for t in taps],
            res=[low(-m.weight[:, :, 0].T) for m in net.res],
            skip=low(torch.cat([-m.weight[:, :, 0].T for m in net.skip])),
            skip_b=low(sum(m.bias for m in net.skip)),
            head=low(net.head.weight[:, :, 0].T),
            head_b=low(net.head.bias),
            out=at_least_float32(net.out.weight[:, :, 0].T.contiguous()),
            out_b=at_least_float32(net.out.bias),
        )
