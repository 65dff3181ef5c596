"""Half precision: how it is run, and what never runs in it.

A model "in bfloat16" (or float16) keeps its weights in float32 and runs under autocast
(:func:`half_precision`): matrix products and convolutions in the half dtype, everything else in
float32. That is how training runs it (``TrainingConfig.amp``) and how the Synthesizer and
``distill bench`` run it, so the layers that make a flow's shift and log-scale
(:func:`distill.flows.wavenet.full_precision`), the flows' affine steps and the samples passed
between flows stay float32 everywhere. The fused inference paths follow the same rule
(:mod:`distill.flows.wavenet_fused`, :mod:`distill.flows.wavenet_lowp`).

Log-densities, log-dets, KL sums and FFTs leave half precision through
:func:`at_least_float32`: float32, or float64 when the inputs already are.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["HALF_DTYPES", "at_least_float32", "half_precision", "weight_dtype"]

HALF_DTYPES = (torch.bfloat16, torch.float16)


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is float16 or bfloat16, unchanged otherwise (float32, float64)."""
    return t.float() if t.dtype in HALF_DTYPES else t


def weight_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a model's weights take to run in ``dtype``: float32 for the half dtypes."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def half_precision(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` for the half dtypes; a no-op for float32/float64."""
    if dtype in HALF_DTYPES:
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()
