"""The Debian corpus builder (festvox-ru) on a tiny fake package, no download: a real .deb
layout (an ar archive holding data.tar.xz) and an extracted tree, incremental re-runs, the
checksum check, and one clear line when the package cannot be fetched."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import soundfile as sf

from distill import debian
from distill.data import prepare_corpus
from distill.debian import SOURCES, make_debian_corpus, parse_festival_transcripts
from distill.errors import DataError

VOICE_DIR = "usr/share/festival/voices/russian/msu_ru_nsh_clunits"

TRANSCRIPTS = '( ru_0001 "Она завела прядь вол+ос." )\n( ru_0002 "Со спокойным | мужеством." )\n'


def _wav_bytes(seconds: float, freq: float) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * freq * t), 16000, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def _tree() -> dict[str, bytes]:
    return {
        f"./{VOICE_DIR}/wav/ru_0001.wav": _wav_bytes(0.5, 120.0),
        f"./{VOICE_DIR}/wav/ru_0002.wav": _wav_bytes(0.75, 150.0),
        f"./{VOICE_DIR}/etc/txt.done.data": TRANSCRIPTS.encode(),
        f"./{VOICE_DIR}/festival/clunits/ignored.catalogue": b"not extracted",
        "./usr/share/doc/festvox-ru/copyright": b"Copyright (c) 2005 Nickolay V. Shmyrev\n",
    }


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def _fake_deb(path, files: dict[str, bytes]) -> None:
    """A Debian binary package as dpkg writes it: ar of debian-binary, control and data tars."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    control = io.BytesIO()
    with tarfile.open(fileobj=control, mode="w:xz"):
        pass
    path.write_bytes(
        b"!<arch>\n"
        + _ar_member("debian-binary", b"2.0\n")
        + _ar_member("control.tar.xz", control.getvalue())
        + _ar_member("data.tar.xz", data.getvalue())
    )


@pytest.fixture
def fake_deb(tmp_path, monkeypatch):
    deb = tmp_path / "festvox-ru_0.0-test_all.deb"
    _fake_deb(deb, _tree())
    monkeypatch.setattr(debian, "_index_sha256", lambda source, version: debian._sha256(deb))
    return deb


def test_transcripts_drop_stress_marks_and_the_separator():
    assert parse_festival_transcripts(TRANSCRIPTS) == {
        "ru_0001": "Она завела прядь волос.",
        "ru_0002": "Со спокойным , мужеством.",
    }


def test_corpus_from_a_deb_is_the_package_wavs_with_transcripts(tmp_path, fake_deb):
    out = tmp_path / "corpus"
    summary = make_debian_corpus("festvox-ru", out, package=fake_deb)
    assert (summary.num_utterances, summary.written, summary.reused) == (2, 2, 0)
    assert summary.seconds == pytest.approx(1.25)
    assert summary.version == "0.0-test"
    tree = _tree()
    for uid in ("ru_0001", "ru_0002"):  # byte for byte
        assert (out / "wavs" / f"{uid}.wav").read_bytes() == tree[f"./{VOICE_DIR}/wav/{uid}.wav"]
    assert sorted(p.name for p in out.rglob("*")) == sorted(
        ["README.md", "copyright", "metadata.csv", "wavs", "ru_0001.wav", "ru_0002.wav"]
    )
    assert (out / "metadata.csv").read_text(encoding="utf-8").splitlines() == [
        "ru_0001|Она завела прядь волос.",
        "ru_0002|Со спокойным , мужеством.",
    ]
    assert "Shmyrev" in (out / "copyright").read_text()
    assert "BSD-like" in (out / "README.md").read_text()

    # incremental: nothing rewritten; a damaged wav is rewritten
    assert make_debian_corpus("festvox-ru", out, package=fake_deb).written == 0
    (out / "wavs" / "ru_0002.wav").write_bytes(b"RIFF")
    again = make_debian_corpus("festvox-ru", out, package=fake_deb)
    assert (again.written, again.reused) == (1, 1)

    # the layout `distill prepare --audio-dir` reads, transcripts included
    from distill.config import AudioConfig

    cfg = AudioConfig(sample_rate=16000, n_fft=256, win_length=200, hop_length=50, fmax=8000)
    prepared = prepare_corpus(
        out, out=tmp_path / "prepared", cfg=cfg, val_fraction=0.0, progress=False
    )
    assert prepared.num_train == 2


def test_corpus_from_an_extracted_tree(tmp_path):
    root = tmp_path / "tree"
    for name, blob in _tree().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)
    summary = make_debian_corpus("festvox-ru", tmp_path / "corpus", package=root)
    assert (summary.num_utterances, summary.written) == (2, 2)


def test_a_corrupt_download_is_refused_and_nothing_written(tmp_path, fake_deb, monkeypatch):
    monkeypatch.setattr(debian, "_index_sha256", lambda source, version: "0" * 64)
    with pytest.raises(DataError, match="SHA-256.*corrupt or altered"):
        make_debian_corpus("festvox-ru", tmp_path / "corpus", package=fake_deb)
    assert not (tmp_path / "corpus").exists()


def test_not_the_package_says_so(tmp_path):
    deb = tmp_path / "festvox-ru_1_all.deb"
    _fake_deb(deb, {"./usr/share/doc/other/copyright": b"x"})
    with pytest.raises(DataError, match="not the festvox-ru package"):
        make_debian_corpus("festvox-ru", tmp_path / "corpus", package=deb)
    (tmp_path / "plain.deb").write_bytes(b"hello")
    with pytest.raises(DataError, match="not a .deb"):
        make_debian_corpus("festvox-ru", tmp_path / "corpus", package=tmp_path / "plain.deb")


def test_without_apt_get_one_line_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    with pytest.raises(DataError) as err:
        make_debian_corpus("festvox-ru", tmp_path / "corpus", download_dir=tmp_path / "dl")
    message = str(err.value)
    assert "\n" not in message
    assert "apt-get is not on this machine" in message and "--package PATH" in message


def test_a_failing_download_names_the_fix(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    apt = fake_bin / "apt-get"
    apt.write_text("#!/bin/sh\necho 'E: Unable to locate package festvox-ru' >&2\nexit 100\n")
    apt.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}")
    with pytest.raises(DataError, match="Unable to locate package.*apt-get update"):
        make_debian_corpus("festvox-ru", tmp_path / "corpus", download_dir=tmp_path / "dl")


def test_cli_source_festvox(tmp_path, fake_deb, capsys):
    from distill.cli import main

    assert main(["make-corpus", "--source", "festvox-ru", "--out", str(tmp_path / "c"),
                 "--package", str(fake_deb)]) == 0  # fmt: skip
    assert "2 utterances" in capsys.readouterr().out


def test_pocketsphinx_ids_come_from_folder_and_number():
    source = SOURCES["pocketsphinx-testdata"]
    data = "./usr/share/pocketsphinx/test/data"
    assert source.wav_id(f"{data}/cards/001.wav") == "cards_001"
    assert source.wav_id(f"{data}/librivox/sense_and_sensibility_01_austen_64kb-0870.wav") == (
        "librivox_0870"
    )
    assert source.wav_id(f"{data}/goforward.raw") is None
