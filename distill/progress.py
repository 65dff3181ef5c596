"""Progress of long loops: tqdm on a terminal, a plain line every few seconds anywhere else.

tqdm redraws its bar with carriage returns many times a second; written to a log file or a CI
console that is thousands of lines of noise. :func:`progress` keeps tqdm for a terminal and
otherwise prints ``desc: n/total unit (p%), elapsed, left, postfix`` at most every
:data:`LINE_SECONDS` and once at the end. Both speak the small part of tqdm's interface that
distill uses: iteration, ``update``, ``set_postfix``, ``close``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

__all__ = ["LINE_SECONDS", "progress"]

LINE_SECONDS = 5.0
"""Seconds between two plain progress lines."""


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    initial: int = 0,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    stream=None,
):
    """A tqdm bar when ``stream`` (default stderr) is a terminal, else :class:`PlainProgress`."""
    stream = sys.stderr if stream is None else stream
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    isatty = getattr(stream, "isatty", None)
    if disable or (isatty is not None and isatty()):
        from tqdm import tqdm

        return tqdm(
            iterable,
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            disable=disable,
            dynamic_ncols=True,
            file=stream,
        )
    return PlainProgress(iterable, total, initial, desc, unit, stream)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class PlainProgress:
    """A progress report of whole lines, for logs: see the module docstring."""

    def __init__(self, iterable, total, initial, desc, unit, stream, every=LINE_SECONDS):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.stream, self.every = stream, every
        self.n = self._start = self._written = initial
        self.postfix: dict = {}
        self._t0 = self._last = time.monotonic()
        self._closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._write(now)

    def set_postfix(self, postfix: dict | None = None, refresh: bool = True, **kwargs) -> None:
        self.postfix = {**(postfix or {}), **kwargs}

    def close(self) -> None:
        """Write the final count, unless the last line already said it."""
        if not self._closed:
            self._closed = True
            if self.n != self._written:
                self._write(time.monotonic())

    def _write(self, now: float) -> None:
        self._written = self.n
        elapsed = now - self._t0
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {count} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{_clock(elapsed)} elapsed")
        done = self.n - self._start
        if self.total and done > 0 and elapsed > 0:
            parts.append(f"{_clock((self.total - self.n) * elapsed / done)} left")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        print(", ".join(parts), file=self.stream, flush=True)
