"""An in-memory shard with the exact semantics of the Valkey functions, for unit tests.

`FakeShard` implements `ShardClient` (apply, truncate) plus the writer's
`set_if_newer`, over a dict of hashes (and non-hash values, to model foreign data),
with TTLs (the fence lifetime rules included) against an injectable clock.
`tests/unit/connectors/valkey` runs the same random operation sequences through it and
a real server and asserts identical results, end states and TTLs, so code tested
against the fake is tested against the protocol.

It also records what was applied (`applied`, `truncated`) and can be told to fail the
next calls (`fail_next`) to exercise retry paths without mocks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from connectors.valkey.protocols import (
    ABSENT,
    DATA_FIELD,
    FENCED,
    FRESH,
    MAX_VERSION,
    OP_DELETE,
    OP_SNAPSHOT,
    OP_UNVERSIONED,
    OP_VERSIONED,
    OPS,
    REPAIRED,
    VERSION_FIELD,
    PendingApply,
    ShardClient,
    parse_version,
)

Entry = dict[bytes, bytes] | bytes  # a hash, or any non-hash value (modelled as bytes)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """The regex for a Valkey glob (`*`, `?`, `[a-z]`, `[^x]`, `\\` escapes)."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "\\" and i < n:
            out.append(re.escape(pattern[i]))
            i += 1
        elif char == "[":
            negate = i < n and pattern[i] == "^"
            i += negate
            items = []
            while i < n and pattern[i] != "]":
                if pattern[i] == "\\" and i + 1 < n:
                    items.append(re.escape(pattern[i + 1]))
                    i += 2
                elif i + 2 < n and pattern[i + 1] == "-" and pattern[i + 2] != "]":
                    low, high = sorted((pattern[i], pattern[i + 2]))
                    items.append(f"{re.escape(low)}-{re.escape(high)}")
                    i += 3
                else:
                    items.append(re.escape(pattern[i]))
                    i += 1
            i += 1  # the closing ]
            out.append(f"[{'^' if negate else ''}{''.join(items)}]" if items else
                       ("." if negate else "(?!)"))
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


class FakeShard:
    """An in-memory `ShardClient` with the semantics of library cache_reconciler_2."""

    def __init__(self, name: str = "fake", *, fence_ttl_ms: int = 60_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if fence_ttl_ms <= 0:
            raise ValueError(f"fence_ttl_ms must be positive, got {fence_ttl_ms}")
        self._name = name
        self.fence_ttl_ms = fence_ttl_ms
        self._clock = clock
        self._entries: dict[str, Entry] = {}
        self._deadlines: dict[str, float] = {}  # key -> clock() at which it expires
        self.applied: list[tuple[str, str, int, str]] = []  # (key, op, version, result)
        self.truncated: list[str] = []  # patterns, in call order
        self.fail_next: list[Exception] = []  # raised (and popped) by the next calls

    @property
    def name(self) -> str:
        return self._name

    # ------------------------------------------------------------------ the protocol

    def apply(self, keys: Sequence[str], ops: Sequence[str],
              versions: Sequence[int]) -> list[str]:
        self._check(keys, ops, versions)
        self._maybe_fail()
        results = [self._apply_one(k, o, v) for k, o, v in zip(keys, ops, versions, strict=True)]
        self.applied += zip(keys, ops, versions, results, strict=True)
        return results

    def send(self, keys: Sequence[str], ops: Sequence[str],
             versions: Sequence[int]) -> PendingApply:
        """Checks the arguments now; applies them when the result is read (nothing else
        can run on this shard in between)."""
        self._check(keys, ops, versions)
        return _FakePending(lambda: self.apply(keys, ops, versions))

    def _check(self, keys: Sequence[str], ops: Sequence[str],
               versions: Sequence[int]) -> None:
        if len(ops) != len(keys) or len(versions) != len(keys):
            raise ValueError(f"shard {self._name!r}: apply() needs as many ops and versions "
                             f"as keys, got {len(keys)}, {len(ops)}, {len(versions)}")
        for key, op, version in zip(keys, ops, versions, strict=True):
            if op not in OPS:
                raise ValueError(f"shard {self._name!r}: op for key {key!r} must be one of "
                                 f"{''.join(sorted(OPS))}, got {op!r}")
            if not 0 <= version <= MAX_VERSION:
                raise ValueError(f"shard {self._name!r}: version for key {key!r} must be in "
                                 f"[0, 2^63-1], got {version}")

    def set_if_newer(self, key: str, version: int, payload: bytes, ttl_ms: int = 0) -> bool:
        """The writer's compare-and-set: the semantics of cr2_set_if_newer (a TTL asked
        for is at least the one left on the entry replaced; none if that had none)."""
        if not 0 <= version <= MAX_VERSION or ttl_ms < 0:
            raise ValueError(f"bad version {version} or ttl_ms {ttl_ms}")
        self._maybe_fail()
        kind, current = self._classify(key)
        if kind == "data" and current >= version:
            return False
        if kind == "fence" and current > version:
            return False
        left = self._deadlines.get(key)
        forever = kind != "absent" and left is None  # what it replaces never expires
        self._delete(key)
        self._entries[key] = {VERSION_FIELD: str(version).encode(), DATA_FIELD: payload}
        if ttl_ms > 0 and not forever:
            deadline = self._clock() + ttl_ms / 1000
            self._deadlines[key] = deadline if left is None else max(deadline, left)
        return True

    def truncate(self, pattern: str, *, count: int = 1000,
                 max_keys_per_second: float | None = None) -> int:
        self._maybe_fail()
        matches = glob_regex(pattern).fullmatch
        doomed = [key for key in self.keys() if matches(key)]
        for key in doomed:
            self._delete(key)
        self.truncated.append(pattern)
        return len(doomed)

    # ------------------------------------------------------------------ inspection

    def keys(self) -> list[str]:
        """Every live key, sorted."""
        return sorted(key for key in list(self._entries) if self.entry(key) is not None)

    def entry(self, key: str) -> Entry | None:
        """What `key` holds (a hash as {field: value}, or bytes), None if nothing."""
        deadline = self._deadlines.get(key)
        if deadline is not None and self._clock() >= deadline:
            self._delete(key)
        return self._entries.get(key)

    def pttl(self, key: str) -> int:
        """Like PTTL: -2 if absent, -1 if no TTL, else milliseconds left."""
        if self.entry(key) is None:
            return -2
        deadline = self._deadlines.get(key)
        return -1 if deadline is None else max(0, round((deadline - self._clock()) * 1000))

    def put(self, key: str, value: Entry, ttl_ms: int = 0) -> None:
        """Store anything under `key` (e.g. a foreign non-hash value), as a writer would."""
        self._delete(key)
        self._entries[key] = dict(value) if isinstance(value, dict) else value
        if ttl_ms > 0:
            self._deadlines[key] = self._clock() + ttl_ms / 1000

    def expire(self, key: str, ttl_ms: int | None) -> bool:
        """Like PEXPIRE (`ttl_ms` > 0) or PERSIST (None): False if `key` is absent."""
        if self.entry(key) is None:
            return False
        if ttl_ms is None:
            self._deadlines.pop(key, None)
        else:
            self._deadlines[key] = self._clock() + ttl_ms / 1000
        return True

    # ------------------------------------------------------------------ internals

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    def _delete(self, key: str) -> bool:
        self._deadlines.pop(key, None)
        return self._entries.pop(key, None) is not None

    def _classify(self, key: str) -> tuple[str, int]:
        entry = self.entry(key)
        if entry is None:
            return "absent", 0
        if not isinstance(entry, dict):
            return "stale", 0
        version = parse_version(entry.get(VERSION_FIELD))
        if version is None:
            return "stale", 0
        return ("data" if DATA_FIELD in entry else "fence"), version

    def _new_fence(self, key: str, version: int, clear: bool) -> None:
        if clear:
            self._delete(key)
        entry = self._entries.setdefault(key, {})
        assert isinstance(entry, dict)
        entry[VERSION_FIELD] = str(version).encode()
        self._deadlines[key] = self._clock() + self.fence_ttl_ms / 1000

    def _hold(self, key: str, *, fence: bool, version: int | None = None) -> None:
        """An entry a change met lives at least fence_ttl more (never less than it had);
        without a TTL, a fence gets fence_ttl and data keeps none. `version`: the fence
        is raised to it, in place."""
        if version is not None:
            entry = self._entries[key]
            assert isinstance(entry, dict)
            entry[VERSION_FIELD] = str(version).encode()
        deadline = self._clock() + self.fence_ttl_ms / 1000
        left = self._deadlines.get(key)
        if left is not None:
            self._deadlines[key] = max(left, deadline)
        elif fence:
            self._deadlines[key] = deadline

    def _apply_one(self, key: str, op: str, version: int) -> str:
        if op == OP_UNVERSIONED:
            return REPAIRED if self._delete(key) else ABSENT
        kind, current = self._classify(key)
        if op == OP_DELETE:
            if kind == "fence":
                self._hold(key, fence=True, version=MAX_VERSION)
                return ABSENT
            self._new_fence(key, MAX_VERSION, clear=kind != "absent")
            return ABSENT if kind == "absent" else REPAIRED
        assert op in (OP_VERSIONED, OP_SNAPSHOT)
        if kind == "absent":
            if op == OP_VERSIONED:
                self._new_fence(key, version, clear=False)
            return ABSENT
        if kind == "data" and current >= version:
            self._hold(key, fence=False)
            return FRESH
        if kind == "fence":
            self._hold(key, fence=True, version=version if current < version else None)
            return FENCED
        self._new_fence(key, version, clear=True)
        return REPAIRED


if TYPE_CHECKING:
    _implements: type[ShardClient] = FakeShard


class _FakePending:
    """`FakeShard.send()`'s pending call (implements `PendingApply`)."""

    __slots__ = ("_apply",)

    def __init__(self, apply: Callable[[], list[str]] | None) -> None:
        self._apply = apply

    def result(self) -> list[str]:
        apply, self._apply = self._apply, None
        if apply is None:
            raise RuntimeError("result() read twice, or after discard()")
        return apply()

    def discard(self) -> None:
        self._apply = None
