"""Density math, independent of audio: MADE, causal WaveNet, affine AR layers, coupling
layers (NICE, RealNVP, Glow), stacks."""

from distill.flows.autoregressive import (
    LOG_SCALE_KNEE,
    LOG_SCALE_MAX,
    AffineAutoregressive,
    bound_log_scale,
)
from distill.flows.coupling import (
    NICE,
    ActNorm,
    AffineCoupling,
    Glow,
    InvertibleLinear,
    RealNVP,
)
from distill.flows.made import MADE
from distill.flows.stacks import (
    IAF,
    MAF,
    FlowStack,
    Reverse,
    VectorFlow,
    gaussian_log_prob,
    standard_normal_log_prob,
)
from distill.flows.wavenet import CausalWaveNet

__all__ = [
    "MADE",
    "CausalWaveNet",
    "AffineAutoregressive",
    "bound_log_scale",
    "LOG_SCALE_MAX",
    "LOG_SCALE_KNEE",
    "FlowStack",
    "Reverse",
    "MAF",
    "IAF",
    "VectorFlow",
    "AffineCoupling",
    "ActNorm",
    "InvertibleLinear",
    "NICE",
    "RealNVP",
    "Glow",
    "standard_normal_log_prob",
    "gaussian_log_prob",
]
