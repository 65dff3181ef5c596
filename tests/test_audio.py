"""Features and audio I/O: the log-mel is right, aligned and matches librosa; bad files fail."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from distill.audio import (
    QUANT_STEP,
    from_int16,
    load_audio,
    log_mel,
    quantize_16bit,
    save_wav,
    silence_log_mel,
    to_int16,
    trim_and_normalize,
)
from distill.config import AudioConfig
from distill.errors import AudioError, ConfigError

CFG = AudioConfig()


def _tone(freq: float, seconds: float = 0.5, sr: int = CFG.sample_rate) -> torch.Tensor:
    n = int(sr * seconds) // CFG.hop_length * CFG.hop_length
    return 0.5 * torch.sin(2 * torch.pi * freq * torch.arange(n, dtype=torch.float64) / sr)


@pytest.mark.parametrize("freq", [250.0, 1000.0, 3000.0, 6500.0])
def test_tone_peaks_in_the_mel_bin_whose_centre_is_nearest(freq):
    mel = log_mel(_tone(freq), CFG)  # (n_mels, F)
    centres = librosa.mel_frequencies(CFG.n_mels + 2, fmin=CFG.fmin, fmax=CFG.fmax)[1:-1]
    expected = int(np.argmin(np.abs(centres - freq)))
    assert int(mel[:, 2:-2].mean(dim=1).argmax()) == expected


def test_matches_librosa_melspectrogram():
    """Same padding, same Slaney filters, magnitude (power 1). Tolerance: max |diff| of the
    natural-log mel < 1e-4 (measured 1.3e-5, float64 and float32 alike, since librosa builds
    its filterbank in float32); 1e-4 in log-magnitude units is 0.0009 dB."""
    rng = np.random.default_rng(0)
    n = 40 * CFG.hop_length
    t = np.arange(n) / CFG.sample_rate
    x = 0.3 * np.sin(2 * np.pi * (200 + 3000 * t) * t) + 0.05 * rng.standard_normal(n)
    pad = (CFG.n_fft - CFG.hop_length) // 2
    ref = librosa.feature.melspectrogram(
        y=np.pad(x, pad, mode="reflect"),
        sr=CFG.sample_rate,
        n_fft=CFG.n_fft,
        hop_length=CFG.hop_length,
        win_length=CFG.win_length,
        window="hann",
        center=False,
        power=1.0,
        n_mels=CFG.n_mels,
        fmin=CFG.fmin,
        fmax=CFG.fmax,
        htk=False,
        norm="slaney",
    )
    ref = np.log(np.maximum(ref, CFG.log_floor))
    ours64 = log_mel(torch.from_numpy(x), CFG).numpy()
    ours32 = log_mel(torch.from_numpy(x).float(), CFG).numpy()
    assert ours64.shape == ref.shape == (CFG.n_mels, 40)
    assert np.abs(ours64 - ref).max() < 1e-4
    assert np.abs(ours32 - ref).max() < 1e-4


@pytest.mark.parametrize("frames", [1, 2, 3, 5, 17, 100])
def test_every_clip_length_gives_t_equals_f_times_hop(frames):
    audio = torch.randn(2, 3, frames * CFG.hop_length)
    assert log_mel(audio, CFG).shape == (2, 3, CFG.n_mels, frames)


@pytest.mark.parametrize("length", [0, 100, 257, 1000])
def test_length_not_a_multiple_of_hop_is_an_error(length):
    with pytest.raises(ValueError, match="hop_length=256"):
        log_mel(torch.randn(length), CFG)


def test_frame_f_is_centred_on_sample_f_hop_plus_half_hop():
    frames = 12
    for f in (3, 6, 8):
        x = torch.zeros(frames * CFG.hop_length, dtype=torch.float64)
        x[f * CFG.hop_length + CFG.hop_length // 2] = 1.0
        energy = log_mel(x, CFG).exp().sum(dim=0)  # (F,)
        assert int(energy.argmax()) == f
        assert torch.allclose(energy[f - 1], energy[f + 1])  # symmetric around the centre


def test_batched_equals_per_item_and_gradients_flow():
    audio = torch.randn(3, 20 * CFG.hop_length, dtype=torch.float64, requires_grad=True)
    batched = log_mel(audio, CFG)
    for i in range(3):
        torch.testing.assert_close(batched[i], log_mel(audio[i], CFG))
    batched.sum().backward()
    assert audio.grad is not None and torch.isfinite(audio.grad).all()
    assert audio.grad.abs().sum() > 0


def test_silence_is_the_log_floor():
    zeros = torch.zeros(4 * CFG.hop_length)
    torch.testing.assert_close(log_mel(zeros, CFG), silence_log_mel(CFG, 4))


def test_invalid_feature_config_is_a_config_error():
    with pytest.raises(ConfigError, match="fmax"):
        AudioConfig(sample_rate=8000, fmax=8000.0)


# --- I/O --------------------------------------------------------------------------------------


def test_load_mixes_to_mono_and_resamples(tmp_path):
    sr = 44100
    t = np.arange(sr // 2) / sr
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.4
    path = tmp_path / "tone.flac"
    sf.write(path, stereo.astype(np.float32), sr, subtype="PCM_16")
    audio = load_audio(path, CFG)
    assert audio.dtype == torch.float32 and audio.ndim == 1
    assert audio.shape[0] == pytest.approx(CFG.sample_rate / 2, abs=2)
    assert audio.abs().max() == pytest.approx(0.4, abs=0.02)


def test_save_is_16_bit_clipped_atomic_and_round_trips(tmp_path):
    x = torch.tensor([0.0, 0.5, -0.5, 1.5, -1.5, 1.0 - QUANT_STEP, QUANT_STEP / 3])
    path = save_wav(tmp_path / "out.wav", x, 16000)
    info = sf.info(path)
    assert (info.samplerate, info.subtype, info.channels) == (16000, "PCM_16", 1)
    back = load_audio(path, AudioConfig(sample_rate=16000))
    torch.testing.assert_close(back, quantize_16bit(x.clamp(-1, 1)), atol=0, rtol=0)
    assert back[3] == 1.0 - QUANT_STEP and back[4] == -1.0
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # no temp file left behind


def test_quantize_is_idempotent_and_matches_int16():
    # The grid's top is 1 - QUANT_STEP, so the last half step below 1.0 clips (error < 1 step);
    # the edge values are included explicitly rather than left to chance.
    top = 1.0 - QUANT_STEP / 4
    x = torch.cat(
        [
            torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 2 - 1,
            torch.tensor([top, -1.0, 1.0 - QUANT_STEP]),
        ]
    )
    q = quantize_16bit(x)
    torch.testing.assert_close(quantize_16bit(q), q, atol=0, rtol=0)
    torch.testing.assert_close(from_int16(to_int16(x)), q, atol=0, rtol=0)
    inside = x < 1.0 - QUANT_STEP / 2
    assert (q - x)[inside].abs().max() <= QUANT_STEP / 2
    assert q[x == top].item() == 1.0 - QUANT_STEP
    assert (q - x).abs().max() < QUANT_STEP


def test_trim_and_normalize_trims_silence_and_normalises_the_peak():
    sr = CFG.sample_rate
    tone = 0.2 * torch.sin(2 * torch.pi * 300 * torch.arange(sr) / sr)
    padded = torch.cat([torch.zeros(sr), tone, torch.zeros(sr)])
    out = trim_and_normalize(padded, sr, CFG)
    assert sr * 0.9 < out.shape[0] < sr * 1.3
    assert out.abs().max() == pytest.approx(CFG.peak, abs=1e-6)
    loud = trim_and_normalize(padded, sr, AudioConfig(normalize="loudness", trim_top_db=0))
    assert loud.shape == padded.shape and loud.abs().max() <= CFG.peak + 1e-6


def _write_bad(tmp_path, kind: str):
    path = tmp_path / f"{kind}.wav"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not audio at all\n" * 20)
    elif kind == "zero_samples":
        sf.write(path, np.zeros((0,), dtype=np.float32), 22050)
    elif kind == "nan":
        sf.write(path, np.array([0.1, np.nan, 0.2, np.inf], dtype=np.float32), 22050, "FLOAT")
    elif kind == "low_rate":
        sf.write(path, np.zeros(800, dtype=np.float32), 8000)
    elif kind == "silent":
        sf.write(path, np.zeros(22050, dtype=np.float32), 22050)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "empty"),
        ("text", "not audio"),
        ("zero_samples", "zero samples"),
        ("nan", "NaN or Inf"),
        ("low_rate", "8000 Hz"),
        ("silent", "silent"),
    ],
)
def test_bad_files_raise_one_clear_error_naming_the_file(tmp_path, kind, message):
    path = tmp_path / "missing.wav" if kind == "missing" else _write_bad(tmp_path, kind)
    with pytest.raises(AudioError, match=message) as info:
        load_audio(path, CFG, preprocess=True)
    assert str(path) in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_log_mel_on_gpu_matches_cpu():
    x = torch.randn(2, 50 * CFG.hop_length)
    torch.testing.assert_close(log_mel(x.cuda(), CFG).cpu(), log_mel(x, CFG), atol=1e-3, rtol=0)
