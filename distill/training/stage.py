"""What a training stage is: *what* to optimise, for :func:`distill.training.loop.train`.

A stage is a small object (``distill/training/teacher.py`` and ``student.py`` are the two)::

    class MyStage(Stage):
        kind = "teacher"                      # checkpoint kind ("teacher" / "student")
        best_metric = "val/bits_per_sample"   # key of validate()'s dict; lower is better
        config_sections = ("audio", "teacher", "teacher_training")  # must match on resume
        training_section = "teacher_training"  # its TrainingConfig in Config

        def __init__(self, config, data):
            super().__init__(config, config.teacher_training)
            self.corpus = training_corpus(data, config.audio, "the teacher config")
            self.model = Teacher(config)      # trained, EMA'd and saved (unwrapped)

        def train_dataset(self): ...          # indexable, items collated by default_collate
        def train_step(self, module, batch):  # module = train_module(), maybe DDP/compiled
            ...                               # batch already on self.device
            return {"loss": loss, "loss/nll": nll.detach(), ...}
        def validate(self, ema_model):        # rank 0 only, under torch.no_grad()
            return {"val/bits_per_sample": ..., ...}

Optional hooks: ``setup(device)`` (move frozen extras such as the teacher of stage two),
``fresh_start()`` (work a resumed run loads from its checkpoint instead, e.g. a data-dependent
initialisation), ``train_module()`` (the ``nn.Module`` whose ``forward`` train_step calls; DDP
needs a forward; default ``self.model``), ``batch_samples(batch)`` (audio samples, for
throughput), ``log_media(writer, ema_model, step)`` (audio, images; rank 0, after each
validation), ``checkpoint_extra()`` / ``restore_extra(checkpoint)`` (more plain-typed fields for the
checkpoint, and their loading on resume), ``after_step(step, updated)`` (a second optimiser's
update, e.g. a discriminator's, after the model's),
``summary_lines(result)`` (the stage's lines of the summary printed at the end).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distill.config import AudioConfig, Config, TrainingConfig, check_same_features

if TYPE_CHECKING:
    from distill.data import PreparedCorpus

__all__ = ["Stage", "TrainResult", "training_corpus"]


@dataclass
class TrainResult:
    """What a run did (also on ranks other than 0, where ``val`` stays empty)."""

    step: int
    start_step: int
    best_value: float | None
    best_step: int | None
    val: dict[str, float] = field(default_factory=dict)
    bad_steps: int = 0
    samples_per_s: float | None = None
    peak_mem_mb: float | None = None
    seconds: float = 0.0
    out_dir: Path | None = None


class Stage:
    """What a training stage provides to :func:`~distill.training.loop.train`; see the module
    docstring."""

    kind: str = ""
    best_metric: str = ""
    config_sections: tuple[str, ...] = ()
    training_section: str = ""  # name of ``training`` inside Config, e.g. "teacher_training"

    def __init__(self, config: Config, training: TrainingConfig):
        self.config = config
        self.training = training
        self.device = torch.device("cpu")
        self.model: nn.Module
        self.step = 0  # the update train_step is taking (0-based), set by the loop

    def setup(self, device: torch.device) -> None:
        """Called once before training with the device; ``self.model`` is moved by the loop."""
        self.device = device

    def fresh_start(self) -> None:
        """Called after :meth:`setup` on a run that does not resume (on every rank, before the
        EMA copy): work whose result a resumed checkpoint would overwrite anyway."""

    def train_module(self) -> nn.Module:
        """The module whose ``forward`` ``train_step`` calls (wrapped in DDP/compile)."""
        return self.model

    def train_dataset(self):
        raise NotImplementedError

    def train_step(self, module: nn.Module, batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def batch_samples(self, batch) -> int:
        """Audio samples in a batch (for throughput): the first tensor's element count."""
        first = batch[0] if isinstance(batch, list | tuple) else batch
        return int(first.numel())

    def validate(self, ema_model: nn.Module) -> dict[str, float]:
        raise NotImplementedError

    def log_media(self, writer, ema_model: nn.Module, step: int) -> None:
        """Audio samples and images for TensorBoard after each validation (rank 0)."""

    def checkpoint_extra(self) -> dict[str, Any]:
        """More plain-typed entries for the checkpoint (e.g. the teacher a student came from,
        the discriminator's state)."""
        return {}

    def restore_extra(self, checkpoint: dict[str, Any]) -> None:
        """Load what :meth:`checkpoint_extra` saved, from the checkpoint a run resumes."""

    def after_step(self, step: int, updated: bool) -> dict[str, torch.Tensor]:
        """Work after update ``step`` (0-based, the one train_step just took; ``updated`` False
        when it was skipped as non-finite), e.g. a discriminator's own update; -> more scalars
        to log."""
        return {}

    def summary(self, result: TrainResult) -> str:
        """What the run reached, for the terminal: where it is, the stage's own lines
        (:meth:`summary_lines`), then throughput, memory and skipped steps."""
        lines = [
            f"{self.kind}: step {result.step} in {result.out_dir}",
            *self.summary_lines(result),
        ]
        if result.samples_per_s is not None:
            lines.append(
                f"  throughput {result.samples_per_s:,.0f} samples/s, peak memory "
                f"{result.peak_mem_mb:,.0f} MB, {result.seconds:.0f} s"
            )
        if result.bad_steps:
            lines.append(f"  {result.bad_steps} non-finite steps skipped")
        return "\n".join(lines)

    def summary_lines(self, result: TrainResult) -> list[str]:
        """The stage's lines of :meth:`summary`: by default the best validation metric."""
        if result.best_value is None:
            return []
        return [f"  best: {self.best_metric} {result.best_value:.4f} at step {result.best_step}"]


def training_corpus(
    data: str | Path | PreparedCorpus, features: AudioConfig, features_from: str
) -> PreparedCorpus:
    """The prepared folder a stage trains and validates on: its feature config must equal
    ``features`` (from ``features_from``, for the message) and both splits must hold clips."""
    from distill.data import PreparedCorpus

    corpus = data if isinstance(data, PreparedCorpus) else PreparedCorpus(data)
    check_same_features(
        features, corpus.audio_config, features_from, f"prepared folder {corpus.root}"
    )
    for split in ("train", "val"):
        corpus.nonempty_items(split)
    return corpus


def segment_dataset(stage: Stage, dequantize: bool):
    """The random training segments of an audio stage (``stage.corpus``, ``stage.model``),
    each carrying the mel context its model reads (:func:`distill.models.segment_margin`)."""
    from distill.data import SegmentDataset
    from distill.models import segment_margin

    tc = stage.training
    return SegmentDataset(
        stage.corpus,
        "train",
        tc.segment_frames,
        dequantize=dequantize,
        seed=tc.seed,
        mel_margin=segment_margin(stage.model),
    )


def segment_batch(stage: Stage, batch) -> tuple[torch.Tensor, Any]:
    """An audio stage's batch as its model reads it: audio (B, T) and the mel, a
    :class:`~distill.models.MelWindow` when the segments carry context."""
    from distill.models import segment_margin, with_margin

    audio, mel = batch  # (B, T), (B, n_mels, F + 2 margin)
    return audio, with_margin(mel, segment_margin(stage.model))
