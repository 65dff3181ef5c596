"""`distill evaluate` and `distill score`: honest numbers against baselines people already know.

On the clips of a prepared split (whole utterances, not training segments):

- **Likelihood** (teacher): bits per sample at 16-bit, ``-log2 p(x + u) / T + 15`` with one
  draw of the same dequantisation noise ``u ~ U[0, 2^-15)`` as training (an estimate of an upper
  bound on the code length of the 16-bit clip), against FLAC's bits per sample on the same
  16-bit clips (a lossless codec: the baseline any density model of audio must beat).
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

import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from distill import metrics
from distill.audio import QUANT_STEP, load_audio, log_mel, save_wav
from distill.baselines import GRIFFIN_LIM_ITERS, griffin_lim
from distill.errors import AudioError, DataError

__all__ = [
    "QUALITY_METRICS",
    "EvaluationOptions",
    "teacher_conditionals",
    "teacher_log_prob",
    "quality_metrics",
    "score_file",
    "evaluate",
    "format_tables",
]

#: Copy-synthesis metrics in table order: (key, column title, higher is better).
QUALITY_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("pesq", "PESQ-WB", True),
    ("stoi", "STOI", True),
    ("mr_stft", "MR-STFT", False),
    ("log_mel_l1", "log-mel L1", False),
    ("mcd", "MCD [dB]", False),
)

METRIC_NOTES = {
    "pesq": "wide-band PESQ (ITU-T P.862.2, MOS-LQO 1.04-4.64) of the output against the real "
    "clip, both resampled to 16 kHz; hears phase artefacts",
    "stoi": "STOI (0-1) of the output against the real clip, both resampled to 16 kHz",
    "mr_stft": "spectral convergence + mean |log-magnitude| difference, averaged over STFT "
    "resolutions (n_fft, hop, win) = (512, 128, 512), (1024, 256, 1024), (2048, 512, 2048), at "
    "the model's sample rate; magnitude only",
    "log_mel_l1": "mean |difference| of natural-log mel magnitudes (distill.audio.log_mel, the "
    "models' conditioning features) over bins and frames; magnitude only",
    "mcd": "mel-cepstral distortion on c1..c13 (c0 excluded) from an orthonormal DCT-II of the "
    "log-mel amplitude, all frames compared one to one (copy-synthesis is time-aligned); "
    "magnitude only",
}


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- teacher densities, exact in chunks ---------------------------------------------------------


def _mel_reach(model) -> int:
    """Mel frames on each side that one output frame of the upsampler + interpolation sees."""
    section = model.config.teacher if model.kind == "teacher" else model.config.student
    return 2 * (section.upsampler_kernel // 2) + 2


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
    reach = _mel_reach(teacher)
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
    from distill.losses import gaussian_log_prob

    mu, log_sigma = teacher_conditionals(teacher, audio, mel, chunk_frames)
    return float(gaussian_log_prob(audio.double(), mu.double(), log_sigma.double()).sum())


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
    from distill.checkpoint import check_audio_config
    from distill.models import Student, Teacher

    student = Student.from_checkpoint(student_path, device=device)
    corpus.check_audio_config(student.audio_config)
    teacher = None
    if teacher_path is not None:
        teacher = Teacher.from_checkpoint(teacher_path, device=device)
        check_audio_config(
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
    from tqdm import tqdm

    from distill.data import PreparedCorpus
    from distill.inference import Synthesizer, resolve_device
    from distill.losses import gaussian_kl, gaussian_log_prob

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
    synth = Synthesizer.from_checkpoint(student_path, device=device, dtype=options.dtype)
    cfg = student.audio_config
    sr = cfg.sample_rate
    chunk = _chunk_frames(cfg, options.chunk_seconds)

    clips, per_clip, outputs = [], [], []
    undefined: dict[str, int] = {}
    synth_seconds = audio_seconds = 0.0
    for i, entry in enumerate(tqdm(entries, desc="evaluate", disable=not progress)):
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
            row["teacher_bits_per_sample"] = metrics.nll_bits_per_sample(
                teacher_log_prob(teacher, x, mel_d, chunk), T
            )
            noise = _noise(T, seed, device)
            x_s, log_q, mean, log_scale = student.sample_with_conditionals(mel_d[None], noise)
            mu, log_sigma = teacher_conditionals(teacher, x_s[0], mel_d, chunk)
            row["kl_nats_per_sample"] = (
                float(gaussian_kl(mean[0], log_scale[0], mu, log_sigma).double().sum()) / T
            )
            log_p = float(gaussian_log_prob(x_s[0].double(), mu.double(), log_sigma.double()).sum())
            row["kl_monte_carlo_nats_per_sample"] = (float(log_q[0]) - log_p) / T
            row["teacher_bits_per_sample_of_student"] = metrics.nll_bits_per_sample(log_p, T)

        # copy-synthesis, timed: the deployable Synthesizer, one parallel pass over the clip,
        # mel in from the CPU and audio back to it, as `distill synthesize` runs it
        if i == 0:
            synth.synthesize(mel, temperature=options.temperature, seed=seed)  # warm-up
        _sync(device)
        start = time.perf_counter()
        x_student = synth.synthesize(mel, temperature=options.temperature, seed=seed)
        _sync(device)
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
    _write_outputs(Path(out_dir), result, clips, outputs, wavs, cfg, options)
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
    _sync(device)
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


# --- tables, figures, files ---------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _quality_table(rows: dict[str, dict], mean_key: bool = True) -> list[str]:
    head = (
        "| system | "
        + " | ".join(f"{title} {'↑' if up else '↓'}" for _, title, up in QUALITY_METRICS)
        + " |"
    )
    lines = [head, "|" + "---|" * (len(QUALITY_METRICS) + 1)]
    for name, values in rows.items():
        cells = []
        for key, _, _ in QUALITY_METRICS:
            v = values[key]
            if mean_key:
                cell = _fmt(v["mean"])
                if v["mean"] is not None and v["n"] > 1:
                    cell += f" ± {v['std']:.2f}"
            else:
                cell = _fmt(v)
            cells.append(cell)
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return lines


def format_tables(result: dict) -> str:
    """The tables that ``distill evaluate`` prints and report.md holds (markdown)."""
    n = result["num_clips"]
    lines = [
        f"Copy-synthesis from the real mels, {n} {result['split']} clips "
        f"({result['seconds']:.1f} s), mean ± std over clips:",
        "",
        *_quality_table(result["copy_synthesis"]),
        "",
        "Likelihood, bits per sample at 16-bit (lower is better):",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| FLAC (lossless codec) on the real clips | "
        f"{_fmt(result['likelihood']['flac_bits_per_sample'])} |",
    ]
    lik = result["likelihood"]
    if "teacher_bits_per_sample" in lik:
        lines += [
            f"| teacher NLL of the real clips | {_fmt(lik['teacher_bits_per_sample'])} |",
            f"| teacher NLL of the student's samples | "
            f"{_fmt(lik['teacher_bits_per_sample_of_student'])} |",
            f"| KL(student ‖ teacher), nats/sample (closed form) | "
            f"{_fmt(lik['student_kl_nats_per_sample'], 4)} |",
            f"| KL(student ‖ teacher), nats/sample (Monte Carlo) | "
            f"{_fmt(lik['student_kl_monte_carlo_nats_per_sample'], 4)} |",
        ]
    speed = result["speed"]
    lines += [
        "",
        f"Student real-time factor: {speed['student_real_time_factor']:.4f} "
        f"({1 / max(speed['student_real_time_factor'], 1e-12):.1f}x real time) in "
        f"{speed['dtype']} on {speed['device']}.",
    ]
    if "short_clip" in result:
        short = result["short_clip"]
        lines += [
            "",
            f"Short clip: the first {short['seconds']:.2f} s of {short['clip']}, every system "
            f"cropped to it (teacher's cached generation: real-time factor "
            f"{short['teacher_real_time_factor']:.2f}):",
            "",
            *_quality_table(short["systems"], mean_key=False),
        ]
    return "\n".join(lines)


def _report(result: dict) -> str:
    notes = "\n".join(f"- **{title}**: {METRIC_NOTES[key]}." for key, title, _ in QUALITY_METRICS)
    undefined = [
        f"- {k}: undefined on {v} clip(s)" for k, v in sorted(result["undefined_counts"].items())
    ]
    for system, reasons in result.get("short_clip", {}).get("undefined", {}).items():
        undefined += [f"- short clip, {system}/{k}: {why}" for k, why in reasons.items()]
    undefined_text = "\n".join(undefined) or "- none: every metric was defined on every clip."
    iters = " or ".join(str(n) for n in result["options"]["griffin_lim_iters"])
    teacher = result["teacher_checkpoint"]
    return f"""# distill evaluation

- student: `{result["student_checkpoint"]}`
- teacher: `{teacher or "not given (no likelihood, KL or teacher-generation numbers)"}`
- data: `{result["data"]}`, split `{result["split"]}`: {result["num_clips"]} whole utterances,
  {result["seconds"]:.1f} s at {result["sample_rate"]} Hz

{format_tables(result)}

## What each number is computed on

Copy-synthesis: every system gets the mel of a real clip and its output is compared with that
real clip, sample-aligned. Griffin-Lim inverts the same log-mel with librosa (NNLS mel
inversion, then {iters} Griffin-Lim iterations, fixed random phase seed). The student samples
once per clip at temperature {result["options"]["temperature"]}. Scores are averaged over the
clips where they are defined (per-clip values and reasons in metrics.json). On the short clip
the teacher generates from the clip's first mel frames alone, sample by sample with cached
activations; the other systems' whole-clip outputs are cropped to the same samples.
PESQ leads the table because magnitude-only distances (MR-STFT, log-mel L1, MCD) flatter
Griffin-Lim, which reconstructs magnitudes by construction; PESQ hears its phase artefacts.

{notes}

Likelihood: the teacher's bits/sample are `-log2 p(x + u) / T + 15`, with one draw of the
training dequantisation noise `u ~ U[0, 2^-15)` per clip; FLAC's are the bytes of the 16-bit
clip encoded by libsndfile in memory, header and metadata included, times 8 over the number of
samples; both are averaged over clips weighted by length (total bits over total samples). The
KL is the closed-form sum over time of the per-step Gaussian KL between student and teacher at
one student sample (temperature 1) per clip, divided by its length and averaged over clips;
the Monte Carlo row, `(log q(x) - log p(x)) / T` at the same sample, estimates the same
quantity.

Speed: `Synthesizer.synthesize` (the student alone, one parallel pass per whole clip, mel
from and audio back to the CPU, after one warm-up pass) in {result["speed"]["dtype"]} on
{result["speed"]["device"]}; real-time factor = compute time / audio duration. The student's
copy-synthesis audio above is this output.

Metrics that could not be computed:
{undefined_text}

Files: `metrics.json` (every number, per clip too), `figures/log_mel.png`,
`figures/metrics.png`, `wavs/`.
"""


def _plot_log_mels(clips, outputs, cfg, count: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gl_name = max(
        (k for k in outputs[0] if k.startswith("griffin_lim_")),
        key=lambda k: int(k.rsplit("_", 1)[1]),
        default=None,
    )
    columns = ["real", "student"] + ([gl_name] if gl_name else [])
    rows = list(zip(clips, outputs))[:count]
    fig, axes = plt.subplots(
        len(rows),
        len(columns),
        squeeze=False,
        layout="constrained",
        figsize=(4.2 * len(columns), 3.0 * len(rows)),
    )
    for r, ((clip_id, _, mel), systems) in enumerate(rows):
        images = {"real": mel.numpy()}
        for name in columns[1:]:
            images[name] = log_mel(torch.from_numpy(systems[name]), cfg).numpy()
        vmin, vmax = float(mel.min()), float(mel.max())
        for c, name in enumerate(columns):
            ax = axes[r][c]
            im = ax.imshow(
                images[name],
                origin="lower",
                aspect="auto",
                vmin=vmin,
                vmax=vmax,
                cmap="magma",
                interpolation="nearest",
            )
            ax.set_title(f"{clip_id}: {name.replace('_', ' ')}", fontsize=9)
            ax.set_xlabel("frame")
            ax.set_ylabel("mel bin")
        fig.colorbar(im, ax=axes[r].tolist(), label="log mel")
    return fig


def _plot_metrics(result: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = result["copy_synthesis"]
    names = list(systems)
    likelihood = result["likelihood"]
    panels = len(QUALITY_METRICS) + 1
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.6), layout="constrained")
    colors = plt.get_cmap("tab10")(np.arange(len(names)))
    bits = {"FLAC": likelihood["flac_bits_per_sample"]}
    if "teacher_bits_per_sample" in likelihood:
        bits["teacher\n(real)"] = likelihood["teacher_bits_per_sample"]
        bits["teacher\n(student's)"] = likelihood["teacher_bits_per_sample_of_student"]
    ax = axes[-1]
    ax.bar(range(len(bits)), list(bits.values()), color="0.5")
    ax.set_xticks(range(len(bits)), list(bits), fontsize=8)
    ax.set_title("bits/sample at 16-bit (lower is better)", fontsize=9)
    for ax, (key, title, up) in zip(axes, QUALITY_METRICS):
        means = [systems[n][key]["mean"] for n in names]
        stds = [systems[n][key]["std"] or 0.0 for n in names]
        heights = [m if m is not None else 0.0 for m in means]
        ax.bar(range(len(names)), heights, yerr=stds, color=colors, capsize=3)
        ax.set_xticks(
            range(len(names)),
            [n.replace("_", " ") for n in names],
            rotation=30,
            ha="right",
            fontsize=8,
        )
        ax.set_title(f"{title} ({'higher' if up else 'lower'} is better)", fontsize=9)
    fig.suptitle(
        f"{result['num_clips']} {result['split']} clips: copy-synthesis quality and likelihood",
        fontsize=10,
    )
    return fig


def _write_outputs(out: Path, result, clips, outputs, wavs, cfg, options) -> None:
    """Write everything into a temporary folder next to ``out``, then move it in place."""
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        figures = {
            "log_mel": _plot_log_mels(clips, outputs, cfg, options.figure_clips),
            "metrics": _plot_metrics(result),
        }
        (tmp / "figures").mkdir()
        for name, fig in figures.items():
            fig.savefig(tmp / "figures" / f"{name}.png", dpi=110)
        for name, audio in wavs.items():
            save_wav(tmp / "wavs" / name, audio, cfg.sample_rate)
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        (tmp / "report.md").write_text(_report(result))
        if options.tensorboard_dir:
            _write_tensorboard(options.tensorboard_dir, result, figures)
        for fig in figures.values():
            plt.close(fig)
        out.mkdir(exist_ok=True)
        # report.md and metrics.json last: their presence means the rest is complete
        paths = sorted(tmp.rglob("*"), key=lambda p: p.name in ("report.md", "metrics.json"))
        for path in paths:
            if path.is_file():
                target = out / path.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_tensorboard(log_dir, result: dict, figures: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for name, fig in figures.items():
            writer.add_figure(f"eval/{name}", fig, close=False)
        for system, values in result["copy_synthesis"].items():
            for key, v in values.items():
                if v["mean"] is not None:
                    writer.add_scalar(f"eval/{system}/{key}", v["mean"])
        for key, v in result["likelihood"].items():
            writer.add_scalar(f"eval/likelihood/{key}", v)
        writer.add_scalar("eval/speed/student_rtf", result["speed"]["student_real_time_factor"])
