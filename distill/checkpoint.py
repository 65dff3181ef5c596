"""Self-describing checkpoints: one file that rebuilds the model alone, written atomically.

A checkpoint holds plain types and tensors only (loaded with ``torch.load(weights_only=True)``,
so opening one can never run code): format version, kind (``teacher`` / ``student``), the full
config including the feature config, the model weights, and for resuming the EMA weights,
optimizer state, step and RNG state. It is written to a temporary file in the same folder,
flushed to disk, then renamed over the target, so a crash mid-save leaves the old file intact.

This module reads and writes the dicts and knows no model: the models build themselves from
one (:meth:`distill.models.AudioFlow.from_checkpoint`, the one loader).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from distill import __version__
from distill.config import Config, config_from_dict, config_to_dict
from distill.errors import CheckpointError, DistillError
from distill.fileio import atomic_output

__all__ = ["FORMAT_VERSION", "KINDS", "save_checkpoint", "load_checkpoint"]

FORMAT_VERSION = 1
KINDS = ("teacher", "student")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically; it must hold ``kind``, ``config`` (a Config) and ``model``."""
    path = Path(path)
    if payload.get("kind") not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}, found {payload.get('kind')!r}")
    data = dict(payload)
    if isinstance(data["config"], Config):
        data["config"] = config_to_dict(data["config"])
    data.setdefault("format_version", FORMAT_VERSION)
    data.setdefault("distill_version", __version__)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(data, f)
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(path: str | Path, kind: str | None = None, map_location="cpu") -> dict:
    """Read and validate a checkpoint; ``config`` comes back as a :class:`Config`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or train first")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt, truncated, or not a torch file at all
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(err).__name__}); it is corrupt or not a "
            "distill checkpoint: use another file or re-run training to write it again"
        ) from err
    if not isinstance(data, dict) or data.get("kind") not in KINDS or "model" not in data:
        raise CheckpointError(f"{path} is not a distill checkpoint (no kind/model entries)")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {data['format_version']}, newer than this distill "
            f"({FORMAT_VERSION}); upgrade distill"
        )
    if kind is not None and data["kind"] != kind:
        raise CheckpointError(
            f"{path} is a {data['kind']} checkpoint, but a {kind} checkpoint is needed here "
            f"(e.g. checkpoints/NAME/{kind}/best.pt)"
        )
    try:
        data["config"] = config_from_dict(data["config"])
    except DistillError as err:
        raise CheckpointError(f"{path} holds a config this distill cannot read: {err}") from err
    return data
