"""The monitoring assets as data: the dashboard's queries, the alert rules, and the
few PromQL manipulations the tests need (selectors, stripped comparisons, Grafana
variables). Parsing the files themselves means a panel or an alert added later is
checked without touching the tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "cache-reconciler"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
CHART_RULES = CHART / "rules" / "cache-reconciler.yaml"
PLAIN_RULES = ROOT / "deploy" / "prometheus" / "reconciler.rules.yml"
RULES_TESTS = ROOT / "deploy" / "prometheus" / "reconciler.rules.test.yml"
GENERATOR = ROOT / "deploy" / "prometheus" / "generate.py"
RUNBOOK = ROOT / "docs" / "observability.md"
PLAIN_JOB = "cache-reconciler"  # the job the plain rules select

# Grafana's built-in variables, as the test substitutes them (a workload of a minute or
# two, scraped every second).
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m",
                    "__range_s": "300", "__range_ms": "300000"}
_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and",
                    "or", "unless", "bool", "offset", "inf", "nan", "atan2"}


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    legend: str | None

    @property
    def name(self) -> str:
        return f"{self.dashboard}: {self.panel} [{self.ref_id}]"


@dataclass(frozen=True)
class Variable:
    name: str
    query: str  # label_values(selector, label)


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    duration: str | None


# --------------------------------------------------------------------------- dashboards


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)


def panel_queries(path: Path) -> list[PanelQuery]:
    dashboard = load_dashboard(path)
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target and not target.get("hide"):
                out.append(PanelQuery(path.name, panel.get("title", "?"), target["refId"],
                                      target["expr"], target.get("legendFormat")))
    return out


def variables(path: Path) -> list[Variable]:
    out = []
    for variable in load_dashboard(path)["templating"]["list"]:
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        out.append(Variable(variable["name"], query["query"] if isinstance(query, dict)
                            else query))
    return out


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Grafana's variable syntaxes ($name, ${name}, ${name:fmt}, [[name]]) replaced by
    `values` and the built-ins; an unknown variable is an error."""
    known = {**GRAFANA_BUILTINS, **values}

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in known:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return known[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


def label_values(query: str) -> tuple[str, str]:
    """`label_values(selector, label)` -> (selector, label)."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query)
    assert match, f"not a label_values() query: {query!r}"
    return match.group(1), match.group(2)


def legend_labels(legend: str | None) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend or ""))


# --------------------------------------------------------------------------- rules


def alerts(path: Path = PLAIN_RULES) -> list[Alert]:
    document = yaml.safe_load(path.read_text())
    return [Alert(rule["alert"], rule["expr"], rule.get("labels", {}),
                  rule.get("annotations", {}), rule.get("for"))
            for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def generator() -> Any:
    """deploy/prometheus/generate.py as a module (it is a script, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rules_generator", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown document."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


# --------------------------------------------------------------------------- PromQL


def selectors(expr: str) -> list[str]:
    """Every vector selector of a PromQL expression (`name{matchers}`, `name`,
    `{matchers}`), without the range or offset around it."""
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    token = re.compile(r'\{[^}]*\}|"(?:[^"\\]|\\.)*"|\[[^\]]*\]'
                       r"|\d+(?:\.\d+)?(?:e[+-]?\d+)?|[a-zA-Z_:][a-zA-Z0-9_:]*|\S")
    tokens = token.findall(text)
    out = []
    for index, tok in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        previous = tokens[index - 1] if index else ""
        if re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", tok):
            if following == "(" or tok.lower() in _PROMQL_KEYWORDS:
                continue
            out.append(tok + following if following.startswith("{") else tok)
        elif tok.startswith("{") and not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", previous):
            out.append(tok)
    return out


def matchers(selector: str) -> dict[str, str]:
    """`name{a="x", b=~"y"}` -> {"a": '="x"', "b": '=~"y"'}."""
    body = selector[selector.index("{") + 1:-1] if "{" in selector else ""
    return {m.group(1): m.group(2) + m.group(3)
            for m in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")', body)}


def metric_name(selector: str) -> str:
    return selector.split("{", 1)[0]


def strip_conditions(expr: str) -> str:
    """The expression without its comparisons against constants, and with absent()
    replaced by its argument: what the alert compares, which has series in a healthy
    run even though the alert's condition is false."""
    number = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
    stripped = re.sub(rf"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?{number}(?![\w.])", "", expr)
    return re.sub(r"\babsent\(", "(", stripped)
