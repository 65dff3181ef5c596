"""What a listener hears, on signals whose answer is known: CREPE pitch and voicing, loudness,
DNSMOS, and how each says why when it cannot score a clip."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from distill import listening, perceptual
from distill.metrics import MetricUndefinedError

SR = 16000


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """CREPE tiny on a few seconds runs as fast on one thread, and OpenMP spin-waits cost much
    CPU time when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tone(f0: float, seconds: float = 1.0, sr: int = SR, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return amplitude * np.sin(2 * np.pi * f0 * t)


def white_noise(seconds: float = 1.0, sr: int = SR, seed: int = 0) -> np.ndarray:
    return 0.3 * np.random.default_rng(seed).standard_normal(int(seconds * sr))


# --- CREPE ---------------------------------------------------------------------------------------


def test_crepe_forward_with_1d_convolutions_equals_torchcrepe():
    model = perceptual._crepe()
    frames = torch.randn(64, 1024)
    frames = (frames - frames.mean(1, keepdim=True)) / frames.std(1, keepdim=True)
    with torch.inference_mode():
        torch.testing.assert_close(
            perceptual.crepe_salience(model, frames), model(frames), atol=1e-5, rtol=1e-4
        )


@pytest.mark.parametrize("sr", [16000, 22050])
def test_pure_tone_is_voiced_at_its_frequency(sr):
    track = perceptual.pitch_track(tone(220.0, sr=sr), sr)
    assert track.f0.size == 1 + SR // 160  # one frame every 10 ms at 16 kHz, centred
    assert track.voiced.mean() > 0.95
    cents = 1200 * np.log2(np.median(track.f0[track.voiced]) / 220.0)
    assert abs(cents) < 10


def test_tone_100_cents_up_is_100_cents_of_pitch_error():
    reference = perceptual.pitch_track(tone(200.0), SR)
    shifted = perceptual.pitch_track(tone(200.0 * 2 ** (100 / 1200)), SR)
    values, undefined = perceptual.pitch_metrics(reference, shifted)
    assert undefined == {}
    assert values["pitch_median_cents"] == pytest.approx(100, abs=10)
    assert values["pitch_rms_cents"] == pytest.approx(100, abs=10)
    assert values["voicing_f1"] > 0.95


def test_identical_signals_have_no_pitch_error_and_perfect_voicing():
    track = perceptual.pitch_track(tone(150.0), SR)
    again = perceptual.pitch_track(tone(150.0), SR)  # deterministic: no dither in the decoder
    values, undefined = perceptual.pitch_metrics(track, again)
    assert undefined == {}
    assert values["pitch_median_cents"] == 0.0 and values["pitch_rms_cents"] == 0.0
    assert values["voicing_f1"] == 1.0 and values["periodicity_rmse"] == 0.0


def test_white_noise_is_not_voiced():
    noise = perceptual.pitch_track(white_noise(), SR)
    assert noise.voiced.mean() < 0.05
    values, _ = perceptual.pitch_metrics(perceptual.pitch_track(tone(200.0), SR), noise)
    assert values["voicing_f1"] < 0.1
    assert values["voiced_fraction"] < 0.05
    assert values["periodicity_rmse"] > 0.3  # a tone is periodic, noise is not


def test_silence_and_short_clips_say_why():
    silent = perceptual.pitch_track(np.zeros(SR), SR)
    assert silent.silent.all() and not silent.voiced.any()
    assert (silent.periodicity == 0).all()  # silent frames never reach the network
    values, undefined = perceptual.pitch_metrics(silent, perceptual.pitch_track(tone(200.0), SR))
    assert values["voicing_f1"] is None and "no voiced frame" in undefined["voicing_f1"]
    assert values["periodicity_rmse"] is None and "silent" in undefined["periodicity_rmse"]
    with pytest.raises(MetricUndefinedError, match="pitch needs at least"):
        perceptual.pitch_track(tone(200.0, seconds=0.05), SR)


# --- loudness ------------------------------------------------------------------------------------


def test_loudness_of_identical_scaled_and_padded_signals():
    x = tone(1000.0, amplitude=0.5)
    assert perceptual.loudness_difference_db(x, x, SR) == 0.0
    assert perceptual.loudness_difference_db(x, 0.5 * x, SR) == pytest.approx(-6.0206, abs=1e-3)
    # A-weighting is 0 dB at 1 kHz: the level is the RMS level in dBFS, 20 log10(0.5 / sqrt 2)
    assert perceptual.loudness_db(x, SR) == pytest.approx(-9.031, abs=0.01)
    # silence before and after does not dilute the level
    padded = np.concatenate([np.zeros(SR // 2), x, np.zeros(SR // 2)])
    assert perceptual.loudness_db(padded, SR) == pytest.approx(-9.031, abs=0.01)


def test_loudness_is_a_weighted():
    # A-weighting is about -19 dB at 100 Hz: a low hum is quieter than a 1 kHz tone of equal RMS
    diff = perceptual.loudness_difference_db(tone(1000.0), tone(100.0), SR)
    assert diff == pytest.approx(-19.1, abs=0.5)


def test_loudness_of_silence_is_undefined():
    with pytest.raises(MetricUndefinedError, match="silent"):
        perceptual.loudness_difference_db(np.zeros(SR), tone(200.0), SR)
    with pytest.raises(MetricUndefinedError, match="silent"):
        perceptual.loudness_db(np.zeros(100), SR)  # shorter than one 20 ms frame, and silent


# --- DNSMOS --------------------------------------------------------------------------------------


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """A pulse train with a gliding F0 through two formant resonators, syllable-modulated."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(120 + 20 * np.sin(2 * np.pi * 2 * t)) / SR
    source = (np.sin(phase) > 0.97).astype(float) + 0.01 * rng.standard_normal(t.size)
    y = np.zeros_like(t)
    for freq, bandwidth in ((700, 130), (1200, 90)):
        r = np.exp(-np.pi * bandwidth / SR)
        y += lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * freq / SR), r * r], source)
    y *= 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    return 0.5 * y / np.abs(y).max()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("requests") is None, reason="speechmos needs requests")
def test_dnsmos_equals_the_reference_implementation():
    """speechmos runs Microsoft's procedure; ours agrees wherever both score the same windows:
    a clip that tiles to one window (2.3 s -> 9.2 s), and a long clip with two hops (11.2 s)."""
    from speechmos import dnsmos as reference

    for seconds in (2.3, 11.2):
        x = speech_like(seconds)
        ours = perceptual.dnsmos(x, SR)
        theirs = reference.run(x.astype(np.float32), SR)
        for key in ("sig", "bak", "ovrl"):
            assert ours[key] == pytest.approx(float(theirs[f"{key}_mos"]), abs=1e-4), key
        assert all(1.0 <= v <= 5.0 for v in ours.values())


def test_dnsmos_refuses_short_and_silent_clips():
    with pytest.raises(MetricUndefinedError, match="at least 0.5 s"):
        perceptual.dnsmos(tone(200.0, seconds=0.3), SR)
    with pytest.raises(MetricUndefinedError, match="silent"):
        perceptual.dnsmos(np.zeros(SR), SR)


def test_a_missing_package_is_a_reason_not_a_failure(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "onnxruntime" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    perceptual._dnsmos_session.cache_clear()
    try:
        with pytest.raises(MetricUndefinedError, match="onnxruntime.*pip install"):
            perceptual.dnsmos(tone(200.0), SR)
        heard = listening.hear(tone(200.0), SR)
        assert heard.dnsmos is None and "onnxruntime" in heard.undefined["dnsmos_ovrl"]
        assert heard.track is not None  # pitch is still measured
    finally:
        perceptual._dnsmos_session.cache_clear()


# --- one clip, every system ----------------------------------------------------------------------


def test_listen_to_clip_scores_every_system_and_never_fails():
    ref = tone(200.0, seconds=0.8)
    systems = {
        "same": ref.copy(),
        "quieter": 0.5 * ref,
        "noise": white_noise(0.8),
        "nan": np.full(ref.size, np.nan),
    }
    values, undefined, tracks = listening.listen_to_clip(ref, systems, SR)
    assert list(values) == ["real", "same", "quieter", "noise", "nan"]
    assert set(values["same"]) == set(listening.LISTENING_KEYS)
    assert values["same"]["pitch_median_cents"] == 0.0
    assert values["same"]["loudness_diff_db"] == 0.0
    assert values["quieter"]["loudness_diff_db"] == pytest.approx(-6.02, abs=0.01)
    assert values["quieter"]["voicing_f1"] > 0.95
    assert values["noise"]["voicing_f1"] < 0.1
    assert all(v is None for v in values["nan"].values())
    assert set(undefined["nan"]) == set(listening.LISTENING_KEYS)
    assert "NaN" in undefined["nan"]["dnsmos_ovrl"]
    assert tracks["nan"] is None and tracks["real"] is not None
