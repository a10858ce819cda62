"""Replay: re-process a range of the change topics, for a backfill or after an incident.

The range is fixed before the first record is read: per partition, from ``--from``
(``earliest``, an ISO time looked up with offsets_for_times, or explicit
``topic:partition:offset`` pairs) to ``--to`` (``now``: the end offsets seen at
start, a time, or pairs), so a replay terminates even while new events keep
arriving. Partitions are assigned explicitly (no subscription, no rebalance), each is
paused once it reaches its end, and records past an end are never processed.

Every record goes through a pipeline built as the worker's is
(`reconciler.pipeline.compose`) — the same decode, plan and invalidate path, the same
dead-lettering — over a consumer group of its
own (``<group_id>.replay.<UTC time>``), so the live group's offsets never move and
the replay is safe beside the live worker (every cache operation is idempotent).

``--rate`` caps records per second with a token bucket; ``--dry-run`` plans and
counts (table, shard, action) without touching Valkey or the dead-letter topic.
Stopping (SIGINT/SIGTERM) finishes the batch in flight and reports where each
partition got to, so the exact command to resume can be printed.

Modules: ``bounds`` (``--from`` and ``--to``), ``replayer`` (``Replay``: the range and
the run), ``report`` (``ReplayReport`` as JSON and text, ``resume_command``).
"""

from reconciler.ops.replay.bounds import EARLIEST, NOW, Bound, format_offsets, parse_bound
from reconciler.ops.replay.replayer import Replay
from reconciler.ops.replay.report import ReplayReport, resume_command

__all__ = ["EARLIEST", "NOW", "Bound", "Replay", "ReplayReport", "format_offsets",
           "parse_bound", "resume_command"]
