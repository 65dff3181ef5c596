"""Audio I/O and the one log-mel feature function used by training, inference and evaluation.

Everything that turns a waveform into features goes through :func:`log_mel`, so a model never
sees features computed one way in training and another way at synthesis time. Framing is
chosen so that a clip of ``T = F * hop_length`` samples gives exactly ``F`` frames, frame ``f``
centred on sample ``f * hop + hop / 2``: audio segments and mel frames then align by integer
arithmetic alone (``samples = frames * hop_length``), with no off-by-one padding anywhere else.

Audio in memory is float32 in ``[-1, 1)`` on the 16-bit PCM grid (``k / 32768``); one
quantisation step is :data:`QUANT_STEP` = 2^-15, the bin width used for bits/sample.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio

from distill.config import AudioConfig
from distill.errors import AudioError
from distill.fileio import atomic_output
from distill.precision import at_least_float32

__all__ = [
    "QUANT_STEP",
    "AUDIO_EXTENSIONS",
    "MEL_POWER",
    "frame_padding",
    "network_input",
    "log_mel",
    "silence_log_mel",
    "load_audio",
    "trim_and_normalize",
    "normalize",
    "resample",
    "save_wav",
    "quantize_16bit",
    "to_int16",
    "from_int16",
]

QUANT_STEP = 2.0**-15
"""One 16-bit quantisation step: the dequantisation noise width and the bits/sample bin."""

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
"""Extensions picked up when scanning folders (anything else libsndfile reads also loads)."""

MEL_POWER = 1.0
"""Mel of the STFT *magnitude* (power 1), as in Tacotron 2 / HiFi-GAN style vocoders: the log
of a magnitude spans half the dynamic range of a power spectrum, which keeps the conditioning
inputs well scaled, and ``log_floor=1e-5`` then sits at -100 dB below full scale."""

LOUDNESS_RMS_DB = -23.0
"""Target RMS level (dBFS) of ``normalize="loudness"``; the peak is then limited to ``cfg.peak``."""

# --- features ---------------------------------------------------------------------------------

_MEL_CACHE: dict[tuple, torchaudio.transforms.MelSpectrogram] = {}
_MEL_LOCK = threading.Lock()


def _mel_module(cfg: AudioConfig, device: torch.device, dtype: torch.dtype):
    """One MelSpectrogram (window + filterbank buffers) per (cfg, device, dtype), built once."""
    key = (cfg, str(device), dtype)
    module = _MEL_CACHE.get(key)
    if module is None:
        module = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            f_min=cfg.fmin,
            f_max=cfg.fmax,
            n_mels=cfg.n_mels,
            power=MEL_POWER,
            center=False,
            norm="slaney",
            mel_scale="slaney",
        ).to(device=device, dtype=dtype)
        with _MEL_LOCK:
            module = _MEL_CACHE.setdefault(key, module)
    return module


def frame_padding(cfg: AudioConfig) -> tuple[int, int]:
    """Left/right padding that centres frame ``f`` on sample ``f * hop + hop / 2``."""
    total = cfg.n_fft - cfg.hop_length
    return total // 2, total - total // 2


def log_mel(audio: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """Natural-log Slaney mel magnitude spectrogram, the only feature function of the project.

    audio: (..., T) float tensor on any device, ``T % cfg.hop_length == 0``.
    Returns (..., n_mels, T // hop_length): ``log(max(mel, cfg.log_floor))``.

    The clip is reflect-padded by ``(n_fft - hop) / 2`` on both sides and framed with
    ``center=False``, so frame ``f`` covers ``[f*hop - pad, f*hop - pad + n_fft)``: centred on
    ``f*hop + hop/2``, and ``T = F * hop`` exactly. Clips shorter than the padding (a few
    hundred samples) are zero-padded instead, since reflection needs more input than padding.
    Differentiable (used in spectral losses); half-precision inputs are computed in float32,
    because FFTs in float16/bfloat16 lose the quiet bins that the log floor is about.
    """
    if not torch.is_tensor(audio):
        raise TypeError(f"log_mel expects a torch.Tensor, found {type(audio).__name__}")
    length = audio.shape[-1]
    if length == 0 or length % cfg.hop_length:
        raise ValueError(
            f"log_mel needs a length that is a positive multiple of hop_length="
            f"{cfg.hop_length}, found {length} samples (crop or pad to "
            f"{max(1, length // cfg.hop_length) * cfg.hop_length})"
        )
    audio = at_least_float32(audio)
    lead = audio.shape[:-1]
    x = audio.reshape(-1, 1, length)  # (N, 1, T): F.pad's reflect mode wants a channel axis
    left, right = frame_padding(cfg)
    mode = "reflect" if length > max(left, right) else "constant"
    x = F.pad(x, (left, right), mode=mode).squeeze(1)  # (N, T + n_fft - hop)
    mel = _mel_module(cfg, x.device, x.dtype)(x)  # (N, n_mels, F)
    mel = torch.log(torch.clamp(mel, min=cfg.log_floor))
    return mel.reshape(*lead, cfg.n_mels, length // cfg.hop_length)


def network_input(mel: torch.Tensor) -> torch.Tensor:
    """A log-mel centred and scaled to roughly unit range, as every network reads it.

    Natural-log mel of speech spans about [-11.5, 2] (floor 1e-5); ``(mel + 5) / 3`` lets the
    first convolution train at the usual learning rate.
    """
    return (mel + 5.0) / 3.0


def silence_log_mel(cfg: AudioConfig, num_frames: int, device=None) -> torch.Tensor:
    """(n_mels, num_frames) log-mel of digital silence: every bin is ``log(cfg.log_floor)``."""
    return torch.full((cfg.n_mels, num_frames), float(np.log(cfg.log_floor)), device=device)


# --- 16-bit helpers ---------------------------------------------------------------------------


def to_int16(audio: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1) -> int16 PCM (round to nearest step, clip to [-32768, 32767])."""
    x = audio.detach().cpu().numpy() if torch.is_tensor(audio) else np.asarray(audio)
    return np.clip(np.round(x.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def from_int16(pcm: np.ndarray) -> torch.Tensor:
    """int16 PCM -> float32 tensor on the grid ``k / 32768`` in [-1, 1)."""
    return torch.from_numpy(np.asarray(pcm, dtype=np.float32) / 32768.0)


def quantize_16bit(audio: torch.Tensor) -> torch.Tensor:
    """Snap float audio to the 16-bit grid (what saving and reloading a wav would do).

    audio: (..., T) -> same shape and dtype, values ``k / 32768`` with k in [-32768, 32767].
    """
    return (torch.round(audio * 32768.0).clamp(-32768, 32767) / 32768.0).to(audio.dtype)


# --- loading ----------------------------------------------------------------------------------


def resample(audio: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling (torchaudio windowed sinc), on whatever device ``audio`` is.

    audio: (..., T) -> (..., ceil(T * new_sr / orig_sr)).
    """
    if orig_sr == new_sr:
        return audio
    return torchaudio.functional.resample(audio, orig_sr, new_sr)


def _check_reachable(sr: int, cfg: AudioConfig, path: Path | str) -> None:
    """A file whose Nyquist frequency is below ``cfg.fmax`` has no content in the top mel bands.

    Upsampling cannot invent that band, and a model conditioned on such mels would learn that
    speech has nothing above ``sr / 2``; better to say so than to train on it.
    """
    if sr < 2 * cfg.fmax - 1e-6 and sr < cfg.sample_rate:
        raise AudioError(
            f"{path} is sampled at {sr} Hz, too low for the feature config (sample_rate="
            f"{cfg.sample_rate}, fmax={cfg.fmax:g} needs at least {2 * cfg.fmax:g} Hz); use "
            f"audio recorded at >= {2 * cfg.fmax:g} Hz, or a config with audio.fmax<={sr / 2:g}"
        )


def load_audio(path: str | Path, cfg: AudioConfig, preprocess: bool = False) -> torch.Tensor:
    """Read a file libsndfile understands (wav/flac/ogg/...), mono-mix it, resample to the config.

    Returns (T,) float32 at ``cfg.sample_rate``. With ``preprocess=True`` the clip is also
    trimmed and normalised by :func:`trim_and_normalize`. Every failure is an
    :class:`AudioError` naming the file and what to do, so one bad file in a folder can be
    reported and skipped.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"audio file {path} does not exist; check the path")
    if not path.is_file():
        raise AudioError(f"{path} is not a file; pass an audio file (wav, flac or ogg)")
    if path.stat().st_size == 0:
        raise AudioError(f"{path} is empty (0 bytes); re-export or remove it")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(
            f"{path} is not audio that libsndfile can read ({err}); convert it to wav/flac "
            "(e.g. `sox in.ext out.wav`) or remove it"
        ) from err
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"{path} has zero samples; re-export or remove it")
    if not np.isfinite(data).all():
        raise AudioError(f"{path} contains NaN or Inf samples; re-export or remove it")
    _check_reachable(sr, cfg, path)
    audio = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))  # (T,)
    audio = resample(audio, sr, cfg.sample_rate)
    if preprocess:
        audio = trim_and_normalize(audio, cfg.sample_rate, cfg, name=str(path))
    return audio.float()


def normalize(audio: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """Level normalisation of a (T,) clip per ``cfg.normalize``.

    "peak": scale so ``max|x| = cfg.peak``. "loudness": scale to an RMS of
    :data:`LOUDNESS_RMS_DB` dBFS, then limit the peak to ``cfg.peak`` so nothing clips.
    "none": unchanged. Silence (all zeros) is returned unchanged.
    """
    peak = audio.abs().max()
    if cfg.normalize == "none" or peak <= 0:
        return audio
    if cfg.normalize == "peak":
        return audio * (cfg.peak / peak)
    rms = audio.pow(2).mean().sqrt()
    gain = 10.0 ** (LOUDNESS_RMS_DB / 20.0) / rms
    gain = torch.minimum(gain, cfg.peak / peak)
    return audio * gain


def trim_and_normalize(
    audio: torch.Tensor, sr: int, cfg: AudioConfig, name: str = "audio"
) -> torch.Tensor:
    """Trim leading/trailing silence and normalise the level of a (T,) clip at rate ``sr``.

    Trimming (librosa.effects.trim, ``top_db=cfg.trim_top_db``, 0 disables) uses
    ``n_fft``/``hop_length`` frames so it works at the feature resolution. Raises
    :class:`AudioError` (naming ``name``) when nothing is left, e.g. a silent file.
    """
    if cfg.trim_top_db > 0 and audio.numel() > 0:
        import librosa  # imported lazily: librosa's import is slow and only prepare needs it

        x = audio.detach().cpu().numpy()
        frame = min(cfg.n_fft, max(1, x.shape[-1]))
        _, (start, end) = librosa.effects.trim(
            x, top_db=cfg.trim_top_db, frame_length=frame, hop_length=cfg.hop_length
        )
        audio = audio[..., int(start) : int(end)]
    if audio.numel() == 0 or audio.abs().max() == 0:
        raise AudioError(
            f"{name} is silent (nothing above -{cfg.trim_top_db:g} dB after trimming); "
            "remove it, or set audio.trim_top_db=0 to keep it"
        )
    return normalize(audio, cfg)


# --- saving -----------------------------------------------------------------------------------


def save_wav(path: str | Path, audio: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write 16-bit PCM wav atomically: a temp file in the same folder, then ``os.replace``.

    audio: (T,) or (C, T) float in [-1, 1); values outside are clipped (to ``32767 / 32768``
    at the top), so a model that overshoots gives a clipped file, never a wrapped-around one.
    A killed process leaves either the old file or the new one, never half a file.
    """
    path = Path(path)
    pcm = to_int16(audio)
    if pcm.ndim == 2:
        pcm = pcm.T  # soundfile wants (T, C)
    elif pcm.ndim != 1:
        raise ValueError(f"save_wav expects audio of shape (T,) or (C, T), found {pcm.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        sf.write(tmp, pcm, int(sample_rate), format="WAV", subtype="PCM_16")
    return path
