"""Linear interpolation from the frame rate to the sample rate, as a 3-tap product per frame.

``F.interpolate(c, scale_factor=hop, mode="linear", align_corners=False)`` puts frame ``f`` at
the centre of samples ``[f * hop, (f + 1) * hop)``, so every sample of frame ``f`` is a mix of
frames ``f - 1, f, f + 1`` (edges clamped) with weights that depend only on its position in the
frame. Written as edge-padded 3-frame windows times a ``(3, hop)`` kernel it is one small matrix
product: the same numbers (tested to 1e-12 in float64), several times faster forward and
backward on CPU than ``upsample_linear1d`` (fwd + bwd of a paper-size teacher's (1, 5120, 32)
conditioning to 8192 samples: 250 -> 97 ms in float32, 264 -> 68 ms in bf16, one thread).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["frame_kernel", "upsample_frames"]

_KERNELS: dict[tuple, torch.Tensor] = {}


def frame_kernel(hop: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(3, hop): the weights of frames f-1, f, f+1 for the samples of frame f (cached)."""
    key = (hop, dtype, str(device))
    if key not in _KERNELS:
        _KERNELS[key] = _kernel(hop, dtype, device)
    return _KERNELS[key]


def upsample_frames(c: torch.Tensor, hop: int) -> torch.Tensor:
    """c (B, C, F) -> (B, C, F * hop), differentiable; equals linear ``F.interpolate``.

    The kernel is built on each call (``hop`` values, no cache): under ``torch.export`` the hop
    is a symbolic size, which cannot be a cache key."""
    windows = F.pad(c, (1, 1), mode="replicate").unfold(-1, 3, 1)  # (B, C, F, 3)
    # one 2-D product: a 4-D one with autograd on runs a product per (item, channel)
    out = windows.reshape(-1, 3) @ _kernel(hop, c.dtype, c.device)  # (B * C * F, hop)
    return out.view(*c.shape[:-1], -1)


def _kernel(hop, dtype: torch.dtype, device) -> torch.Tensor:
    pos = (torch.arange(hop, dtype=torch.float64, device=device) + 0.5) / hop - 0.5
    return torch.stack([(-pos).clamp(min=0), 1 - pos.abs(), pos.clamp(min=0)]).to(dtype)
