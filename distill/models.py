"""Audio models: the mel upsampler, the MAF teacher and the IAF student.

Both are flow stacks over the waveform ``(B, T)`` whose layers are affine autoregressive with a
causal WaveNet conditioner, all in the same time order, conditioned on a log-mel ``(B, n_mels, F)``
with ``T = F * hop_length``. The stack hands the mel features to every layer itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distill.audio import network_input
from distill.checkpoint import load_checkpoint
from distill.config import AudioConfig, Config, WaveNetConfig
from distill.errors import CheckpointError, InputError
from distill.flows import AffineAutoregressive, CausalWaveNet, FlowStack, standard_normal_log_prob
from distill.flows.linear_prediction import LinearPredictive
from distill.pitch import HarmonicSource

__all__ = ["MelUpsampler", "Teacher", "Student", "check_mel"]


class MelUpsampler(nn.Module):
    """Mel frames -> conditioning features: convolutions at the frame rate, then interpolation.

    ``encode(mel) (B, n_mels, F) -> (B, C, F)`` sees ``kernel_size - 1`` frames of context on each
    side (the mel is given, so it may look ahead). ``forward`` interpolates linearly to the
    sample rate, ``(B, C, F * hop)``; frame ``f`` sits at the centre of samples
    ``[f * hop, (f + 1) * hop)``, matching the framing of :func:`distill.audio.log_mel`. The flow
    layers interpolate their own 1x1 projection of ``encode(mel)`` instead (equal, and cheaper).
    """

    def __init__(self, n_mels: int, channels: int, hop_length: int, kernel_size: int = 5):
        super().__init__()
        self.hop_length = hop_length
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(n_mels, channels, kernel_size, padding=pad)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=pad)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (B, n_mels, F) -> (B, C, F)."""
        x = network_input(mel)
        x = F.leaky_relu(self.conv1(x), 0.2)
        return F.leaky_relu(self.conv2(x), 0.2)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (B, n_mels, F) -> (B, C, F * hop_length)."""
        c = self.encode(mel)
        return F.interpolate(c, scale_factor=self.hop_length, mode="linear", align_corners=False)


def check_mel(mel: torch.Tensor, audio_config: AudioConfig, name: str = "mel") -> None:
    """Shape and finiteness of a mel batch; errors say what was expected and found."""
    if mel.dim() != 3 or mel.shape[1] != audio_config.n_mels:
        raise InputError(
            f"{name} must have shape (batch, n_mels={audio_config.n_mels}, frames), found "
            f"{tuple(mel.shape)}; compute it with distill.audio.log_mel and the model's "
            "feature config"
        )
    if not torch.isfinite(mel).all():
        raise InputError(f"{name} holds NaN or Inf values; recompute it from the audio")


def _wavenet(cfg: WaveNetConfig, cond_channels: int) -> CausalWaveNet:
    return CausalWaveNet(
        cond_channels,
        residual_channels=cfg.residual_channels,
        gate_channels=cfg.gate_channels,
        skip_channels=cfg.skip_channels,
        kernel_size=cfg.kernel_size,
        dilations=cfg.dilations,
    )


class _AudioFlow(nn.Module):
    """What teacher and student share: config, upsampler, stack, shape checks, loading."""

    kind = ""

    def __init__(
        self,
        config: Config,
        wavenets: list[WaveNetConfig],
        mode: str,
        upsampler_channels: int,
        upsampler_kernel: int,
        log_scale_min: float,
        linear_prediction_order: int = 0,
    ):
        super().__init__()
        self.config = config
        self.audio_config = config.audio
        self.upsampler = MelUpsampler(
            config.audio.n_mels, upsampler_channels, config.audio.hop_length, upsampler_kernel
        )
        conditioners = [_wavenet(w, upsampler_channels) for w in wavenets]
        if linear_prediction_order:
            conditioners = [
                LinearPredictive(c, upsampler_channels, linear_prediction_order)
                for c in conditioners
            ]
        self.flow = FlowStack([AffineAutoregressive(c, mode, log_scale_min) for c in conditioners])

    @property
    def hop_length(self) -> int:
        return self.audio_config.hop_length

    @property
    def receptive_field(self) -> int:
        """Past samples one output sample depends on, through all layers of the stack."""
        return sum(layer.conditioner.receptive_field for layer in self.flow.layers)

    def context(self, mel: torch.Tensor) -> torch.Tensor:
        """Checked mel (B, n_mels, F) -> frame-rate features (B, C, F) for every layer."""
        check_mel(mel, self.audio_config)
        return self.upsampler.encode(mel)

    def _check_audio(self, audio: torch.Tensor, mel: torch.Tensor) -> None:
        expected = mel.shape[-1] * self.hop_length
        if audio.dim() != 2 or audio.shape != (mel.shape[0], expected):
            raise InputError(
                f"audio must have shape (batch, frames * hop_length) = ({mel.shape[0]}, "
                f"{expected}) for a mel of {mel.shape[-1]} frames, found {tuple(audio.shape)}"
            )

    def _noise(self, mel, temperature: float, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn(
                mel.shape[0], mel.shape[-1] * self.hop_length, dtype=mel.dtype, device=mel.device
            )
        else:
            self._check_audio(noise, mel)
        return noise * temperature

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device=None, use_ema: bool = True, data: dict | None = None
    ):
        """The model of a checkpoint file alone, in eval mode (EMA weights when present and
        ``use_ema``). ``data``: what :func:`~distill.checkpoint.load_checkpoint` already read
        from ``path``, so that a caller needing its other entries reads the file once."""
        data = load_checkpoint(path, cls.kind) if data is None else data
        model = cls(data["config"])
        state = data.get("ema") if use_ema and data.get("ema") else data["model"]
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: weights do not match its own config: {err}") from err
        if device is not None:
            model.to(device)
        return model.eval()


class Teacher(_AudioFlow):
    """Conditional MAF over the waveform: exact likelihood in one parallel pass per layer."""

    kind = "teacher"

    def __init__(self, config: Config):
        t = config.teacher
        super().__init__(
            config,
            [t.wavenet] * t.num_flows,
            "maf",
            t.upsampler_channels,
            t.upsampler_kernel,
            t.log_scale_min,
            t.linear_prediction_order,
        )

    def log_prob(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """audio (B, T), mel (B, n_mels, F) with T = F * hop -> log p(audio | mel) (B,) nats."""
        ctx = self.context(mel)
        self._check_audio(audio, mel)
        return self.flow.log_prob(audio, ctx)

    def gaussian_conditionals(self, audio: torch.Tensor, mel: torch.Tensor):
        """``mu_t, log_sigma_t`` of ``p(x_t | x_{<t}, mel)``, each (B, T), from one pass."""
        ctx = self.context(mel)
        self._check_audio(audio, mel)
        return self.flow.gaussian_conditionals(audio, ctx)

    def sample(
        self,
        mel: torch.Tensor,
        temperature: float = 1.0,
        noise: torch.Tensor | None = None,
        naive: bool = False,
    ) -> torch.Tensor:
        """Generate (B, T) one sample at a time with cached activations (``naive``: without)."""
        ctx = self.context(mel)
        x, _ = self.flow(self._noise(mel, temperature, noise), ctx, naive=naive)
        return x


class Student(_AudioFlow):
    """Conditional IAF over the waveform: a whole clip from noise in one parallel pass."""

    kind = "student"

    def __init__(self, config: Config):
        s = config.student
        super().__init__(
            config,
            list(s.flows),
            "iaf",
            s.upsampler_channels,
            s.upsampler_kernel,
            s.log_scale_min,
            s.linear_prediction_order,
        )

        # The base is N(source(mel), I) with a harmonic source, N(0, I) without.
        self.source = HarmonicSource(config.audio) if s.harmonic_source else None

    def base_mean(self, mel: torch.Tensor) -> torch.Tensor | None:
        """The base distribution's mean (B, T): the predicted excitation, or None (zero)."""
        return None if self.source is None else self.source(mel)

    def sample(
        self, mel: torch.Tensor, temperature: float = 1.0, noise: torch.Tensor | None = None
    ):
        """mel (B, n_mels, F) -> audio (B, T), log_prob (B,).

        ``log_prob`` is the model's log-density of the returned audio (at temperature 1), the
        same number :meth:`log_prob` gives for it. ``temperature`` scales the noise about the
        base mean (the excitation is not tempered).
        """
        ctx = self.context(mel)
        z = self._noise(mel, temperature, noise)
        shift = self.base_mean(mel)
        x, log_det = self.flow(z if shift is None else z + shift, ctx)
        return x, standard_normal_log_prob(z) - log_det

    def sample_with_conditionals(
        self, mel: torch.Tensor, noise: torch.Tensor | None = None, temperature: float = 1.0
    ):
        """Sample and the student's per-step Gaussian ``N(M_t, S_t^2)`` given ``z_{<t}``.

        Returns audio (B, T), log_prob (B,), mean (B, T), log_scale (B, T).
        """
        ctx = self.context(mel)
        z = self._noise(mel, temperature, noise)
        return self.flow.sample_with_conditionals(z, ctx, base_mean=self.base_mean(mel))

    def log_prob(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """log q(audio | mel) (B,) by sequential inversion: slow, for tests and evaluation."""
        ctx = self.context(mel)
        self._check_audio(audio, mel)
        return self.flow.log_prob(audio, ctx, base_mean=self.base_mean(mel))
