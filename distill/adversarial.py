"""The discriminator that judges the student in stage two, and the least-squares GAN losses.

Density distillation alone copies the teacher, and the teacher's samples carry an innovation
about one prediction gain below the signal, white under the envelope: a spectrum washed out
between the harmonics and the formants. A spectral distance averages that away. A discriminator
sees it (Yamamoto, Song and Kim 2019 put an IAF student into a GAN beside its KL).

:class:`SpectrogramDiscriminator` is UnivNet's multi-resolution spectrogram discriminator (Jang
et al. 2021; Vocos uses the same): one small 2-D convolutional network per STFT resolution, on
the log-magnitude spectrogram, so that every one sees a different time-frequency trade-off.
The losses are LSGAN's (Mao et al. 2017), with HiFi-GAN's feature matching: the L1 distance of
the discriminator's intermediate activations on real and generated audio.

This module is used in training only: the deployed student neither holds nor needs it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from distill.spectral import stft_magnitude

__all__ = [
    "SpectrogramDiscriminator",
    "discriminator_loss",
    "generator_loss",
    "feature_matching_loss",
]

# Judgements: one score map per sub-discriminator; features: every hidden activation of each.
Judgement = tuple[list[torch.Tensor], list[list[torch.Tensor]]]


class _ResolutionDiscriminator(nn.Module):
    """One STFT resolution: log-magnitude (B, 1, K, F) -> a score map and the hidden maps.

    Five weight-normalised convolutions, four of them halving the frequency axis, as UnivNet's.
    """

    def __init__(self, resolution: Sequence[int], channels: int):
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = (int(v) for v in resolution)
        c = channels
        self.layers = nn.ModuleList(
            weight_norm(conv)
            for conv in (
                nn.Conv2d(1, c, (9, 3), padding=(4, 1)),
                nn.Conv2d(c, c, (9, 3), stride=(2, 1), padding=(4, 1)),
                nn.Conv2d(c, c, (9, 3), stride=(2, 1), padding=(4, 1)),
                nn.Conv2d(c, c, (9, 3), stride=(2, 1), padding=(4, 1)),
                nn.Conv2d(c, c, (3, 3), padding=(1, 1)),
            )
        )
        self.out = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))
        self.act = nn.LeakyReLU(0.1)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        mag = stft_magnitude(audio, self.n_fft, self.hop_length, self.win_length)
        x = mag.clamp_min(1e-5).log().unsqueeze(1).to(audio.dtype)  # (B, 1, K, F)
        features = []
        for layer in self.layers:
            x = self.act(layer(x))
            features.append(x)
        x = self.out(x)
        features.append(x)
        return x.flatten(1), features


class SpectrogramDiscriminator(nn.Module):
    """UnivNet's multi-resolution spectrogram discriminator.

    ``resolutions``: ``(n_fft, hop_length, win_length)`` triples, one sub-discriminator each;
    ``channels``: the width of every hidden layer. ``forward(audio (B, T))`` -> (scores, features):
    for each sub-discriminator a score map (B, N) and its list of hidden activations.
    """

    def __init__(self, resolutions: Sequence[Sequence[int]], channels: int = 32):
        super().__init__()
        self.discriminators = nn.ModuleList(
            _ResolutionDiscriminator(r, channels) for r in resolutions
        )

    def forward(self, audio: torch.Tensor) -> Judgement:
        scores, features = [], []
        for d in self.discriminators:
            s, f = d(audio)
            scores.append(s)
            features.append(f)
        return scores, features


def discriminator_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN's discriminator loss ``sum_k mean((D_k(real) - 1)^2) + mean(D_k(fake)^2)``."""
    return sum(
        (r.float() - 1).square().mean() + f.float().square().mean() for r, f in zip(real, fake)
    )


def generator_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN's generator loss ``sum_k mean((D_k(fake) - 1)^2)``."""
    return sum((f.float() - 1).square().mean() for f in fake)


def feature_matching_loss(
    real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]
) -> torch.Tensor:
    """HiFi-GAN's feature matching: ``sum_k sum_l mean|F_kl(real) - F_kl(fake)|``; the real
    features are constants (detached), the gradient reaches the generator through ``fake``."""
    return sum(
        (r.detach().float() - f.float()).abs().mean()
        for rs, fs in zip(real, fake)
        for r, f in zip(rs, fs)
    )
