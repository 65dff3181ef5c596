"""Corpus generation, preparation and the segment dataset."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader, DistributedSampler

from distill import cli
from distill.audio import QUANT_STEP, log_mel
from distill.config import AudioConfig, check_same_features
from distill.corpus import make_espeak_corpus, plan_utterances
from distill.data import (
    PreparedCorpus,
    SegmentDataset,
    SkippedFileWarning,
    prepare_corpus,
)
from distill.errors import ConfigError, DataError

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install -y espeak-ng)",
)
SENTENCES = ["One small step.", "Blue boats drift slowly.", "Is it raining?"]


# --- make-corpus ------------------------------------------------------------------------------


@needs_espeak
def test_make_corpus_is_valid_deterministic_and_incremental(tmp_path):
    a = make_espeak_corpus(tmp_path / "a", 4, seed=3, sentences=SENTENCES, progress=False)
    b = make_espeak_corpus(tmp_path / "b", 4, seed=3, sentences=SENTENCES, progress=False)
    assert a.num_utterances == 4 and a.generated == 4 and a.seconds > 1.0
    assert b.seconds == a.seconds
    meta = (tmp_path / "a" / "metadata.csv").read_text()
    assert meta == (tmp_path / "b" / "metadata.csv").read_text()
    rows = [line.split("|") for line in meta.splitlines()]
    assert [len(r) for r in rows] == [5] * 4 and {r[1] for r in rows} <= set(SENTENCES)
    for row in rows:
        wav_a = tmp_path / "a" / "wavs" / f"{row[0]}.wav"
        info = sf.info(wav_a)
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        assert info.frames > 0
        assert wav_a.read_bytes() == (tmp_path / "b" / "wavs" / f"{row[0]}.wav").read_bytes()

    again = make_espeak_corpus(tmp_path / "a", 4, seed=3, sentences=SENTENCES, progress=False)
    assert (again.generated, again.reused) == (0, 4)
    other = make_espeak_corpus(tmp_path / "a", 4, seed=4, sentences=SENTENCES, progress=False)
    assert other.generated > 0  # a different plan regenerates the changed rows
    assert not list((tmp_path / "a").rglob(".*"))  # no temp files left


def test_plan_covers_every_voice_and_sentence():
    plan = plan_utterances(SENTENCES, 30, seed=0, voices=("en", "en+f3", "en-us"))
    assert plan == plan_utterances(SENTENCES, 30, seed=0, voices=("en", "en+f3", "en-us"))
    assert {u.text for u in plan[:3]} == set(SENTENCES)
    assert {u.voice for u in plan[:3]} == {"en", "en+f3", "en-us"}


def test_missing_espeak_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get install -y espeak-ng"):
        make_espeak_corpus(tmp_path, 2, sentences=SENTENCES)


# --- prepare ----------------------------------------------------------------------------------


def _copy_corpus(src, dst, count=4):
    (dst / "nested").mkdir(parents=True)
    wavs = sorted((src / "wavs").glob("*.wav"))[:count]
    for i, wav in enumerate(wavs):
        shutil.copy(wav, dst / ("nested" if i % 2 else "") / wav.name)
    return [w.stem for w in wavs]


def test_prepare_skips_a_corrupt_file_and_reports_it(tmp_path, tiny_corpus_dir, tiny_audio_config):
    src = tmp_path / "src"
    ids = _copy_corpus(tiny_corpus_dir, src)
    (src / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    (src / "empty.flac").write_bytes(b"")
    (src / "notes.txt").write_text("ignored: not an audio extension")
    with pytest.warns(SkippedFileWarning) as records:
        summary = prepare_corpus(
            audio_dir=src, out=tmp_path / "out", cfg=tiny_audio_config, progress=False
        )
    messages = sorted(str(r.message) for r in records)
    assert "corrupt.wav: " in messages[0] and "not audio" in messages[0]
    assert "empty.flac: " in messages[1] and "empty (0 bytes)" in messages[1]
    assert summary.num_items == len(ids) and summary.computed == len(ids)
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in summary.skipped) == ["corrupt.wav", "empty.flac"]
    assert "corrupt.wav" in str(summary)
    corpus = PreparedCorpus(tmp_path / "out")
    assert sorted(e.id for e in corpus.items("all")) == sorted(ids)
    assert len(corpus.meta["skipped"]) == 2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        again = prepare_corpus(
            audio_dir=src, out=tmp_path / "out", cfg=tiny_audio_config, progress=False
        )
        assert (again.computed, again.reused) == (0, len(ids))
        changed = prepare_corpus(
            audio_dir=src,
            out=tmp_path / "out",
            cfg=AudioConfig(sample_rate=16000, n_fft=512, win_length=512, hop_length=128),
            progress=False,
        )
    assert (changed.computed, changed.reused) == (len(ids), 0)
    assert len(list((tmp_path / "out" / "cache").glob("*.npy"))) == 2 * len(ids)  # old removed
    assert PreparedCorpus(tmp_path / "out").audio_config.n_mels == 80


def test_prepared_items_are_consistent(tiny_prepared_dir, tiny_audio_config):
    corpus = PreparedCorpus(tiny_prepared_dir)
    assert corpus.audio_config == tiny_audio_config
    train, val = corpus.items("train"), corpus.items("val")
    assert len(train) == 9 and len(val) == 3
    assert not {e.id for e in train} & {e.id for e in val}
    for entry in val:
        audio, mel = corpus.load(entry)
        assert audio.dtype == torch.float32 and audio.shape == (entry.num_samples,)
        assert entry.num_samples == entry.num_frames * tiny_audio_config.hop_length
        assert entry.text
        assert audio.abs().max() == pytest.approx(tiny_audio_config.peak, abs=QUANT_STEP)
        torch.testing.assert_close(mel, log_mel(audio, tiny_audio_config), atol=1e-4, rtol=0)


def test_ljspeech_layout_with_a_missing_file(tmp_path, tiny_corpus_dir, tiny_audio_config):
    lj = tmp_path / "LJ"
    (lj / "wavs").mkdir(parents=True)
    wavs = sorted((tiny_corpus_dir / "wavs").glob("*.wav"))[:3]
    lines = []
    for i, wav in enumerate(wavs):
        shutil.copy(wav, lj / "wavs" / f"LJ001-{i:04d}.wav")
        lines.append(f"LJ001-{i:04d}|Chapter {i}.|Chapter {['one', 'two', 'three'][i]}.")
    lines.append("LJ001-9999|Listed but missing.|Listed but missing.")
    (lj / "metadata.csv").write_text("\n".join(lines) + "\n")
    with pytest.warns(SkippedFileWarning, match="LJ001-9999"):
        summary = prepare_corpus(
            ljspeech=lj, out=tmp_path / "out", cfg=tiny_audio_config, progress=False
        )
    assert summary.num_items == 3 and len(summary.skipped) == 1
    texts = {e.id: e.text for e in PreparedCorpus(tmp_path / "out").items("all")}
    assert texts["LJ001-0001"] == "Chapter two."  # the normalised column


def test_bad_sources_are_clear_data_errors(tmp_path, tiny_audio_config):
    with pytest.raises(DataError, match="not an existing folder"):
        prepare_corpus(audio_dir=tmp_path / "nope", out=tmp_path / "o", cfg=tiny_audio_config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no audio files"):
        prepare_corpus(audio_dir=tmp_path / "empty", out=tmp_path / "o", cfg=tiny_audio_config)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.wav").write_text("not audio")
    with pytest.warns(SkippedFileWarning), pytest.raises(DataError, match="no usable audio"):
        prepare_corpus(audio_dir=tmp_path / "bad", out=tmp_path / "o", cfg=tiny_audio_config)
    assert not (tmp_path / "o" / "prepared.json").exists()
    with pytest.raises(DataError, match="not a prepared folder.*distill prepare"):
        PreparedCorpus(tmp_path / "o")
    with pytest.raises(DataError, match="does not exist.*distill prepare"):
        PreparedCorpus(tmp_path / "missing")


def test_a_feature_mismatch_names_both_values_and_sources(tiny_prepared_dir):
    corpus = PreparedCorpus(tiny_prepared_dir)
    check_same_features(corpus.audio_config, corpus.audio_config, "here", "there")
    model = AudioConfig(sample_rate=16000, n_fft=512, win_length=512, hop_length=128)
    with pytest.raises(ConfigError, match=r"n_mels=40 \(folder\) vs 80 \(model\).*distill prepare"):
        check_same_features(corpus.audio_config, model, "folder", "model")


def test_cli_prints_one_line_errors_and_a_summary(tmp_path, tiny_corpus_dir, capsys):
    assert cli.main(["prepare", "--audio-dir", str(tmp_path / "nope"), "--out", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill prepare: error:") and "\n" not in err
    rc = cli.main(
        [
            "prepare",
            "--audio-dir", str(tiny_corpus_dir),
            "--out", str(tmp_path / "p"),
            "audio.sample_rate=16000", "audio.n_fft=256", "audio.win_length=256",
            "audio.hop_length=64", "audio.n_mels=20",
            "--val-fraction", "0.2",
        ]
    )  # fmt: skip
    assert rc == 0
    assert "12 utterances" in capsys.readouterr().out
    assert PreparedCorpus(tmp_path / "p").audio_config.n_mels == 20


# --- dataset ----------------------------------------------------------------------------------


@pytest.mark.parametrize("deterministic", [False, True])
def test_segments_are_aligned_with_their_mel(tiny_prepared_dir, tiny_audio_config, deterministic):
    """The mel of the returned audio equals the returned mel frames away from the edges: the
    first and last ceil((n_fft - hop) / 2 / hop) = 2 frames see reflect padding instead of the
    real neighbouring samples."""
    frames = 16
    ds = SegmentDataset(
        tiny_prepared_dir, "train", frames, dequantize=False, deterministic=deterministic, seed=1
    )
    assert len(ds) == 9
    edge = -(-(tiny_audio_config.n_fft - tiny_audio_config.hop_length) // 2 // 128)
    for i in range(len(ds)):
        audio, mel = ds[i]
        assert audio.shape == (frames * tiny_audio_config.hop_length,)
        assert mel.shape == (tiny_audio_config.n_mels, frames)
        recomputed = log_mel(audio, tiny_audio_config)
        torch.testing.assert_close(recomputed[:, edge:-edge], mel[:, edge:-edge], atol=1e-4, rtol=0)


def test_short_clips_are_padded_with_silence_consistently(tiny_prepared_dir, tiny_audio_config):
    corpus = PreparedCorpus(tiny_prepared_dir)
    longest = max(e.num_frames for e in corpus.items("val"))
    ds = SegmentDataset(corpus, "val", longest + 10, deterministic=True)
    for i, entry in enumerate(corpus.items("val")):
        audio, mel = ds[i]
        full, _ = corpus.load(entry)
        torch.testing.assert_close(audio[: entry.num_samples], full)
        assert (audio[entry.num_samples :] == 0).all()
        torch.testing.assert_close(mel, log_mel(audio, tiny_audio_config))
        floor = float(np.log(tiny_audio_config.log_floor))
        assert (mel[:, -2:] == floor).all()  # the padded tail is silence


def test_dequantisation_noise_and_reproducibility(tiny_prepared_dir):
    plain = SegmentDataset(tiny_prepared_dir, "train", 8, dequantize=False, seed=5)
    noisy = SegmentDataset(tiny_prepared_dir, "train", 8, dequantize=True, seed=5)
    for i in range(3):
        (a, mel_a), (b, mel_b) = plain[i], noisy[i]
        torch.testing.assert_close(mel_a, mel_b)
        noise = b - a
        assert (noise >= 0).all() and (noise < QUANT_STEP * (1 + 1e-3)).all()
        assert noise.std() > QUANT_STEP / 10
        torch.testing.assert_close(noisy[i][0], b)  # pure function of (seed, epoch, index)
    noisy.set_epoch(1)
    assert any(not torch.equal(noisy[i][0], plain[i][0]) for i in range(3))
    val = SegmentDataset(tiny_prepared_dir, "val", 8, deterministic=True)
    assert torch.equal(val[0][0], val[0][0])
    assert torch.equal(val[0][0], val[0][0] * 32768 // 1 / 32768)  # on the 16-bit grid


def test_distributed_sampler_shards_and_loader_batches(tiny_prepared_dir, tiny_audio_config):
    ds = SegmentDataset(tiny_prepared_dir, "train", 8, repeat=2)
    assert len(ds) == 18
    shards = [list(DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(18))
    audio, mel = next(iter(DataLoader(ds, batch_size=4, shuffle=True)))
    assert audio.shape == (4, 8 * tiny_audio_config.hop_length)
    assert mel.shape == (4, tiny_audio_config.n_mels, 8)
