"""Audio models: the mel upsampler, the MAF teacher and the IAF student.

Both are flow stacks over the waveform ``(B, T)`` whose layers are affine autoregressive with a
causal WaveNet conditioner, all in the same time order, conditioned on a log-mel ``(B, n_mels, F)``
with ``T = F * hop_length``. The stack hands the mel features to every layer itself.

Both models speak the protocol of the vector flows (:class:`distill.flows.MAF` / ``IAF``):
every method takes the conditioning (here the mel), so the distillation loss treats the two
families alike. The student's base distribution may have a mean, its harmonic source; the one
map from noise to audio, :meth:`AudioFlow.decode`, is where it enters, and every sampling path
(training, :class:`distill.inference.Synthesizer`, ``distill export``, evaluation) runs it.

A model is built from a config (``Teacher(config)``) or from a checkpoint file alone
(``Teacher.from_checkpoint(path)``); :mod:`distill.checkpoint` only reads and writes the dicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from distill.audio import network_input
from distill.checkpoint import load_checkpoint
from distill.config import AudioConfig, Config, FlowModelConfig, WaveNetConfig
from distill.errors import CheckpointError, InputError
from distill.flows import AffineAutoregressive, CausalWaveNet, FlowStack, standard_normal_log_prob
from distill.flows.linear_prediction import AudioContext, LinearPredictive, LongTermFeedback
from distill.pitch import HarmonicSource, PitchPredictor, lag_range, pitch_lags

__all__ = [
    "MelUpsampler",
    "MelWindow",
    "AudioFlow",
    "Teacher",
    "Student",
    "check_mel",
    "segment_margin",
    "with_margin",
    "split_window",
    "context_frames",
]


class MelUpsampler(nn.Module):
    """Mel frames -> conditioning features: convolutions at the frame rate, then interpolation.

    ``encode(mel) (B, n_mels, F) -> (B, C, F)`` sees :attr:`reach` frames of context on each
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

    @property
    def reach(self) -> int:
        """Mel frames on each side that one encoded frame reads (the interpolation to the
        sample rate then also reads the neighbouring encoded frame)."""
        return self.conv1.padding[0] + self.conv2.padding[0]

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


class MelWindow(NamedTuple):
    """A mel with ``margin`` frames of context on each side beyond the audio it conditions.

    The model reads the whole window (its features' and its pitch predictor's convolutions see
    ``margin`` frames further) and conditions only the centre ``F - 2 margin`` frames. Training
    segments carry one, so that a segment's edge frames are read as a whole clip's inner
    frames are at synthesis: without it a 32-frame segment has half its frames within the
    pitch predictor's reach of an edge, and their lags come out wrong.
    """

    mel: torch.Tensor  # (B, n_mels, F)
    margin: int

    @property
    def dtype(self) -> torch.dtype:
        return self.mel.dtype

    @property
    def device(self) -> torch.device:
        return self.mel.device


def segment_margin(model: AudioFlow) -> int:
    """Mel frames of context a training segment should carry on each side for ``model``: the
    reach of its conditioning and the interpolation's next frame when it reads pitch from the
    mel (0 without: segments are then conditioned on their own frames, as before)."""
    return model.mel_reach + 1 if model.pitch is not None else 0


def with_margin(mel: torch.Tensor, margin: int):
    """A training batch's mel as the model should read it: a :class:`MelWindow` when the
    segments carry a margin, the tensor itself when not."""
    return MelWindow(mel, margin) if margin else mel


def split_window(mel) -> tuple[torch.Tensor, int]:
    """A mel or :class:`MelWindow` -> (the mel tensor, its margin; 0 for a plain mel)."""
    return (mel.mel, mel.margin) if isinstance(mel, MelWindow) else (mel, 0)


def context_frames(context, start: int, stop: int, hop: int):
    """Frames ``[start, stop)`` of a layer context: the features' frames and, in an
    :class:`~distill.flows.linear_prediction.AudioContext`, the lags of their samples."""
    if isinstance(context, AudioContext):
        lags = context.lags[:, start * hop : stop * hop]
        return AudioContext(context.features[:, :, start:stop], lags)
    return context[:, :, start:stop]


def _crop(context, mean, margin: int, hop: int):
    """The centre of what :meth:`AudioFlow.conditioning` read from a :class:`MelWindow`."""
    if not margin:
        return context, mean
    stop = _features(context).shape[-1] - margin
    context = context_frames(context, margin, stop, hop)
    return context, None if mean is None else mean[:, margin * hop : stop * hop]


def _features(context) -> torch.Tensor:
    return context.features if isinstance(context, AudioContext) else context


def _wavenet(cfg: WaveNetConfig, cond_channels: int) -> CausalWaveNet:
    return CausalWaveNet(
        cond_channels,
        residual_channels=cfg.residual_channels,
        gate_channels=cfg.gate_channels,
        skip_channels=cfg.skip_channels,
        kernel_size=cfg.kernel_size,
        dilations=cfg.dilations,
    )


class AudioFlow(nn.Module):
    """What teacher and student share: config, upsampler, stack, the protocol, loading.

    Which direction is the parallel one depends on the stack's mode: a MAF (teacher) has a
    parallel :meth:`log_prob` and :meth:`gaussian_conditionals` and samples one step at a time;
    an IAF (student) samples in one pass with its log-density and per-step Gaussians
    (:meth:`sample_with_conditionals`), and its :meth:`log_prob` is sequential.
    """

    kind = ""

    def __init__(
        self,
        config: Config,
        section: FlowModelConfig,
        wavenets: tuple[WaveNetConfig, ...],
        mode: str,
    ):
        super().__init__()
        self.config = config
        self.audio_config = config.audio
        channels = section.upsampler_channels
        self.upsampler = MelUpsampler(
            config.audio.n_mels, channels, config.audio.hop_length, section.upsampler_kernel
        )
        conditioners = [_wavenet(w, channels) for w in wavenets]
        if section.linear_prediction_order:
            order, taps = section.linear_prediction_order, section.long_term_taps
            longest = lag_range(config.audio)[1]
            conditioners = [
                LinearPredictive(c, channels, order, taps, longest) for c in conditioners
            ]
        layers = [AffineAutoregressive(c, mode, section.log_scale_min) for c in conditioners]
        self.flow = FlowStack(layers)
        self.long_term = section.long_term_taps > 0
        # pitch from the mel: the long-term predictor's lags, the student's excitation
        self.pitch: PitchPredictor | None = None
        self.source: HarmonicSource | None = None  # a base mean (the student's option)

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

    @property
    def hop_length(self) -> int:
        return self.audio_config.hop_length

    @property
    def mel_reach(self) -> int:
        """Mel frames on each side that the conditioning of one frame reads (features, pitch,
        excitation gain); the sample-rate interpolation then also reads the next frame."""
        parts = [self.upsampler, self.pitch, self.source]
        return max(p.reach for p in parts if p is not None)

    @property
    def receptive_field(self) -> int:
        """Past samples one output sample depends on, through all layers of the stack."""
        return sum(layer.conditioner.receptive_field for layer in self.flow.layers)

    def noise_shape(self, mel) -> tuple[int, int]:
        """Shape of the base noise for a mel batch (B, n_mels, F): (B, F * hop); for a
        :class:`MelWindow`, of its centre."""
        mel, margin = split_window(mel)
        return mel.shape[0], (mel.shape[-1] - 2 * margin) * self.hop_length

    # --- the one map from noise to audio (no input checks: traceable by torch.export) --------

    def conditioning(self, mel, frames: list[int] | None = None):
        """mel (B, n_mels, F) -> what every layer is conditioned on, and the base
        distribution's mean (B, F * hop), or None for a zero mean. A :class:`MelWindow` is
        read whole and its centre returned.

        The layers get the frame-rate features (B, C, F), or with a long-term predictor an
        :class:`~distill.flows.linear_prediction.AudioContext` of the features and the pitch
        lag of every sample, both read from the mel.

        ``frames``: a ragged batch, item ``b`` being ``mel[b, :, :frames[b]]`` followed by
        padding. Each item is then read alone, its features edge-padded (what the layers'
        interpolation clamping sees at its end), its lags and base mean zero-padded: the flows
        are causal, so an item's samples equal those of decoding it alone.
        """
        mel, margin = split_window(mel)
        if frames is None:
            return _crop(*self._conditioning(mel), margin, self.hop_length)
        longest, hop = mel.shape[-1], self.hop_length
        parts = [self._conditioning(mel[b : b + 1, :, :f]) for b, f in enumerate(frames)]
        pad = [longest - f for f in frames]
        features = [F.pad(_features(c), (0, p), "replicate") for (c, _), p in zip(parts, pad)]
        context = torch.cat(features)
        if self.long_term:
            lags = torch.cat([F.pad(c.lags, (0, p * hop)) for (c, _), p in zip(parts, pad)])
            context = AudioContext(context, lags)
        if self.source is None:
            return context, None
        return context, torch.cat([F.pad(m, (0, p * hop)) for (_, m), p in zip(parts, pad)])

    def _conditioning(self, mel: torch.Tensor):
        features = self.upsampler.encode(mel)
        if self.pitch is None:
            return features, None
        f0, voiced = self.pitch.track(mel)
        context = features
        if self.long_term:
            context = AudioContext(features, pitch_lags(f0, voiced, self.audio_config))
        mean = None if self.source is None else self.source(mel, f0, voiced)
        return context, mean

    def decode(
        self,
        mel: torch.Tensor,
        noise: torch.Tensor,
        frames: list[int] | None = None,
        naive: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, n_mels, F), noise (B, F * hop) already scaled by the temperature ->
        audio (B, F * hop) and ``log|det d audio / d flow input|`` (B,).

        The base mean (the student's excitation) is added to the noise here and nowhere else.
        A MAF decodes one sample at a time (with cached activations; ``naive``: without), an
        IAF in one pass. Inputs are not checked (the public methods and the Synthesizer do).
        """
        context, mean = self.conditioning(mel, frames)
        return self.flow(noise if mean is None else noise + mean, context, naive=naive)

    # --- the protocol: checked inputs, everything takes the mel ----------------------------

    def _checked(self, mel, audio: torch.Tensor | None = None) -> None:
        window, margin = split_window(mel)
        check_mel(window, self.audio_config)
        if margin < 0 or 2 * margin >= window.shape[-1]:
            raise InputError(
                f"a MelWindow's margin must leave frames in its centre: margin {margin} on a "
                f"mel of {window.shape[-1]} frames"
            )
        if audio is None:
            return
        expected = self.noise_shape(mel)
        if audio.dim() != 2 or tuple(audio.shape) != expected:
            raise InputError(
                f"audio and noise must have shape (batch, frames * hop_length) = {expected} for "
                f"a mel of {window.shape[-1] - 2 * margin} frames, found {tuple(audio.shape)}"
            )

    def _scaled_noise(self, mel, temperature: float, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None:
            window, _ = split_window(mel)
            noise = torch.randn(self.noise_shape(mel), dtype=window.dtype, device=window.device)
        else:
            self._checked(mel, noise)
        return noise * temperature

    def sample_with_log_prob(
        self,
        mel: torch.Tensor,
        noise: torch.Tensor | None = None,
        temperature: float = 1.0,
        naive: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, n_mels, F) -> audio (B, T), log_prob (B,).

        ``log_prob`` is the model's log-density of the returned audio (at temperature 1), the
        same number :meth:`log_prob` gives for it. ``temperature`` scales the noise about the
        base mean (an excitation is not tempered).
        """
        self._checked(mel)
        z = self._scaled_noise(mel, temperature, noise)
        x, log_det = self.decode(mel, z, naive=naive)
        return x, standard_normal_log_prob(z) - log_det

    def sample(
        self,
        mel: torch.Tensor,
        noise: torch.Tensor | None = None,
        temperature: float = 1.0,
        naive: bool = False,
    ) -> torch.Tensor:
        """mel (B, n_mels, F) -> audio (B, T); see :meth:`sample_with_log_prob`."""
        return self.sample_with_log_prob(mel, noise, temperature, naive)[0]

    def sample_with_conditionals(
        self, mel: torch.Tensor, noise: torch.Tensor | None = None, temperature: float = 1.0
    ):
        """IAF: the sample of :meth:`decode` and its per-step Gaussians ``N(M_t, S_t^2)`` given
        ``z_{<t}``. Returns audio (B, T), log_prob (B,), mean (B, T), log_scale (B, T)."""
        self._checked(mel)
        z = self._scaled_noise(mel, temperature, noise)
        context, mean = self.conditioning(mel)
        return self.flow.sample_with_conditionals(z, context, base_mean=mean)

    def log_prob(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """audio (B, T), mel (B, n_mels, F) with T = F * hop -> log p(audio | mel) (B,) nats.

        One parallel pass for a MAF; sequential inversion for an IAF (slow: tests, evaluation).
        """
        self._checked(mel, audio)
        context, mean = self.conditioning(mel)
        return self.flow.log_prob(audio, context, base_mean=mean)

    def gaussian_conditionals(self, audio: torch.Tensor, mel: torch.Tensor):
        """MAF: ``mu_t, log_sigma_t`` of ``p(x_t | x_{<t}, mel)``, each (B, T), in one pass."""
        self._checked(mel, audio)
        context, _ = self.conditioning(mel)
        return self.flow.gaussian_conditionals(audio, context)


class Teacher(AudioFlow):
    """Conditional MAF over the waveform: exact likelihood in one parallel pass per layer.

    With ``teacher.long_term_taps`` it owns the pitch predictor its long-term predictor reads
    (trained in stage one against YIN; the student copies it)."""

    kind = "teacher"

    def __init__(self, config: Config):
        t = config.teacher
        super().__init__(config, t, (t.wavenet,) * t.num_flows, "maf")
        if self.long_term:
            self.pitch = PitchPredictor(config.audio)


class Student(AudioFlow):
    """Conditional IAF over the waveform: a whole clip from noise in one parallel pass.

    With ``student.harmonic_source`` the base is ``N(source(mel), I)``: a pulse train at the
    F0 predicted from the mel (:mod:`distill.pitch`); without it ``N(0, I)``. Its pitch
    predictor (for the source and the long-term predictor's lags) is the teacher's, copied and
    frozen when the teacher has one, so the two models read the same lags from a mel. With
    ``student.long_term_feedback`` its last flow feeds its output back one pitch period
    (:class:`~distill.flows.linear_prediction.LongTermFeedback`), sampled in blocks.
    """

    kind = "student"

    def __init__(self, config: Config):
        s = config.student
        super().__init__(config, s, s.flows, "iaf")
        if s.long_term_feedback:
            shortest, longest = lag_range(config.audio)
            feedback = LongTermFeedback(s.upsampler_channels, s.long_term_taps, shortest, longest)
            self.flow.layers.append(AffineAutoregressive(feedback, "maf", s.log_scale_min))
        if s.harmonic_source or self.long_term:
            self.pitch = PitchPredictor(config.audio)
        if s.harmonic_source:
            self.source = HarmonicSource(config.audio)
