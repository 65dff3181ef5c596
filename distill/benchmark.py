"""Generation speed: student one pass vs teacher cached vs teacher naive, same mel, same run.

* **student**: :meth:`Synthesizer.synthesize`, the deployable path (noise drawn, mel encoded,
  one parallel pass through every flow).
* **teacher cached**: :meth:`Teacher.sample`, one sample at a time with per-layer ring buffers.
* **teacher naive**: :meth:`Teacher.sample` with ``naive=True``, which recomputes the whole
  receptive-field window at every step. That costs seconds per thousand samples, so it runs on
  a short clip of ``receptive field + naive_samples`` samples, and its steady-state cost per
  sample (the mean time between steps once the window is full) is extrapolated to the length of
  the others; the report says so.

Each path is warmed up first, then timed ``repeats`` times; the fastest run counts. Models built
from a config are randomly initialised: speed does not depend on training.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from distill.config import check_same_features, load_config
from distill.errors import ConfigError
from distill.inference import Synthesizer, block_noise, resolve_device, resolve_dtype, synchronize
from distill.models import Student, Teacher
from distill.precision import half_precision, weight_dtype

__all__ = [
    "BenchResult",
    "benchmark",
    "build_models",
    "format_result",
    "benchmark_matrix",
    "best_time",
    "load_average",
    "cpu_count",
]


@dataclass
class BenchResult:
    student_samples_per_s: float | None  # None: the path was not timed (--paths)
    teacher_cached_samples_per_s: float | None
    teacher_naive_samples_per_s: float | None
    device: str
    dtype: str
    batch: int
    seconds: float
    sample_rate: int
    samples: int  # per item, for student and cached teacher
    naive_timed_samples: int  # per item, the clip naive generation actually ran on
    naive_extrapolated: bool
    threads: int
    student_receptive_field: int
    teacher_receptive_field: int
    source: str  # "checkpoints" or "random init from CONFIG"
    compile: bool  # the student's Synthesizer options
    cuda_graphs: bool
    load_average: float  # 1-minute load average at the end (CPU contention from other work)
    cpus: int

    def to_dict(self) -> dict:
        return asdict(self)


def build_models(
    teacher_path: str | None, student_path: str | None, config_path: str | None
) -> tuple[Teacher, Student, str]:
    """Teacher and student from checkpoints where given, else randomly initialised from a config
    (``--config``, or the config inside whichever checkpoint was given)."""
    if config_path is None and not (teacher_path or student_path):
        raise ConfigError(
            "give --config (e.g. recipes/configs/demo.yaml) or --teacher/--student checkpoints"
        )
    teacher = Teacher.from_checkpoint(teacher_path) if teacher_path else None
    student = Student.from_checkpoint(student_path) if student_path else None
    if config_path is not None:
        config = load_config(config_path)
    else:
        config = (teacher or student).config
    torch.manual_seed(0)
    teacher = teacher or Teacher(config).eval()
    student = student or Student(config).eval()
    check_same_features(
        teacher.audio_config,
        student.audio_config,
        teacher_path or "the config",
        student_path or "the config",
    )
    parts = [p for p in (teacher_path, student_path) if p]
    source = "checkpoints " + ", ".join(parts) if parts else ""
    if len(parts) < 2:
        source = (source + "; " if source else "") + f"random init from {config_path or parts[0]}"
    return teacher, student, source


def _bench_mel(batch: int, frames: int, n_mels: int) -> torch.Tensor:
    """A fixed speech-level log-mel (B, n_mels, F): values do not change the cost."""
    gen = torch.Generator().manual_seed(1234)
    return torch.randn(batch, n_mels, frames, generator=gen) * 1.5 - 5.0


def best_time(fn, repeats: int, device: torch.device) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn`` (device work waited for)."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


class _StepClock:
    """Wraps a conditioner's ``naive_step`` to record when each step starts."""

    def __init__(self, conditioner, device: torch.device):
        self.conditioner, self.device = conditioner, device
        self.inner = conditioner.naive_step
        self.stamps: list[float] = []

    def __call__(self, u, c, t):
        synchronize(self.device)
        self.stamps.append(time.perf_counter())
        return self.inner(u, c, t)

    def __enter__(self):
        self.conditioner.naive_step = self
        return self

    def __exit__(self, *exc):
        del self.conditioner.naive_step


PATHS = ("student", "cached", "naive")
"""What ``distill bench`` can time: the student's one pass, the teacher's cached and naive
generation."""


def benchmark(
    teacher: Teacher,
    student: Student,
    seconds: float,
    batch: int = 1,
    device=None,
    dtype=None,
    repeats: int = 3,
    naive_samples: int = 256,
    source: str = "",
    paths: tuple[str, ...] = PATHS,
    synthesizer: Synthesizer | None = None,
) -> BenchResult:
    """Time the generation ``paths`` on the same mel; see the module docstring. A path left
    out is None in the result. ``synthesizer``: the student's, to reuse one (its compiled
    code, its CUDA graphs) across calls; by default a plain one on ``device`` and ``dtype``."""
    if seconds <= 0:
        raise ConfigError(f"--seconds must be positive, found {seconds}")
    if batch < 1:
        raise ConfigError(f"--batch must be >= 1, found {batch}")
    unknown = [p for p in paths if p not in PATHS]
    if unknown or not paths:
        raise ConfigError(
            f"--paths must name some of {', '.join(PATHS)}, found {','.join(paths) or 'none'}"
        )
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    cfg = student.audio_config
    hop, sr = cfg.hop_length, cfg.sample_rate
    frames = max(1, round(seconds * sr / hop))
    samples = frames * hop
    mel = _bench_mel(batch, frames, cfg.n_mels)
    student_rate = cached_rate = naive_rate = None
    naive_timed, extrapolated = 0, False

    syn = synthesizer or Synthesizer(student, device=device, dtype=dtype)
    if (syn.device, syn.dtype) != (device, dtype):
        raise ConfigError(
            f"the synthesizer runs on {syn.device} in {syn.dtype}, the benchmark asks for "
            f"{device} in {dtype}; build it with the same device and dtype"
        )
    if "student" in paths:
        syn.synthesize(mel[:, :, : min(frames, 4)], seed=0)  # warm-up
        syn.synthesize(mel, seed=0)
        student_time = best_time(lambda: syn.synthesize(mel, seed=0), repeats, device)
        student_rate = batch * samples / student_time

    teacher = teacher.to(device=device, dtype=weight_dtype(dtype)).eval()
    mel_d = mel.to(device=device, dtype=weight_dtype(dtype))
    noise = torch.stack([block_noise(0, i, 0, samples, device) for i in range(batch)])
    noise = noise.to(weight_dtype(dtype))
    with torch.inference_mode(), half_precision(device, dtype):
        if "cached" in paths:
            teacher.sample(mel_d[:, :, :1], noise=noise[:, :hop])  # warm-up
            cached_time = best_time(
                lambda: teacher.sample(mel_d, noise=noise), max(1, min(repeats, 2)), device
            )
            cached_rate = batch * samples / cached_time
        if "naive" in paths:
            naive_rate, naive_timed = _naive_rate(teacher, mel_d, noise, naive_samples, device)
            extrapolated = naive_timed < samples

    return BenchResult(
        student_samples_per_s=student_rate,
        teacher_cached_samples_per_s=cached_rate,
        teacher_naive_samples_per_s=naive_rate,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        batch=batch,
        seconds=samples / sr,
        sample_rate=sr,
        samples=samples,
        naive_timed_samples=naive_timed,
        naive_extrapolated=extrapolated,
        threads=torch.get_num_threads(),
        student_receptive_field=student.receptive_field,
        teacher_receptive_field=teacher.receptive_field,
        source=source,
        compile=syn.compiled,
        cuda_graphs=syn.cuda_graphs,
        load_average=load_average(),
        cpus=cpu_count(),
    )


VARIANTS = {
    "eager": {},
    "cuda-graphs": {"cuda_graphs": True},
    "compile": {"compile": True},
    "compile+cuda-graphs": {"compile": True, "cuda_graphs": True},
}
"""The student's Synthesizer options ``distill bench --variants`` can time, cheapest first."""


def benchmark_matrix(
    teacher: Teacher,
    student: Student,
    seconds: float,
    dtypes: tuple[str, ...] = ("float32",),
    batches: tuple[int, ...] = (1,),
    variants: tuple[str, ...] = ("eager",),
    budget_s: float | None = None,
    device=None,
    **options,
) -> Iterator[dict]:
    """:func:`benchmark` for every variant x dtype x batch, in that order (one Synthesizer
    per variant and dtype, so compiled code and graphs serve every batch), as dicts.

    Once ``budget_s`` seconds have passed, the remaining combinations are skipped: a dict
    with their ``variant``, ``dtype``, ``batch`` and the reason in ``skipped``. So is CUDA
    graphs on a CPU. ``options`` go to :func:`benchmark`.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ConfigError(
            f"--variants must name some of {', '.join(VARIANTS)}, found "
            f"{','.join(variants) or 'none'}"
        )
    device = resolve_device(device)
    start = time.perf_counter()
    for variant in variants:
        for dtype in dtypes:
            syn = None
            for batch in batches:
                where = {"variant": variant, "dtype": str(resolve_dtype(dtype)), "batch": batch}
                where["dtype"] = where["dtype"].removeprefix("torch.")
                if VARIANTS[variant].get("cuda_graphs") and device.type != "cuda":
                    yield {**where, "skipped": "CUDA graphs need a CUDA device"}
                    continue
                if budget_s is not None and time.perf_counter() - start > budget_s:
                    yield {**where, "skipped": f"over the {budget_s:g} s budget"}
                    continue
                syn = syn or Synthesizer(student, device=device, dtype=dtype, **VARIANTS[variant])
                result = benchmark(
                    teacher,
                    student,
                    seconds,
                    batch=batch,
                    device=device,
                    dtype=dtype,
                    synthesizer=syn,
                    **options,
                )
                yield {"variant": variant, **result.to_dict()}


def _naive_rate(teacher: Teacher, mel, noise, naive_samples: int, device) -> tuple[float, int]:
    """Naive generation's samples/s and the samples per item it actually ran.

    It runs on a clip covering the receptive field plus ``naive_samples`` steady-state steps;
    when that is shorter than the mel, its steady-state cost per sample is extrapolated.
    """
    batch, samples = noise.shape
    hop = teacher.hop_length
    frames = mel.shape[-1]
    fields = [layer.conditioner.receptive_field for layer in teacher.flow.layers]
    naive_frames = min(frames, math.ceil((max(fields) + naive_samples) / hop))
    teacher.sample(mel[:, :, :1], noise=noise[:, :hop], naive=True)  # warm-up
    clocks = [_StepClock(layer.conditioner, device) for layer in teacher.flow.layers]
    for clock in clocks:
        clock.__enter__()
    try:
        synchronize(device)
        start = time.perf_counter()
        teacher.sample(mel[:, :, :naive_frames], noise=noise[:, : naive_frames * hop], naive=True)
        synchronize(device)
        end = time.perf_counter()
    finally:
        for clock in clocks:
            clock.__exit__()
    naive_timed = naive_frames * hop
    if naive_timed >= samples:
        return batch * naive_timed / (end - start), naive_timed
    # flows run one after another over the whole clip: per flow, the mean time between steps
    # once its window is full, up to the next flow's first step; summed over flows
    per_sample = 0.0
    for i, (clock, field) in enumerate(zip(clocks, fields)):
        stop = clocks[i + 1].stamps[0] if i + 1 < len(clocks) else end
        per_sample += (stop - clock.stamps[field]) / (len(clock.stamps) - field)
    return batch / per_sample, naive_timed


def load_average() -> float:
    """The 1-minute load average: how much other work competes for the CPUs."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every platform
        return float("nan")


def cpu_count() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def format_result(r: BenchResult) -> str:
    """A table with samples/s, real-time factors and the speed-up ratios of the timed paths."""

    def row(name: str, rate: float | None) -> list[str]:
        if rate is None:
            return []
        real_time = rate / r.sample_rate
        return [f"  {name:<34} {rate:>14,.0f} {real_time:>12.4g}x {1 / real_time:>10.4g}"]

    rates = {
        "student": r.student_samples_per_s,
        "teacher cached": r.teacher_cached_samples_per_s,
        "teacher naive": r.teacher_naive_samples_per_s,
    }
    options = [o for o, on in (("compiled", r.compile), ("CUDA graphs", r.cuda_graphs)) if on]
    lines = [
        f"distill bench: {r.seconds:.3f} s of audio ({r.samples} samples at {r.sample_rate} Hz) "
        f"x batch {r.batch}, {r.device}, {r.dtype}, {r.threads} CPU threads"
        + "".join(f", student {o}" for o in options),
        f"  models: {r.source}",
        f"  {'path':<34} {'samples/s':>14} {'real time':>13} {'RTF':>10}",
        *row("student one pass", rates["student"]),
        *row("teacher cached incremental", rates["teacher cached"]),
        *row("teacher naive (recompute field)", rates["teacher naive"]),
    ]
    if r.teacher_naive_samples_per_s is not None:
        lines.append(
            f"  naive: timed on a {r.naive_timed_samples}-sample clip (receptive field + steady "
            f"state); its steady-state cost per sample is extrapolated to {r.samples} samples"
            if r.naive_extrapolated
            else f"  naive: timed on the full {r.naive_timed_samples} samples"
        )
    for a, b in (
        ("student", "teacher cached"),
        ("teacher cached", "teacher naive"),
        ("student", "teacher naive"),
    ):
        if rates[a] is not None and rates[b] is not None:
            lines.append(f"  {a + ' / ' + b + ':':<26}{rates[a] / rates[b]:.3g}x")
    if r.device == "cpu" and r.load_average > r.cpus:
        lines.append(
            f"  warning: load average {r.load_average:.1f} on {r.cpus} CPUs: other work competes "
            "for the cores, so timings are low and noisy"
            + (" (multi-threaded ones most of all; try --threads 1)" if r.threads > 1 else "")
        )
    return "\n".join(lines)
