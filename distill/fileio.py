"""Atomic file output: a file the project writes is either complete or absent.

Every writer (checkpoints, caches, manifests, wavs, exports) goes through :func:`atomic_output`:
write into a hidden temp file in the destination folder, then ``os.replace`` it over the
destination, so a crash or ``kill -9`` mid-write never leaves a truncated file under the real
name. ``mkstemp`` creates its file private (0600); the result is given the permissions a plain
``open(path, "w")`` would have, so outputs are readable like any other file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output", "remove_stale_temps"]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask can only be read by setting it, which races threads


@contextmanager
def atomic_output(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success it replaces ``path``, on error it goes.

    The temp file is ``.NAME.XXXXXXXX`` + ``suffix`` (for writers that infer the format from
    the extension) in ``path``'s folder: hidden, and found again by :func:`remove_stale_temps`.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def remove_stale_temps(path: str | Path, suffix: str = ".tmp") -> None:
    """Delete the temp files that writes to ``path`` left behind when a ``kill -9`` cut them
    short: they are never complete, and no live write to ``path`` may run alongside."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*{suffix}"):
        tmp.unlink(missing_ok=True)
