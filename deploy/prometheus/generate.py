#!/usr/bin/env python3
"""Writes reconciler.rules.yml, the plain Prometheus rules file, from the chart's rules.

The chart's helm/cache-reconciler/rules/cache-reconciler.yaml is the one source of the
alerting rules; this renders the two Helm constructs it may use (see its header) the
way a plain Prometheus needs them:

- ``{ {{ include "cache-reconciler.metricsSelector" . }}`` opens a selector with
  this release's series: here ``{job="cache-reconciler"`` (the scrape job's name);
- ``{{`…`}}`` (a raw string, for Prometheus' own alert templates) becomes ``…``.

Anything else that looks like Helm is an error, so a new construct cannot slip
through half-rendered. ``--check`` exits 1 when the file on disk is out of date.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent.parent / "helm" / "cache-reconciler" / "rules" / "cache-reconciler.yaml"
TARGET = HERE / "reconciler.rules.yml"
JOB = "cache-reconciler"  # the scrape job name the plain rules select
# `{ {{ include "cache-reconciler.metricsSelector" . }} }`, optionally with more matchers
# after a comma: `{ {{ include … }}, result="error" }`.
SELECTOR = re.compile(
    r'\{ \{\{ include "cache-reconciler\.metricsSelector" \. \}\}(?:, ([^{}]*?))? \}')
RAW = re.compile(r"\{\{`(.*?)`\}\}")
HEADER = f"""\
# GENERATED from helm/cache-reconciler/rules/cache-reconciler.yaml by
# deploy/prometheus/generate.py: edit that file, then run the script.
#
# Prometheus alerting rules for cache-reconciler. They select the workers' series by
# job="{JOB}": name your scrape job so, or change the selectors. Each alert's
# runbook is the section of docs/observability.md its runbook_url names.
"""


class RenderError(ValueError):
    """The source uses a Helm construct this script does not know."""


def render(source: str) -> str:
    lines = source.splitlines(keepends=True)
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)  # the source's own header: it talks about Helm
    body = "".join(lines)
    body = SELECTOR.sub(
        lambda m: f'{{job="{JOB}"' + (f", {m.group(1)}" if m.group(1) else "") + "}", body)
    body = RAW.sub(lambda m: m.group(1), body)
    for number, line in enumerate(body.splitlines(), start=1):
        helm = re.search(r"\{\{\s*(include|\.|-|/\*|tpl|template|if|range|with)", line)
        if helm:
            raise RenderError(f"line {number}: unknown Helm construct {line.strip()!r}")
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if reconciler.rules.yml is not what the source gives")
    args = parser.parse_args(argv)
    wanted = render(SOURCE.read_text())
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != wanted:
            print(f"{TARGET} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(wanted)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
