"""Lossless codec baselines: the bits match the files the CLIs write, the files decode to the
same samples, and a missing or failing CLI is a reason in the report, not a failure."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from distill import codecs
from distill.audio import to_int16
from distill.metrics import flac_bits_per_sample

SR = 22050
needs_flac = pytest.mark.skipif(shutil.which("flac") is None, reason="flac CLI not installed")
needs_wavpack = pytest.mark.skipif(
    shutil.which("wavpack") is None or shutil.which("wvunpack") is None,
    reason="wavpack CLI not installed",
)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """1.5 s of a decaying harmonic tone with a little noise: compressible, not trivially."""
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * SR)) / SR
    x = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 8)) * np.exp(-t)
    return 0.4 * x / np.abs(x).max() + 0.002 * rng.standard_normal(t.size)


def _write_wav(path, audio) -> np.ndarray:
    pcm = to_int16(audio)
    sf.write(path, pcm, SR, subtype="PCM_16")
    return pcm


@needs_flac
def test_flac_cli_bits_are_the_size_of_the_file_it_writes_and_lossless(clip, tmp_path):
    pcm = _write_wav(tmp_path / "clip.wav", clip)
    subprocess.run(
        ["flac", "-8", "-e", "-p", "--no-padding", "--no-seektable", "-s", "-f"]
        + ["-o", str(tmp_path / "clip.flac"), str(tmp_path / "clip.wav")],
        check=True,
    )
    size = (tmp_path / "clip.flac").stat().st_size
    assert codecs.flac_cli_bits_per_sample(clip, SR) == size * 8 / pcm.size
    decoded, sr = sf.read(tmp_path / "clip.flac", dtype="int16")
    assert sr == SR and np.array_equal(decoded, pcm)
    # no padding block and no seek table: FLAC's default encoder writes both (8 KB of padding)
    default = tmp_path / "default.flac"
    subprocess.run(["flac", "-8", "-s", "-f", "-o", str(default), str(tmp_path / "clip.wav")])
    assert default.stat().st_size > size + 8000
    # level 8 with exhaustive search beats libsndfile's level 5 on the same samples
    assert codecs.flac_cli_bits_per_sample(clip, SR) < flac_bits_per_sample(clip, SR)


@needs_wavpack
def test_wavpack_bits_are_the_size_of_the_file_it_writes_and_lossless(clip, tmp_path):
    pcm = _write_wav(tmp_path / "clip.wav", clip)
    out = tmp_path / "clip.wv"
    subprocess.run(
        ["wavpack", "-hhx6", "-q", "-y", str(tmp_path / "clip.wav"), "-o", str(out)], check=True
    )
    assert codecs.wavpack_bits_per_sample(clip, SR) == out.stat().st_size * 8 / pcm.size
    subprocess.run(["wvunpack", "-q", "-y", str(out), "-o", str(tmp_path / "back.wav")], check=True)
    decoded, sr = sf.read(tmp_path / "back.wav", dtype="int16")
    assert sr == SR and np.array_equal(decoded, pcm)


@needs_flac
@needs_wavpack
def test_codecs_rank_noise_above_a_tone_above_silence(clip):
    rng = np.random.default_rng(1)
    noise = 0.5 * rng.uniform(-1, 1, clip.size)
    for key, (_, fn) in codecs.LOSSLESS_CODECS.items():
        silence, tone, white = fn(np.zeros(clip.size), SR), fn(clip, SR), fn(noise, SR)
        assert silence < 1.0 < tone < white < 16.5, key  # uniform noise at half scale: ~15 bits


def test_missing_cli_is_a_reason(clip, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    values, undefined = codecs.lossless_bits(clip, SR)
    assert values["flac_bits_per_sample"] > 0  # libsndfile needs no CLI
    assert values["flac_8_bits_per_sample"] is None
    assert values["wavpack_hhx6_bits_per_sample"] is None
    assert "apt-get install flac" in undefined["flac_8_bits_per_sample"]
    assert "apt-get install wavpack" in undefined["wavpack_hhx6_bits_per_sample"]


def test_failing_cli_is_a_reason(clip, tmp_path, monkeypatch):
    fake = tmp_path / "flac"
    fake.write_text("#!/bin/sh\necho 'flac: broken encoder' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(codecs.CodecUnavailableError, match="exit status 3: flac: broken encoder"):
        codecs.flac_cli_bits_per_sample(clip, SR)


def test_the_report_says_a_codec_was_not_measured(clip, tmp_path, monkeypatch):
    from distill.evaluation import _lossless_summary, _lossless_undefined
    from distill.report import _lossless_rows

    monkeypatch.setenv("PATH", str(tmp_path))
    rows = []
    for seconds in (1.0, 0.5):
        values, why = codecs.lossless_bits(clip[: int(seconds * SR)], SR)
        rows.append({"seconds": seconds, **values, "undefined": {"real": why}})
    result = {
        "likelihood": _lossless_summary(rows),
        "lossless_undefined": _lossless_undefined(rows),
    }
    assert result["likelihood"]["flac_8_bits_per_sample"] is None
    lines = _lossless_rows(result)
    assert lines[0].startswith("| FLAC -5 (libsndfile), lossless, on the real clips | ")
    assert (
        "not measured: the flac CLI is not installed" in lines[1] and "(2 of 2 clips)" in lines[1]
    )
    assert "apt-get install wavpack" in lines[2]
