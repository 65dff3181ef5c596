"""The training loop both stages share; a stage says *what* to optimise, the loop says *how*.

A stage is a small object (subclass :class:`Stage`; ``distill/training/teacher.py`` is one)::

    class MyStage(Stage):
        kind = "teacher"                      # checkpoint kind ("teacher" / "student")
        best_metric = "val/bits_per_sample"   # key of validate()'s dict; lower is better
        config_sections = ("audio", "teacher", "teacher_training")  # must match on resume

        def __init__(self, config):
            super().__init__(config, config.teacher_training)
            self.model = Teacher(config)      # trained, EMA'd and saved (unwrapped)

        def train_dataset(self): ...          # indexable, items collated by default_collate
        def train_step(self, module, batch):  # module = train_module(), maybe DDP/compiled
            ...                               # batch already on self.device
            return {"loss": loss, "loss/nll": nll.detach(), ...}
        def validate(self, ema_model):        # rank 0 only, under torch.no_grad()
            return {"val/bits_per_sample": ..., ...}

optional hooks: ``setup(device)`` (move frozen extras such as the teacher of stage two),
``train_module()`` (the ``nn.Module`` whose ``forward`` train_step calls; DDP needs a forward,
default ``self.model``), ``batch_samples(batch)`` (audio samples, for throughput),
``log_media(writer, ema_model, step)`` (audio, images; rank 0, after each validation),
``checkpoint_extra()`` (more plain-typed fields for the checkpoint),
``summary(result)`` (the line printed at the end).

Then ``train(stage, out_dir, ctx)`` runs it:

- Adam, learning rate with linear warm-up then cosine decay to ``min_lr_ratio * lr``
  (``lr_decay="constant"``: flat after warm-up), gradient clipping at ``grad_clip`` (0: off).
- EMA (Polyak) copy of the weights, decay ``min(ema_decay, (1 + n) / (10 + n))`` after the
  n-th update, so early validations are not dominated by the random initialisation; validation,
  media and ``best.pt`` use it; both weight sets are saved.
- bf16 autocast around ``train_step`` on CUDA when ``amp`` (never on CPU); the stage keeps its
  log-dets and loss in float32. ``compile=True`` wraps ``train_module()`` in torch.compile.
- A step whose loss or gradient norm is not finite (on any rank) is skipped (no update) and
  counted (``train/bad_steps``); ``max_bad_steps`` in a row raise :class:`TrainingDiverged`
  without saving, so the last good ``latest.pt`` stays as it was.
- ``OUT/latest.pt`` every ``save_every`` steps and at the end, ``OUT/best.pt`` whenever the
  validation ``best_metric`` improves; atomic (:func:`distill.checkpoint.save_checkpoint`),
  plain types + tensors only (``weights_only=True``): kind, config, model, ema, optimizer, step,
  best, per-rank RNG states (torch, CUDA, numpy, python), bad-step count, stage extras.
- Re-running with the same out folder resumes from ``latest.pt``: weights, EMA, optimizer,
  step, RNG and the data position (:class:`~distill.training.distributed.ShardedBatches`), so
  an interrupted run ends bit-identical to an uninterrupted one with the same seed. Keys that
  may differ on resume: :data:`RESUME_FREE_KEYS` of the stage's training section; any other
  difference in ``config_sections``, or a checkpoint of another kind, is a CheckpointError
  raised before anything is written.
- Logs (rank 0): TensorBoard under ``OUT/tb`` (every key of the step dict averaged over
  ``log_every`` steps as-is, ``loss/total``, ``grad/norm``, ``opt/lr``, ``train/bad_steps``,
  ``perf/samples_per_s`` (audio samples, all ranks), ``perf/peak_mem_mb``, the validation dict),
  progress with the running loss and samples/s (:func:`distill.progress.progress`: tqdm on a
  terminal, a plain line every few seconds in a log).
- Multi-process via torchrun: DDP over ``train_module()``, each rank its shard of every epoch,
  rank 0 alone validates, logs and saves while the others wait.
"""

from __future__ import annotations

import copy
import math
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.config import Config, TrainingConfig, config_to_dict
from distill.errors import CheckpointError, ConfigError, DistillError
from distill.fileio import remove_stale_temps
from distill.progress import progress as show_progress
from distill.training import distributed
from distill.training.distributed import DistContext, ShardedBatches

__all__ = [
    "RESUME_FREE_KEYS",
    "Stage",
    "TrainResult",
    "TrainingDiverged",
    "train",
    "lr_at",
    "seed_everything",
    "rng_state",
    "set_rng_state",
    "check_out_dir",
    "peak_memory_mb",
]

RESUME_FREE_KEYS = frozenset(
    {
        "steps",
        "val_every",
        "save_every",
        "log_every",
        "val_clips",
        "val_max_seconds",
        "num_workers",
        "max_bad_steps",
        "audio_sample_seconds",
        "compile",
        "amp",
    }
)
"""Training keys that may change when a run is resumed (length of the run, cadence of logs,
validation and saves, execution details). Everything else must match the checkpoint."""

CHECKPOINT_NAMES = ("latest.pt", "best.pt")


class TrainingDiverged(DistillError):
    """Too many non-finite steps in a row; the last good checkpoint is left as it was."""


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
    """What a training stage provides to :func:`train`; see the module docstring."""

    kind: str = ""
    best_metric: str = ""
    config_sections: tuple[str, ...] = ()
    training_section: str = ""  # name of ``training`` inside Config, e.g. "teacher_training"

    def __init__(self, config: Config, training: TrainingConfig):
        self.config = config
        self.training = training
        self.device = torch.device("cpu")
        self.model: nn.Module

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
        """More plain-typed entries for the checkpoint (e.g. the teacher a student came from)."""
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


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain types (loadable with weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    version, mt, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(mt, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory on a GPU; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _to_device(batch, device: torch.device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    ema_p = [p for p in ema.parameters()]
    model_p = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_p, model_p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


# --- out folder and resume --------------------------------------------------------------------


def _config_diffs(old: Any, new: Any, prefix: str, free: frozenset[str]) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            name = f"{prefix}.{key}" if prefix else key
            if key in free:
                continue
            out += _config_diffs(old.get(key), new.get(key), name, frozenset())
        return out
    return [] if old == new else [f"{prefix}={old!r} in the checkpoint vs {new!r} now"]


def check_out_dir(out_dir: Path, stage: Stage) -> dict | None:
    """Validate existing checkpoints in ``out_dir`` against the stage; return latest.pt's data.

    Raises CheckpointError (writing nothing) for a checkpoint of another kind or another config.
    """
    found = None
    for name in CHECKPOINT_NAMES:
        path = out_dir / name
        if not path.exists():
            continue
        data = load_checkpoint(path)
        if data["kind"] != stage.kind:
            raise CheckpointError(
                f"{path} is a {data['kind']} checkpoint, and this run trains a {stage.kind}; "
                f"choose another --out folder (e.g. checkpoints/NAME/{stage.kind}) so it is not "
                "overwritten"
            )
        old, new = config_to_dict(data["config"]), config_to_dict(stage.config)
        diffs = []
        for section in stage.config_sections:
            free = RESUME_FREE_KEYS if section == stage.training_section else frozenset()
            diffs += _config_diffs(old.get(section), new.get(section), section, free)
        if diffs:
            raise CheckpointError(
                f"{path} was trained with another config: {'; '.join(diffs[:5])}"
                f"{' ...' if len(diffs) > 5 else ''}. Re-run with the same config to resume it "
                f"(only {stage.training_section}.{{{', '.join(sorted(RESUME_FREE_KEYS))}}} may "
                "change), or choose another --out folder"
            )
        if name == "latest.pt":
            found = data
    return found


# --- the loop ---------------------------------------------------------------------------------


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


def _make_loader(dataset, batches: list[list[int]], tc: TrainingConfig, device: torch.device):
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=tc.num_workers,
        pin_memory=device.type == "cuda",
    )


def _next_batch(state: dict):
    """Next batch from the epoch iterator, moving on to the next epoch when one runs out."""
    while True:
        if state["it"] is not None:
            batch = next(state["it"], None)
            if batch is not None:
                return batch
        _, batches = next(state["epochs"])
        state["it"] = iter(_make_loader(state["dataset"], batches, state["tc"], state["device"]))


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
    ctx = ctx or DistContext()
    tc = stage.training
    section = stage.training_section or "training"
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder; choose another path")
    resume = check_out_dir(out, stage)  # every rank checks: all fail alike, before any write
    device = ctx.device

    # --- model, EMA, optimizer (all ranks build the same: seeded, and DDP broadcasts rank 0's)
    stage.setup(device)
    model = stage.model.to(device)
    if resume is None:
        stage.fresh_start()
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
    step = 0
    best_value: float | None = None
    best_step: int | None = None
    bad_total = 0
    ema_updates = 0
    if resume is not None:
        try:
            model.load_state_dict(resume["model"])
            ema.load_state_dict(resume["ema"])
            optimizer.load_state_dict(resume["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(
                f"{out / 'latest.pt'} cannot be resumed ({err}); choose another --out folder"
            ) from err
        step = int(resume["step"])
        best = resume.get("best") or {}
        best_value, best_step = best.get("value"), best.get("step")
        bad_total = int(resume.get("bad_steps", 0))
        ema_updates = int(resume.get("ema_updates", step))
        rngs = resume.get("rng") or []
        if len(rngs) == ctx.world_size:
            set_rng_state(rngs[ctx.rank])
        else:  # another world size: a fresh, still deterministic stream per rank
            seed_everything(tc.seed + 1000 * ctx.rank + step)
    else:
        seed_everything(tc.seed + 1000 * ctx.rank)
    start_step = step

    result = TrainResult(step, start_step, best_value, best_step, bad_steps=bad_total, out_dir=out)
    end = tc.steps if stop_at is None else min(tc.steps, stop_at)
    if step >= end:
        if ctx.is_main:
            print(
                f"{out / 'latest.pt'} is already at step {step} >= {end}; nothing to do "
                f"(raise {section}.steps to train further)",
                file=sys.stderr,
            )
        result.val = dict(resume.get("val") or {}) if resume is not None else {}
        return result

    module = stage.train_module()
    if tc.compile:
        module = torch.compile(module)
    module = distributed.wrap_ddp(module, ctx)

    dataset = stage.train_dataset()
    batches = ShardedBatches(dataset, tc.batch_size, ctx, tc.seed, start=step)
    data_state = {
        "dataset": dataset,
        "epochs": batches.epochs(),
        "it": None,
        "tc": tc,
        "device": device,
    }

    writer = None
    bar = None
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for name in CHECKPOINT_NAMES:  # saves a kill -9 interrupted
            remove_stale_temps(out / name)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=step if step > 0 else None)
        if resume is not None:
            print(f"resuming from {out / 'latest.pt'} at step {step}", file=sys.stderr)
        bar = show_progress(
            total=tc.steps, initial=step, desc=stage.kind, unit="step", disable=not progress
        )
    use_amp = tc.amp and device.type == "cuda"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def save(name: str, val: dict[str, float] | None = None) -> None:
        rngs = distributed.all_gather_objects(rng_state(), ctx)
        if not ctx.is_main:
            return
        payload = {
            "kind": stage.kind,
            "config": stage.config,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "ema_updates": ema_updates,
            "best": {"metric": stage.best_metric, "value": best_value, "step": best_step},
            "val": dict(val or last_val),
            "bad_steps": bad_total,
            "world_size": ctx.world_size,
            "rng": rngs,
            **stage.checkpoint_extra(),
        }
        save_checkpoint(out / name, payload)

    def validate() -> None:
        nonlocal best_value, best_step, last_val
        improved = False
        if ctx.is_main:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                val = stage.validate(ema)
                last_val = dict(val)
                value = val.get(stage.best_metric)
                if value is not None and math.isfinite(value):
                    if best_value is None or value < best_value:
                        best_value, best_step, improved = float(value), step, True
                for k, v in val.items():
                    writer.add_scalar(k, v, step)
                stage.log_media(writer, ema, step)
            writer.flush()
        if distributed.from_main(improved, ctx):  # save() is collective (it gathers RNGs)
            save("best.pt", last_val)

    last_val: dict[str, float] = {}
    meter = _Meter()
    bad_in_row = 0
    running_loss = None
    t_start = time.perf_counter()
    t_mark = t_start
    rate = None
    try:
        while step < end:
            batch = _to_device(_next_batch(data_state), device)
            lr = lr_at(step, tc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                terms = stage.train_step(module, batch)
            loss = terms["loss"]
            loss.float().backward()
            max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            ok = bool(torch.isfinite(loss.detach()).item() and torch.isfinite(grad_norm).item())
            ok = distributed.all_true(ok, ctx)
            step += 1
            if ok:
                optimizer.step()
                ema_updates += 1
                decay = min(tc.ema_decay, (1 + ema_updates) / (10 + ema_updates))
                _ema_update(ema, model, decay)
                bad_in_row = 0
            else:
                optimizer.zero_grad(set_to_none=True)
                bad_in_row += 1
                bad_total += 1
                if bad_in_row >= tc.max_bad_steps:
                    last = out / "latest.pt"
                    kept = (
                        f"the last good checkpoint {last} is intact"
                        if last.exists()
                        else "no checkpoint was saved yet"
                    )
                    raise TrainingDiverged(
                        f"training stopped at step {step}: {bad_in_row} steps in a row had a "
                        f"non-finite loss or gradient (loss={loss.item():.4g}, grad norm="
                        f"{grad_norm.item():.4g}); {kept}. Lower {section}.lr or "
                        f"{section}.grad_clip, or raise {section}.warmup_steps, then re-run to "
                        "resume from it"
                    )
            logged = {k: float(v.detach().float().item()) for k, v in terms.items() if k != "loss"}
            logged["loss/total"] = float(loss.detach().float().item())
            if ok:
                logged["grad/norm"] = float(grad_norm.item())
                lv = logged["loss/total"]
                running_loss = lv if running_loss is None else 0.9 * running_loss + 0.1 * lv
            meter.add(logged)
            meter.samples += stage.batch_samples(batch) * ctx.world_size

            if step % tc.log_every == 0 or step == end:
                now = time.perf_counter()
                meter.seconds += now - t_mark
                t_mark = now
                rate = meter.samples / meter.seconds if meter.seconds > 0 else None
                if ctx.is_main:
                    scalars = meter.means()
                    scalars["opt/lr"] = lr
                    scalars["train/bad_steps"] = bad_total
                    scalars["perf/peak_mem_mb"] = peak_memory_mb(device)
                    if rate is not None:
                        scalars["perf/samples_per_s"] = rate
                    for k, v in scalars.items():
                        writer.add_scalar(k, v, step)
                result.samples_per_s = rate
                meter = _Meter()
            if bar is not None:
                bar.update(1)
                post = {}
                if running_loss is not None:
                    post["loss"] = f"{running_loss:.4f}"
                if rate is not None:
                    post["samples/s"] = f"{rate:,.0f}"
                if bad_total:
                    post["bad"] = bad_total
                bar.set_postfix(post, refresh=False)

            paused = time.perf_counter()
            if step % tc.val_every == 0 or step == end:
                validate()
                distributed.barrier(ctx)
            if step % tc.save_every == 0 or step == end:
                save("latest.pt")
                distributed.barrier(ctx)
            t_mark += time.perf_counter() - paused  # throughput counts training time only
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()

    result.step = step
    result.best_value, result.best_step = best_value, best_step
    result.val = last_val
    result.bad_steps = bad_total
    result.peak_mem_mb = peak_memory_mb(device)
    result.seconds = time.perf_counter() - t_start
    return result
