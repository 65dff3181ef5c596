"""`distill evaluate --outputs DIR`: score any vocoder's outputs against the reference clips.

The reference clips are the clips of a prepared split (``distill prepare``: trimmed,
level-normalised, at the corpus's sample rate), the very clips ``distill evaluate`` scores the
student on. A folder of outputs holds one audio file per clip, named by the clip's id:
``DIR/<id>.wav`` (or ``.flac`` / ``.ogg``), e.g. ``DIR/espeak_00023.wav`` for the entry
``espeak_00023`` of ``val.jsonl``; ``distill synthesize --data D --split val --out-dir DIR``
writes exactly that, and ``distill evaluate --data D --write-references DIR`` writes the
reference clips under the same names for another vocoder to re-synthesise.

Each output is read with :func:`distill.audio.load_audio` (mono mix, resampled to the corpus's
rate, not normalised: a level difference is what the loudness measure is there to show) and
scored with the code the student is scored with (:func:`distill.evaluation.score_clip`) beside
Griffin-Lim from the same mels. An output may be up to :data:`LENGTH_TOLERANCE_SECONDS` longer
or shorter than its reference (vocoders pad differently); its end is cropped or zero-padded.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from distill.errors import AudioError, ConfigError, DataError
from distill.evaluation import (
    EvaluationOptions,
    _count_undefined,
    _listening_summary,
    _summary,
    score_clip,
    split_clips,
)
from distill.listening import LISTENING_KEYS
from distill.report import QUALITY_METRICS, headline_rows, write_outputs

__all__ = [
    "AUDIO_SUFFIXES",
    "LENGTH_TOLERANCE_SECONDS",
    "find_outputs",
    "evaluate_outputs",
    "write_references",
]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
LENGTH_TOLERANCE_SECONDS = 0.1


def _system_names(folders: list[Path]) -> dict[str, Path]:
    names: dict[str, Path] = {}
    for folder in folders:
        name = folder.resolve().name
        if name in names:
            raise ConfigError(
                f"--outputs {names[name]} and {folder} have the same folder name {name!r}, "
                "which names their rows in the report; rename one of them"
            )
        if name == "real" or name.startswith("griffin_lim_"):
            raise ConfigError(
                f"--outputs folder name {name!r} is taken by a built-in row of the report; "
                "rename the folder"
            )
        names[name] = folder
    return names


def find_outputs(folder: str | Path, ids: list[str]) -> dict[str, Path]:
    """``{clip id: file}`` of the outputs in ``folder`` named ``<id>.wav|.flac|.ogg``.

    Raises :class:`DataError` if the folder does not exist, names a clip twice, or holds none of
    the clips (nothing to score: the names are probably wrong).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--outputs {folder} is not a folder; pass a folder of <id>.wav files")
    wanted, found = set(ids), {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in AUDIO_SUFFIXES and path.stem in wanted:
            if path.stem in found:
                raise DataError(
                    f"{folder} holds two outputs of clip {path.stem}: {found[path.stem].name} "
                    f"and {path.name}; keep one"
                )
            found[path.stem] = path
    if not found:
        examples = ", ".join(f"{i}.wav" for i in ids[:3])
        raise DataError(
            f"--outputs {folder} holds no output of the {len(ids)} reference clips; name each "
            f"file by its clip's id, e.g. {examples} (the ids are in the split's .jsonl; "
            "`distill evaluate --data D --write-references DIR` writes the reference clips "
            "under those names)"
        )
    return found


def _load_output(path: Path, cfg, length: int) -> np.ndarray:
    """The output resampled to the corpus's rate, cropped or zero-padded to ``length``."""
    from distill.audio import load_audio

    audio = load_audio(path, cfg).numpy()
    diff = (audio.size - length) / cfg.sample_rate
    if abs(diff) > LENGTH_TOLERANCE_SECONDS:
        raise AudioError(
            f"{path} is {audio.size / cfg.sample_rate:.3f} s long, its reference "
            f"{length / cfg.sample_rate:.3f} s ({diff:+.3f} s); an output must be the same clip, "
            f"time-aligned, within {LENGTH_TOLERANCE_SECONDS} s"
        )
    return np.pad(audio[:length], (0, max(0, length - audio.size))).astype(np.float32)


def evaluate_outputs(outputs, data_root, out_dir, options=None, progress: bool = True) -> dict:
    """Score folders of outputs against the reference clips; write report.md, metrics.json,
    figures/ and wavs/ to ``out_dir`` (atomically, as :func:`distill.evaluation.evaluate`).

    A clip whose output is missing or unreadable is left out of that system's averages and the
    report says why; a folder with no output of any clip is an error before anything runs.
    """
    from tqdm import tqdm

    from distill.baselines import griffin_lim

    options = options or EvaluationOptions()
    corpus, entries = split_clips(data_root, options)
    names = _system_names([Path(p) for p in outputs])
    ids = [e.id for e in entries]
    files = {name: find_outputs(folder, ids) for name, folder in names.items()}
    if not set.intersection(*(set(found) for found in files.values())):
        raise DataError(
            f"no clip of split {options.split!r} has an output in every folder "
            f"({', '.join(map(str, names.values()))}); score folders of the same clips"
        )
    cfg = corpus.audio_config
    sr = cfg.sample_rate
    griffin_lims = [f"griffin_lim_{n}" for n in options.griffin_lim_iters]

    per_clip, undefined = [], {}
    figure: list[tuple] = []  # (clip, systems, tracks) of the first clips every folder has
    for i, entry in enumerate(tqdm(entries, desc="score outputs", disable=not progress)):
        audio, mel = corpus.load(entry)
        ref = audio.numpy()
        systems, missing = {}, {}
        for name in names:
            path = files[name].get(entry.id)
            try:
                if path is None:
                    raise AudioError(f"no file {entry.id}.wav (or .flac, .ogg) in {names[name]}")
                systems[name] = _load_output(path, cfg, ref.size)
            except AudioError as err:
                missing[name] = str(err)
        for n_iter, gl in zip(options.griffin_lim_iters, griffin_lims):
            systems[gl] = griffin_lim(mel, cfg, n_iter, seed=options.seed + i)
        scores, tracks = score_clip(ref, systems, cfg)
        why = scores.get("undefined", {})
        for name, reason in missing.items():  # every value of a missing output is undefined
            scores["quality"][name] = dict.fromkeys(k for k, _, _ in QUALITY_METRICS)
            scores["listening"][name] = dict.fromkeys(LISTENING_KEYS)
            why[name] = {"output": reason}
        order = [*names, *griffin_lims]
        row = {
            "id": entry.id,
            "seconds": ref.size / sr,
            "quality": {n: scores["quality"][n] for n in order},
            "listening": {n: scores["listening"][n] for n in ["real", *order]},
        }
        if why:
            row["undefined"] = why
        _count_undefined(undefined, why)
        per_clip.append(row)
        if i == 0:
            first = ((entry.id, audio, mel), systems, tracks)
        if not missing and len(figure) < max(options.figure_clips, options.wav_clips):
            figure.append(((entry.id, audio, mel), systems, tracks))

    result = {
        "mode": "outputs",
        "outputs": {name: str(folder) for name, folder in names.items()},
        "split": options.split,
        "data": str(data_root),
        "num_clips": len(per_clip),
        "seconds": sum(r["seconds"] for r in per_clip),
        "sample_rate": sr,
        "student_checkpoint": None,
        "teacher_checkpoint": None,
        "options": asdict(options),
        "copy_synthesis": {
            name: _summary([r["quality"][name] for r in per_clip])
            for name in per_clip[0]["quality"]
        },
        "listening": _listening_summary(per_clip),
        "undefined_counts": undefined,
        "per_clip": per_clip,
    }
    result["headline"] = headline_rows(result)
    figure = figure or [first]  # no clip with every output: show the first as it is
    wavs = {}
    for (clip_id, audio, _), systems, _ in figure[: options.wav_clips]:
        wavs[f"{clip_id}_real.wav"] = audio.numpy()
        for name, out in systems.items():
            wavs[f"{clip_id}_{name}.wav"] = out
    shown = figure[: options.figure_clips]
    write_outputs(
        Path(out_dir),
        result,
        [clip for clip, _, _ in shown],
        [systems for _, systems, _ in shown],
        wavs,
        cfg,
        options,
        tracks={clip[0]: tracks for clip, _, tracks in shown},
    )
    return result


def write_references(data_root, out_dir, split: str = "val", max_clips: int | None = None):
    """Write the reference clips of a split as 16-bit wavs named ``<id>.wav`` (the names
    ``--outputs`` expects): the input another vocoder should re-synthesise. Returns the paths.

    Each file is written atomically; the clips are the prepared audio itself (16-bit already),
    so the wavs hold exactly the samples the outputs are scored against.
    """
    from distill.audio import save_wav
    from distill.data import PreparedCorpus

    corpus = PreparedCorpus(data_root)
    entries = corpus.items(split)[:max_clips]
    if not entries:
        raise DataError(f"split {split!r} of {data_root} has no clips; pick another --split")
    return [
        save_wav(Path(out_dir) / f"{e.id}.wav", corpus.load(e)[0], corpus.audio_config.sample_rate)
        for e in entries
    ]
