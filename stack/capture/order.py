"""Which records this run caused, and in which order the fixtures list them."""

from __future__ import annotations

import heapq

from stack.capture.records import (
    HEARTBEATS_KEPT,
    Record,
    heartbeat_topic,
    log,
    row_pk,
    source_lsn,
    table_of,
    txid_of,
    unwrap,
)
from stack.capture.workload import Workload


def select(prefix: str, schemas: bool, work: Workload,
           by_partition: dict[tuple[str, int], list[Record]]) -> list[Record]:
    """This run's records of ``prefix`` in workload order (each partition's order kept)."""
    hb_topic = heartbeat_topic(prefix)
    kept: dict[tuple[str, int], list[Record]] = {}
    heartbeats: list[Record] = []
    dropped = 0
    for tp, records in sorted(by_partition.items()):
        out: list[Record] = []
        for rec in records:
            rec.key_payload, _ = unwrap(rec.key, schemas)
            rec.payload, _ = unwrap(rec.value, schemas)
            if rec.topic == hb_topic:
                heartbeats.append(rec)
                continue
            if rec.value is None:  # tombstone: keep when it follows a kept delete
                prev = out[-1] if out else None
                if (prev is not None and prev.payload.get("op") == "d" and prev.key == rec.key
                        and prev.offset == rec.offset - 1):
                    rec.step = prev.step
                    out.append(rec)
                else:
                    dropped += 1
                continue
            p = rec.payload
            if isinstance(p, dict) and p.get("op") == "r":
                table = table_of(rec)
                if table in work.seeds and row_pk(rec) in work.seeds[table]:
                    rec.step = "snapshot"
                    out.append(rec)
                else:
                    dropped += 1
                continue
            s = work.step_of(txid_of(rec, prefix))
            if s is None:
                dropped += 1
                continue
            rec.step = s.label
            out.append(rec)
        kept[tp] = out
    if dropped:
        log(f"{prefix}: left out {dropped} record(s) not caused by this run")
    last_ts = max((r.timestamp for rs in kept.values() for r in rs), default=0)
    after = sorted((r for r in heartbeats if r.timestamp >= last_ts),
                   key=lambda r: (r.timestamp, r.partition, r.offset))[:HEARTBEATS_KEPT]
    for rec in after:
        rec.step = "heartbeat"
    for rec in after:
        kept.setdefault((rec.topic, rec.partition), []).append(rec)
    for recs in kept.values():
        recs.sort(key=lambda r: r.offset)
    return merge(prefix, work, kept)


def merge(prefix: str, work: Workload,
          kept: dict[tuple[str, int], list[Record]]) -> list[Record]:
    """k-way merge of the partitions (only heads are compared, so every partition keeps
    its own order) by: snapshot, then the workload steps in commit order (within a
    step: BEGIN, the events by source LSN with a PK change's delete before its create,
    END), then the heartbeats; produce time breaks the remaining ties."""
    step_index = {s.label: i for i, s in enumerate(work.steps)}
    op_rank = {"d": 0, "c": 1}
    streams = []
    for (topic, partition), recs in sorted(kept.items()):
        keyed = []
        prev: tuple[int, ...] | None = None
        for rec in recs:
            p = rec.payload
            key: tuple[int, ...]
            if rec.value is None and prev is not None:
                key = prev  # a tombstone goes right after its delete
            elif rec.step == "snapshot":
                key = (0, 0, 0, rec.timestamp, source_lsn(p), 0)
            elif rec.step == "heartbeat":
                key = (2, 0, 0, rec.timestamp, 0, 0)
            elif topic == f"{prefix}.transaction":
                key = (1, step_index[rec.step], 0 if p["status"] == "BEGIN" else 2, 0, 0, 0)
            else:
                key = (1, step_index[rec.step], 1, source_lsn(p),
                       op_rank.get(p.get("op"), 0), rec.timestamp)
            prev = key
            keyed.append((key, topic, partition, rec.offset, rec))
        streams.append(keyed)
    return [item[-1] for item in heapq.merge(*streams, key=lambda i: i[:4])]


