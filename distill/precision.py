"""What never runs in half precision: log-densities, log-determinants, KL sums and FFTs.

Under bf16/fp16 (autocast on CUDA, or a half-precision Synthesizer) these are computed in
float32, or in float64 when the inputs already are; :func:`distill.flows.wavenet.full_precision`
does the same for the layers that make a flow's shift and log-scale.
"""

from __future__ import annotations

import torch

__all__ = ["at_least_float32"]


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is float16 or bfloat16, unchanged otherwise (float32, float64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
