"""The built-in default corpus: English speech synthesised on this machine with espeak-ng.

Why espeak-ng: the demo and the tests need real speech-like audio (voiced harmonics, formants,
fricatives, silences) without downloading anything, and Debian ships espeak-ng. Variety comes
from several English voices and variants, pitches and speeds, over the project's own sentence
list (``distill/resources/sentences.txt``, package data: it ships in the wheel).

Layout of ``out_dir`` (LJSpeech-like, so ``distill prepare --ljspeech`` reads it too)::

    metadata.csv      id|text|voice|pitch|speed, one line per utterance
    wavs/<id>.wav     16-bit PCM mono at espeak-ng's native 22,050 Hz

The utterance plan (sentence, voice, pitch, speed per id) is a pure function of the seed and
the sentence list, and espeak-ng is deterministic, so a seed always gives the same corpus.
Re-running reuses every wav whose plan row is unchanged; each wav is written to a hidden temp
file and renamed, and ``metadata.csv`` last, so a killed run never leaves half a file.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import soundfile as sf

from distill.errors import DataError
from distill.fileio import atomic_output
from distill.progress import progress as show_progress

__all__ = [
    "VOICES",
    "DEFAULT_NUM_UTTERANCES",
    "DEFAULT_SENTENCES",
    "Utterance",
    "CorpusSummary",
    "load_sentences",
    "plan_utterances",
    "make_espeak_corpus",
    "find_espeak",
    "wav_seconds",
    "write_metadata",
]

VOICES = (
    "en",
    "en-us",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-029",
    "en-us-nyc",
    "en+f2",
    "en+f3",
    "en+f4",
    "en-us+f5",
    "en+m3",
    "en+m5",
    "en-us+m2",
    "en-gb-x-rp+m7",
    "en+klatt",
)
"""espeak-ng voices (language) and variants (``+name``): male, female and Klatt-synthesised."""

PITCH_RANGE = (30, 75)  # espeak-ng -p: 0..99, default 50
SPEED_RANGE = (140, 190)  # espeak-ng -s: words per minute, default 175

DEFAULT_NUM_UTTERANCES = 360
"""About 19 minutes of audio (~3.2 s per utterance): enough that a short demo does not overfit."""

DEFAULT_SENTENCES = files("distill") / "resources" / "sentences.txt"
"""The built-in sentence list, read through importlib.resources so an installed wheel finds it."""

_INSTALL_HINT = "install it with: apt-get install -y espeak-ng"


@dataclass(frozen=True)
class Utterance:
    """One planned utterance: a row of ``metadata.csv``."""

    id: str
    text: str
    voice: str
    pitch: int
    speed: int

    def row(self) -> list[str]:
        return [self.id, self.text, self.voice, str(self.pitch), str(self.speed)]


@dataclass
class CorpusSummary:
    """What :func:`make_espeak_corpus` did; ``str()`` is the CLI's report."""

    out_dir: Path
    num_utterances: int
    generated: int
    reused: int
    seconds: float  # total audio duration
    elapsed: float  # wall-clock time of the run
    voices: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"espeak-ng corpus in {self.out_dir}: {self.num_utterances} utterances, "
            f"{self.seconds / 60:.1f} min of audio, {len(self.voices)} voices "
            f"({self.generated} generated, {self.reused} reused) in {self.elapsed:.1f} s"
        )


def find_espeak() -> str:
    """Path of the espeak-ng executable, or a :class:`DataError` saying how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DataError(
            f"espeak-ng is not installed (needed for the built-in corpus); {_INSTALL_HINT}"
        )
    return exe


def load_sentences(path: str | Path | None = None) -> list[str]:
    """Sentences from a text file (one per line, ``#`` comments and blank lines ignored).

    ``|`` would break ``metadata.csv``, so it is replaced by a comma.
    """
    path = Path(path) if path is not None else DEFAULT_SENTENCES
    if not path.is_file():
        raise DataError(
            f"sentence list {path} does not exist; pass --sentences FILE with one sentence a line"
        )
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    sentences = [s.replace("|", ",") for s in lines if s and not s.startswith("#")]
    if not sentences:
        raise DataError(f"sentence list {path} holds no sentences; add one sentence a line")
    return sentences


def plan_utterances(
    sentences: list[str], num_utterances: int, seed: int, voices: tuple[str, ...] = VOICES
) -> list[Utterance]:
    """Deterministic plan: every sentence once per pass (reshuffled each pass), random voices.

    Voices also cycle through a shuffled order, so even a small corpus covers all of them.
    """
    if num_utterances <= 0:
        raise DataError(f"--num-utterances must be positive, found {num_utterances}")
    rng = random.Random(seed)
    order: list[str] = []
    voice_order: list[str] = []
    plan = []
    for i in range(num_utterances):
        if not order:
            order = list(sentences)
            rng.shuffle(order)
        if not voice_order:
            voice_order = list(voices)
            rng.shuffle(voice_order)
        plan.append(
            Utterance(
                id=f"espeak_{i:05d}",
                text=order.pop(),
                voice=voice_order.pop(),
                pitch=rng.randint(*PITCH_RANGE),
                speed=rng.randint(*SPEED_RANGE),
            )
        )
    return plan


def _read_metadata(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", newline="") as f:
        return {row[0]: row for row in csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE) if row}


def wav_seconds(path: Path) -> float | None:
    """Duration in seconds of a readable, non-empty wav, else None."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None
    return info.frames / info.samplerate if info.frames > 0 else None


def write_metadata(path: Path, rows: Iterable[list[str]]) -> None:
    """``metadata.csv`` (``|``-separated, no quoting), atomically: a corpus's last write."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="|", quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writerows(rows)


def _synthesise(exe: str, utt: Utterance, path: Path) -> float:
    """Run espeak-ng into a hidden temp file, check it, rename it into place. Returns seconds."""
    with atomic_output(path) as tmp:
        cmd = [exe, "-w", str(tmp), "-v", utt.voice, "-p", str(utt.pitch), "-s", str(utt.speed)]
        proc = subprocess.run(cmd + ["--", utt.text], capture_output=True, text=True, timeout=120)
        seconds = wav_seconds(tmp) if proc.returncode == 0 else None
        if seconds is None:
            raise DataError(
                f"espeak-ng failed for {utt.id} (voice {utt.voice!r}, exit {proc.returncode}): "
                f"{proc.stderr.strip()[:200] or 'no audio written'}; check `espeak-ng "
                f"--voices=en` lists the voice, or reinstall: apt-get install -y espeak-ng"
            )
    return seconds


def make_espeak_corpus(
    out_dir: str | Path,
    num_utterances: int = DEFAULT_NUM_UTTERANCES,
    seed: int = 0,
    sentences: list[str] | str | Path | None = None,
    voices: tuple[str, ...] = VOICES,
    workers: int | None = None,
    progress: bool = True,
) -> CorpusSummary:
    """Generate (or top up) the espeak-ng corpus in ``out_dir``; see the module docstring.

    ``sentences``: a list of strings, a path to a sentence file, or None for the built-in
    list (:data:`DEFAULT_SENTENCES`). ``workers`` espeak-ng processes run at once (default: CPU
    count, at most 8). Stale entries from a previous larger run are removed with their wavs.
    """
    start = time.perf_counter()
    exe = find_espeak()
    if not isinstance(sentences, list):
        sentences = load_sentences(sentences)
    plan = plan_utterances(sentences, num_utterances, seed, voices)
    out_dir = Path(out_dir)
    wav_dir = out_dir / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    for stale in wav_dir.glob(".*.tmp"):  # left by a killed run
        stale.unlink(missing_ok=True)

    meta_path = out_dir / "metadata.csv"
    old = _read_metadata(meta_path)
    planned = {u.id for u in plan}
    for uid in set(old) - planned:
        (wav_dir / f"{uid}.wav").unlink(missing_ok=True)

    seconds: dict[str, float] = {}
    todo = []
    for utt in plan:
        path = wav_dir / f"{utt.id}.wav"
        duration = wav_seconds(path) if old.get(utt.id) == utt.row() else None
        if duration is None:
            todo.append(utt)
        else:
            seconds[utt.id] = duration

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(lambda u: (u.id, _synthesise(exe, u, wav_dir / f"{u.id}.wav")), todo)
        for uid, duration in show_progress(
            jobs, total=len(todo), desc="espeak-ng", unit="utt", disable=not progress or not todo
        ):
            seconds[uid] = duration

    write_metadata(meta_path, (u.row() for u in plan))
    return CorpusSummary(
        out_dir=out_dir,
        num_utterances=len(plan),
        generated=len(todo),
        reused=len(plan) - len(todo),
        seconds=sum(seconds.values()),
        elapsed=time.perf_counter() - start,
        voices=sorted({u.voice for u in plan}),
    )
