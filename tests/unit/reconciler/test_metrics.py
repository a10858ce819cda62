"""The metrics bundle: SPEC §6 names and labels, created against an injected
registry, with the label values known in advance created at zero."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from reconciler import __version__
from reconciler.observe.metrics import (
    DEAD_LETTER_REASONS,
    END_TO_END_BUCKETS,
    SKIP_REASONS,
    Metrics,
    histogram_quantile,
)
from reconciler.pipeline import planner

ROOT = Path(__file__).resolve().parents[3]
SPEC = {  # SPEC §6: name -> (type, labels)
    "reconciler_events": ("counter", ("table", "op")),
    "reconciler_skipped": ("counter", ("reason",)),
    "reconciler_invalidations": ("counter", ("shard", "result")),
    # SPEC: by table; the template and the cause (key_only: expected, missing: a column the
    # event lacks) tell a renamed column from a DEFAULT-identity delete.
    "reconciler_unresolved_keys": ("counter", ("table", "template", "cause")),
    "reconciler_dead_letters": ("counter", ("reason",)),
    "reconciler_consumer_lag_messages": ("gauge", ("topic", "partition")),
    "reconciler_end_to_end_seconds": ("histogram", ()),
    "reconciler_batch_seconds": ("histogram", ()),
    "reconciler_shard_map_version": ("gauge", ()),
}


def test_the_spec_metrics_exist_with_their_types_and_labels() -> None:
    metrics = Metrics.create(CollectorRegistry())
    families = {family.name: family for family in metrics.registry.collect()}
    for name, (kind, _labels) in SPEC.items():
        assert families[name].type == kind, name
    for field in ("events", "skipped", "invalidations", "unresolved", "dead_letters", "lag"):
        collector = getattr(metrics, field)
        name = collector._name  # the family name
        assert tuple(collector._labelnames) == SPEC[name][1], name


def test_nothing_is_registered_at_import_and_bundles_do_not_collide() -> None:
    import importlib
    import pkgutil

    from prometheus_client import REGISTRY

    import reconciler

    for module in pkgutil.walk_packages(reconciler.__path__, "reconciler."):
        if not module.name.endswith("__main__"):  # every module of the package, imported
            importlib.import_module(module.name)
    ours = [name for name in REGISTRY._names_to_collectors if name.startswith("reconciler_")]
    assert ours == [], f"registered at import time in the default registry: {ours}"
    first, second = CollectorRegistry(), CollectorRegistry()
    Metrics.create(first)
    Metrics.create(second)  # a second bundle on its own registry: no duplicate error


def test_known_label_values_start_at_zero() -> None:
    metrics = Metrics.create(CollectorRegistry())
    metrics.init_shard("a")
    value = metrics.registry.get_sample_value
    for reason in DEAD_LETTER_REASONS:
        assert value("reconciler_dead_letters_total", {"reason": reason}) == 0
    for reason in SKIP_REASONS:
        assert value("reconciler_skipped_total", {"reason": reason}) == 0
    for result in ("repaired", "fresh", "absent", "fenced"):
        assert value("reconciler_invalidations_total", {"shard": "a", "result": result}) == 0
    for result in ("ok", "error"):
        assert value("reconciler_shard_map_reloads_total", {"result": result}) == 0
    assert value("reconciler_build_info", {"version": __version__}) == 1
    assert value("reconciler_shard_map_reload_failed") == 0


PIPELINE_SOURCES = "".join(path.read_text()
                           for path in sorted((ROOT / "reconciler" / "pipeline").glob("*.py")))


def test_every_dead_letter_reason_the_code_raises_is_created_at_zero() -> None:
    sources = (ROOT / "connectors" / "debezium" / "decode.py").read_text()
    sources += PIPELINE_SOURCES
    raised = set(re.findall(r'(?:InvalidEvent|PoisonRecordError|DeadLetter)\(\s*"(\w+)"',
                            sources))
    raised.add(planner.UNKNOWN_TABLE)  # raised by name
    assert len(raised) >= 8, raised
    assert raised <= set(DEAD_LETTER_REASONS), raised - set(DEAD_LETTER_REASONS)


def test_every_skip_reason_is_created_at_zero() -> None:
    reasons = set(planner.SKIP_REASONS.values()) | {planner.UNKNOWN_TABLE}
    found = set(re.findall(r'result\.skipped\["(\w+)"\]', PIPELINE_SOURCES))
    assert found == {"dead_letter_topic"}, found  # the one named in place: the regex works
    reasons |= found
    assert reasons <= set(SKIP_REASONS), reasons - set(SKIP_REASONS)


def test_the_batch_histogram_exposes_what_a_histogram_would() -> None:
    from prometheus_client import Histogram, generate_latest

    values = [0.0, 0.004, 0.005, 0.0051, 0.3, 2.0, 9999.0]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    Metrics.create(ours).end_to_end.observe_many(values)
    reference = Histogram("reconciler_end_to_end_seconds", "x", registry=theirs,
                          buckets=END_TO_END_BUCKETS)
    for value in values:
        reference.observe(value)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {(s.name, s.labels.get("le", "")): s.value
                for family in registry.collect() if family.name == "reconciler_end_to_end_seconds"
                for s in family.samples if not s.name.endswith("_created")}

    assert samples(ours) == samples(theirs)
    assert b"reconciler_end_to_end_seconds_bucket" in generate_latest(ours)


def test_the_tally_sums_events_skips_heartbeats_and_dead_letters() -> None:
    metrics = Metrics.create(CollectorRegistry())
    assert metrics.tally() == (0, 0, 0, 0)
    metrics.events.labels("posts", "u").inc(5)
    metrics.events.labels("comments", "d").inc(2)
    metrics.skipped.labels("tombstone").inc(2)
    metrics.skipped.labels("heartbeat").inc(7)
    metrics.dead_letters.labels("invalid_json").inc(3)
    metrics.invalidations.labels("a", "repaired").inc(11)  # not a record: left out
    assert metrics.tally() == (7, 9, 7, 3)


@pytest.mark.parametrize("sigma", [0.1, 0.2, 0.5, 1.0])
def test_quantiles_read_from_the_delay_histogram_are_within_ten_percent(sigma: float) -> None:
    """Log-normal delays with medians from 1.3 ms to 7.5 s: the p50 and p99 that
    histogram_quantile() reads from reconciler_end_to_end_seconds are within 10% of the
    true quantiles of the observed values (inside 1 ms to 10 s). (A spike narrower than a
    bucket, sigma 0.05, reads up to half a bucket off: 11%.)"""
    rng = random.Random(f"e2e-{sigma}")
    worst = 0.0
    for exponent in range(-23, 8):
        median = 10 ** (exponent / 8)
        values = sorted(median * math.exp(rng.gauss(0.0, sigma)) for _ in range(4000))
        histogram = Metrics.create(CollectorRegistry()).end_to_end
        histogram.observe_many(values)
        buckets = [(float(s.labels["le"]), s.value) for family in histogram.collect()
                   for s in family.samples if s.name.endswith("_bucket")]
        for q in (0.5, 0.99):
            exact = values[math.ceil(q * len(values)) - 1]
            if not 0.001 <= exact <= 10.0:
                continue
            read = histogram_quantile(buckets, q)
            assert read is not None
            worst = max(worst, abs(read - exact) / exact)
    assert worst <= 0.10, f"a quantile read from the histogram is {worst:.0%} off"
