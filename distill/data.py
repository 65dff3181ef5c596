"""Prepared corpora: cached (audio, log-mel) pairs, manifests, and an aligned segment dataset.

``prepare_corpus`` turns any folder of audio (or an LJSpeech folder) into a *prepared folder*::

    OUT/
      prepared.json          format version, feature-config key, counts, skipped files; written
                             last, so its presence means the folder is complete
      audio_config.yaml      the AudioConfig the features were computed with (plain YAML)
      train.jsonl, val.jsonl one JSON object per utterance: id, audio, mel (paths relative to
                             OUT), num_samples, num_frames, text (or null), source
      cache/<id>.<key>.audio.npy   int16 PCM (T,), T = num_frames * hop_length
      cache/<id>.<key>.mel.npy     float32 log-mel (n_mels, num_frames) of exactly that audio

Why this shape: audio is stored on the 16-bit grid it will be scored on (bits/sample at 16 bit)
and the mel is computed from that quantised audio, so features and targets agree bit for bit.
``.npy`` files can be memory-mapped, so a dataset reads only the segment it needs. ``key``
hashes the feature config and the source file's path, size and mtime: a re-run reuses every
cached item whose key still matches, recomputes everything when the feature config changed,
and never overwrites a file an older manifest still points to (the old folder stays valid until
the new manifests replace it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from distill.audio import AUDIO_EXTENSIONS, QUANT_STEP, from_int16, load_audio, log_mel, to_int16
from distill.config import AudioConfig, config_to_dict
from distill.errors import AudioError, ConfigError, DataError, DistillError
from distill.fileio import atomic_output
from distill.progress import progress as show_progress

__all__ = [
    "FORMAT_VERSION",
    "SPLITS",
    "Entry",
    "PrepareSummary",
    "SkippedFileWarning",
    "prepare_corpus",
    "PreparedCorpus",
    "SegmentDataset",
]

FORMAT_VERSION = 1
SPLITS = ("train", "val")


class SkippedFileWarning(UserWarning):
    """A file that could not be prepared; it is skipped and listed in the summary."""


@dataclass(frozen=True)
class Entry:
    """One prepared utterance, a line of a manifest. Paths are relative to the prepared root."""

    id: str
    audio: str
    mel: str
    num_samples: int
    num_frames: int
    text: str | None = None
    source: str = ""


@dataclass
class PrepareSummary:
    """What :func:`prepare_corpus` did; ``str()`` is the CLI's report."""

    out: Path
    num_items: int
    num_train: int
    num_val: int
    seconds: float  # audio duration after trimming
    computed: int
    reused: int
    elapsed: float
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def __str__(self) -> str:
        lines = [
            f"prepared {self.out}: {self.num_items} utterances ({self.num_train} train, "
            f"{self.num_val} val), {self.seconds / 60:.1f} min of audio; {self.computed} "
            f"computed, {self.reused} reused, {len(self.skipped)} skipped, "
            f"in {self.elapsed:.1f} s"
        ]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


# --- preparing --------------------------------------------------------------------------------


def _config_key(cfg: AudioConfig) -> str:
    blob = json.dumps(config_to_dict(cfg), sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "item"


def _read_metadata(path: Path) -> dict[str, str]:
    """LJSpeech-style ``id|text|normalized text`` (or ``id|text|...``): id -> text.

    LJSpeech's third column is the normalised text (numbers spelled out), preferred when present
    and non-empty; our espeak corpus's third column is a voice name, so only a file with exactly
    three columns counts as LJSpeech.
    """
    texts: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        cols = line.split("|")
        if len(cols) < 2 or not cols[0].strip():
            continue
        text = cols[2] if len(cols) == 3 and cols[2].strip() else cols[1]
        texts[cols[0].strip()] = text.strip()
    return texts


def _scan_audio_dir(audio_dir: Path, out: Path) -> list[tuple[str, Path, str | None]]:
    """(id, path, text) for every wav/flac/ogg below ``audio_dir``; hidden files are skipped."""
    out = out.resolve()
    paths = []
    for path in sorted(audio_dir.rglob("*")):
        rel = path.relative_to(audio_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue  # temp files of interrupted writes, .git, ...
        if path.suffix.lower() not in AUDIO_EXTENSIONS or not path.is_file():
            continue
        if out == path.resolve() or out in path.resolve().parents:
            continue  # never prepare our own output
        paths.append(path)
    stems = [p.stem for p in paths]
    unique = len(set(stems)) == len(stems)
    texts = {}
    if (audio_dir / "metadata.csv").is_file():
        texts = _read_metadata(audio_dir / "metadata.csv")
    items = []
    for path in paths:
        rel = path.relative_to(audio_dir)
        uid = path.stem if unique else str(rel.with_suffix("")).replace(os.sep, "__")
        items.append((_safe_id(uid), path, texts.get(path.stem)))
    return items


def _scan_ljspeech(root: Path) -> list[tuple[str, Path, str | None]]:
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise DataError(
            f"{root} is not an LJSpeech folder: {meta} is missing; use --audio-dir for a plain "
            "folder of audio files"
        )
    texts = _read_metadata(meta)
    if not texts:
        raise DataError(f"{meta} lists no utterances (expected lines like id|text|normalized)")
    return [(_safe_id(uid), root / "wavs" / f"{uid}.wav", text) for uid, text in texts.items()]


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save through a hidden temp file + os.replace: a file is either complete or absent."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _prepare_one(
    uid: str, path: Path, text: str | None, cfg: AudioConfig, out: Path, cfg_key: str
) -> tuple[Entry, bool]:
    """Cache one utterance (or reuse its cache). Returns (entry, reused)."""
    try:
        st = path.stat()
        fingerprint = f"{cfg_key}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    except OSError as err:
        raise AudioError(f"{path} cannot be read ({err.strerror}); check the path") from err
    key = hashlib.sha1(fingerprint.encode()).hexdigest()[:10]
    audio_rel, mel_rel = f"cache/{uid}.{key}.audio.npy", f"cache/{uid}.{key}.mel.npy"
    audio_path, mel_path = out / audio_rel, out / mel_rel
    if audio_path.is_file() and mel_path.is_file():
        try:
            num_samples = np.load(audio_path, mmap_mode="r").shape[0]
            num_frames = np.load(mel_path, mmap_mode="r").shape[1]
            if num_samples == num_frames * cfg.hop_length:
                entry = Entry(uid, audio_rel, mel_rel, num_samples, num_frames, text, str(path))
                return entry, True
        except (OSError, ValueError, IndexError):
            pass  # unreadable cache: recompute below
    audio = load_audio(path, cfg, preprocess=True)  # (T,) trimmed, normalised
    num_frames = audio.shape[0] // cfg.hop_length
    if num_frames == 0:
        raise AudioError(
            f"{path} is shorter than one hop ({cfg.hop_length} samples) after trimming; remove it"
        )
    pcm = to_int16(audio[: num_frames * cfg.hop_length])  # the 16-bit grid we score on
    with torch.no_grad():
        mel = log_mel(from_int16(pcm), cfg).numpy().astype(np.float32)  # (n_mels, F)
    _save_npy(audio_path, pcm)
    _save_npy(mel_path, mel)
    return Entry(uid, audio_rel, mel_rel, pcm.shape[0], num_frames, text, str(path)), False


def _split(ids: list[str], val_fraction: float, seed: int) -> set[str]:
    """Validation ids: the ``round(val_fraction * N)`` ids (at least 1, at most N - 1) with the
    lowest seeded hash. A pure function of the ids, so re-runs and other machines agree, and
    adding files to a large corpus moves few existing items across the split."""
    n = len(ids)
    k = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    ranked = sorted(ids, key=lambda i: hashlib.sha1(f"{seed}:{i}".encode()).hexdigest())
    return set(ranked[:k])


def prepare_corpus(
    audio_dir: str | Path | None = None,
    ljspeech: str | Path | None = None,
    out: str | Path = "data/prepared/corpus",
    cfg: AudioConfig | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> PrepareSummary:
    """Load, resample, trim, normalise, crop to whole hops, compute log-mels, cache, split.

    Exactly one of ``audio_dir`` (any folder, scanned recursively for wav/flac/ogg; texts from
    a ``metadata.csv`` at its top if there is one) or ``ljspeech`` (``metadata.csv`` +
    ``wavs/``). A file that fails is skipped with a :class:`SkippedFileWarning` and listed in
    the summary; a missing or empty source, or one where no file is usable, is a DataError.
    """
    start = time.perf_counter()
    cfg = cfg or AudioConfig()
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), found {val_fraction}")
    if (audio_dir is None) == (ljspeech is None):
        raise DataError("pass exactly one of --audio-dir DIR or --ljspeech DIR")
    source = Path(audio_dir if audio_dir is not None else ljspeech)
    flag = "--audio-dir" if audio_dir is not None else "--ljspeech"
    if not source.is_dir():
        raise DataError(f"{flag} {source} is not an existing folder; check the path")
    out = Path(out)
    if audio_dir is not None:
        items = _scan_audio_dir(source, out)
        if not items:
            raise DataError(
                f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found under {source}; "
                "point --audio-dir at a folder of audio, or create the default corpus with "
                "`distill make-corpus --out data/corpus/espeak`"
            )
    else:
        items = _scan_ljspeech(source)

    (out / "cache").mkdir(parents=True, exist_ok=True)
    for stale in (out / "cache").glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    cfg_key = _config_key(cfg)

    def work(item):
        uid, path, text = item
        try:
            return _prepare_one(uid, path, text, cfg, out, cfg_key), None
        except DistillError as err:
            return None, (str(path), str(err))
        except Exception as err:  # noqa: BLE001 - one odd file must not lose the others' work
            return None, (str(path), f"{type(err).__name__}: {err}")

    entries: list[Entry] = []
    skipped: list[tuple[str, str]] = []
    reused = 0
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        results = pool.map(work, items)
        for result, failure in show_progress(
            results, total=len(items), desc="prepare", unit="file", disable=not progress
        ):
            if failure is not None:
                skipped.append(failure)
                warnings.warn(f"skipping {failure[0]}: {failure[1]}", SkippedFileWarning, 2)
                continue
            entry, was_cached = result
            entries.append(entry)
            reused += was_cached
    if not entries:
        reasons = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        raise DataError(f"no usable audio under {source} ({len(skipped)} files failed: {reasons})")

    val_ids = _split([e.id for e in entries], val_fraction, seed)
    splits = {
        "train": [e for e in entries if e.id not in val_ids],
        "val": [e for e in entries if e.id in val_ids],
    }
    (out / "prepared.json").unlink(missing_ok=True)  # the folder is incomplete from here on
    for split, split_entries in splits.items():
        lines = [json.dumps(dataclasses.asdict(e), ensure_ascii=False) for e in split_entries]
        _write_text(out / f"{split}.jsonl", "".join(line + "\n" for line in lines))
    _write_text(
        out / "audio_config.yaml",
        "# Feature config these features were computed with (distill prepare).\n"
        + yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
    )
    seconds = sum(e.num_samples for e in entries) / cfg.sample_rate
    meta = {
        "format_version": FORMAT_VERSION,
        "config_key": cfg_key,
        "source": str(source),
        "num_items": len(entries),
        "num_train": len(splits["train"]),
        "num_val": len(splits["val"]),
        "seconds": seconds,
        "val_fraction": val_fraction,
        "seed": seed,
        "skipped": [{"file": p, "reason": r} for p, r in skipped],
    }
    _write_text(out / "prepared.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")

    keep = {Path(e.audio).name for e in entries} | {Path(e.mel).name for e in entries}
    for path in (out / "cache").glob("*.npy"):
        if path.name not in keep:
            path.unlink(missing_ok=True)
    return PrepareSummary(
        out=out,
        num_items=len(entries),
        num_train=len(splits["train"]),
        num_val=len(splits["val"]),
        seconds=seconds,
        computed=len(entries) - reused,
        reused=reused,
        elapsed=time.perf_counter() - start,
        skipped=skipped,
    )


# --- reading ----------------------------------------------------------------------------------


class PreparedCorpus:
    """Read side of a prepared folder: its feature config, its manifests, its cached arrays."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        fix = f"create it with: distill prepare --audio-dir DIR --out {self.root}"
        if not self.root.is_dir():
            raise DataError(f"prepared folder {self.root} does not exist; {fix}")
        meta_path = self.root / "prepared.json"
        if not meta_path.is_file():
            raise DataError(
                f"{self.root} is not a prepared folder (no prepared.json: never prepared, or "
                f"an interrupted prepare); {fix}"
            )
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
            raw = yaml.safe_load((self.root / "audio_config.yaml").read_text(encoding="utf-8"))
            self.audio_config = AudioConfig(**raw)
        except (OSError, ValueError, TypeError, yaml.YAMLError) as err:
            raise DataError(
                f"{self.root} has a damaged prepared.json or audio_config.yaml "
                f"({err}); re-run distill prepare with --out {self.root}"
            ) from err
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{self.root} was prepared in format {self.meta.get('format_version')}, this "
                f"version reads format {FORMAT_VERSION}; re-run distill prepare with --out "
                f"{self.root}"
            )
        self._items: dict[str, list[Entry]] = {}

    def __repr__(self) -> str:
        return f"PreparedCorpus({str(self.root)!r}, items={self.meta.get('num_items')})"

    def items(self, split: str = "train") -> list[Entry]:
        """Manifest entries of ``split`` ("train", "val" or "all"), in manifest order."""
        if split == "all":
            return self.items("train") + self.items("val")
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of train, val, all")
        if split not in self._items:
            path = self.root / f"{split}.jsonl"
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
                self._items[split] = [Entry(**json.loads(line)) for line in lines if line.strip()]
            except (OSError, ValueError, TypeError) as err:
                raise DataError(
                    f"cannot read manifest {path} ({err}); re-run distill prepare with "
                    f"--out {self.root}"
                ) from err
        return self._items[split]

    def nonempty_items(self, split: str) -> list[Entry]:
        """:meth:`items`, or a DataError with the fix when the split has none."""
        entries = self.items(split)
        if not entries:
            raise DataError(
                f"the {split} split of {self.root} is empty; re-run distill prepare with more "
                "audio (or another --val-fraction)"
            )
        return entries

    def _array(self, rel: str, entry: Entry) -> np.ndarray:
        try:
            return np.load(self.root / rel, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise DataError(
                f"cached file {self.root / rel} of {entry.id} is missing or damaged ({err}); "
                f"re-run distill prepare with --out {self.root}"
            ) from err

    def load_segment(
        self, entry: Entry, start_frame: int = 0, num_frames: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``[start_frame, start_frame + num_frames)`` and their samples, memory-mapped.

        Returns audio (num_frames * hop,) float32 on the 16-bit grid, mel (n_mels, num_frames).
        """
        hop = self.audio_config.hop_length
        num_frames = entry.num_frames - start_frame if num_frames is None else num_frames
        if start_frame < 0 or num_frames <= 0 or start_frame + num_frames > entry.num_frames:
            raise ValueError(
                f"frames [{start_frame}, {start_frame + num_frames}) are outside {entry.id}'s "
                f"{entry.num_frames} frames"
            )
        pcm = self._array(entry.audio, entry)
        mel = self._array(entry.mel, entry)
        if pcm.shape != (entry.num_samples,) or mel.shape != (
            self.audio_config.n_mels,
            entry.num_frames,
        ):
            raise DataError(
                f"cached arrays of {entry.id} have shapes {pcm.shape} and {mel.shape}, the "
                f"manifest says ({entry.num_samples},) and ({self.audio_config.n_mels}, "
                f"{entry.num_frames}); re-run distill prepare with --out {self.root}"
            )
        end = start_frame + num_frames
        audio = from_int16(np.array(pcm[start_frame * hop : end * hop]))
        mel = torch.from_numpy(np.array(mel[:, start_frame:end], dtype=np.float32))
        return audio, mel

    def leading_clips(
        self, split: str, count: int, max_seconds: float
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(audio (T,), mel) of the first ``count`` items of ``split``, each cut to its first
        ``max_seconds``: the fixed clips that validation scores at every check."""
        cfg = self.audio_config
        max_frames = max(1, int(max_seconds * cfg.sample_rate / cfg.hop_length))
        return [
            self.load_segment(entry, 0, min(entry.num_frames, max_frames))
            for entry in self.items(split)[:count]
        ]

    def load(self, entry: Entry) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole utterance: audio (T,) float32, mel (n_mels, F), ``T = F * hop_length``."""
        return self.load_segment(entry, 0, entry.num_frames)


class SegmentDataset(Dataset):
    """Aligned random segments: ``(audio (segment_frames * hop,), mel (n_mels, segment_frames))``.

    Audio sample ``t`` belongs to frame ``t // hop``, so a model can upsample the mel by
    repeating/convolving by ``hop`` and the two stay aligned by construction.

    - Training (``deterministic=False``): a uniformly random crop per item and, with
      ``dequantize``, uniform noise ``u * 2^-15, u ~ U[0, 1)`` added to the 16-bit audio, which
      turns the discrete PCM values into a continuous density whose likelihood in bits/sample
      is the 16-bit one (``-log2 p(x)/T + 15``).
    - Validation (``deterministic=True``): the centre crop, no noise; identical every call.
    - Clips shorter than the segment are zero-padded at the end, and their mel is recomputed
      from the padded audio with :func:`~distill.audio.log_mel`, so it is exactly the features
      of what is returned (silent frames are at the log floor).
    - ``mel_margin`` > 0: the mel carries that many more frames on each side (the clip's own,
      or silence at the log floor beyond its ends), for a model to read as context
      (:class:`distill.models.MelWindow`).

    Randomness: with ``seed=None`` draws come from torch's global RNG, which DataLoader reseeds
    per worker and per epoch from the main process, so crops differ every epoch and a run is
    reproducible under ``torch.manual_seed``. With an int ``seed`` each draw is a pure function
    of ``(seed, epoch, index)``; call :meth:`set_epoch` every epoch (like
    ``DistributedSampler.set_epoch``) or every epoch sees the same crops.

    Length = ``len(items) * repeat`` and items are indexable, so DistributedSampler shards it
    across ranks; ``repeat`` > 1 makes an "epoch" long enough to be worth a sampler pass when a
    corpus has few, long utterances.
    """

    def __init__(
        self,
        corpus: PreparedCorpus | str | Path,
        split: str,
        segment_frames: int,
        dequantize: bool = True,
        deterministic: bool = False,
        seed: int | None = None,
        repeat: int = 1,
        mel_margin: int = 0,
    ):
        self.corpus = corpus if isinstance(corpus, PreparedCorpus) else PreparedCorpus(corpus)
        self.entries = self.corpus.nonempty_items(split)
        if segment_frames <= 0 or repeat <= 0:
            raise ConfigError(
                f"segment_frames and repeat must be positive, found {segment_frames}, {repeat}"
            )
        self.cfg = self.corpus.audio_config
        self.split = split
        self.segment_frames = segment_frames
        self.segment_samples = segment_frames * self.cfg.hop_length
        self.dequantize = dequantize and not deterministic
        self.deterministic = deterministic
        self.seed = seed
        self.repeat = repeat
        self.mel_margin = mel_margin
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Vary the crops of an int-``seed`` dataset between epochs (no effect with seed=None)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries) * self.repeat

    def _generator(self, index: int) -> torch.Generator | None:
        if self.seed is None:
            return None
        mixed = hashlib.sha1(f"{self.seed}:{self.epoch}:{index}".encode()).hexdigest()
        return torch.Generator().manual_seed(int(mixed[:15], 16))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} segments")
        index %= len(self)
        entry = self.entries[index % len(self.entries)]
        gen = None if self.deterministic else self._generator(index)
        frames = self.segment_frames
        if entry.num_frames >= frames:
            if self.deterministic:
                start = (entry.num_frames - frames) // 2
            else:
                start = int(torch.randint(0, entry.num_frames - frames + 1, (), generator=gen))
            audio, mel = self.corpus.load_segment(entry, start, frames)
        else:
            start = 0
            audio, _ = self.corpus.load(entry)
            audio = torch.nn.functional.pad(audio, (0, self.segment_samples - audio.shape[0]))
            with torch.no_grad():
                mel = log_mel(audio, self.cfg)
        if self.mel_margin:
            mel = self._with_margin(entry, start, mel)
        if self.dequantize:
            audio = audio + torch.rand(audio.shape, generator=gen) * QUANT_STEP
        return audio, mel

    def _with_margin(self, entry: Entry, start: int, mel: torch.Tensor) -> torch.Tensor:
        """``mel`` (n_mels, F) of frames ``[start, start + F)`` with ``mel_margin`` frames of the
        clip on each side, silence (the log floor) beyond its ends."""
        m, frames = self.mel_margin, mel.shape[-1]
        out = torch.full((mel.shape[0], frames + 2 * m), math.log(self.cfg.log_floor))
        out[:, m : m + frames] = mel
        lo = max(0, start - m)
        if lo < start:
            out[:, m - (start - lo) : m] = self.corpus.load_segment(entry, lo, start - lo)[1]
        end, hi = min(entry.num_frames, start + frames), min(entry.num_frames, start + frames + m)
        if end < hi:
            after = self.corpus.load_segment(entry, end, hi - end)[1]
            out[:, m + (end - start) : m + (hi - start)] = after
        return out
