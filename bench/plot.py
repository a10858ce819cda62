"""The sweep's figure: a column per dimension; on top the CPU per event, below the
events/s, of the worker and of its ceiling, each with a dotted line for growth exactly
as the work per event (a worker curve above it on top, or below it underneath, grows
faster than the work: super-linear); a red cross on a disturbed point. matplotlib with
the Agg backend, no display."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.dimensions import DIMENSIONS

WORKER, CEILING, LINEAR, FLAGGED = "tab:blue", "tab:gray", "tab:green", "tab:red"  # colours
LOG_SCALED = ("partitions", "shards", "keys", "size")  # their points double


def plot_sweep(data: Mapping[str, Any], path: Path) -> Path:
    dimensions = data["dimensions"]
    figure = Figure(figsize=(4.4 * len(dimensions), 8.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(dimensions), squeeze=False)
    for column, (name, result) in enumerate(dimensions.items()):
        _column(name, result, axes[0][column], axes[1][column])
    options, code, info = data["options"], data["code"], data["machine"]
    figure.suptitle(f"How cost grows\n{options['events']:,} records a point (at most), "
                    f"median of {options['runs']} run(s); code {code['commit'][:10]}"
                    f"{' (dirty)' if code['dirty'] else ''}; {info['nproc']} CPUs",
                    fontsize=11)
    figure.savefig(path, dpi=100)
    return path


def _column(name: str, result: Mapping[str, Any], cpu: Axes, rate: Axes) -> None:
    points = result["points"]
    growth = result["growth"]
    xs = [point["point"][name] for point in points]
    work = [w / growth["work_per_event"][0] for w in growth["work_per_event"]]
    summaries = [point["summary"] for point in points]
    flagged = bool(growth["super_linear"])
    cpu.set_title(DIMENSIONS[name].title + ("\nSUPER-LINEAR" if flagged else ""),
                  color=FLAGGED if flagged else "black")
    _line(cpu, xs, summaries, "worker_cpu_us_per_event", WORKER, "worker")
    _line(cpu, xs, summaries, "ceiling_cpu_us_per_event", CEILING, "ceiling", "--")
    first = summaries[0]["worker_cpu_us_per_event"]
    cpu.plot(xs, [first * w for w in work], ":", color=LINEAR, label="as the work")
    cpu.set_ylabel("CPU µs per event")
    _line(rate, xs, summaries, "worker_events_per_second", WORKER, "worker")
    _line(rate, xs, summaries, "ceiling_events_per_second", CEILING, "ceiling", "--")
    first = summaries[0]["worker_events_per_second"]
    scale = [x / xs[0] for x in xs] if name == "workers" else [1 / w for w in work]
    rate.plot(xs, [first * s for s in scale], ":", color=LINEAR,
              label="linear in workers" if name == "workers" else "as the work")
    disturbed = [(x, s) for x, s in zip(xs, summaries, strict=True) if s["disturbed"]]
    for axes, figure in ((cpu, "worker_cpu_us_per_event"), (rate, "worker_events_per_second")):
        if disturbed:
            axes.plot([x for x, _ in disturbed], [s[figure] for _, s in disturbed], "x",
                      color=FLAGGED, markersize=10, label="disturbed")
    for x, summary in zip(xs, summaries, strict=True):
        rate.annotate(f"{summary['worker_vs_ceiling']:.0%}",
                      (x, summary["worker_events_per_second"]), textcoords="offset points",
                      xytext=(0, 6), ha="center", fontsize=8, color=WORKER)
    rate.set_ylabel("events/s (worker / ceiling in %)")
    rate.set_xlabel(DIMENSIONS[name].title)
    for axes in (cpu, rate):
        if name in LOG_SCALED:
            axes.set_xscale("log", base=2)
        axes.set_xticks(xs, [str(x) for x in xs])
        axes.margins(y=0.12)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)


def _line(axes: Axes, xs: Sequence[int], summaries: Sequence[Mapping[str, Any]], figure: str,
          colour: str, label: str, style: str = "-") -> None:
    """Median per point, bars from the lowest to the highest run."""
    medians = [summary[figure] for summary in summaries]
    below = [m - summary[f"{figure}_range"][0] for m, summary in zip(medians, summaries,
                                                                     strict=True)]
    above = [summary[f"{figure}_range"][1] - m for m, summary in zip(medians, summaries,
                                                                     strict=True)]
    axes.errorbar(xs, medians, yerr=[below, above], fmt="o" + style, color=colour,
                  label=label, capsize=3, markersize=4)
