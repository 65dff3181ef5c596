"""Baselines a neural vocoder must beat: Griffin-Lim from the same log-mel.

:func:`griffin_lim` inverts :func:`distill.audio.log_mel` with librosa's mel inversion using the
very settings of the feature function, so the baseline hears exactly what the models are
conditioned on:

- ``exp(log_mel)`` undoes the natural log (floored bins come back as ``log_floor``, i.e. silence);
- :func:`librosa.feature.inverse.mel_to_stft` with ``power=MEL_POWER`` (1: a magnitude mel),
  Slaney mel scale and area normalisation, ``fmin``/``fmax``, ``n_fft`` (non-negative least
  squares against the filterbank);
- :func:`librosa.griffinlim` with ``n_fft``/``win_length``/``hop_length``, a Hann window and
  ``center=False`` on the clip padded by ``(n_fft - hop) / 2`` per side, which is how
  ``log_mel`` frames it; the padding is cropped off again, so ``F`` frames give exactly
  ``F * hop`` samples, time-aligned with the original clip.

This is ``librosa.feature.inverse.mel_to_audio`` split in its two steps, because that wrapper
does not pass ``random_state`` to Griffin-Lim and its result would change from run to run.
The lossless-codec baseline (FLAC) is :func:`distill.metrics.flac_bits_per_sample`.
"""

from __future__ import annotations

import numpy as np
import torch

from distill.audio import MEL_POWER
from distill.config import AudioConfig
from distill.errors import InputError

__all__ = ["GRIFFIN_LIM_ITERS", "griffin_lim"]

#: Iteration counts reported by ``distill evaluate``: librosa's default and a well-converged run.
GRIFFIN_LIM_ITERS = (32, 100)


def griffin_lim(log_mel_features, cfg: AudioConfig, n_iter: int = 32, seed: int = 0) -> np.ndarray:
    """Griffin-Lim audio from a natural-log mel magnitude spectrogram.

    log_mel_features: (n_mels, F) tensor or array, as made by :func:`distill.audio.log_mel`.
    Returns (F * hop_length,) float32 in [-1, 1] (clipped), time-aligned with the source clip.
    ``seed`` fixes the random initial phase.
    """
    import librosa

    if torch.is_tensor(log_mel_features):
        log_mel_features = log_mel_features.detach().cpu().numpy()
    mel = np.asarray(log_mel_features, dtype=np.float64)
    if mel.ndim != 2 or mel.shape[0] != cfg.n_mels or mel.shape[1] == 0:
        raise InputError(
            f"Griffin-Lim needs a log-mel of shape (n_mels={cfg.n_mels}, frames>0), found "
            f"{mel.shape}; compute it with distill.audio.log_mel and the same feature config"
        )
    if not np.isfinite(mel).all():
        raise InputError("Griffin-Lim input log-mel holds NaN or Inf; recompute it from audio")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, found {n_iter}")
    frames = mel.shape[1]
    magnitude = librosa.feature.inverse.mel_to_stft(
        np.exp(mel),
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        power=MEL_POWER,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        norm="slaney",
        htk=False,
    )  # (n_fft // 2 + 1, F)
    left = (cfg.n_fft - cfg.hop_length) // 2  # log_mel's left padding
    padded = librosa.griffinlim(
        magnitude,
        n_iter=n_iter,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        n_fft=cfg.n_fft,
        window="hann",
        center=False,
        length=(frames - 1) * cfg.hop_length + cfg.n_fft,
        random_state=seed,
    )
    audio = padded[left : left + frames * cfg.hop_length]
    return np.clip(audio, -1.0, 1.0).astype(np.float32)
