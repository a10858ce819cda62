"""Progress of a long run (a replay): a bar on a terminal, log lines otherwise.

On a TTY the bar is redrawn in place at most every ``REDRAW_SECONDS`` with the percent
done, the count, the recent rate and the ETA; anywhere else (a pod's log) one log line
is written every ``interval`` seconds. The rate is measured over the last
``WINDOW_SECONDS``, so the ETA follows a rate limit or a slow shard quickly.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger(__name__)

REDRAW_SECONDS = 0.2  # how often the terminal bar is redrawn
WINDOW_SECONDS = 5.0  # the rate is measured over this trailing window
BAR_MIN, BAR_MAX = 10, 40  # bar width bounds, in characters


def duration(seconds: float | None) -> str:
    """`1:02:03`, `2:03`, or `--:--` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Reports `done` out of `total` records."""

    def __init__(self, total: int, *, stream: TextIO | None = None, interval: float = 10.0,
                 label: str = "progress",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.label = label
        self._clock = clock
        self.started = clock()
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self._next = self.started + (REDRAW_SECONDS if self.tty else interval)
        self._drawn = False

    def rate(self, now: float, done: int) -> float | None:
        samples = self._samples
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= WINDOW_SECONDS:
            samples.popleft()
        then, before = samples[0]
        return (done - before) / (now - then) if now > then else None

    def update(self, done: int, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now < self._next:
            return
        self._next = now + (REDRAW_SECONDS if self.tty else self.interval)
        rate = self.rate(now, done)
        left = self.total - done
        eta = left / rate if rate else (0.0 if left <= 0 else None)
        percent = 100.0 * done / self.total if self.total else 100.0
        if self.tty:
            self._draw(done, percent, rate, eta)
        else:
            log.info("%s: %.1f%% (%d/%d records), %s/s, ETA %s", self.label, percent, done,
                     self.total, f"{rate:.0f}" if rate is not None else "?", duration(eta))

    def _draw(self, done: int, percent: float, rate: float | None, eta: float | None) -> None:
        text = (f" {percent:5.1f}% {done}/{self.total} records "
                f"{rate if rate is not None else 0:.0f}/s ETA {duration(eta)}")
        columns = shutil.get_terminal_size((80, 24)).columns
        width = max(BAR_MIN, min(BAR_MAX, columns - len(self.label) - len(text) - 4))
        filled = int(width * min(1.0, percent / 100))
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}]{text}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def finish(self, done: int) -> None:
        """The final state (always drawn), then a newline on a terminal."""
        self.update(done, force=True)
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
