"""The chart's PrometheusRule and the plain rules file say the same thing: rendered by
helm, the rules equal deploy/prometheus/reconciler.rules.yml but for the release's
selector and the chart's extra labels, and promtool accepts them as rendered."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import NAMESPACE, RELEASE, Rendered

PLAIN = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "reconciler.rules.yml"
SERVICE = f"{RELEASE}-cache-reconciler-metrics"


def normal(text: str) -> str:
    return " ".join(text.split())


def comparable(rule: dict[str, Any], drop_labels: set[str]) -> dict[str, Any]:
    expr = normal(rule["expr"]).replace(
        f'{{ namespace="{NAMESPACE}", service="{SERVICE}" }}', '{job="cache-reconciler"}')
    expr = re.sub(  # the selector followed by more matchers: `{ <release>, cause="x" }`
        rf'\{{ namespace="{NAMESPACE}", service="{SERVICE}", ([^{{}}]*?) \}}',
        r'{job="cache-reconciler", \1}', expr)
    return {**rule, "expr": expr,
            "labels": {k: v for k, v in rule.get("labels", {}).items() if k not in drop_labels},
            "annotations": {k: normal(v) for k, v in rule.get("annotations", {}).items()}}


def test_the_rendered_rules_are_the_plain_rules(rendered_ci: dict[str, Rendered]) -> None:
    values = yaml.safe_load((Path(__file__).resolve().parents[2] / "helm" / "cache-reconciler"
                             / "ci" / "all-features-values.yaml").read_text())
    extra = set(values["metrics"]["prometheusRule"].get("additionalRuleLabels", {}))
    groups = rendered_ci["all-features-values.yaml"].one("PrometheusRule")["spec"]["groups"]
    rendered = [comparable(r, extra) for g in groups if g["name"] == "cache-reconciler"
                for r in g["rules"]]
    plain = [comparable(r, set()) for g in yaml.safe_load(PLAIN.read_text())["groups"]
             for r in g["rules"]]
    assert rendered == plain
    assert all(re.search(r"\{\{ \$", r["annotations"]["summary"]) or "{{" not in
               r["annotations"]["summary"] for r in rendered)  # Prometheus templates kept


def test_promtool_accepts_the_rendered_rules(rendered_ci: dict[str, Rendered],
                                             tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: `apt-get install -y prometheus`",
                    pytrace=False)
    groups = rendered_ci["all-features-values.yaml"].one("PrometheusRule")["spec"]["groups"]
    path = tmp_path / "rendered.rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
