"""`distill evaluate` and `distill score`: honest numbers against baselines people already know.

On the clips of a prepared split (whole utterances, not training segments):

- **Likelihood** (teacher): bits per sample at 16-bit, ``-log2 p(x + u) / T + 15`` with one
  draw of the same dequantisation noise ``u ~ U[0, 2^-15)`` as training (an estimate of an upper
  bound on the code length of the 16-bit clip), against FLAC's bits per sample on the same
  16-bit clips (a lossless codec: the baseline any density model of audio must beat).
- **Prediction gain** (teacher): ``10 log10(sum x^2 / sum (x - mu)^2)`` in dB over the real
  clips, ``mu`` the teacher's one-step prediction: the codec engineer's measure of how much of
  the waveform a predictor explains. The student inherits the teacher's innovation noise, so
  this bounds how clean it can sound (see docs/design.md, "What limits the student").
- **Distillation** (student, needs the teacher): closed-form per-step KL(student || teacher) in
  nats per sample at one student sample per clip (with its Monte Carlo twin as a check), and
  the teacher's bits per sample of the student's samples against those of the real audio.
- **Lossless codecs** beside the teacher's bits: FLAC -5 (libsndfile), ``flac -8 -e -p`` and
  ``wavpack -hhx6`` (Debian's CLIs), on the same 16-bit clips (:mod:`distill.codecs`).
- **Copy-synthesis** from the real clips' mels: the student and Griffin-Lim (32 and 100
  iterations), scored against the real audio with wide-band PESQ and STOI at 16 kHz, MR-STFT
  distance, log-mel L1 and MCD (see :mod:`distill.metrics` for what each is computed on).
- **What a listener hears** (:mod:`distill.listening`): DNSMOS P.835 of every output and of
  the real clips (the ceiling), CREPE voicing F1, pitch error in cents and periodicity error
  against the real clip, and the loudness difference in dB.
- **The teacher's free-running generation** (with a teacher): cached sample-by-sample sampling
  on a few ~1 s segments of the first clips, in one batch, scored with the same measures as
  every other system cropped to the same segments.
- **Speed**: the student's real-time factor on the device used.

Per-step teacher densities are computed from its Gaussian conditionals in chunks of mel frames
with enough overlapping context (receptive field + the mel reach of the conditioning) to be
exact, so a long file never has to pass through the network in one piece.
"""

from __future__ import annotations

import copy
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from distill import codecs, metrics
from distill.audio import QUANT_STEP, load_audio, log_mel
from distill.baselines import GRIFFIN_LIM_ITERS, griffin_lim
from distill.config import check_same_features
from distill.errors import AudioError, DataError
from distill.flows import gaussian_log_prob
from distill.inference import synchronize
from distill.listening import LISTENING_KEYS, listen_to_clip
from distill.progress import progress as show_progress
from distill.report import QUALITY_METRICS, headline_rows, write_outputs

__all__ = [
    "EvaluationOptions",
    "teacher_conditionals",
    "teacher_log_prob",
    "quality_metrics",
    "score_clip",
    "score_file",
    "evaluate",
]


@dataclass(frozen=True)
class EvaluationOptions:
    split: str = "val"
    max_clips: int | None = None  # None: every clip of the split
    temperature: float = 1.0  # student temperature for copy-synthesis (the KL always uses 1)
    griffin_lim_iters: tuple[int, ...] = GRIFFIN_LIM_ITERS
    teacher_clip_seconds: float = 1.0  # length of each segment the teacher generates freely
    teacher_clips: int = 4  # segments (from the first clips), generated together in one batch
    teacher_temperature: float = 1.0  # the teacher's sampling temperature
    figure_clips: int = 2
    wav_clips: int = 2
    seed: int = 0
    chunk_seconds: float = 8.0  # longest piece the teacher's density pass sees at once
    device: str | None = None  # None: CUDA when available, else CPU
    dtype: str | None = None  # Synthesizer dtype for copy-synthesis and speed (None: float32)
    tensorboard_dir: str | None = None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# --- teacher densities, exact in chunks ---------------------------------------------------------


@torch.no_grad()
def teacher_conditionals(
    teacher, audio: torch.Tensor, mel: torch.Tensor, chunk_frames: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mu_t, log_sigma_t`` of ``p(x_t | x_{<t}, mel)`` for one clip, chunk by chunk.

    audio: (T,), mel: (n_mels, F) with T = F * hop -> mu (T,), log_sigma (T,).
    Each chunk of ``chunk_frames`` frames is run with the teacher's receptive field of past
    audio and the conditioning's reach of mel frames on both sides, so the result equals one pass
    over the whole clip.
    """
    hop = teacher.hop_length
    frames = mel.shape[-1]
    if chunk_frames is None or frames <= chunk_frames:
        mu, log_sigma = teacher.gaussian_conditionals(audio[None], mel[None])
        return mu[0], log_sigma[0]
    reach = teacher.mel_reach + 1  # the interpolation also reads the neighbouring frame
    left = math.ceil(teacher.receptive_field / hop) + reach
    mus, log_sigmas = [], []
    for a in range(0, frames, chunk_frames):
        b = min(frames, a + chunk_frames)
        a0, b0 = max(0, a - left), min(frames, b + reach)
        mu, log_sigma = teacher.gaussian_conditionals(
            audio[None, a0 * hop : b0 * hop], mel[None, :, a0:b0]
        )
        keep = slice((a - a0) * hop, (b - a0) * hop)
        mus.append(mu[0, keep])
        log_sigmas.append(log_sigma[0, keep])
    return torch.cat(mus), torch.cat(log_sigmas)


def teacher_log_prob(
    teacher, audio: torch.Tensor, mel: torch.Tensor, chunk_frames: int | None = None
) -> float:
    """``log p(audio | mel)`` in nats of one clip (T,), summed in float64."""
    mu, log_sigma = teacher_conditionals(teacher, audio, mel, chunk_frames)
    return float(gaussian_log_prob(audio.double(), mu.double(), log_sigma.double()))


def _dequantize(audio: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return audio + torch.rand(audio.shape, generator=gen).to(audio) * QUANT_STEP


def _chunk_frames(cfg, seconds: float) -> int:
    return max(1, int(seconds * cfg.sample_rate) // cfg.hop_length)


# --- copy-synthesis quality ---------------------------------------------------------------------


def quality_metrics(reference: np.ndarray, output: np.ndarray, cfg) -> tuple[dict, dict]:
    """Every copy-synthesis metric of ``output`` against ``reference`` (same length).

    Returns ``(values, undefined)``: ``values[key]`` is a float or None; ``undefined[key]`` says
    why a metric could not be computed on this clip (e.g. PESQ on a near-silent clip).
    """
    values: dict[str, float | None] = {}
    undefined: dict[str, str] = {}
    functions: dict[str, Callable[[], float]] = {
        "pesq": lambda: metrics.pesq_wb(reference, output, cfg.sample_rate),
        "stoi": lambda: metrics.stoi(reference, output, cfg.sample_rate),
        "mr_stft": lambda: metrics.mr_stft_distance(reference, output)["total"],
        "log_mel_l1": lambda: metrics.log_mel_l1(reference, output, cfg),
        "mcd": lambda: metrics.mel_cepstral_distortion(reference, output, cfg),
    }
    for key, fn in functions.items():
        try:
            values[key] = fn()
        except (metrics.MetricUndefinedError, ValueError) as err:
            values[key], undefined[key] = None, str(err)
    return values, undefined


def score_clip(reference: np.ndarray, systems: dict[str, np.ndarray], cfg) -> tuple[dict, dict]:
    """Copy-synthesis metrics and the listener's measures of every system's output of one clip.

    Returns ``(row, tracks)``: ``row["quality"][system]`` as :func:`quality_metrics` gives it,
    ``row["listening"][system]`` (``"real"`` included: the real clip's own DNSMOS) as
    :func:`distill.listening.listen_to_clip` gives it, and ``row["undefined"][system][key]``,
    why a value is None (only when some is); ``tracks[system]`` the CREPE pitch tracks.
    """
    row: dict = {"quality": {}}
    undefined: dict[str, dict[str, str]] = {}
    for name, out in systems.items():
        row["quality"][name], why = quality_metrics(reference, out, cfg)
        if why:
            undefined[name] = why
    row["listening"], heard_why, tracks = listen_to_clip(reference, systems, cfg.sample_rate)
    for name, why in heard_why.items():
        undefined.setdefault(name, {}).update(why)
    if undefined:
        row["undefined"] = undefined
    return row, tracks


def _count_undefined(counts: dict[str, int], undefined: dict) -> None:
    """Add one clip's ``{system: {key: why}}`` to the counts per ``"system/key"``."""
    for name, why in undefined.items():
        for key in why:
            counts[f"{name}/{key}"] = counts.get(f"{name}/{key}", 0) + 1


def _summary(per_clip: list[dict], keys=None) -> dict:
    """Mean, standard deviation and count of every metric over the clips where it is defined
    (``keys``: the copy-synthesis metrics unless given)."""
    out = {}
    for key in keys or [k for k, _, _ in QUALITY_METRICS]:
        vals = [c[key] for c in per_clip if c.get(key) is not None]
        out[key] = {
            "mean": float(np.mean(vals)) if vals else None,
            "std": float(np.std(vals)) if vals else None,
            "n": len(vals),
        }
    return out


# --- scoring single files -----------------------------------------------------------------------


def score_file(
    teacher, path: str | Path, preprocess: bool = True, seed: int = 0, chunk_seconds: float = 8.0
) -> dict:
    """Teacher bits/sample and FLAC bits/sample of one audio file (its own mel as conditioning).

    The file is loaded at the teacher's sample rate, trimmed and level-normalised like the
    training data (``preprocess``), and cropped to whole mel frames.
    """
    cfg = teacher.audio_config
    audio = load_audio(path, cfg, preprocess=preprocess)
    frames = audio.numel() // cfg.hop_length
    if frames == 0:
        raise AudioError(
            f"{path} is too short to score: {audio.numel()} samples, one mel frame needs "
            f"{cfg.hop_length}; use a longer clip"
        )
    audio = audio[: frames * cfg.hop_length]
    device = next(teacher.parameters()).device
    mel = log_mel(audio, cfg)
    log_p = teacher_log_prob(
        teacher,
        _dequantize(audio, seed).to(device),
        mel.to(device),
        _chunk_frames(cfg, chunk_seconds),
    )
    return {
        "file": str(path),
        "seconds": audio.numel() / cfg.sample_rate,
        "teacher_bits_per_sample": metrics.nll_bits_per_sample(log_p, audio.numel()),
        "flac_bits_per_sample": metrics.flac_bits_per_sample(audio, cfg.sample_rate),
    }


# --- the evaluation -----------------------------------------------------------------------------


def _load_models(student_path, teacher_path, corpus, device):
    from distill.models import Student, Teacher

    student = Student.from_checkpoint(student_path, device=device)
    check_same_features(
        student.audio_config,
        corpus.audio_config,
        f"student {student_path}",
        f"prepared folder {corpus.root}",
    )
    teacher = None
    if teacher_path is not None:
        teacher = Teacher.from_checkpoint(teacher_path, device=device)
        check_same_features(
            student.audio_config,
            teacher.audio_config,
            f"student {student_path}",
            f"teacher {teacher_path}",
        )
    return student, teacher


def _noise(num_samples: int, seed: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, num_samples, generator=gen).to(device)


@torch.no_grad()
def evaluate(
    student_path,
    data_root,
    out_dir,
    teacher_path=None,
    options: EvaluationOptions | None = None,
    progress: bool = True,
) -> dict:
    """Run the whole evaluation; write report.md, metrics.json, figures/ and wavs/ to ``out_dir``.

    Returns the metrics dict that metrics.json holds. Nothing is written until every number is
    computed; the files then appear together (report.md and metrics.json last).
    """
    from distill.inference import Synthesizer, resolve_device
    from distill.losses import gaussian_kl

    options = options or EvaluationOptions()
    corpus, entries = split_clips(data_root, options)
    device = resolve_device(options.device)
    student, teacher = _load_models(student_path, teacher_path, corpus, device)
    # the Synthesizer takes its student over (dtype, frozen): a copy, the file is read once
    synth = Synthesizer(copy.deepcopy(student), device=device, dtype=options.dtype)
    cfg = student.audio_config
    sr = cfg.sample_rate
    chunk = _chunk_frames(cfg, options.chunk_seconds)

    clips, per_clip, outputs = [], [], []
    undefined: dict[str, int] = {}
    tracks: dict[str, dict] = {}  # pitch tracks of the figure's clips
    synth_seconds = audio_seconds = 0.0
    for i, entry in enumerate(show_progress(entries, desc="evaluate", disable=not progress)):
        audio, mel = corpus.load(entry)  # (T,), (n_mels, F)
        mel_d = mel.to(device)
        T = audio.numel()
        row: dict = {"id": entry.id, "seconds": T / sr}
        lossless, why = codecs.lossless_bits(audio, sr)
        row.update(lossless)
        if why:
            row["undefined"] = {"real": why}
        seed = options.seed + i
        if teacher is not None:
            x = _dequantize(audio, seed).to(device)
            mu, log_sigma = teacher_conditionals(teacher, x, mel_d, chunk)
            x, mu = x.double(), mu.double()
            log_p = float(gaussian_log_prob(x, mu, log_sigma.double()))
            row["teacher_bits_per_sample"] = metrics.nll_bits_per_sample(log_p, T)
            row["signal_energy"] = float(x.square().sum())
            row["teacher_residual_energy"] = float((x - mu).square().sum())
            noise = _noise(T, seed, device)
            x_s, log_q, mean, log_scale = student.sample_with_conditionals(mel_d[None], noise)
            mu, log_sigma = teacher_conditionals(teacher, x_s[0], mel_d, chunk)
            row["kl_nats_per_sample"] = (
                float(gaussian_kl(mean[0], log_scale[0], mu, log_sigma).double().sum()) / T
            )
            log_p = float(gaussian_log_prob(x_s[0].double(), mu.double(), log_sigma.double()))
            row["kl_monte_carlo_nats_per_sample"] = (float(log_q[0]) - log_p) / T
            row["teacher_bits_per_sample_of_student"] = metrics.nll_bits_per_sample(log_p, T)

        # copy-synthesis, timed: the deployable Synthesizer, one parallel pass over the clip,
        # mel in from the CPU and audio back to it, as `distill synthesize` runs it
        if i == 0:
            synth.synthesize(mel, temperature=options.temperature, seed=seed)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        x_student = synth.synthesize(mel, temperature=options.temperature, seed=seed)
        synchronize(device)
        synth_seconds += time.perf_counter() - start
        audio_seconds += T / sr
        ref = audio.numpy()
        systems = {"student": x_student.float().clamp(-1, 1).numpy()}
        for n_iter in options.griffin_lim_iters:
            systems[f"griffin_lim_{n_iter}"] = griffin_lim(mel, cfg, n_iter, seed=seed)
        scores, clip_tracks = score_clip(ref, systems, cfg)
        for name, why in scores.pop("undefined", {}).items():
            row.setdefault("undefined", {}).setdefault(name, {}).update(why)
        row.update(scores)
        _count_undefined(undefined, row.get("undefined", {}))
        if i < options.figure_clips:
            tracks[entry.id] = clip_tracks
        per_clip.append(row)
        clips.append((entry.id, audio, mel))
        outputs.append(systems)

    result = {
        "split": options.split,
        "data": str(data_root),
        "num_clips": len(per_clip),
        "seconds": sum(r["seconds"] for r in per_clip),
        "sample_rate": sr,
        "student_checkpoint": str(student_path),
        "teacher_checkpoint": str(teacher_path) if teacher_path is not None else None,
        "options": asdict(options),
        "likelihood": _likelihood_summary(per_clip, teacher is not None),
        "copy_synthesis": {
            name: _summary([r["quality"][name] for r in per_clip]) for name in outputs[0]
        },
        "listening": _listening_summary(per_clip),
        "speed": {
            "device": _device_name(device),
            "dtype": str(synth.dtype).removeprefix("torch."),
            "student_real_time_factor": metrics.real_time_factor(synth_seconds, audio_seconds),
            "student_seconds": synth_seconds,
            "audio_seconds": audio_seconds,
        },
        "undefined_counts": undefined,
        "per_clip": per_clip,
    }
    result["lossless_undefined"] = _lossless_undefined(per_clip)
    wavs: dict[str, np.ndarray] = {}
    if teacher is not None:
        result["teacher_free_running"], teacher_wavs, teacher_tracks = _teacher_free_running(
            teacher, clips, outputs, cfg, options, device
        )
        wavs.update(teacher_wavs)
        for clip_id, segment in teacher_tracks.items():
            if clip_id in tracks:
                tracks[clip_id]["teacher"] = segment
    result["headline"] = headline_rows(result)
    for (clip_id, audio, _), systems in list(zip(clips, outputs))[: options.wav_clips]:
        wavs[f"{clip_id}_real.wav"] = audio.numpy()
        for name, out in systems.items():
            wavs[f"{clip_id}_{name}.wav"] = out
    write_outputs(Path(out_dir), result, clips, outputs, wavs, cfg, options, tracks=tracks)
    return result


def _listening_summary(per_clip: list[dict]) -> dict:
    """The listener's measures per system (the real clips first), summarised over clips."""
    names = per_clip[0]["listening"]
    return {
        name: _summary([r["listening"][name] for r in per_clip], LISTENING_KEYS) for name in names
    }


def _lossless_summary(per_clip: list[dict]) -> dict:
    """Every codec's bits/sample, weighted by length, over the clips it could code (None if
    none: a CLI that is not installed)."""
    out = {}
    for key in codecs.LOSSLESS_CODECS:
        rows = [r for r in per_clip if r.get(key) is not None]
        out[key] = (
            float(np.average([r[key] for r in rows], weights=[r["seconds"] for r in rows]))
            if rows
            else None
        )
    return out


def _lossless_undefined(per_clip: list[dict]) -> dict[str, str]:
    """Why a codec's number is missing on some clips: the first reason, and on how many."""
    out: dict[str, str] = {}
    for key in codecs.LOSSLESS_CODECS:
        reasons = [r["undefined"]["real"][key] for r in per_clip if r[key] is None]
        if reasons:
            out[key] = f"{reasons[0]} ({len(reasons)} of {len(per_clip)} clips)"
    return out


def _likelihood_summary(per_clip: list[dict], with_teacher: bool) -> dict:
    """Sample-weighted bits/sample (total bits over total samples) and clip-mean KL."""
    weights = np.array([r["seconds"] for r in per_clip])

    def weighted(key):
        return float(np.average([r[key] for r in per_clip], weights=weights))

    out = _lossless_summary(per_clip)
    if with_teacher:
        out["teacher_bits_per_sample"] = weighted("teacher_bits_per_sample")
        out["teacher_bits_per_sample_of_student"] = weighted("teacher_bits_per_sample_of_student")
        out["teacher_prediction_gain_db"] = metrics.prediction_gain_db(
            sum(r["signal_energy"] for r in per_clip),
            sum(r["teacher_residual_energy"] for r in per_clip),
        )
        out["student_kl_nats_per_sample"] = float(
            np.mean([r["kl_nats_per_sample"] for r in per_clip])
        )
        out["student_kl_monte_carlo_nats_per_sample"] = float(
            np.mean([r["kl_monte_carlo_nats_per_sample"] for r in per_clip])
        )
    return out


def split_clips(data_root, options: EvaluationOptions):
    """The prepared corpus at ``data_root`` and the clips of ``options.split`` to score (at
    most ``options.max_clips``); a DataError with the fix when there are none."""
    from distill.data import PreparedCorpus

    corpus = PreparedCorpus(data_root)
    entries = corpus.items(options.split)
    if options.max_clips is not None:
        entries = entries[: options.max_clips]
    if not entries:
        raise DataError(
            f"split {options.split!r} of {data_root} has no clips to score; prepare the corpus "
            "with a validation fraction (distill prepare --val-fraction ...) or pick another "
            "--split"
        )
    return corpus, entries


def _teacher_segments(clips, cfg, options) -> tuple[list[int], list[int], int]:
    """Which clips, where, and how many mel frames the teacher generates: ``teacher_clips``
    segments of ``teacher_clip_seconds`` from the middle of the first clips long enough (of the
    longest clip, whole, when none is)."""
    frames = max(1, round(options.teacher_clip_seconds * cfg.sample_rate / cfg.hop_length))
    chosen = [k for k, (_, _, mel) in enumerate(clips) if mel.shape[-1] >= frames]
    if not chosen:
        longest = max(range(len(clips)), key=lambda k: clips[k][2].shape[-1])
        chosen, frames = [longest], clips[longest][2].shape[-1]
    chosen = chosen[: options.teacher_clips]
    return chosen, [(clips[k][2].shape[-1] - frames) // 2 for k in chosen], frames


def _teacher_free_running(teacher, clips, outputs, cfg, options, device):
    """The teacher's own cached generation on a few segments, all in one batch, scored like
    every other system, which is cropped to the same segments.

    Returns ``(summary, wavs, tracks)``: ``tracks[clip_id] = (start_seconds, teacher's pitch
    track)`` for the F0 figure.
    """
    chosen, starts, frames = _teacher_segments(clips, cfg, options)
    hop, sr = cfg.hop_length, cfg.sample_rate
    n = frames * hop
    mel = torch.stack([clips[k][2][:, s : s + frames] for k, s in zip(chosen, starts)])
    gen = torch.Generator().manual_seed(options.seed)
    noise = torch.randn(len(chosen), n, generator=gen).to(device)
    synchronize(device)
    start = time.perf_counter()
    x_teacher = teacher.sample(mel.to(device), temperature=options.teacher_temperature, noise=noise)
    synchronize(device)
    elapsed = time.perf_counter() - start
    x_teacher = x_teacher.float().cpu().clamp(-1, 1).numpy()

    segments, counts, wavs, tracks = [], {}, {}, {}
    for b, (k, s) in enumerate(zip(chosen, starts)):
        clip_id, audio, _ = clips[k]
        ref = audio[s * hop : s * hop + n].numpy()
        systems = {"teacher": x_teacher[b]}
        systems.update({name: out[s * hop : s * hop + n] for name, out in outputs[k].items()})
        row, segment_tracks = score_clip(ref, systems, cfg)
        _count_undefined(counts, row.get("undefined", {}))
        segments.append({"clip": clip_id, "start_seconds": s * hop / sr, "seconds": n / sr, **row})
        tracks[clip_id] = (s * hop / sr, segment_tracks["teacher"])
        wavs[f"teacher_{clip_id}_real.wav"] = ref
        wavs[f"teacher_{clip_id}_teacher.wav"] = x_teacher[b]
    summary = {
        "segments": len(segments),
        "segment_seconds": n / sr,
        "temperature": options.teacher_temperature,
        "teacher_real_time_factor": metrics.real_time_factor(elapsed, len(segments) * n / sr),
        "generation_seconds": elapsed,
        "copy_synthesis": {
            name: _summary([g["quality"][name] for g in segments])
            for name in segments[0]["quality"]
        },
        "listening": {
            name: _summary([g["listening"][name] for g in segments], LISTENING_KEYS)
            for name in segments[0]["listening"]
        },
        "undefined_counts": counts,
        "per_segment": segments,
    }
    return summary, wavs, tracks
