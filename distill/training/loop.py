"""The training loop both stages share; a stage (:mod:`.stage`) says *what* to optimise, the
loop says *how*. :func:`train` reads top to bottom, as nanoGPT's loop does::

    state = restore(stage, out, ctx)               # latest.pt (checked) or a fresh start
    batches = batch_stream(stage, state.step, ctx) # this rank's batches, from state.step on
    checkpoints = Checkpointer(out, stage, ctx)    # latest.pt / best.pt; every rank calls save
    log = StepLogger(stage, out, ctx, state, ...)  # meter, TensorBoard, progress
    while state.step < end:
        forward, backward, clip, step (a non-finite step is skipped), EMA, the stage's
        after_step (e.g. its discriminator's update)
        log.step(...)
        validate (rank 0) -> save best.pt if it improved; save latest.pt
        past max_minutes: validate, save, stop

What it does:

- Adam, learning rate with linear warm-up then cosine decay to ``min_lr_ratio * lr``
  (``lr_decay="constant"``: flat after warm-up), gradient clipping at ``grad_clip`` (0: off).
- EMA (Polyak) copy of the weights, decay ``min(ema_decay, (1 + n) / (10 + n))`` after the
  n-th update, so early validations are not dominated by the random initialisation; validation,
  media and ``best.pt`` use it; both weight sets are saved.
- bf16 autocast around ``train_step`` on CUDA when ``amp``, on CPU when ``cpu_amp`` (its bf16
  matrix units, AMX or AVX-512-bf16, run the convolutions several times faster than float32);
  the stage keeps its log-dets and loss in float32. ``compile=True`` wraps ``train_module()``
  in torch.compile.
- ``max_minutes`` (0: off) is a wall-clock budget for one invocation, counted from its start:
  the first step that ends past it validates, saves ``latest.pt`` (and ``best.pt`` if it
  improved) and ends the run, every rank at the same step (rank 0's clock decides); re-running
  resumes from there with the whole run's schedule, as after ``stop_at``.
- A step whose loss or gradient norm is not finite (on any rank) is skipped (no update) and
  counted (``train/bad_steps``); ``max_bad_steps`` in a row raise :class:`TrainingDiverged`
  without saving, so the last good ``latest.pt`` stays as it was.
- ``OUT/latest.pt`` every ``save_every`` steps and at the end, ``OUT/best.pt`` whenever the
  validation ``best_metric`` improves; atomic (:func:`distill.checkpoint.save_checkpoint`),
  plain types + tensors only (``weights_only=True``): kind, config, model, ema, optimizer, step,
  best, last validation, per-rank RNG states (torch, CUDA, numpy, python), bad-step count, stage
  extras. A save is collective (it gathers every rank's RNG state): every rank calls it where
  the loop shows it, rank 0 alone writes.
- Re-running with the same out folder resumes from ``latest.pt``: weights, EMA, optimizer,
  step, RNG and the data position (:class:`~distill.training.distributed.ShardedBatches`), so
  an interrupted run ends bit-identical to an uninterrupted one with the same seed. Keys that
  may differ on resume: :data:`RESUME_FREE_KEYS` of the stage's training section; any other
  difference in ``config_sections``, or a checkpoint of another kind, is a CheckpointError
  raised before anything is written.
- Logs (rank 0): TensorBoard under ``OUT/tb`` (every key of the step dict averaged over
  ``log_every`` steps as-is, ``loss/total``, ``grad/norm``, ``opt/lr``, ``train/bad_steps``,
  ``perf/samples_per_s`` (audio samples, all ranks), ``perf/peak_mem_mb``, the validation dict),
  and progress with the running loss and samples/s (:func:`distill.progress.progress`: tqdm on
  a terminal, a plain line every few seconds in a log).
- Multi-process via torchrun: DDP over ``train_module()``, each rank its shard of every epoch,
  rank 0 alone validates, logs and saves while the others wait.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from distill.config import TrainingConfig
from distill.errors import CheckpointError, DistillError
from distill.training import distributed
from distill.training.checkpoints import Checkpointer, checkpoint_to_resume, set_rng_state
from distill.training.distributed import DistContext, ShardedBatches
from distill.training.logs import StepLogger, peak_memory_mb
from distill.training.stage import Stage, TrainResult

__all__ = [
    "TrainingDiverged",
    "RunState",
    "train",
    "validate",
    "restore",
    "batch_stream",
    "lr_at",
    "seed_everything",
]


class TrainingDiverged(DistillError):
    """Too many non-finite steps in a row; the last good checkpoint is left as it was."""


# --- the loop ---------------------------------------------------------------------------------


def train(
    stage: Stage,
    out_dir: str | Path,
    ctx: DistContext | None = None,
    progress: bool = True,
    stop_at: int | None = None,
) -> TrainResult:
    """Train ``stage`` to ``stage.training.steps`` steps in ``out_dir``; resume if possible.

    ``stop_at``: end this invocation at that step (validating and saving there) while keeping
    the learning-rate schedule of the whole run, e.g. to train in fixed-length chunks.
    """
    started = time.monotonic()
    ctx = ctx or DistContext()
    tc, out = stage.training, Path(out_dir)
    section = stage.training_section or "training"
    state = restore(stage, out, ctx)  # every rank checks the folder: all fail alike, unwritten
    start_step, end = state.step, tc.steps if stop_at is None else min(tc.steps, stop_at)
    if state.step >= end:
        if ctx.is_main:
            print(
                f"{out / 'latest.pt'} is already at step {state.step} >= {end}; nothing to do "
                f"(raise {section}.steps to train further)",
                file=sys.stderr,
            )
        return state.result(start_step, out)
    if state.resumed_from is not None and ctx.is_main:
        print(f"resuming from {state.resumed_from} at step {state.step}", file=sys.stderr)

    module = stage.train_module()
    if tc.compile:
        module = torch.compile(module)
    module = distributed.wrap_ddp(module, ctx)
    batches = batch_stream(stage, state.step, ctx)
    checkpoints = Checkpointer(out, stage, ctx)
    use_amp = tc.amp if ctx.device.type == "cuda" else tc.cpu_amp
    deadline = started + 60 * tc.max_minutes if tc.max_minutes > 0 else None
    max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
    bad_in_row = 0
    with StepLogger(stage, out, ctx, state.step, end, progress) as log:
        while state.step < end:
            batch = next(batches)
            lr = lr_at(state.step, tc)
            for group in state.optimizer.param_groups:
                group["lr"] = lr
            state.optimizer.zero_grad(set_to_none=True)
            stage.step = state.step
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=use_amp):
                terms = stage.train_step(module, batch)
            loss = terms["loss"]
            loss.float().backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(state.params, max_norm)
            finite = torch.isfinite(loss.detach()).item() and torch.isfinite(grad_norm).item()
            ok = distributed.all_true(bool(finite), ctx)
            state.step += 1
            if ok:
                state.optimizer.step()
                state.update_ema(tc.ema_decay)
                bad_in_row = 0
            else:  # skipped: no update
                state.optimizer.zero_grad(set_to_none=True)
                bad_in_row += 1
                state.bad_steps += 1
                if bad_in_row >= tc.max_bad_steps:
                    raise _diverged(out, state.step, bad_in_row, loss, grad_norm, section)
            terms.update(stage.after_step(state.step - 1, ok))
            log.step(state, terms, loss, grad_norm if ok else None, lr, stage.batch_samples(batch))
            time_up = deadline is not None and distributed.from_main(
                time.monotonic() >= deadline, ctx
            )

            with log.paused():  # throughput counts training time only
                last = state.step == end or time_up
                if state.step % tc.val_every == 0 or last:
                    if validate(stage, state, log, ctx):
                        checkpoints.save("best.pt", state)
                    distributed.barrier(ctx)
                if state.step % tc.save_every == 0 or last:
                    checkpoints.save("latest.pt", state)
                    distributed.barrier(ctx)
            if time_up and state.step < end:
                if ctx.is_main:
                    print(
                        f"stopped at step {state.step} of {end}: {section}.max_minutes="
                        f"{tc.max_minutes:g} reached; {out / 'latest.pt'} saved, re-run to go on",
                        file=sys.stderr,
                    )
                break
    return state.result(start_step, out, log)


def validate(stage: Stage, state: RunState, log: StepLogger, ctx: DistContext) -> bool:
    """Rank 0 validates the EMA weights (no gradients; the global RNG is left as it was) and
    logs the numbers and media; every rank learns whether ``best_metric`` improved."""
    improved = False
    if ctx.is_main:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            state.val = dict(stage.validate(state.ema))
            improved = state.record_best(state.val.get(stage.best_metric))
            log.validation(state.step, state.val, state.ema)
    return distributed.from_main(improved, ctx)


def _diverged(out: Path, step, bad_in_row, loss, grad_norm, section) -> TrainingDiverged:
    last = out / "latest.pt"
    kept = (
        f"the last good checkpoint {last} is intact"
        if last.exists()
        else "no checkpoint was saved yet"
    )
    return TrainingDiverged(
        f"training stopped at step {step}: {bad_in_row} steps in a row had a non-finite loss or "
        f"gradient (loss={loss.item():.4g}, grad norm={grad_norm.item():.4g}); {kept}. Lower "
        f"{section}.lr or {section}.grad_clip, or raise {section}.warmup_steps, then re-run to "
        "resume from it"
    )


# --- the run's state: restore and save --------------------------------------------------------


@dataclass
class RunState:
    """What a run carries from step to step and into its checkpoints."""

    model: nn.Module
    ema: nn.Module  # Polyak average of ``model``, frozen, in eval mode
    optimizer: torch.optim.Optimizer
    step: int = 0
    ema_updates: int = 0
    best_value: float | None = None
    best_step: int | None = None
    bad_steps: int = 0  # non-finite steps skipped over the whole run
    val: dict[str, float] = field(default_factory=dict)  # the last validation's numbers
    resumed_from: Path | None = None

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def update_ema(self, max_decay: float) -> None:
        """One EMA update, decay ``min(max_decay, (1 + n) / (10 + n))`` for the n-th."""
        self.ema_updates += 1
        n = self.ema_updates
        _ema_update(self.ema, self.model, min(max_decay, (1 + n) / (10 + n)))

    def record_best(self, value: float | None) -> bool:
        """Keep ``value`` (lower is better) as the best when it is; True if it was."""
        if value is None or not math.isfinite(value):
            return False
        if self.best_value is not None and value >= self.best_value:
            return False
        self.best_value, self.best_step = float(value), self.step
        return True

    def result(self, start_step: int, out: Path, log: StepLogger | None = None) -> TrainResult:
        return TrainResult(
            step=self.step,
            start_step=start_step,
            best_value=self.best_value,
            best_step=self.best_step,
            val=self.val,
            bad_steps=self.bad_steps,
            samples_per_s=None if log is None else log.samples_per_s,
            peak_mem_mb=None if log is None else peak_memory_mb(log.device),
            seconds=0.0 if log is None else log.seconds,
            out_dir=out,
        )


def restore(stage: Stage, out: Path, ctx: DistContext) -> RunState:
    """The run's state on ``ctx.device``: ``out/latest.pt``'s weights, EMA, optimizer, counters
    and RNG state (see :func:`checkpoint_to_resume`), or a fresh start (the stage's
    :meth:`~distill.training.stage.Stage.fresh_start`, the RNG seeded per rank).

    Every rank builds the same model (seeded; DDP then broadcasts rank 0's weights anyway).
    """
    tc = stage.training
    resume = checkpoint_to_resume(out, stage)
    stage.setup(ctx.device)
    model = stage.model.to(ctx.device)
    if resume is None:
        stage.fresh_start()
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
    state = RunState(model, ema, optimizer)
    if resume is None:
        seed_everything(tc.seed + 1000 * ctx.rank)
        return state
    try:
        model.load_state_dict(resume["model"])
        ema.load_state_dict(resume["ema"])
        optimizer.load_state_dict(resume["optimizer"])
        stage.restore_extra(resume)
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{out / 'latest.pt'} cannot be resumed ({err}); choose another --out folder"
        ) from err
    state.resumed_from = out / "latest.pt"
    state.step = int(resume["step"])
    best = resume.get("best") or {}
    state.best_value, state.best_step = best.get("value"), best.get("step")
    state.bad_steps = int(resume.get("bad_steps", 0))
    state.ema_updates = int(resume.get("ema_updates", state.step))
    state.val = dict(resume.get("val") or {})
    rngs = resume.get("rng") or []
    if len(rngs) == ctx.world_size:
        set_rng_state(rngs[ctx.rank])
    else:  # another world size: a fresh, still deterministic stream per rank
        seed_everything(tc.seed + 1000 * ctx.rank + state.step)
    return state


# --- the data ---------------------------------------------------------------------------------


def batch_stream(stage: Stage, start_step: int, ctx: DistContext) -> Iterator:
    """This rank's batches, on ``ctx.device``, from global step ``start_step`` on, epoch after
    epoch (:class:`ShardedBatches`): a resumed run reads exactly the batches an uninterrupted one
    would have. A training split too small for one batch fails here, before anything is written.
    """
    tc = stage.training
    dataset = stage.train_dataset()
    order = ShardedBatches(dataset, tc.batch_size, ctx, tc.seed, start=start_step)

    def batches():
        for number, epoch in order.epochs():
            # the loader's own generator: creating its iterator draws a seed, and from the
            # global RNG that draw would land mid-epoch on resume and shift every later step
            loader = DataLoader(
                dataset,
                batch_sampler=epoch,
                num_workers=tc.num_workers,
                pin_memory=ctx.device.type == "cuda",
                generator=torch.Generator().manual_seed(tc.seed + 1000 * ctx.rank + number),
            )
            for batch in loader:
                yield _to_device(batch, ctx.device)

    return batches()


def _to_device(batch, device: torch.device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


# --- small pieces -----------------------------------------------------------------------------


def lr_at(step: int, tc: TrainingConfig) -> float:
    """Learning rate of update ``step`` (0-based): linear warm-up, then cosine or constant."""
    if tc.warmup_steps > 0 and step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if tc.lr_decay == "constant":
        return tc.lr
    span = max(1, tc.steps - tc.warmup_steps)
    progress = min(1.0, (step - tc.warmup_steps) / span)
    floor = tc.min_lr_ratio
    return tc.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global RNG other code draws from
    torch.manual_seed(seed)


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    ema_p = [p for p in ema.parameters()]
    model_p = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_p, model_p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
