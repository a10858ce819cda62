"""Progress away from a terminal (a pod's log): one log line with the counts every
`interval` seconds and a final one, nothing drawn; on a terminal, a bar instead."""

from __future__ import annotations

import io
import logging

import pytest

from reconciler.ops.progress import Progress, duration


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "reconciler.ops.progress"]


def test_off_a_terminal_a_log_line_with_the_counts_every_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reconciler.ops.progress")
    clock, stream = Clock(), io.StringIO()
    progress = Progress(200, stream=stream, interval=10.0, label="replay", clock=clock)
    assert not progress.tty
    for second in range(1, 10):  # within the first interval: nothing
        clock.now += 1
        progress.update(5 * second)
    assert lines(caplog) == []
    clock.now += 1  # 10 s in, 50 done: 5/s, 150 left
    progress.update(50)
    assert lines(caplog) == ["replay: 25.0% (50/200 records), 5/s, ETA 0:30"]
    clock.now += 4
    progress.update(70)  # 4 s after the last line: not yet
    clock.now += 6
    progress.update(100)
    clock.now += 10
    progress.update(200)
    assert lines(caplog)[1:] == ["replay: 50.0% (100/200 records), 5/s, ETA 0:20",
                                 "replay: 100.0% (200/200 records), 10/s, ETA 0:00"]
    assert stream.getvalue() == ""  # no bar, no control characters in a log


def test_finish_always_logs_the_final_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reconciler.ops.progress")
    clock = Clock()
    progress = Progress(40, stream=io.StringIO(), interval=10.0, label="replay", clock=clock)
    clock.now += 2
    progress.update(30)
    progress.finish(30)  # stopped early, well within an interval
    assert lines(caplog) == ["replay: 75.0% (30/40 records), 15/s, ETA 0:01"]


def test_on_a_terminal_a_bar_is_drawn_and_nothing_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reconciler.ops.progress")
    clock, terminal = Clock(), Terminal()
    progress = Progress(200, stream=terminal, interval=10.0, label="replay", clock=clock)
    clock.now += 1
    progress.update(50)
    progress.finish(200)
    frames = terminal.getvalue().split("\r")[1:]
    assert len(frames) == 2 and terminal.getvalue().endswith("\n")
    assert "]  25.0% 50/200 records 50/s ETA 0:03" in frames[0]
    assert "] 100.0% 200/200 records" in frames[1]
    assert lines(caplog) == []


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00"), (59.6, "1:00"), (125, "2:05"),
                                               (3723, "1:02:03"), (None, "--:--"),
                                               (float("inf"), "--:--"), (float("nan"), "--:--")])
def test_durations_read_as_a_clock(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text
