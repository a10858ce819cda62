"""Doctor's checks of a sentinel shard's Sentinels, before its primary's.

Each Sentinel of the shard map answers (our credentials accepted) and monitors the
service; they agree on one primary, which none sees down; enough of them see each
other to reach the quorum; the primary has a replica to fail over to. The primary
itself is then checked as any shard is (`doctor.valkey`): reachable, version,
library, ACL. `judge()` is pure: the tests give it what Sentinels say.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from connectors.valkey.sentinel import SentinelShard, SentinelView
from reconciler.ops.doctor.checklist import FAIL, OK, WARN, Check

DOWN_FLAGS = ("s_down", "o_down", "disconnected")  # a node the Sentinels cannot use


def sentinel_checks(name: str, shard: SentinelShard) -> Iterator[Check]:
    """The Sentinels of shard `name`, as `judge()` sees them."""
    yield from judge(name, shard.service, shard.views())


def judge(name: str, service: str, views: Sequence[SentinelView]) -> Iterator[Check]:
    """The checks for what the Sentinels said (`views`, one per URL of the map)."""
    check = f"shard {name} sentinels"
    answered = [view for view in views if view.error is None]
    misconfigured = [view for view in views if view.refused or view.unknown]
    down = [view for view in views if view.error is not None and view not in misconfigured]
    for view in misconfigured:
        fix = ("set the user and password the Sentinel expects in the user information of "
               "its URL (valkey://user:password@host:26379), and grant that user "
               "+ping +sentinel|masters +sentinel|master +sentinel|replicas +sentinel|slaves"
               if view.refused else
               f"check shards.{name}.service: the name in the Sentinels' SENTINEL MONITOR")
        yield Check(FAIL, check, f"{view.url} {view.error}", fix)
    if not answered:
        if not misconfigured:
            yield Check(FAIL, check, "no Sentinel answers: " + "; ".join(
                f"{view.url} {view.error}" for view in down),
                f"check the URLs of shards.{name}.sentinel, the network and that the "
                "Sentinels run; the worker cannot find the primary")
        return
    if down:
        yield Check(WARN, check, f"{len(answered)} of {len(views)} Sentinels answer; "
                    + "; ".join(f"{view.url} {view.error}" for view in down),
                    "the others still find the primary, but fewer Sentinels may not reach "
                    "the quorum for a failover; fix or remove the URL")
    elif not misconfigured:
        yield Check(OK, check, f"{len(views)} Sentinels answer for service {service}")
    seen = max(view.other_sentinels for view in answered) + 1
    quorum = max(view.quorum for view in answered)
    if seen < quorum:
        yield Check(WARN, check, f"the Sentinels see {seen} of themselves, fewer than the "
                                 f"quorum {quorum}: no failover could be agreed",
                    "check that the Sentinels reach each other (their announce addresses)")
    yield from _primary(name, answered)
    yield from _replicas(name, answered[0])


def _primary(name: str, answered: Sequence[SentinelView]) -> Iterator[Check]:
    check = f"shard {name} primary"
    named = {view.primary for view in answered}
    if len(named) > 1:
        yield Check(FAIL, check, "the Sentinels disagree: " + "; ".join(
            f"{view.url} names {view.primary}" for view in answered),
            "a failover may be in progress: run doctor again; if it lasts, the Sentinels "
            "monitor different primaries under one name — fix their configuration")
        return
    primary = answered[0].primary
    flagged = [view for view in answered if any(f in view.flags for f in DOWN_FLAGS)]
    if flagged:
        yield Check(FAIL, check, f"{primary} is down as the Sentinels see it (" + "; ".join(
            f"{view.url}: {view.flags}" for view in flagged) + ")",
            "a failover should follow if a replica is available; see the Sentinels' logs")
        return
    yield Check(OK, check, f"the Sentinels agree on {primary}")


def _replicas(name: str, view: SentinelView) -> Iterator[Check]:
    check = f"shard {name} replicas"
    usable = [address for address, flags in view.replicas
              if not any(f in flags for f in DOWN_FLAGS)]
    unusable = [f"{address} ({flags})" for address, flags in view.replicas
                if not any(f == address for f in usable)]
    if not usable:
        yield Check(WARN, check, "no replica the Sentinels could promote"
                    + (f": {', '.join(unusable)}" if unusable else ""),
                    "without a replica a failover has nowhere to go: add one")
    elif unusable:
        yield Check(WARN, check, f"{', '.join(usable)} usable; {', '.join(unusable)} not",
                    "see the replicas' logs")
    else:
        yield Check(OK, check, f"{len(usable)} replica(s): {', '.join(usable)}")
