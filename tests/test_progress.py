"""Progress reports: tqdm on a terminal, whole lines every few seconds anywhere else."""

from __future__ import annotations

import io

from distill import progress as progress_module
from distill.progress import PlainProgress, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_plain_lines_not_carriage_returns(monkeypatch):
    clock = iter(range(0, 1000, 2))  # every reading moves the clock by 2 s
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: float(next(clock)))
    log = io.StringIO()
    bar = progress(total=20, desc="teacher", unit="step", stream=log)
    assert isinstance(bar, PlainProgress)
    for _ in range(20):
        bar.update(1)
        bar.set_postfix({"loss": "1.23"})
    bar.close()
    bar.close()  # closing twice writes nothing more
    lines = log.getvalue().splitlines()
    assert sum(line.startswith("teacher: 20/20") for line in lines) == 1  # not twice
    assert "\r" not in log.getvalue()
    assert 5 <= len(lines) <= 10  # one every 5 s of 40, and a last one
    assert lines[-1].startswith("teacher: 20/20 step (100%)") and "loss 1.23" in lines[-1]
    assert "left" in lines[0]


def test_iteration_and_a_terminal():
    log = io.StringIO()
    assert list(progress(range(3), desc="prepare", stream=log)) == [0, 1, 2]
    assert log.getvalue().startswith("prepare: 3/3 it (100%)")
    assert not isinstance(progress(range(3), stream=_Terminal()), PlainProgress)  # tqdm
    assert list(progress(range(2), disable=True, stream=log)) == [0, 1]


def test_the_last_count_is_written_once(monkeypatch):
    clock = iter(range(0, 1000, 10))  # slow steps: every update writes a line
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: float(next(clock)))
    log = io.StringIO()
    assert list(progress(range(3), desc="evaluate", stream=log)) == [0, 1, 2]
    assert [line.split(" it")[0] for line in log.getvalue().splitlines()] == [
        "evaluate: 1/3",
        "evaluate: 2/3",
        "evaluate: 3/3",
    ]


def test_clock_keeps_seconds_past_an_hour():
    from distill.progress import _clock

    assert _clock(59.4) == "0:59"
    assert _clock(61) == "1:01"
    assert _clock(3600 + 2 * 60 + 5) == "1:02:05"
    assert _clock(10 * 3600 + 59) == "10:00:59"
