"""Stage two: distil the IAF student from the frozen MAF teacher.

Each step draws one student sample per training segment (noise -> audio in one parallel pass),
runs the frozen teacher on it in one parallel pass, and minimises
``sum(weights[k] * terms[k])`` over the terms of :class:`distill.losses.DistillationLoss`:
the KL in nats per sample (closed form or Monte Carlo, ``distill.estimator``), ClariNet's
log-scale regulariser (closed form), and the multi-resolution STFT and power losses against
the real segment for the same mel. Gradients flow through the teacher into the student's
sample; the teacher's own weights never change (eval mode, ``requires_grad=False``, not in the
optimizer, no EMA) and it is never saved again: the student checkpoint records where it came
from (``teacher`` entry) and carries the teacher's config section for the record.

Validation (EMA student, rank 0) synthesises the first ``val_clips`` validation clips, each cut
to its first ``val_max_seconds``, from fixed noise, and reports (all weighted by clip length):

- ``val/kl_per_sample``: the configured KL estimator, nats per sample;
- ``val/student_entropy_per_sample``: ``-log q_S(x) / T`` of the student's own samples;
- ``val/teacher_bits_per_sample_student`` vs ``val/teacher_bits_per_sample_real``: the teacher's
  bits/sample at 16 bit (``-log2 p(x)/T + 15``) of the student's samples and of the real
  (dequantised) clips;
- ``val/loss/<term>``: every term of the loss (kl, log_sigma_reg, stft, power, mel), and
  ``val/stft_sc``, ``val/stft_mag``: the two halves of the multi-resolution STFT distance;
- ``val/objective``: :func:`distill.losses.weighted_total` of those terms with the training
  weights, the very function training minimises, without the adversarial terms (judged by a
  discriminator that moves, they do not compare across steps). ``best.pt`` keeps the lowest.

Media after each validation: a student sample next to the real clip, and their mel images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.adversarial import SpectrogramDiscriminator, discriminator_loss
from distill.audio import QUANT_STEP
from distill.checkpoint import load_checkpoint
from distill.config import AudioConfig, Config, check_same_features
from distill.data import PreparedCorpus, SegmentDataset
from distill.errors import CheckpointError, ConfigError
from distill.losses import DistillationLoss, check_estimator, weighted_total
from distill.metrics import nll_bits_per_sample
from distill.models import Student, Teacher, split_window
from distill.pitch import fit_predictor
from distill.training.distributed import average_gradients
from distill.training.media import log_generated_vs_real, media_excerpt
from distill.training.stage import (
    Stage,
    TrainResult,
    segment_batch,
    segment_dataset,
    training_corpus,
)

__all__ = ["DistillObjective", "StudentStage", "init_student", "load_frozen_teacher"]


def load_frozen_teacher(
    path: str | Path, audio_config: AudioConfig, what: str
) -> tuple[Teacher, dict]:
    """The teacher of a checkpoint (EMA weights), frozen, and the checkpoint's data: the file
    is read once.

    A missing file or a student checkpoint is a CheckpointError, a feature config other than
    ``audio_config`` (from ``what``) a ConfigError naming both values.
    """
    if not Path(path).is_file():
        raise CheckpointError(
            f"teacher checkpoint {path} does not exist; train the teacher first "
            "(bash recipes/train_teacher.sh) or pass --teacher with the path of its best.pt"
        )
    data = load_checkpoint(path, "teacher")
    check_same_features(data["config"].audio, audio_config, f"teacher checkpoint {path}", what)
    teacher = Teacher.from_checkpoint(path, data=data)
    return teacher.requires_grad_(False), data


def init_student(config: Config, teacher: Teacher) -> Student:
    """A fresh student; its mel upsampler copied from the teacher's when the config says so,
    and its pitch predictor copied from the teacher's and frozen when both have one (the two
    models must read the same pitch lags from a mel, or the teacher would judge the student's
    sample against another pitch)."""
    student = Student(config)
    if student.pitch is not None and teacher.pitch is not None:
        student.pitch.load_state_dict(teacher.pitch.state_dict())
        student.pitch.requires_grad_(False)
    elif student.long_term:
        raise ConfigError(
            "student.long_term_taps > 0 needs a teacher with a pitch predictor (whose lags it "
            "shares): train the teacher with teacher.long_term_taps > 0, or set "
            "student.long_term_taps=0"
        )
    if config.distill.init_upsampler_from_teacher:
        ours, theirs = student.upsampler.state_dict(), teacher.upsampler.state_dict()
        mismatch = [k for k in ours if ours[k].shape != theirs[k].shape]
        if mismatch:
            t, s = teacher.config.teacher, config.student
            raise ConfigError(
                "distill.init_upsampler_from_teacher=true needs the student's upsampler shaped "
                f"like the teacher's: student.upsampler_channels={s.upsampler_channels}, "
                f"upsampler_kernel={s.upsampler_kernel} vs the teacher's "
                f"{t.upsampler_channels}, {t.upsampler_kernel}; make them equal or set "
                "distill.init_upsampler_from_teacher=false"
            )
        student.upsampler.load_state_dict(theirs)
    return student


def _trains_pitch(student: Student) -> bool:
    """A student trains its own pitch predictor only when its teacher had none to share."""
    return student.pitch is not None and student.pitch.out.weight.requires_grad


class DistillObjective(nn.Module):
    """The distillation loss as a ``forward`` (what DDP and torch.compile wrap).

    The frozen teacher is a submodule (so it moves with ``.to``) but stays in eval mode.
    """

    def __init__(
        self, student: Student, teacher: Teacher, loss: DistillationLoss, pitch_weight: float
    ):
        super().__init__()
        self.pitch_weight = pitch_weight
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.loss = loss

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(
        self,
        audio: torch.Tensor,
        mel: torch.Tensor,
        noise: torch.Tensor | None = None,
        discriminator: nn.Module | None = None,
    ) -> dict[str, torch.Tensor]:
        """audio (B, T) real segments, mel (B, n_mels, F) -> ``{"loss": total, name: scalar}``
        and ``"sample"``, the student's audio (B, T), detached (for the discriminator's step).

        Named terms: ``loss/<term>`` (kl, log_sigma_reg, stft, power, mel, adversarial,
        feature_matching, pitch), ``kl/per_sample``, ``stft/sc``, ``stft/mag``,
        ``student/entropy_per_sample``, ``teacher/bits_per_sample_student`` and, closed form,
        the mean log-scales of both. ``discriminator``: the adversarial terms are on.
        """
        result = self.loss(
            self.student, self.teacher, mel, real=audio, noise=noise, discriminator=discriminator
        )
        out = result.scalars()
        out["loss"] = result.total  # scalars() detaches; the loop backpropagates this one
        out["sample"] = result.sample.detach()
        if _trains_pitch(self.student):  # its F0 predictor learns from YIN on the real clip
            window, margin = split_window(mel)
            pitch, metrics = self.student.pitch.loss(window, audio, margin)
            out["loss"] = out["loss"] + self.pitch_weight * pitch
            out["loss/pitch"] = pitch.detach()
            out.update(metrics)
        nll = out.pop("teacher/nll_per_sample")
        out["teacher/bits_per_sample_student"] = nll_bits_per_sample(-nll, 1)
        return out


class StudentStage(Stage):
    """Probability density distillation of the IAF student on a prepared corpus."""

    kind = "student"
    best_metric = "val/objective"
    config_sections = ("audio", "student", "student_training", "distill")
    training_section = "student_training"

    def __init__(self, config: Config, teacher: str | Path, data: str | Path | PreparedCorpus):
        self.teacher_path = Path(teacher)
        frozen, tdata = load_frozen_teacher(
            self.teacher_path, config.audio, "the student config (--config and overrides)"
        )
        self.corpus = training_corpus(
            data, tdata["config"].audio, f"teacher checkpoint {self.teacher_path}"
        )
        # The student's checkpoint carries the teacher's section, for the record.
        config = dataclasses.replace(config, teacher=tdata["config"].teacher)
        super().__init__(config, config.student_training)
        self.teacher = frozen
        self.teacher_step = int(tdata.get("step", -1))
        self.model = init_student(config, frozen)
        check_estimator(self.model, frozen, config.distill.estimator)
        self.loss = DistillationLoss(config.distill, config.audio)
        self.objective = DistillObjective(
            self.model, frozen, self.loss, config.student_training.pitch_weight
        )
        self.adversary = Adversary(config.distill) if config.distill.adversarial else None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._val_clips: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        self._real_bits: float | None = None

    # --- training -----------------------------------------------------------------------------

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        self.teacher.to(device)
        if self.adversary is not None:
            self.adversary.to(device)

    def fresh_start(self) -> None:
        """A pitch predictor the student trains itself (its teacher had none) starts fitted on
        whole training clips (same seed, same result on every rank); a resumed run skips it:
        its checkpoint holds the weights."""
        steps = self.training.pitch_init_steps
        if _trains_pitch(self.model) and steps > 0:
            clips = [self.corpus.load(e) for e in self.corpus.items("train")]
            fit_predictor(self.model.pitch, clips, steps, seed=self.training.seed)

    def train_module(self) -> nn.Module:
        return self.objective

    def train_dataset(self) -> SegmentDataset:
        return segment_dataset(self, dequantize=False)

    def adversarial_on(self, step: int) -> bool:
        """Whether update ``step`` (0-based) trains against the discriminator."""
        return self.adversary is not None and step >= self.config.distill.adversarial_start

    def train_step(self, module: nn.Module, batch) -> dict[str, torch.Tensor]:
        audio, mel = segment_batch(self, batch)
        d = self.adversary.discriminator if self.adversarial_on(self.step) else None
        out = module(audio, mel, discriminator=d)
        self._pending = (out.pop("sample"), audio)
        return out

    def after_step(self, step: int, updated: bool) -> dict[str, torch.Tensor]:
        """The discriminator's update, on the sample the student's update was judged on."""
        fake, real = self._pending
        self._pending = None
        if not updated or not self.adversarial_on(step):
            return {}
        return self.adversary.update(fake, real)

    def checkpoint_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "teacher": {"path": str(self.teacher_path), "step": self.teacher_step}
        }
        if self.adversary is not None:
            extra["discriminator"] = self.adversary.state_dict()
        return extra

    def restore_extra(self, checkpoint: dict[str, Any]) -> None:
        if self.adversary is not None:  # same distill section: the checkpoint has one
            self.adversary.load_state_dict(checkpoint["discriminator"])

    # --- validation ---------------------------------------------------------------------------

    def validation_clips(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(real audio (T,), fixed noise (T,), mel (n_mels, F)) for each validation clip."""
        if self._val_clips is None:
            tc = self.training
            gen = torch.Generator().manual_seed(tc.seed)
            self._val_clips = [
                (audio, torch.randn(audio.shape, generator=gen), mel)
                for audio, mel in self.corpus.leading_clips("val", tc.val_clips, tc.val_max_seconds)
            ]
        return self._val_clips

    def real_bits(self) -> float:
        """Teacher bits/sample of the real (dequantised) validation clips; computed once."""
        if self._real_bits is None:
            gen = torch.Generator().manual_seed(self.training.seed + 2)
            total_lp, total_t = 0.0, 0
            for audio, _, mel in self.validation_clips():
                noisy = audio + torch.rand(audio.shape, generator=gen) * QUANT_STEP
                lp = self.teacher.log_prob(noisy[None].to(self.device), mel[None].to(self.device))
                total_lp += float(lp.sum())
                total_t += audio.numel()
            self._real_bits = float(nll_bits_per_sample(total_lp, total_t))
        return self._real_bits

    def validate(self, ema_model: nn.Module) -> dict[str, float]:
        """The loss's terms and metrics on each validation clip, averaged weighted by length,
        and ``val/objective``: :func:`~distill.losses.weighted_total` of the averaged terms,
        the training objective without its adversarial terms (judged by a discriminator that
        moves, they would not compare across steps)."""
        sums: dict[str, float] = {}
        total_t = 0
        for audio, noise, mel in self.validation_clips():
            res = self.loss(
                ema_model,
                self.teacher,
                mel[None].to(self.device),
                real=audio[None].to(self.device),
                noise=noise[None].to(self.device),
            )
            t = audio.numel()
            m = res.metrics
            named = {f"loss/{k}": v for k, v in res.terms.items()}
            named.update(
                kl_per_sample=m["kl/per_sample"],
                student_entropy_per_sample=m["student/entropy_per_sample"],
                teacher_nll=m["teacher/nll_per_sample"],
                stft_sc=m["stft/sc"],
                stft_mag=m["stft/mag"],
            )
            for key, value in named.items():
                sums[key] = sums.get(key, 0.0) + float(value) * t
            total_t += t
        val = {f"val/{k}": v / total_t for k, v in sums.items()}
        nll = val.pop("val/teacher_nll")
        val["val/teacher_bits_per_sample_student"] = nll_bits_per_sample(-nll, 1)
        val["val/teacher_bits_per_sample_real"] = self.real_bits()
        terms = {k[len("val/loss/") :]: torch.tensor(v) for k, v in val.items() if "/loss/" in k}
        val["val/objective"] = float(weighted_total(terms, self.loss.weights))
        return val

    def log_media(self, writer, ema_model: nn.Module, step: int) -> None:
        cfg, tc = self.config.audio, self.training
        audio, noise, mel = self.validation_clips()[0]
        real, mel = media_excerpt(audio, mel, tc.audio_sample_seconds, cfg)
        fake = ema_model.sample(
            mel[None].to(self.device),
            noise=noise[None, : real.numel()].to(self.device),
            temperature=self.config.distill.temperature,
        )
        log_generated_vs_real(writer, "student", fake[0], real, mel, cfg, step)

    def summary_lines(self, result: TrainResult) -> list[str]:
        lines = [f"  teacher: {self.teacher_path}"]
        v = result.val
        if "val/kl_per_sample" in v:
            lines.append(
                f"  validation: KL {v['val/kl_per_sample']:.4f} nats/sample, student entropy "
                f"{v['val/student_entropy_per_sample']:.3f} nats/sample; teacher bits/sample of "
                f"student samples {v['val/teacher_bits_per_sample_student']:.3f} vs real audio "
                f"{v['val/teacher_bits_per_sample_real']:.3f}; MR-STFT distance to the real "
                f"audio {v['val/loss/stft']:.3f} (sc {v['val/stft_sc']:.3f} + log-mag "
                f"{v['val/stft_mag']:.3f}), log-mel L1 {v.get('val/loss/mel', float('nan')):.3f}"
            )
        return lines + super().summary_lines(result)


class Adversary:
    """The discriminator of stage two with its own Adam (HiFi-GAN's betas 0.8, 0.99): trained
    after each student update on that update's sample, saved in the student's *training*
    checkpoint (so a resumed run is exact) and never in the deployed model."""

    def __init__(self, config):
        self.discriminator = SpectrogramDiscriminator(
            config.discriminator_resolutions, config.discriminator_channels
        )
        self.optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=config.discriminator_lr, betas=(0.8, 0.99)
        )

    def to(self, device: torch.device) -> Adversary:
        self.discriminator.to(device)
        return self

    def update(self, fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """One LSGAN step of the discriminator, real against the (detached) student sample;
        gradients averaged over ranks under torchrun. -> scalars to log."""
        self.optimizer.zero_grad(set_to_none=True)  # also what the student's backward left
        real_scores, _ = self.discriminator(real)
        fake_scores, _ = self.discriminator(fake)
        loss = discriminator_loss(real_scores, fake_scores)
        loss.backward()
        average_gradients(self.discriminator)
        self.optimizer.step()
        return {
            "loss/discriminator": loss.detach(),
            "discriminator/real_score": torch.stack([s.mean() for s in real_scores]).mean(),
            "discriminator/fake_score": torch.stack([s.mean() for s in fake_scores]).mean(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
