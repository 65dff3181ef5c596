"""Spectral distance, quality metrics and the Griffin-Lim baseline on synthetic signals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from distill import metrics
from distill.audio import log_mel
from distill.baselines import griffin_lim
from distill.config import AudioConfig
from distill.errors import AudioError, InputError
from distill.spectral import multi_resolution_stft, stft_magnitude

SR = 22050
CFG = AudioConfig(sample_rate=SR)
NOISE_LEVELS = (0.002, 0.01, 0.05)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Short FFTs gain nothing from two threads, and OpenMP spin-waits cost much CPU time when
    other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def speech_like(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated pulse train through three formant resonators.

    Length is a whole number of hops, so features and audio align exactly.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * sr) // CFG.hop_length * CFG.hop_length
    t = np.arange(n) / sr
    phase = 2 * np.pi * np.cumsum(120 + 20 * np.sin(2 * np.pi * 3 * t)) / sr
    source = (np.sin(phase) > 0.95).astype(float) + 0.02 * rng.standard_normal(n)
    y = np.zeros(n)
    for freq, bandwidth in ((700, 130), (1200, 70), (2600, 160)):
        r = math.exp(-math.pi * bandwidth / sr)
        theta = 2 * math.pi * freq / sr
        y += lfilter([1 - r], [1, -2 * r * math.cos(theta), r * r], source)
    y *= 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)  # syllables; never fully silent
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return speech_like(1.0)


def noisy(x: np.ndarray, level: float, seed: int = 1) -> np.ndarray:
    return x + level * np.random.default_rng(seed).standard_normal(x.size).astype(np.float32)


def assert_increasing(values):
    assert all(a < b for a, b in zip(values, values[1:])), values


def assert_decreasing(values):
    assert all(a > b for a, b in zip(values, values[1:])), values


# --- spectral ---------------------------------------------------------------------------------


def test_mr_stft_is_zero_for_identical_and_grows_with_noise(clip):
    x = torch.from_numpy(clip)
    same = multi_resolution_stft(x, x)
    assert same["sc"].item() == 0.0 and same["mag"].item() == 0.0
    values = [multi_resolution_stft(torch.from_numpy(noisy(clip, s)), x) for s in NOISE_LEVELS]
    assert_increasing([v["sc"].item() for v in values])
    assert_increasing([v["mag"].item() for v in values])


def test_mr_stft_batch_matches_per_item_and_mean():
    torch.manual_seed(0)
    target = torch.randn(3, 4096)
    pred = target + 0.1 * torch.randn(3, 4096)
    per_clip = multi_resolution_stft(pred, target, reduction="none")
    assert per_clip["sc"].shape == (3,)
    for i in range(3):
        single = multi_resolution_stft(pred[i : i + 1], target[i : i + 1])
        torch.testing.assert_close(single["sc"], per_clip["sc"][i])
        torch.testing.assert_close(single["mag"], per_clip["mag"][i])
    batch = multi_resolution_stft(pred, target)
    torch.testing.assert_close(batch["sc"], per_clip["sc"].mean())


def test_mr_stft_gradients_are_finite_on_silence_and_at_the_optimum():
    for target in (torch.zeros(2, 4096), torch.randn(2, 4096)):
        pred = target.clone().requires_grad_(True)
        out = multi_resolution_stft(pred, target)
        (out["sc"] + out["mag"]).backward()
        assert torch.isfinite(pred.grad).all()
    pred = torch.randn(2, 4096, requires_grad=True)
    out = multi_resolution_stft(pred, torch.randn(2, 4096))
    (out["sc"] + out["mag"]).backward()
    assert pred.grad.abs().sum() > 0


def test_mr_stft_is_float32_under_bf16_autocast():
    x = torch.randn(2, 4096)
    y = x + 0.05 * torch.randn(2, 4096)
    reference = multi_resolution_stft(x.bfloat16().float(), y.bfloat16().float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = multi_resolution_stft(x.bfloat16(), y.bfloat16())
    assert out["sc"].dtype == torch.float32 and out["mag"].dtype == torch.float32
    torch.testing.assert_close(out["sc"], reference["sc"])
    assert stft_magnitude(x.bfloat16(), 512, 128).dtype == torch.float32


def test_mr_stft_rejects_bad_shapes_and_too_short_audio():
    with pytest.raises(ValueError, match="same shape"):
        multi_resolution_stft(torch.zeros(1, 4096), torch.zeros(1, 4000))
    with pytest.raises(ValueError, match="too short"):
        multi_resolution_stft(torch.zeros(1, 800), torch.zeros(1, 800))


# --- quality metrics --------------------------------------------------------------------------


def test_pesq_and_stoi_are_best_for_identical_and_fall_with_noise(clip):
    pesq = [metrics.pesq_wb(clip, clip, SR)]
    stoi = [metrics.stoi(clip, clip, SR)]
    for level in NOISE_LEVELS:
        pesq.append(metrics.pesq_wb(clip, noisy(clip, level), SR))
        stoi.append(metrics.stoi(clip, noisy(clip, level), SR))
    assert pesq[0] > 4.5 and stoi[0] > 0.999
    assert_decreasing(pesq)
    assert_decreasing(stoi)


def test_distances_are_zero_for_identical_and_grow_with_noise(clip):
    assert metrics.log_mel_l1(clip, clip, CFG) == 0.0
    assert metrics.mel_cepstral_distortion(clip, clip, CFG) == 0.0
    assert metrics.mr_stft_distance(clip, clip)["total"] == 0.0
    assert_increasing([metrics.log_mel_l1(clip, noisy(clip, s), CFG) for s in NOISE_LEVELS])
    assert_increasing(
        [metrics.mel_cepstral_distortion(clip, noisy(clip, s), CFG) for s in NOISE_LEVELS]
    )
    assert_increasing(
        [metrics.mr_stft_distance(clip, noisy(clip, s))["total"] for s in NOISE_LEVELS]
    )


def test_mcd_definition_on_a_known_cepstral_offset():
    """A pure c1 offset of d in log amplitude gives MCD = 10/ln10 * sqrt(2) * d."""
    from scipy.fft import idct

    frames = 5
    base = np.random.default_rng(0).standard_normal((40, frames))
    ceps = np.zeros((40, frames))
    ceps[1] = 0.3
    shifted = base + idct(ceps, type=2, norm="ortho", axis=0)
    diff = metrics.mel_cepstra(shifted) - metrics.mel_cepstra(base)
    np.testing.assert_allclose(diff[:, 0], 0.3, atol=1e-12)
    np.testing.assert_allclose(diff[:, 1:], 0.0, atol=1e-12)
    expected = 10 / math.log(10) * math.sqrt(2) * 0.3  # 1.843 dB
    assert metrics.mcd_from_log_mel(base, shifted) == pytest.approx(expected, rel=1e-9)
    # a power mel holds twice the log amplitude: the same audio difference, the same MCD
    assert metrics.mcd_from_log_mel(2 * base, 2 * shifted, mel_power=2.0) == pytest.approx(
        expected, rel=1e-9
    )


def test_pesq_and_stoi_say_clearly_when_undefined(clip):
    silence = np.zeros_like(clip)
    with pytest.raises(metrics.MetricUndefinedError, match="silent"):
        metrics.pesq_wb(silence, silence, SR)
    with pytest.raises(metrics.MetricUndefinedError, match="silent"):
        metrics.stoi(silence, clip, SR)
    short = clip[: SR // 8]
    with pytest.raises(metrics.MetricUndefinedError, match="at least 0.25 s"):
        metrics.pesq_wb(short, short, SR)
    with pytest.raises(metrics.MetricUndefinedError, match="0.4 s"):
        metrics.stoi(short, short, SR)
    with pytest.raises(AudioError, match="NaN"):
        metrics.pesq_wb(clip, np.full_like(clip, np.nan), SR)
    with pytest.raises(ValueError, match="same length"):
        metrics.stoi(clip, clip[:-10], SR)


def test_flac_bits_order_silence_speech_noise(clip):
    silence = metrics.flac_bits_per_sample(np.zeros(SR), SR)
    speech = metrics.flac_bits_per_sample(clip, SR)
    noise = metrics.flac_bits_per_sample(np.random.default_rng(0).uniform(-1, 1, SR), SR)
    assert silence < 1.0 < speech < 14.0 < noise
    assert noise == pytest.approx(16.0, abs=0.3)  # incompressible: 16 bits plus header


def test_nll_bits_per_sample_of_the_uniform_density_is_16_bits():
    # uniform on [-1, 1): p = 1/2 per sample, so log p(x) = -T ln 2, i.e. 1 + 15 bits/sample
    num_samples = 1000
    assert metrics.nll_bits_per_sample(-num_samples * math.log(2), num_samples) == pytest.approx(
        16.0
    )
    bits = metrics.nll_bits_per_sample(torch.tensor([0.0, -num_samples * math.log(2)]), num_samples)
    torch.testing.assert_close(bits, torch.tensor([15.0, 16.0]))
    assert metrics.real_time_factor(0.5, 2.0) == 0.25


def test_prediction_gain_of_the_optimal_ar1_predictor_matches_the_closed_form():
    # x_t = a x_{t-1} + e_t: stationary variance s_e^2 / (1 - a^2), so the optimal one-step
    # predictor a x_{t-1} gains -10 log10(1 - a^2) dB (7.21 dB at a = 0.9)
    a, n = 0.9, 200_000
    e = np.random.default_rng(0).standard_normal(n)
    x = np.zeros(n)
    for t in range(1, n):
        x[t] = a * x[t - 1] + e[t]
    x = x[1000:]  # past the start-up transient
    residual = x[1:] - a * x[:-1]
    gain = metrics.prediction_gain_db(float(x[1:] @ x[1:]), float(residual @ residual))
    assert gain == pytest.approx(-10 * math.log10(1 - a * a), abs=0.1)
    assert metrics.prediction_gain_db(1.0, 1.0) == 0.0


# --- Griffin-Lim baseline -----------------------------------------------------------------------


def test_griffin_lim_runs_on_a_short_clip_and_is_aligned(clip):
    x = clip[: 24 * CFG.hop_length]  # 0.28 s
    mel = log_mel(torch.from_numpy(x), CFG)
    y = griffin_lim(mel, CFG, n_iter=32, seed=0)
    assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    np.testing.assert_array_equal(y, griffin_lim(mel.numpy(), CFG, n_iter=32, seed=0))
    # magnitudes are what Griffin-Lim reconstructs: far closer than noise of the same level
    rms = float(np.sqrt(np.mean(x**2)))
    assert metrics.log_mel_l1(x, y, CFG) < 0.5 * metrics.log_mel_l1(x, noisy(x, rms), CFG)
    # time alignment: an impulse comes back where it was (within a few samples)
    impulse = np.zeros(40 * CFG.hop_length, dtype=np.float32)
    impulse[5000] = 0.9
    back = np.abs(griffin_lim(log_mel(torch.from_numpy(impulse), CFG), CFG, n_iter=32))
    window = back[4400:5600]
    centre = float((window * np.arange(-600, 600)).sum() / window.sum())
    assert abs(centre) < 16


def test_griffin_lim_rejects_a_wrong_mel():
    with pytest.raises(InputError, match="n_mels=80"):
        griffin_lim(np.zeros((64, 10)), CFG)
    with pytest.raises(InputError, match="NaN"):
        griffin_lim(np.full((80, 10), np.nan), CFG)
