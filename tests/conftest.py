"""Shared fixtures: a tiny feature config, a tiny espeak-ng corpus and its prepared folder.

Session-scoped so the whole test run pays for them once (well under a second of espeak-ng and
about two seconds of preparation). Everything is written under pytest's tmp_path_factory.
Training tests use them as::

    def test_something(tiny_prepared_dir, tiny_audio_config):
        corpus = PreparedCorpus(tiny_prepared_dir)          # 12 utterances, 3 of them val
        ds = SegmentDataset(corpus, "train", segment_frames=8)
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.audio import save_wav
from distill.config import AudioConfig
from distill.corpus import make_espeak_corpus
from distill.data import prepare_corpus


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state, so a tolerance never depends on test order."""
    random.seed(0)
    torch.manual_seed(0)


TINY_SENTENCES = [
    "The red kite flew high.",
    "Open the window, please.",
    "Where is the station?",
    "Seven green apples fell.",
    "It rained all night.",
    "Good morning to you!",
]
TINY_NUM_UTTERANCES = 12


@pytest.fixture(scope="session")
def tiny_audio_config() -> AudioConfig:
    """16 kHz, n_fft 512, hop 128, 40 mels: a quarter of the default cost per second of audio."""
    return AudioConfig(
        sample_rate=16000,
        n_fft=512,
        win_length=512,
        hop_length=128,
        n_mels=40,
        fmin=0.0,
        fmax=8000.0,
    )


def _synthetic_corpus(out: Path, num: int) -> None:
    """Fallback when espeak-ng is missing: voiced-like harmonic tones with a pitch glide."""
    rng = np.random.default_rng(0)
    sr = 22050
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num):
        t = np.arange(int(sr * (0.8 + 0.1 * i))) / sr
        f0 = 110 + 20 * i + 30 * np.sin(2 * np.pi * 1.5 * t)
        phase = 2 * np.pi * np.cumsum(f0) / sr
        x = sum(np.sin(k * phase) / k for k in range(1, 12)) * np.hanning(t.size)
        x = 0.3 * x / np.abs(x).max() + 0.003 * rng.standard_normal(t.size)
        save_wav(out / "wavs" / f"synth_{i:05d}.wav", x.astype(np.float32), sr)
        rows.append(f"synth_{i:05d}|synthetic tone {i}|none|0|0")
    (out / "metadata.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory) -> Path:
    """12 short espeak-ng utterances (wavs/ + metadata.csv, 22,050 Hz), ~1.2 s each.

    Falls back to synthetic harmonic tones if espeak-ng is not installed, so tests that only
    need speech-like audio still run; tests of the corpus generator itself skip instead.
    """
    out = tmp_path_factory.mktemp("tiny_corpus")
    if shutil.which("espeak-ng"):
        make_espeak_corpus(
            out,
            num_utterances=TINY_NUM_UTTERANCES,
            seed=0,
            sentences=TINY_SENTENCES,
            progress=False,
        )
    else:
        _synthetic_corpus(out, TINY_NUM_UTTERANCES)
    return out


@pytest.fixture(scope="session")
def tiny_prepared_dir(tmp_path_factory, tiny_corpus_dir, tiny_audio_config) -> Path:
    """``tiny_corpus_dir`` prepared with ``tiny_audio_config``: 9 train and 3 val utterances.

    Treat it as read-only (it is shared by the whole session); copy it to change it.
    """
    out = tmp_path_factory.mktemp("tiny_prepared")
    prepare_corpus(
        audio_dir=tiny_corpus_dir,
        out=out,
        cfg=tiny_audio_config,
        val_fraction=0.25,
        seed=0,
        progress=False,
    )
    return out
