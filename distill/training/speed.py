"""Training speed: one teacher step and one student step, timed (``distill bench --train``).

Each step is what the loop does (:func:`distill.training.loop.train`): the stage's loss from
its train module (:class:`~distill.training.teacher.TeacherLikelihood`,
:class:`~distill.training.student.DistillObjective` with the frozen teacher), under autocast
for a half dtype (:func:`distill.precision.half_precision`, as ``amp`` / ``cpu_amp`` make the
loop do), backward, gradient clipping and one Adam update. Models are randomly initialised
from the config and batches are random audio and mels of the config's ``batch_size`` and
``segment_frames`` (or a shorter ``segment_frames`` for both, which bounds the cost of a step
where the config's is slow): the cost does not depend on the values. Each step is warmed up,
then timed ``repeats`` times; the fastest counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from distill.benchmark import best_time, cpu_count, load_average
from distill.config import Config, TrainingConfig
from distill.inference import resolve_device, resolve_dtype
from distill.losses import DistillationLoss, check_estimator
from distill.models import AudioFlow, Teacher, segment_margin, with_margin
from distill.precision import half_precision
from distill.training.student import DistillObjective, init_student
from distill.training.teacher import TeacherLikelihood, likelihood_terms

__all__ = ["TrainSpeed", "train_speed", "format_train_speed"]


@dataclass
class TrainSpeed:
    teacher_train_samples_per_s: float
    student_train_samples_per_s: float
    device: str
    dtype: str
    teacher_batch: int
    student_batch: int
    teacher_segment_samples: int
    student_segment_samples: int
    threads: int
    load_average: float  # 1-minute load average at the end (CPU contention from other work)
    cpus: int

    def to_dict(self) -> dict:
        return asdict(self)


def train_speed(
    config: Config,
    device=None,
    dtype=None,
    batch: int | None = None,
    repeats: int = 3,
    segment_frames: int | None = None,
) -> TrainSpeed:
    """Samples/s of one training step of each stage; ``batch`` and ``segment_frames`` replace
    both stages' ``batch_size`` and ``segment_frames``."""
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    torch.manual_seed(0)
    teacher = Teacher(config).to(device)
    likelihood = TeacherLikelihood(teacher).train()
    teacher_weight = config.teacher_training.pitch_weight
    teacher_rate, teacher_shape = _step_speed(
        teacher,
        lambda audio, mel: likelihood_terms(likelihood, audio, mel, teacher_weight)["loss"],
        config,
        config.teacher_training,
        batch,
        segment_frames,
        device,
        dtype,
        repeats,
    )

    frozen = teacher.eval().requires_grad_(False)
    student = init_student(config, frozen).to(device)
    check_estimator(student, frozen, config.distill.estimator)
    loss = DistillationLoss(config.distill, config.audio)
    student_weight = config.student_training.pitch_weight
    objective = DistillObjective(student, frozen, loss, student_weight).train()
    student_rate, student_shape = _step_speed(
        student,
        lambda audio, mel: objective(audio, mel)["loss"],
        config,
        config.student_training,
        batch,
        segment_frames,
        device,
        dtype,
        repeats,
    )
    return TrainSpeed(
        teacher_train_samples_per_s=teacher_rate,
        student_train_samples_per_s=student_rate,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        teacher_batch=teacher_shape[0],
        student_batch=student_shape[0],
        teacher_segment_samples=teacher_shape[1],
        student_segment_samples=student_shape[1],
        threads=torch.get_num_threads(),
        load_average=load_average(),
        cpus=cpu_count(),
    )


def _step_speed(
    model: AudioFlow,
    loss_fn,
    config: Config,
    tc: TrainingConfig,
    batch: int | None,
    segment_frames: int | None,
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
) -> tuple[float, tuple[int, int]]:
    """Fastest step of ``repeats`` after one warm-up: samples/s and the batch's (B, T)."""
    batch = batch or tc.batch_size
    segment_frames = segment_frames or tc.segment_frames
    hop = config.audio.hop_length
    gen = torch.Generator().manual_seed(0)
    audio = (0.1 * torch.randn(batch, segment_frames * hop, generator=gen)).to(device)
    margin = segment_margin(model)  # the mel context a training segment carries
    frames = segment_frames + 2 * margin
    mel = (torch.randn(batch, config.audio.n_mels, frames, generator=gen) - 5).to(device)
    mel = with_margin(mel, margin)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=tc.lr)
    max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with half_precision(device, dtype):
            loss = loss_fn(audio, mel)
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()

    step()  # warm-up
    return audio.numel() / best_time(step, repeats, device), tuple(audio.shape)


def format_train_speed(r: TrainSpeed) -> str:
    lines = [
        f"distill bench --train: {r.device}, {r.dtype}, {r.threads} CPU threads",
        f"  teacher step ({r.teacher_batch} x {r.teacher_segment_samples} samples): "
        f"{r.teacher_train_samples_per_s:,.0f} samples/s",
        f"  student step ({r.student_batch} x {r.student_segment_samples} samples): "
        f"{r.student_train_samples_per_s:,.0f} samples/s",
    ]
    if r.device == "cpu" and r.load_average > r.cpus:
        lines.append(
            f"  warning: load average {r.load_average:.1f} on {r.cpus} CPUs: other work competes "
            "for the cores, so timings are low and noisy"
        )
    return "\n".join(lines)
