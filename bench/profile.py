"""Flat tables from a py-spy raw profile (collapsed stacks: `a;b;c count` per line).

Only samples on the worker's hot path count: stacks through the consume loop
(`Worker.loop`) or a shard call running on the invalidator's thread pool
(`Invalidator._apply`); start-up and shutdown are left out.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

HOT_PATH = ("Worker.loop ", "Invalidator._apply ")  # frames that mark a hot-path sample
TOP = 30  # rows per table


def summarize_py_spy(raw: Path) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = hot = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        if not any(frame.startswith(HOT_PATH) for frame in frames):
            continue
        hot += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"py-spy --gil: {total} samples holding the GIL, {hot} on the hot path "
             f"(Worker.loop or Invalidator._apply); percentages are of the hot path.", ""]
    for title, counts in (("self", own), ("inclusive", inclusive)):
        lines += [f"top {TOP} by {title} samples", f"{'%':>6}  {'samples':>8}  function (file)"]
        for frame, n in counts.most_common(TOP):
            lines.append(f"{100 * n / max(hot, 1):6.1f}  {n:8d}  {frame}")
        lines.append("")
    return "\n".join(lines)
