"""Pitch: YIN targets, the harmonic excitation, and the predictor that learns F0 from the mel."""

from __future__ import annotations

import math

import pytest
import torch

from distill.audio import log_mel
from distill.config import AudioConfig
from distill.pitch import PitchPredictor, fit_predictor, harmonic_excitation, yin

CFG = AudioConfig()  # 22050 Hz, n_fft 1024, hop 256: the demo's features
SR, HOP = CFG.sample_rate, CFG.hop_length


def glottal_like(f0_hz: torch.Tensor) -> torch.Tensor:
    """A sawtooth-ish voiced signal (harmonics falling 1/k) following a per-sample F0 track."""
    phase = 2 * math.pi * torch.cumsum(f0_hz / SR, 0)
    k = torch.arange(1, 30, dtype=torch.float64)[:, None]
    harmonics = torch.sin(k * phase) / k * (k * f0_hz < SR / 2)
    return (0.3 * harmonics.sum(0)).float()


@pytest.mark.parametrize("f0", [70.0, 110.0, 220.0, 400.0])
def test_yin_finds_a_steady_pitch_within_a_few_cents(f0):
    frames = 40
    audio = glottal_like(torch.full((frames * HOP,), f0, dtype=torch.float64))
    est, voiced = yin(audio[None], CFG)
    assert est.shape == voiced.shape == (1, frames)
    inner = slice(3, -3)  # the edge frames see reflection padding
    assert voiced[0, inner].all()
    cents = 1200 * torch.log2(est[0, inner] / f0)
    assert cents.abs().max() < 10, cents


def test_yin_follows_a_glide_and_calls_noise_and_silence_unvoiced():
    frames = 60
    track = torch.linspace(100, 200, frames * HOP, dtype=torch.float64)
    est, voiced = yin(glottal_like(track)[None], CFG)
    centre = track[HOP // 2 :: HOP][:frames].float()
    cents = 1200 * torch.log2(est[0, 4:-4] / centre[4:-4])
    assert voiced[0, 4:-4].all() and cents.abs().max() < 25, cents
    noise = 0.3 * torch.randn(1, frames * HOP, generator=torch.Generator().manual_seed(0))
    silence = torch.zeros(1, frames * HOP)
    batch = torch.cat([noise, silence])
    f0, voiced = yin(batch, CFG)
    assert voiced.float().mean() < 0.05 and (f0[~voiced] == 0).all()


def test_excitation_is_unit_power_harmonic_band_limited_and_gated():
    frames = 40
    f0 = torch.full((1, frames), 150.0)
    gate = torch.ones(1, frames)
    gate[:, frames // 2 :] = 0
    x = harmonic_excitation(f0, gate, CFG)[0].double()
    assert x.shape == (frames * HOP,)
    voiced = x[HOP : (frames // 2 - 1) * HOP]
    assert voiced.square().mean().item() == pytest.approx(1.0, rel=0.05)
    assert x[(frames // 2 + 1) * HOP :].abs().max() == 0
    # the spectrum of the voiced part: peaks at multiples of 150 Hz, nothing above fmax
    window = torch.hann_window(len(voiced), dtype=torch.float64)
    spec = torch.fft.rfft(voiced * window).abs()
    freqs = torch.fft.rfftfreq(len(voiced), 1 / SR)
    peak = freqs[spec[(freqs > 100) & (freqs < 200)].argmax() + int((freqs <= 100).sum())]
    assert peak.item() == pytest.approx(150.0, abs=3)
    above = spec[freqs > CFG.fmax + 200].max()
    assert above < 1e-3 * spec.max()


def test_the_predictor_learns_pitch_and_voicing_from_the_mel():
    """fit_predictor on clips at four pitches with a silent start: pitch classes and voicing."""
    frames = 24
    pitches = [80.0, 120.0, 180.0, 260.0]
    clips = []
    for f0 in pitches:
        audio = glottal_like(torch.full((frames * HOP,), f0, dtype=torch.float64))
        audio[: 6 * HOP] = 0  # unvoiced frames to classify
        clips.append((audio, log_mel(audio, CFG)))
    predictor = PitchPredictor(CFG, channels=32)
    audio = torch.stack([a for a, _ in clips])
    mel = torch.stack([m for _, m in clips])
    first, _ = predictor.loss(mel, audio)
    fit_predictor(predictor, clips, steps=150, batch_size=4, seed=0)
    loss, metrics = predictor.loss(mel, audio)
    assert loss < 0.5 * first
    assert metrics["pitch/gross_error"] < 0.05 and metrics["pitch/voicing_error"] < 0.1
    logits, voiced_logit = predictor(mel)
    log_f0 = predictor.log_f0(logits)
    for i, f0 in enumerate(pitches):
        assert log_f0[i, 10:-2].exp().median().item() == pytest.approx(f0, rel=0.02)
        assert (voiced_logit[i, :4] < 0).all() and (voiced_logit[i, 10:-2] > 0).all()


def test_fit_predictor_is_deterministic_and_masks_padding():
    clips = []
    for f0, frames in ((100.0, 12), (200.0, 20)):  # unequal lengths: the batch is padded
        audio = glottal_like(torch.full((frames * HOP,), f0, dtype=torch.float64))
        clips.append((audio, log_mel(audio, CFG)))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        predictor = PitchPredictor(CFG, channels=8)
        fit_predictor(predictor, clips, steps=3, batch_size=2, seed=5)
        runs.append(predictor.state_dict())
    for k in runs[0]:
        torch.testing.assert_close(runs[0][k], runs[1][k], atol=0, rtol=0)
    # padded frames do not count: their targets can be anything
    predictor = PitchPredictor(CFG, channels=8)
    torch.nn.init.normal_(predictor.out.weight, std=0.5)  # not uniform: frames differ
    audio, mel = clips[0]
    f0, voiced = yin(audio[None], CFG)
    pad = 8
    mel_p = torch.cat([mel[None], torch.full((1, CFG.n_mels, pad), -11.5)], -1)
    mask = torch.cat([torch.ones(1, mel.shape[-1]), torch.zeros(1, pad)], -1)
    losses = []
    for fill_f0, fill_voiced in ((300.0, True), (60.0, False)):
        f0_p = torch.cat([f0, torch.full((1, pad), fill_f0)], -1)
        voiced_p = torch.cat([voiced, torch.full((1, pad), fill_voiced)], -1)
        losses.append(predictor.pitch_loss(mel_p, f0_p, voiced_p, mask)[0])
    torch.testing.assert_close(losses[0], losses[1], atol=0, rtol=0)
    f0_p = torch.cat([f0, torch.full((1, pad), 300.0)], -1)
    voiced_p = torch.cat([voiced, torch.ones(1, pad, dtype=torch.bool)], -1)
    unmasked = predictor.pitch_loss(mel_p, f0_p, voiced_p)[0]
    assert not torch.allclose(unmasked, losses[0])
