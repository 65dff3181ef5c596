"""Audio quality and likelihood metrics, each on plain 1-D float arrays in [-1, 1).

What each number is computed on (the report repeats this):

- :func:`pesq_wb`: ITU-T P.862.2 wide-band PESQ (MOS-LQO, 1.04 to 4.64, higher is better) of
  the degraded signal against the reference, both resampled to 16 kHz. It hears phase
  artefacts, which the magnitude-only distances below do not.
- :func:`stoi`: short-time objective intelligibility (0 to 1, higher is better), both signals
  resampled to 16 kHz (pystoi then works at its own 10 kHz internally).
- :func:`mr_stft_distance`: :func:`distill.spectral.multi_resolution_stft` at the clip's own
  sample rate: spectral convergence + mean |log-magnitude| difference (0 for identical signals).
- :func:`log_mel_l1`: mean |difference| of :func:`distill.audio.log_mel` features (natural log),
  over mel bins and frames.
- :func:`mel_cepstral_distortion`: MCD in dB on mel-cepstra c1..c13 (c0, the frame energy,
  excluded), obtained by an orthonormal DCT-II of the natural-log mel *amplitude* taken from
  :func:`distill.audio.log_mel` (a magnitude mel); all frames are compared one to one (no DTW,
  no silence removal), which is right for copy-synthesis, where the output is time-aligned
  with the reference by construction:
  ``MCD = mean_frames (10 / ln 10) * sqrt(2 * sum_{k=1..13} (c_k - c'_k)^2)``.
- :func:`flac_bits_per_sample`: size of a 16-bit FLAC file (libsndfile, in memory), header and
  metadata blocks included, in bits per sample: what a lossless codec needs.
- :func:`nll_bits_per_sample`: a model's ``log p(x)`` in nats turned into bits per sample at
  16-bit, ``-log2 p(x) / T + 15``, directly comparable with FLAC's number.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import soundfile as sf
import torch

from distill.audio import MEL_POWER, log_mel, to_int16
from distill.config import AudioConfig
from distill.errors import AudioError
from distill.spectral import DEFAULT_RESOLUTIONS, multi_resolution_stft

__all__ = [
    "MetricUndefinedError",
    "PESQ_SAMPLE_RATE",
    "MCD_COEFFS",
    "resample",
    "pesq_wb",
    "stoi",
    "mr_stft_distance",
    "log_mel_l1",
    "mel_cepstra",
    "mel_cepstral_distortion",
    "mcd_from_log_mel",
    "flac_bits_per_sample",
    "nll_bits_per_sample",
    "prediction_gain_db",
    "real_time_factor",
]

PESQ_SAMPLE_RATE = 16000
MCD_COEFFS = 13
# PESQ needs a few hundred milliseconds of speech; below this it is not worth asking.
_PESQ_MIN_SECONDS = 0.25
# A reference whose peak stays below ~3 steps of 16-bit PCM is silence for PESQ and STOI.
_SILENCE_PEAK = 1e-4
_MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)


class MetricUndefinedError(AudioError):
    """A metric that cannot be computed on this clip (too short, silent); callers may skip it."""


def _as_array(audio, name: str) -> np.ndarray:
    x = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    x = np.asarray(x, dtype=np.float64).squeeze()
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a mono signal of shape (T,), found {x.shape}")
    if x.size == 0:
        raise AudioError(f"{name}: empty audio; nothing to measure")
    if not np.isfinite(x).all():
        raise AudioError(f"{name}: audio holds NaN or infinite samples")
    return x


def _pair(reference, degraded) -> tuple[np.ndarray, np.ndarray]:
    ref, deg = _as_array(reference, "reference"), _as_array(degraded, "degraded")
    if ref.shape != deg.shape:
        raise ValueError(
            f"reference and degraded audio must have the same length for time-aligned "
            f"metrics, found {ref.size} and {deg.size} samples"
        )
    return ref, deg


def _check_not_silent(ref: np.ndarray, metric: str) -> None:
    if np.abs(ref).max() < _SILENCE_PEAK:
        raise MetricUndefinedError(
            f"{metric} is undefined on a silent reference clip (peak below {_SILENCE_PEAK:g}); "
            "leave silent clips out of the evaluation"
        )


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality); a no-op at equal rates."""
    if orig_sr == target_sr:
        return np.asarray(audio, dtype=np.float64)
    import librosa

    return librosa.resample(
        np.asarray(audio, dtype=np.float64), orig_sr=orig_sr, target_sr=target_sr
    )


def pesq_wb(reference, degraded, sample_rate: int) -> float:
    """Wide-band PESQ (MOS-LQO) at 16 kHz; raises :class:`MetricUndefinedError` when PESQ cannot
    score the clip (shorter than 0.25 s, or no speech found in the reference, e.g. silence)."""
    from pesq import NoUtterancesError, PesqError, pesq

    ref, deg = _pair(reference, degraded)
    if ref.size / sample_rate < _PESQ_MIN_SECONDS:
        raise MetricUndefinedError(
            f"PESQ needs at least {_PESQ_MIN_SECONDS} s of audio, found "
            f"{ref.size / sample_rate:.3f} s; evaluate longer clips"
        )
    _check_not_silent(ref, "PESQ")
    ref = resample(ref, sample_rate, PESQ_SAMPLE_RATE)
    deg = resample(deg, sample_rate, PESQ_SAMPLE_RATE)
    try:
        return float(pesq(PESQ_SAMPLE_RATE, ref, deg, "wb"))
    except NoUtterancesError as err:
        raise MetricUndefinedError(
            "PESQ found no speech in the reference (silent or near-silent clip); "
            "PESQ is undefined for it"
        ) from err
    except PesqError as err:
        raise MetricUndefinedError(f"PESQ could not score this clip: {err}") from err


def stoi(reference, degraded, sample_rate: int) -> float:
    """STOI (0..1) at 16 kHz; raises :class:`MetricUndefinedError` when fewer than 30 non-silent
    frames remain (pystoi would otherwise return a meaningless 1e-5)."""
    from pystoi import stoi as _stoi

    ref, deg = _pair(reference, degraded)
    _check_not_silent(ref, "STOI")
    ref = resample(ref, sample_rate, PESQ_SAMPLE_RATE)
    deg = resample(deg, sample_rate, PESQ_SAMPLE_RATE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(_stoi(ref, deg, PESQ_SAMPLE_RATE, extended=False))
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        raise MetricUndefinedError(
            "STOI needs about 0.4 s of non-silent audio (30 frames); this clip is too short "
            "or too quiet"
        )
    return value


def mr_stft_distance(reference, degraded, resolutions=DEFAULT_RESOLUTIONS) -> dict[str, float]:
    """Multi-resolution STFT distance: ``{"sc", "mag", "total" = sc + mag}`` (0 if identical)."""
    ref, deg = _pair(reference, degraded)
    with torch.no_grad():
        out = multi_resolution_stft(
            torch.from_numpy(deg).float(), torch.from_numpy(ref).float(), resolutions
        )
    sc, mag = float(out["sc"]), float(out["mag"])
    return {"sc": sc, "mag": mag, "total": sc + mag}


def _log_mel(audio: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """(T,) -> (n_mels, T // hop), cropping the clip to whole frames first."""
    usable = audio.size - audio.size % cfg.hop_length
    if usable == 0:
        raise MetricUndefinedError(
            f"a clip of {audio.size} samples is shorter than one mel frame "
            f"(hop_length={cfg.hop_length})"
        )
    with torch.no_grad():
        return log_mel(torch.from_numpy(audio[:usable]).float(), cfg).double().numpy()


def log_mel_l1(reference, degraded, cfg: AudioConfig) -> float:
    """Mean |log_mel(reference) - log_mel(degraded)| (natural log, over bins and frames)."""
    ref, deg = _pair(reference, degraded)
    return float(np.abs(_log_mel(ref, cfg) - _log_mel(deg, cfg)).mean())


def mel_cepstra(
    log_mel_features: np.ndarray, n_coeffs: int = MCD_COEFFS, mel_power: float = MEL_POWER
) -> np.ndarray:
    """Mel-cepstra c1..c_n (c0 dropped) of a natural-log mel spectrogram, per frame.

    log_mel_features: (n_mels, F) -> (F, n_coeffs). The input is divided by ``mel_power``
    (1 for a magnitude mel, as :func:`distill.audio.log_mel` computes; 2 for a power mel) so
    that the cepstra are those of the log *amplitude*, as the MCD constant assumes.
    """
    from scipy.fft import dct

    x = np.asarray(log_mel_features, dtype=np.float64) / mel_power
    if n_coeffs >= x.shape[0]:
        raise ValueError(f"n_coeffs={n_coeffs} must be smaller than n_mels={x.shape[0]}")
    c = dct(x, type=2, norm="ortho", axis=0)  # (n_mels, F)
    return c[1 : n_coeffs + 1].T


def mel_cepstral_distortion(
    reference, degraded, cfg: AudioConfig, n_coeffs: int = MCD_COEFFS
) -> float:
    """MCD in dB on c1..c_n of :func:`distill.audio.log_mel`, frame-aligned (no DTW)."""
    ref, deg = _pair(reference, degraded)
    return mcd_from_log_mel(_log_mel(ref, cfg), _log_mel(deg, cfg), n_coeffs)


def mcd_from_log_mel(
    log_mel_ref: np.ndarray,
    log_mel_deg: np.ndarray,
    n_coeffs: int = MCD_COEFFS,
    mel_power: float = MEL_POWER,
) -> float:
    """MCD (dB) between two aligned (n_mels, F) natural-log mel spectrograms:
    ``mean_frames 10 / ln 10 * sqrt(2 * sum_{k=1..n} (c_k - c'_k)^2)``."""
    if np.shape(log_mel_ref) != np.shape(log_mel_deg):
        raise ValueError(
            f"log-mels must be frame-aligned with the same shape, found "
            f"{np.shape(log_mel_ref)} and {np.shape(log_mel_deg)}"
        )
    c_ref = mel_cepstra(log_mel_ref, n_coeffs, mel_power)
    c_deg = mel_cepstra(log_mel_deg, n_coeffs, mel_power)
    return float((_MCD_SCALE * np.sqrt(((c_ref - c_deg) ** 2).sum(axis=1))).mean())


def flac_bits_per_sample(audio, sample_rate: int) -> float:
    """Bits per sample of the clip as 16-bit FLAC (in memory; header and metadata included).

    The clip is quantised to the 16-bit grid first (``round(x * 32768)``, clipped), the same
    grid on which :func:`nll_bits_per_sample` counts a model's bits.
    """
    pcm = to_int16(_as_array(audio, "audio"))
    buffer = io.BytesIO()
    sf.write(buffer, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getbuffer().nbytes * 8.0 / pcm.size


def nll_bits_per_sample(log_prob_nats, num_samples: int):
    """``-log2 p(x) / T + 15``: a density in nats (on audio in [-1, 1)) as bits per 16-bit
    sample, where 2^-15 is the width of one quantisation bin. Works on floats and tensors."""
    return -log_prob_nats / (num_samples * math.log(2.0)) + 15.0


def prediction_gain_db(signal_energy, residual_energy):
    """``10 log10(sum x^2 / sum (x - mu)^2)``: how far below the signal a one-step predictor's
    residual lies, in dB (a codec's measure; sums over all samples, so loud ones dominate).
    Works on floats and on tensors (no host sync inside a training step)."""
    if isinstance(signal_energy, torch.Tensor):
        return 10.0 * torch.log10(signal_energy / residual_energy.clamp_min(1e-30))
    return 10.0 * math.log10(signal_energy / max(residual_energy, 1e-30))


def real_time_factor(compute_seconds: float, audio_seconds: float) -> float:
    """Compute time / audio duration: below 1 is faster than real time."""
    return compute_seconds / audio_seconds
