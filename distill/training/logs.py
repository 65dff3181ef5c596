"""A run's logs: a meter of the step dicts, TensorBoard, progress.

Every rank keeps the meter (means of each key of the step dict between two log points, and
audio samples per second over all ranks); rank 0 writes them to TensorBoard under ``OUT/tb``
every ``log_every`` steps, with each validation's numbers and media, and shows progress
(:func:`distill.progress.progress`: tqdm on a terminal, a plain line every few seconds in a
log).
"""

from __future__ import annotations

import math
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from distill.progress import progress as show_progress
from distill.training.distributed import DistContext
from distill.training.stage import Stage

if TYPE_CHECKING:
    from distill.training.loop import RunState

__all__ = ["StepLogger", "peak_memory_mb"]


class StepLogger:
    """The run's logs. Every rank keeps a meter of the step dicts and the samples/s (over all
    ranks) between log points; rank 0 writes them to TensorBoard every ``log_every`` steps, with
    each validation's numbers and media, and shows progress."""

    def __init__(
        self, stage: Stage, out: Path, ctx: DistContext, step: int, end: int, progress: bool
    ):
        self.stage, self.ctx, self.device, self.end = stage, ctx, ctx.device, end
        self.meter = _Meter()
        self.samples_per_s: float | None = None
        self.running_loss: float | None = None
        self.writer = self.bar = None
        if ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"), purge_step=step if step > 0 else None)
            self.bar = show_progress(
                total=stage.training.steps,
                initial=step,
                desc=stage.kind,
                unit="step",
                disable=not progress,
            )
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start = self._mark = time.perf_counter()

    def __enter__(self) -> StepLogger:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start

    @contextmanager
    def paused(self):
        """Time spent inside does not count towards samples/s."""
        paused = time.perf_counter()
        try:
            yield
        finally:
            self._mark += time.perf_counter() - paused

    def step(self, state: RunState, terms, loss, grad_norm, lr: float, samples: int) -> None:
        """Record one step; ``grad_norm`` is None for a skipped (non-finite) step."""
        logged = {k: float(v.detach().float().item()) for k, v in terms.items() if k != "loss"}
        logged["loss/total"] = float(loss.detach().float().item())
        if grad_norm is not None:
            logged["grad/norm"] = float(grad_norm.item())
            value = logged["loss/total"]
            running = self.running_loss
            self.running_loss = value if running is None else 0.9 * running + 0.1 * value
        self.meter.add(logged)
        self.meter.samples += samples * self.ctx.world_size
        if state.step % self.stage.training.log_every == 0 or state.step == self.end:
            self._flush(state, lr)
        if self.bar is not None:
            self.bar.update(1)
            post = {}
            if self.running_loss is not None:
                post["loss"] = f"{self.running_loss:.4f}"
            if self.samples_per_s is not None:
                post["samples/s"] = f"{self.samples_per_s:,.0f}"
            if state.bad_steps:
                post["bad"] = state.bad_steps
            self.bar.set_postfix(post, refresh=False)

    def _flush(self, state: RunState, lr: float) -> None:
        now = time.perf_counter()
        self.meter.seconds += now - self._mark
        self._mark = now
        meter = self.meter
        self.samples_per_s = meter.samples / meter.seconds if meter.seconds > 0 else None
        if self.writer is not None:
            scalars = meter.means()
            scalars["opt/lr"] = lr
            scalars["train/bad_steps"] = state.bad_steps
            scalars["perf/peak_mem_mb"] = peak_memory_mb(self.device)
            if self.samples_per_s is not None:
                scalars["perf/samples_per_s"] = self.samples_per_s
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, state.step)
        self.meter = _Meter()

    def validation(self, step: int, val: dict[str, float], ema: nn.Module) -> None:
        """Rank 0, after a validation: its numbers and the stage's media."""
        for k, v in val.items():
            self.writer.add_scalar(k, v, step)
        self.stage.log_media(self.writer, ema, step)
        self.writer.flush()


class _Meter:
    """Averages of the step dicts between two log points, and samples/s over the same span."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.samples = 0
        self.seconds = 0.0

    def add(self, terms: dict[str, float]) -> None:
        for k, v in terms.items():
            if math.isfinite(v):
                self.sums[k] = self.sums.get(k, 0.0) + v
                self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory on a GPU; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
