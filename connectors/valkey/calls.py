"""The FCALLs of one `ClusterShard.apply()`, and what replaces one after a redirection.

`apply_calls()` groups the keys by hash slot (a FCALL's keys must share one), keeps all
the ops of one key in one call — so that a call sent again after a redirection can
never reorder a key's ops — and cuts each slot's keys into calls of about
`APPLY_CHUNK` keys (a key with more ops than that gets a call alone). In a slot seen
being migrated lately, every op gets a call of its own: see `routing` for why.
"""

from __future__ import annotations

import logging
from binascii import crc_hqx
from collections import Counter
from collections.abc import Sequence
from typing import Any

from connectors.valkey.commands import APPLY_CHUNK
from connectors.valkey.protocols import OP_DELETE, OP_SNAPSHOT, OP_VERSIONED
from connectors.valkey.routing import Call
from connectors.valkey.topology import SLOTS, slot_of

log = logging.getLogger(__name__)

_FCALL = b"FCALL"  # the command, pre-encoded
_SLOT_MASK = SLOTS - 1  # the hash slot of a key without a {tag}: CRC16 & 16383
_REPAIRED = [b"repaired"]  # the answer of a lone op stopped after removing a value


def apply_calls(keys: Sequence[str], ops: Sequence[str], versions: Sequence[int], *,
                shard: str, function: bytes, fence_ttl_ms: int, migrating: frozenset[int],
                stats: Counter[str]) -> list[Call]:
    """The calls applying `ops[i]` at `versions[i]` to `keys[i]` (see the module)."""
    slots: dict[int, dict[str, list[int]]] = {}
    for index, key in enumerate(keys):
        raw = key.encode()
        slot = slot_of(key) if b"{" in raw else crc_hqx(raw, 0) & _SLOT_MASK  # CRC16 in C
        by_key = slots.get(slot)
        if by_key is None:
            by_key = slots[slot] = {}
        positions = by_key.get(key)
        if positions is None:
            by_key[key] = [index]
        else:
            positions.append(index)
    batch = Batch(keys, ops, versions, shard=shard, function=function,
                  fence_ttl_ms=fence_ttl_ms, stats=stats)
    out: list[Call] = []
    for slot, by_key in slots.items():
        if slot in migrating:
            out += [batch.call(slot, [index]) for positions in by_key.values()
                    for index in positions]
            continue
        chunk: list[int] = []
        for positions in by_key.values():
            if chunk and len(chunk) + len(positions) > APPLY_CHUNK:
                out.append(batch.call(slot, chunk))
                chunk = []
            chunk += positions
        out.append(batch.call(slot, chunk))
    return out


class Batch:
    """The arguments of one `apply()`, from which its calls are made."""

    __slots__ = ("fence_ttl_ms", "function", "keys", "ops", "shard", "stats", "versions")

    def __init__(self, keys: Sequence[str], ops: Sequence[str], versions: Sequence[int], *,
                 shard: str, function: bytes, fence_ttl_ms: int,
                 stats: Counter[str]) -> None:
        self.keys, self.ops, self.versions = keys, ops, versions
        self.shard, self.function, self.fence_ttl_ms = shard, function, fence_ttl_ms
        self.stats = stats

    def call(self, slot: int, positions: list[int], op: str | None = None) -> Call:
        """The ops at `positions` (all of one slot), in order; `op` instead of theirs."""
        keys, ops, versions = self.keys, self.ops, self.versions
        if len(positions) == 1:  # most calls: a key alone in its slot
            index = positions[0]
            return Call(slot, (_FCALL, self.function, 1, keys[index], self.fence_ttl_ms,
                               op or ops[index], versions[index]), positions,
                        recover=self._recover)
        pairs: list[Any] = []
        for index in positions:
            pairs += (op or ops[index], versions[index])
        args = (_FCALL, self.function, len(positions),
                *[keys[index] for index in positions], self.fence_ttl_ms, *pairs)
        return Call(slot, args, positions, self._split if len(positions) > 1 else None,
                    recover=self._recover)

    def _split(self, call: Call) -> list[Call]:
        """After TRYAGAIN: one call per op, in order (each runs or is redirected)."""
        return [self.call(call.slot, [index]) for index in call.tag]

    def _recover(self, call: Call) -> list[Call]:
        """After a script stopped halfway on the source of a migrating slot. A lone op
        stops there only after deleting the key's value to write its fence: it is
        `repaired`, and what is left — the fence (a delete's, or `v` for a change or a
        snapshot) — is written where the key now lives (ASK). Several ops: what ran
        before the stop stays; every op is sent again, one a call, a snapshot read as a
        change (every key was there when the call started, so the two differ only for
        the one whose value the stopped op removed: it gets its fence). Idempotent; an
        op that had removed a value now answers `absent` rather than `repaired`."""
        if len(call.tag) == 1:
            index = call.tag[0]
            rest = self.call(call.slot, [index], OP_DELETE if self.ops[index] == OP_DELETE
                             else OP_VERSIONED)
            rest.known = _REPAIRED
            return [rest]
        log.warning("valkey shard %s: a call of %d ops stopped halfway on the source of "
                    "slot %d, being migrated; sending its ops again one by one",
                    self.shard, len(call.tag), call.slot)
        self.stats["partial"] += 1
        return [self.call(call.slot, [index], OP_VERSIONED if self.ops[index] == OP_SNAPSHOT
                          else None) for index in call.tag]
