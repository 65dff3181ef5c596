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
- **Copy-synthesis** from the real clips' mels: the student, Griffin-Lim (32 and 100 iterations)
  and, with a teacher, the teacher's cached sample-by-sample generation on a short clip; scored
  against the real audio with wide-band PESQ and STOI at 16 kHz, MR-STFT distance, log-mel L1
  and MCD (see :mod:`distill.metrics` for what each is computed on).
- **Speed**: the student's real-time factor on the device used.

Per-step teacher densities are computed from its Gaussian conditionals in chunks of mel frames
with enough overlapping context (receptive field + upsampler reach) to be exact, so a long file
never has to pass through the network in one piece.
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

from distill import metrics
from distill.audio import QUANT_STEP, load_audio, log_mel
from distill.baselines import GRIFFIN_LIM_ITERS, griffin_lim
from distill.config import check_same_features
from distill.errors import AudioError, DataError
from distill.flows import gaussian_log_prob
from distill.inference import synchronize
from distill.progress import progress as show_progress
from distill.report import QUALITY_METRICS, write_outputs

__all__ = [
    "EvaluationOptions",
    "teacher_conditionals",
    "teacher_log_prob",
    "quality_metrics",
    "score_file",
    "evaluate",
]


@dataclass(frozen=True)
class EvaluationOptions:
    split: str = "val"
    max_clips: int | None = None  # None: every clip of the split
    temperature: float = 1.0  # student temperature for copy-synthesis (the KL always uses 1)
    griffin_lim_iters: tuple[int, ...] = GRIFFIN_LIM_ITERS
    teacher_clip_seconds: float = 0.5  # teacher's cached generation is slow: a short clip only
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
    audio and the upsampler's reach of mel frames on both sides, so the result equals one pass
    over the whole clip.
    """
    hop = teacher.hop_length
    frames = mel.shape[-1]
    if chunk_frames is None or frames <= chunk_frames:
        mu, log_sigma = teacher.gaussian_conditionals(audio[None], mel[None])
        return mu[0], log_sigma[0]
    reach = teacher.upsampler.reach + 1  # the interpolation also reads the neighbouring frame
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


def _summary(per_clip: list[dict]) -> dict:
    """Mean, standard deviation and count of every metric over the clips where it is defined."""
    out = {}
    for key, _, _ in QUALITY_METRICS:
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
    from distill.data import PreparedCorpus
    from distill.inference import Synthesizer, resolve_device
    from distill.losses import gaussian_kl

    options = options or EvaluationOptions()

    corpus = PreparedCorpus(data_root)
    entries = corpus.items(options.split)
    if options.max_clips is not None:
        entries = entries[: options.max_clips]
    if not entries:
        raise DataError(
            f"split {options.split!r} of {data_root} has no clips to evaluate; prepare the "
            "corpus with a validation fraction (distill prepare --val-fraction ...) or pick "
            "another --split"
        )
    device = resolve_device(options.device)
    student, teacher = _load_models(student_path, teacher_path, corpus, device)
    # the Synthesizer takes its student over (dtype, frozen): a copy, the file is read once
    synth = Synthesizer(copy.deepcopy(student), device=device, dtype=options.dtype)
    cfg = student.audio_config
    sr = cfg.sample_rate
    chunk = _chunk_frames(cfg, options.chunk_seconds)

    clips, per_clip, outputs = [], [], []
    undefined: dict[str, int] = {}
    synth_seconds = audio_seconds = 0.0
    for i, entry in enumerate(show_progress(entries, desc="evaluate", disable=not progress)):
        audio, mel = corpus.load(entry)  # (T,), (n_mels, F)
        mel_d = mel.to(device)
        T = audio.numel()
        row: dict = {
            "id": entry.id,
            "seconds": T / sr,
            "flac_bits_per_sample": metrics.flac_bits_per_sample(audio, sr),
        }
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
        row["quality"] = {}
        for name, out in systems.items():
            values, why = quality_metrics(ref, out, cfg)
            row["quality"][name] = values
            for key in why:
                undefined[f"{name}/{key}"] = undefined.get(f"{name}/{key}", 0) + 1
            if why:
                row.setdefault("undefined", {})[name] = why
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
    wavs: dict[str, np.ndarray] = {}
    if teacher is not None:
        result["short_clip"], short_wavs = _short_clip(
            teacher, clips, outputs, cfg, options, device
        )
        wavs.update(short_wavs)
    for (clip_id, audio, _), systems in list(zip(clips, outputs))[: options.wav_clips]:
        wavs[f"{clip_id}_real.wav"] = audio.numpy()
        for name, out in systems.items():
            wavs[f"{clip_id}_{name}.wav"] = out
    write_outputs(Path(out_dir), result, clips, outputs, wavs, cfg, options)
    return result


def _likelihood_summary(per_clip: list[dict], with_teacher: bool) -> dict:
    """Sample-weighted bits/sample (total bits over total samples) and clip-mean KL."""
    weights = np.array([r["seconds"] for r in per_clip])

    def weighted(key):
        return float(np.average([r[key] for r in per_clip], weights=weights))

    out = {"flac_bits_per_sample": weighted("flac_bits_per_sample")}
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


def _short_clip(teacher, clips, outputs, cfg, options, device):
    """Teacher's cached generation on the first ``teacher_clip_seconds`` of the longest clip,
    scored with every other system cropped to the same segment."""
    index = max(range(len(clips)), key=lambda k: clips[k][1].numel())
    clip_id, audio, mel = clips[index]
    frames = min(mel.shape[-1], _chunk_frames(cfg, options.teacher_clip_seconds))
    n = frames * cfg.hop_length
    noise = _noise(n, options.seed, device)
    start = time.perf_counter()
    x_teacher = teacher.sample(
        mel[None, :, :frames].to(device), temperature=options.temperature, noise=noise
    )
    synchronize(device)
    elapsed = time.perf_counter() - start
    ref = audio[:n].numpy()
    systems = {"teacher": x_teacher[0].float().cpu().clamp(-1, 1).numpy()}
    systems.update({name: out[:n] for name, out in outputs[index].items()})
    scores, undefined = {}, {}
    for name, out in systems.items():
        scores[name], why = quality_metrics(ref, out, cfg)
        if why:
            undefined[name] = why
    summary = {
        "clip": clip_id,
        "seconds": n / cfg.sample_rate,
        "teacher_real_time_factor": metrics.real_time_factor(elapsed, n / cfg.sample_rate),
        "systems": scores,
        "undefined": undefined,
    }
    wavs = {f"short_{clip_id}_real.wav": ref, f"short_{clip_id}_teacher.wav": systems["teacher"]}
    return summary, wavs
