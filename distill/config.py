"""Typed configuration: frozen dataclasses, loaded from YAML with dotted ``key=value`` overrides.

Every section is a frozen dataclass so a config can be hashed, compared and stored in a
checkpoint as plain types (``to_dict``) and rebuilt exactly (``from_dict``). Unknown keys are an
error, never silently ignored: a typo in a YAML file must not train a different model.

Values are checked when a section is built (from YAML, a checkpoint, or in Python): every float
must be finite, every number within the range its field declares (``_number(..., min=1)``), every
string one of its choices, and a few settings must agree with each other (``hop_length <=
win_length <= n_fft``). The error names the key: ``teacher_training.lr must be > 0, found nan``.
"""

from __future__ import annotations

import dataclasses
import math
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
    "FlowModelConfig",
    "TeacherConfig",
    "StudentConfig",
    "TrainingConfig",
    "DistillLossConfig",
    "Config",
    "ESTIMATORS",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "check_same_features",
]

ESTIMATORS = ("closed_form", "monte_carlo")
"""The KL estimators of ``distill.estimator`` (see :mod:`distill.losses`)."""

NORMALIZE_MODES = ("peak", "loudness", "none")


# --- what a field may hold --------------------------------------------------------------------


@dataclass(frozen=True)
class _Bounds:
    """``min <= v <= max`` and ``above < v < below``; None: no bound on that side."""

    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None

    def holds(self, v: float) -> bool:
        return not (
            (self.min is not None and v < self.min)
            or (self.max is not None and v > self.max)
            or (self.above is not None and v <= self.above)
            or (self.below is not None and v >= self.below)
        )

    def __str__(self) -> str:
        low = f"[{self.min:g}" if self.min is not None else None
        low = f"({self.above:g}" if self.above is not None else low
        high = f"{self.max:g}]" if self.max is not None else None
        high = f"{self.below:g})" if self.below is not None else high
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        return ("<= " if high[-1] == "]" else "< ") + high[:-1]


def _number(default, *, min=None, max=None, above=None, below=None):
    """A numeric field (or a tuple of them) with its range, checked element by element."""
    return field(default=default, metadata={"bounds": _Bounds(min, max, above, below)})


def _choice(default: str, choices: tuple[str, ...]):
    return field(default=default, metadata={"choices": choices})


class _Invalid(ConfigError):
    """A value a section cannot hold; ``key`` is relative to the section."""

    def __init__(self, section: str, key: str, problem: str):
        super().__init__(f"{section}.{key} {problem}")
        self.key, self.problem = key, problem


def _numbers(value):
    """The ints and floats in a field's value, through nested tuples (not sub-sections)."""
    if isinstance(value, tuple):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield value


def _check_fields(section) -> None:
    """Finite floats, declared ranges and choices of every field of a config section."""
    name = type(section).__name__
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        bounds, choices = f.metadata.get("bounds"), f.metadata.get("choices")
        for v in _numbers(value):
            if isinstance(v, float) and not math.isfinite(v):
                raise _Invalid(name, f.name, f"must be a finite number, found {v}")
            if bounds is not None and not bounds.holds(v):
                raise _Invalid(name, f.name, f"must be {bounds}, found {value!r}")
        if choices is not None and value not in choices:
            options = ", ".join(repr(c) for c in choices)
            raise _Invalid(name, f.name, f"must be one of {options}, found {value!r}")


# --- the sections -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioConfig:
    """Feature config: travels inside every checkpoint; a mismatch is an error."""

    sample_rate: int = _number(22050, min=1)
    n_fft: int = _number(1024, min=1)
    win_length: int = _number(1024, min=1)
    hop_length: int = _number(256, min=1)
    n_mels: int = _number(80, min=1)
    fmin: float = _number(0.0, min=0)
    fmax: float = _number(8000.0, above=0)
    log_floor: float = _number(1e-5, above=0)
    trim_top_db: float = _number(40.0, min=0)  # silence trim threshold in dB below peak; 0: off
    normalize: str = _choice("peak", NORMALIZE_MODES)
    peak: float = _number(0.95, above=0, below=1)

    def __post_init__(self):
        _check_fields(self)
        if not self.hop_length <= self.win_length <= self.n_fft:
            raise _Invalid(
                "AudioConfig",
                "hop_length",
                f"must be <= win_length <= n_fft, found hop_length={self.hop_length}, "
                f"win_length={self.win_length}, n_fft={self.n_fft}",
            )
        if not self.fmin < self.fmax <= self.sample_rate / 2:
            raise _Invalid(
                "AudioConfig",
                "fmax",
                f"must be above fmin and at most sample_rate / 2 = {self.sample_rate / 2:g}, "
                f"found fmin={self.fmin:g}, fmax={self.fmax:g}; lower fmax or raise sample_rate",
            )


@dataclass(frozen=True)
class WaveNetConfig:
    """One causal WaveNet conditioner: gated dilated convolutions with residual and skip paths."""

    residual_channels: int = _number(64, min=1)
    gate_channels: int = _number(128, min=2)
    skip_channels: int = _number(64, min=1)
    kernel_size: int = _number(2, min=1)
    dilations: tuple[int, ...] = _number((1, 2, 4, 8, 16, 32, 64, 128, 256, 512), min=1)

    def __post_init__(self):
        _check_fields(self)
        if self.gate_channels % 2:
            raise _Invalid(
                "WaveNetConfig",
                "gate_channels",
                f"must be even (half filter, half gate), found {self.gate_channels}",
            )
        if not self.dilations:
            raise _Invalid("WaveNetConfig", "dilations", "must list at least one layer")


@dataclass(frozen=True)
class FlowModelConfig:
    """What the teacher and the student both set: mel upsampler, source-filter prediction,
    floor."""

    linear_prediction_order: int = _number(0, min=0)  # mel-conditioned linear prediction; 0: off
    # the long-term (pitch) predictor's half width J (2J + 1 taps a period back); 0: off. It
    # reads the pitch predicted from the mel, and needs linear prediction (it predicts the LP
    # residual)
    long_term_taps: int = _number(0, min=0, max=16)
    upsampler_channels: int = _number(80, min=1)
    upsampler_kernel: int = _number(5, min=1)
    log_scale_min: float = _number(-7.0, below=0)  # each flow's log-scale floor

    def __post_init__(self):
        _check_fields(self)
        if self.long_term_taps and not self.linear_prediction_order:
            raise _Invalid(
                type(self).__name__,
                "long_term_taps",
                "needs linear_prediction_order > 0 (it predicts the linear-prediction "
                f"residual), found long_term_taps={self.long_term_taps} with order 0",
            )
        if self.upsampler_kernel % 2 == 0:
            raise _Invalid(
                type(self).__name__,
                "upsampler_kernel",
                f"must be odd (the mel is padded by kernel // 2 on each side), found "
                f"{self.upsampler_kernel}",
            )


@dataclass(frozen=True)
class TeacherConfig(FlowModelConfig):
    """MAF teacher: ``num_flows`` WaveNet-conditioned affine layers over the waveform."""

    num_flows: int = _number(1, min=1)
    wavenet: WaveNetConfig = field(default_factory=WaveNetConfig)


@dataclass(frozen=True)
class StudentConfig(FlowModelConfig):
    """IAF student: one WaveNet per flow (Parallel WaveNet: 4 flows; ClariNet: 6)."""

    flows: tuple[WaveNetConfig, ...] = (
        WaveNetConfig(
            residual_channels=64,
            gate_channels=128,
            skip_channels=64,
            dilations=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        ),
    ) * 4
    harmonic_source: bool = False  # base N(pulse train at the mel's predicted F0, I); pitch.py
    # a last flow feeding the output back one pitch period (an IIR comb at the mel's pitch,
    # as the teacher's long-term predictor generates); its taps' half width is long_term_taps
    long_term_feedback: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not self.flows:
            raise _Invalid("StudentConfig", "flows", "must list at least one WaveNet flow")
        if self.long_term_feedback and not self.long_term_taps:
            raise _Invalid(
                "StudentConfig",
                "long_term_feedback",
                "needs long_term_taps > 0 (the feedback's taps and the pitch lags it reads)",
            )


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings shared by both stages."""

    steps: int = _number(2000, min=1)
    batch_size: int = _number(8, min=1)
    segment_frames: int = _number(32, min=1)  # segment length in mel frames (x hop_length)
    lr: float = _number(1e-3, above=0)
    warmup_steps: int = _number(100, min=0)
    lr_decay: str = _choice("cosine", ("cosine", "constant"))
    min_lr_ratio: float = _number(0.05, min=0, max=1)
    weight_decay: float = _number(0.0, min=0)
    grad_clip: float = _number(1.0, min=0)  # 0: off
    ema_decay: float = _number(0.999, min=0, below=1)
    val_every: int = _number(250, min=1)
    save_every: int = _number(250, min=1)
    log_every: int = _number(25, min=1)
    val_clips: int = _number(8, min=1)
    val_max_seconds: float = _number(4.0, above=0)
    amp: bool = True  # bf16 autocast on CUDA
    cpu_amp: bool = False  # bf16 autocast on CPU too (its bf16 matrix units: AMX, AVX-512-bf16)
    compile: bool = False
    max_minutes: float = _number(
        0.0, min=0
    )  # wall-clock budget of one run; then save, stop; 0: off
    seed: int = _number(1234, min=0)
    num_workers: int = _number(0, min=0)
    max_bad_steps: int = _number(10, min=1)  # non-finite steps in a row before the run stops
    audio_sample_seconds: float = _number(0.25, above=0)  # audio logged to TensorBoard
    # the pitch predictor, where this stage trains one (the teacher's; a student's when its
    # teacher has none): its supervised loss against YIN, and its start on whole clips
    pitch_weight: float = _number(1.0, min=0)
    pitch_init_steps: int = _number(300, min=0)

    def __post_init__(self):
        _check_fields(self)


@dataclass(frozen=True)
class DistillLossConfig:
    """Stage-two loss: ``sum(weights()[k] * terms[k])``, and the discriminator that judges the
    student when the adversarial terms are on (``adversarial_weight`` or
    ``feature_matching_weight`` > 0, from update ``adversarial_start`` on)."""

    estimator: str = _choice("closed_form", ESTIMATORS)  # per-step Gaussian KL or Monte Carlo
    kl_weight: float = _number(1.0, min=0)
    log_sigma_reg: float = _number(4.0, min=0)  # ClariNet's lambda on (log sigma - log S)^2
    # the teacher's log-scale inside the KL and its regulariser is at least this (-100: off);
    # a recording's pauses take the teacher to its floor, where (mean - mu)^2 / sigma^2 rules
    teacher_log_scale_floor: float = _number(-100.0)
    stft_weight: float = _number(1.0, min=0)
    power_weight: float = _number(0.0, min=0)
    mel_weight: float = _number(0.0, min=0)  # L1 of log-mels (HiFi-GAN: 45)
    adversarial_weight: float = _number(0.0, min=0)  # least-squares GAN (HiFi-GAN: 1)
    feature_matching_weight: float = _number(0.0, min=0)  # L1 of D's features (HiFi-GAN: 2)
    adversarial_start: int = _number(0, min=0)  # the update the GAN terms and D start at
    stft_resolutions: tuple[tuple[int, int, int], ...] = _number(
        ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048)), min=1
    )  # (n_fft, hop_length, win_length)
    discriminator_resolutions: tuple[tuple[int, int, int], ...] = _number(
        ((512, 50, 240), (1024, 120, 600), (2048, 240, 1200)), min=1
    )  # UnivNet's multi-resolution spectrogram discriminator, one sub-discriminator each
    discriminator_channels: int = _number(32, min=1)
    discriminator_lr: float = _number(2e-4, above=0)  # Adam, betas (0.8, 0.99) as HiFi-GAN
    init_upsampler_from_teacher: bool = True
    temperature: float = _number(1.0, above=0)

    def __post_init__(self):
        _check_fields(self)
        for key in ("stft_resolutions", "discriminator_resolutions"):
            for n_fft, hop, win_length in getattr(self, key):
                if win_length > n_fft:
                    raise _Invalid(
                        "DistillLossConfig",
                        key,
                        f"need win_length <= n_fft in every (n_fft, hop_length, win_length), "
                        f"found {(n_fft, hop, win_length)}",
                    )

    def weights(self) -> dict[str, float]:
        """The weight of every term of the objective by name: the one place they are set.

        The config keeps them as flat ``<term>_weight`` keys (typed, range-checked, overridable
        as ``distill.mel_weight=45``), and this is the dict descript-audio-codec keeps in its
        config. ClariNet's regulariser is scaled with the KL it serves.
        """
        return {
            "kl": self.kl_weight,
            "log_sigma_reg": self.kl_weight * self.log_sigma_reg,
            "stft": self.stft_weight,
            "power": self.power_weight,
            "mel": self.mel_weight,
            "adversarial": self.adversarial_weight,
            "feature_matching": self.feature_matching_weight,
        }

    @property
    def adversarial(self) -> bool:
        """Whether the student trains against a discriminator at all."""
        return self.adversarial_weight > 0 or self.feature_matching_weight > 0


@dataclass(frozen=True)
class Config:
    audio: AudioConfig = field(default_factory=AudioConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher_training: TrainingConfig = field(default_factory=TrainingConfig)
    student_training: TrainingConfig = field(default_factory=TrainingConfig)
    distill: DistillLossConfig = field(default_factory=DistillLossConfig)


def check_same_features(
    expected: AudioConfig, found: AudioConfig, expected_from: str, found_in: str
) -> None:
    """The one feature-compatibility check: a ConfigError naming every differing setting with
    both sources (a checkpoint, a prepared folder, the config) unless the two are equal."""
    if expected == found:
        return
    diffs = [
        f"{f.name}={getattr(expected, f.name)!r} ({expected_from}) vs "
        f"{getattr(found, f.name)!r} ({found_in})"
        for f in dataclasses.fields(expected)
        if getattr(expected, f.name) != getattr(found, f.name)
    ]
    raise ConfigError(
        "feature configs differ: "
        + "; ".join(diffs)
        + ". Use data prepared with the same audio settings (re-run `distill prepare` with the "
        "model's audio config), or a config whose audio section matches the data's "
        "audio_config.yaml."
    )


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
    try:
        return cls(**kwargs)
    except _Invalid as err:  # name the key as the YAML spells it: teacher_training.lr
        raise ConfigError(f"{where + '.' if where else ''}{err.key} {err.problem}") from None


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
