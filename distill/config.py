"""Typed configuration: frozen dataclasses, loaded from YAML with dotted ``key=value`` overrides.

Every section is a frozen dataclass so a config can be hashed, compared and stored in a
checkpoint as plain types (``to_dict``) and rebuilt exactly (``from_dict``). Unknown keys are an
error, never silently ignored: a typo in a YAML file must not train a different model.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill.errors import ConfigError

__all__ = [
    "AudioConfig",
    "WaveNetConfig",
    "TeacherConfig",
    "StudentConfig",
    "TrainingConfig",
    "DistillLossConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
]


@dataclass(frozen=True)
class AudioConfig:
    """Feature config: travels inside every checkpoint; a mismatch is an error."""

    sample_rate: int = 22050
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    log_floor: float = 1e-5
    trim_top_db: float = 40.0  # silence trim threshold in dB below peak; 0 disables
    normalize: str = "peak"  # "peak", "none"
    peak: float = 0.95


@dataclass(frozen=True)
class WaveNetConfig:
    """One causal WaveNet conditioner: gated dilated convolutions with residual and skip paths."""

    residual_channels: int = 64
    gate_channels: int = 128
    skip_channels: int = 64
    kernel_size: int = 2
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class TeacherConfig:
    """MAF teacher: ``num_flows`` WaveNet-conditioned affine layers over the waveform."""

    num_flows: int = 1
    wavenet: WaveNetConfig = field(default_factory=WaveNetConfig)
    linear_prediction_order: int = 0  # order of the mel-conditioned linear prediction; 0: off
    upsampler_channels: int = 80
    upsampler_kernel: int = 5
    log_scale_min: float = -7.0


@dataclass(frozen=True)
class StudentConfig:
    """IAF student: one WaveNet per flow (Parallel WaveNet: 4 flows; ClariNet: 6)."""

    flows: tuple[WaveNetConfig, ...] = (
        WaveNetConfig(
            residual_channels=64,
            gate_channels=128,
            skip_channels=64,
            dilations=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        ),
    ) * 4
    linear_prediction_order: int = 0  # mel-conditioned linear path in every flow; 0: off
    harmonic_source: bool = False  # base N(pulse train at the mel's predicted F0, I); pitch.py
    upsampler_channels: int = 80
    upsampler_kernel: int = 5
    log_scale_min: float = -7.0


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings shared by both stages."""

    steps: int = 2000
    batch_size: int = 8
    segment_frames: int = 32  # segment length in mel frames; samples = frames * hop_length
    lr: float = 1e-3
    warmup_steps: int = 100
    lr_decay: str = "cosine"  # "cosine", "constant"
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    val_every: int = 250
    save_every: int = 250
    log_every: int = 25
    val_clips: int = 8
    val_max_seconds: float = 4.0
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    compile: bool = False
    seed: int = 1234
    num_workers: int = 0
    max_bad_steps: int = 10  # non-finite steps in a row before the run stops
    audio_sample_seconds: float = 0.25  # length of generated audio logged to TensorBoard


@dataclass(frozen=True)
class DistillLossConfig:
    """Stage-two loss: ``sum(weights[k] * terms[k])``."""

    estimator: str = "closed_form"  # "closed_form" (per-step Gaussian KL) or "monte_carlo"
    kl_weight: float = 1.0
    log_sigma_reg: float = 4.0  # ClariNet's lambda on (log sigma - log S)^2; 0 disables
    stft_weight: float = 1.0
    power_weight: float = 0.0
    pitch_weight: float = 1.0  # supervised F0/voicing loss of student.harmonic_source
    pitch_init_steps: int = 300  # its predictor's supervised start on whole clips (fresh runs)
    stft_resolutions: tuple[tuple[int, int, int], ...] = (
        (512, 128, 512),
        (1024, 256, 1024),
        (2048, 512, 2048),
    )  # (n_fft, hop_length, win_length)
    init_upsampler_from_teacher: bool = True
    temperature: float = 1.0


@dataclass(frozen=True)
class Config:
    audio: AudioConfig = field(default_factory=AudioConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher_training: TrainingConfig = field(default_factory=TrainingConfig)
    student_training: TrainingConfig = field(default_factory=TrainingConfig)
    distill: DistillLossConfig = field(default_factory=DistillLossConfig)


# --- conversion between dataclasses and plain types ------------------------------------------


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Turn a plain YAML value into the annotated type ``tp``; errors name the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        return _from_mapping(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, found {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, found {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, found {value!r}")
        return value
    return value


def _from_mapping(cls: type, mapping: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {where + '.' if where else ''}{unknown[0]}; "
            f"valid keys{' of ' + where if where else ''}: {', '.join(sorted(names))}"
        )
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in mapping.items()}
    return cls(**kwargs)


def config_from_dict(mapping: dict) -> Config:
    """Rebuild a :class:`Config` from plain types (YAML or a checkpoint)."""
    return _from_mapping(Config, mapping or {}, "")


def config_to_dict(cfg: Any) -> Any:
    """Plain types only (dicts, lists, numbers, strings): safe for YAML and ``weights_only``."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple | list):
        return [config_to_dict(v) for v in cfg]
    return cfg


def apply_overrides(mapping: dict, overrides: typing.Iterable[str]) -> dict:
    """Apply ``a.b.c=value`` strings to a nested dict; values are parsed as YAML."""
    mapping = dict(mapping)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub_key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        node = mapping
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[parts[-1]] = value
    return mapping


def load_config(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a YAML config (missing sections take defaults) and apply ``key=value`` overrides."""
    mapping: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; see recipes/configs/")
        try:
            mapping = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(mapping, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return config_from_dict(apply_overrides(mapping, overrides))
