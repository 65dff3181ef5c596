"""Lossless codecs beside the teacher's bits/sample: what a density model of audio must beat.

Each codec codes the 16-bit clip (``round(x * 32768)``, the grid on which
:func:`distill.metrics.nll_bits_per_sample` counts a model's bits) and its bits per sample are
the size of the whole file it writes, times 8, over the number of samples: header and metadata
included, padding and seek tables off.

- ``flac_bits_per_sample``: FLAC at its default level 5 through libsndfile, in memory
  (:func:`distill.metrics.flac_bits_per_sample`);
- ``flac_8_bits_per_sample``: Debian's ``flac`` CLI at its strongest, ``flac -8 -e -p
  --no-padding --no-seektable`` (exhaustive model search and QLP precision search); the file
  keeps the 34-byte STREAMINFO and the 40-byte VORBIS_COMMENT (the encoder's vendor string);
- ``wavpack_hhx6_bits_per_sample``: Debian's ``wavpack -hhx6`` (very high mode, extra
  processing level 6: custom filters per block), which keeps the source's 44-byte RIFF header
  (its ``-r`` would replace it with an 80-byte one), no tags, no MD5.

A CLI that is missing or fails raises :class:`CodecUnavailableError`, a
:class:`~distill.metrics.MetricUndefinedError`: the report says so instead of failing.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from distill.audio import to_int16
from distill.metrics import MetricUndefinedError, _as_array, flac_bits_per_sample

__all__ = [
    "CodecUnavailableError",
    "LOSSLESS_CODECS",
    "flac_cli_bits_per_sample",
    "wavpack_bits_per_sample",
    "lossless_bits",
]

FLAC_ARGS = ("-8", "-e", "-p", "--no-padding", "--no-seektable")
WAVPACK_ARGS = ("-hhx6",)
_TIMEOUT_SECONDS = 600


class CodecUnavailableError(MetricUndefinedError):
    """A codec CLI that is not installed or failed on this clip."""


def _which(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise CodecUnavailableError(
            f"the {program} CLI is not installed; install it with `apt-get install {package}` "
            "(recipes/setup.sh does)"
        )
    return path


def _encode(audio, sample_rate: int, command: Callable[[Path, Path], list[str]], suffix: str):
    """Write the clip as a 16-bit wav in a scratch folder, run ``command(wav, out)`` and return
    the size of ``out`` in bits per sample."""
    pcm = to_int16(_as_array(audio, "audio"))
    with tempfile.TemporaryDirectory(prefix="distill-codec-") as tmp:
        wav, out = Path(tmp) / "clip.wav", Path(tmp) / f"clip{suffix}"
        sf.write(wav, pcm, sample_rate, subtype="PCM_16")
        argv = command(wav, out)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_SECONDS)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise CodecUnavailableError(f"`{' '.join(argv[:2])} ...` could not run: {err}") from err
        if done.returncode != 0 or not out.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no message"]
            raise CodecUnavailableError(
                f"`{Path(argv[0]).name}` failed with exit status {done.returncode}: {tail[0]}"
            )
        return out.stat().st_size * 8.0 / pcm.size


def flac_cli_bits_per_sample(audio, sample_rate: int, args=FLAC_ARGS) -> float:
    """Bits per sample of the 16-bit clip coded by the ``flac`` CLI (``flac -8 -e -p``)."""
    flac = _which("flac", "flac")
    return _encode(
        audio,
        sample_rate,
        lambda wav, out: [flac, *args, "--silent", "--force", "-o", str(out), str(wav)],
        ".flac",
    )


def wavpack_bits_per_sample(audio, sample_rate: int, args=WAVPACK_ARGS) -> float:
    """Bits per sample of the 16-bit clip coded by the ``wavpack`` CLI (``wavpack -hhx6``)."""
    wavpack = _which("wavpack", "wavpack")
    return _encode(
        audio,
        sample_rate,
        lambda wav, out: [wavpack, *args, "-q", "-y", str(wav), "-o", str(out)],
        ".wv",
    )


#: key in metrics.json -> (label in the report, function(audio, sample_rate) -> bits/sample)
LOSSLESS_CODECS: dict[str, tuple[str, Callable[[np.ndarray, int], float]]] = {
    "flac_bits_per_sample": ("FLAC -5 (libsndfile)", flac_bits_per_sample),
    "flac_8_bits_per_sample": ("FLAC -8 -e -p (flac CLI)", flac_cli_bits_per_sample),
    "wavpack_hhx6_bits_per_sample": ("WavPack -hhx6 (wavpack CLI)", wavpack_bits_per_sample),
}


def lossless_bits(audio, sample_rate: int) -> tuple[dict[str, float | None], dict[str, str]]:
    """Every codec of :data:`LOSSLESS_CODECS` on one clip: ``(values, undefined)``, a value None
    and its reason in ``undefined`` where a codec is unavailable."""
    values: dict[str, float | None] = {}
    undefined: dict[str, str] = {}
    for key, (_, fn) in LOSSLESS_CODECS.items():
        try:
            values[key] = fn(audio, sample_rate)
        except MetricUndefinedError as err:
            values[key], undefined[key] = None, str(err)
    return values, undefined
