"""A run's checkpoints: which ``latest.pt`` a run may resume, and how the run is saved.

``OUT/latest.pt`` (every ``save_every`` steps and at the end) and ``OUT/best.pt`` (whenever the
validation metric improves) hold the run's state (:class:`~distill.training.loop.RunState`) as
plain types and tensors, written atomically by :func:`distill.checkpoint.save_checkpoint`,
with every rank's RNG state so that a resumed run continues bit-identical to an uninterrupted
one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.config import config_to_dict
from distill.errors import CheckpointError, ConfigError
from distill.fileio import remove_stale_temps
from distill.training import distributed
from distill.training.distributed import DistContext
from distill.training.stage import Stage

if TYPE_CHECKING:
    from distill.training.loop import RunState

__all__ = [
    "RESUME_FREE_KEYS",
    "CHECKPOINT_NAMES",
    "checkpoint_to_resume",
    "Checkpointer",
    "rng_state",
    "set_rng_state",
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
        "cpu_amp",
        "max_minutes",
    }
)
"""Training keys that may change when a run is resumed (length of the run, cadence of logs,
validation and saves, execution details). Everything else must match the checkpoint."""

CHECKPOINT_NAMES = ("latest.pt", "best.pt")


def checkpoint_to_resume(out: Path, stage: Stage) -> dict | None:
    """``out/latest.pt``'s data when this run resumes it, None for a fresh run.

    Both checkpoints in ``out`` must be of the stage's kind and config (but
    :data:`RESUME_FREE_KEYS`); otherwise a CheckpointError is raised and nothing is written.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder; choose another path")
    found = None
    for name in CHECKPOINT_NAMES:
        path = out / name
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


class Checkpointer:
    """``latest.pt`` and ``best.pt`` of a run folder.

    :meth:`save` is collective: every rank calls it, since it gathers every rank's RNG state
    (so that a resumed run continues each rank's stream); rank 0 alone writes.
    """

    def __init__(self, out: Path, stage: Stage, ctx: DistContext):
        self.out, self.stage, self.ctx = out, stage, ctx
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            for name in CHECKPOINT_NAMES:  # saves a kill -9 interrupted
                remove_stale_temps(out / name)

    def save(self, name: str, state: RunState) -> None:
        rngs = distributed.all_gather_objects(rng_state(), self.ctx)
        if not self.ctx.is_main:
            return
        stage = self.stage
        payload = {
            "kind": stage.kind,
            "config": stage.config,
            "model": state.model.state_dict(),
            "ema": state.ema.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "step": state.step,
            "ema_updates": state.ema_updates,
            "best": {
                "metric": stage.best_metric,
                "value": state.best_value,
                "step": state.best_step,
            },
            "val": dict(state.val),
            "bad_steps": state.bad_steps,
            "world_size": self.ctx.world_size,
            "rng": rngs,
            **stage.checkpoint_extra(),
        }
        save_checkpoint(self.out / name, payload)


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
