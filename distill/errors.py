"""User-facing errors: one clear message naming the file or argument and the fix.

The CLI catches :class:`DistillError` and prints its message alone (no traceback), exit code 2.
They subclass ``ValueError`` so library callers can catch them the usual way.
"""

__all__ = [
    "DistillError",
    "ConfigError",
    "InputError",
    "AudioError",
    "DataError",
    "CheckpointError",
]


class DistillError(ValueError):
    """An expected failure caused by bad input; the message says what to do."""


class ConfigError(DistillError):
    """Unknown key, wrong type, out-of-range value, or an inconsistent configuration."""


class InputError(DistillError):
    """Data handed to a model or command that it cannot use: a mel or noise of the wrong shape,
    NaN or Inf values, no frames at all."""


class AudioError(DistillError):
    """Missing, unreadable, empty or non-finite audio, or an unreachable sample rate."""


class DataError(DistillError):
    """A corpus or prepared-data folder that is missing, empty or inconsistent."""


class CheckpointError(DistillError):
    """A checkpoint that is missing, corrupt, of the wrong kind or with another feature config."""
