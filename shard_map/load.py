"""Reading the shard map file, once (`load_shard_map`) or as it changes (`ShardMapWatcher`).

The watcher is built for a Kubernetes ConfigMap volume, where the file is a symlink
through ``..data`` and an update swaps that symlink atomically: `poll` stats the path
(following symlinks), and only when the stat signature (device, inode, size, times)
changes does it read the file and compare a hash of the content, so a touched or
re-projected file with the same content is not a reload. A bad new file is reported
once and the old map kept; the same bad content is not reported again.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from typing import Any

import yaml

from shard_map.errors import ShardMapError
from shard_map.model import validate_document
from shard_map.resolve import ShardMap

# The YAML tag of a merge key (`<<: *anchor`), which may legitimately repeat keys.
_MERGE_TAG = "tag:yaml.org,2002:merge"
# The stat fields whose change means "read the file again".
_Signature = tuple[int, int, int, int, int]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # unhashable key: the base class reports it
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first at line {first.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def parse_shard_map(content: str | bytes, path: str = "<string>") -> ShardMap:
    """The shard map in YAML `content`; `path` names it in errors.

    Raises `ShardMapError` for YAML that does not parse (with the line and column) or
    a document that is not a valid shard map (with every problem).
    """
    try:
        data = yaml.load(content, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ShardMapError(path, [_yaml_problem(exc)]) from None
    except RecursionError:  # a reload must fail cleanly, whatever the file holds
        raise ShardMapError(path, ["not valid YAML: nested too deeply"]) from None
    return ShardMap.from_model(validate_document(data, path))


def load_shard_map(path: str | os.PathLike[str]) -> ShardMap:
    """The shard map in file `path`. Raises `ShardMapError` naming the file."""
    name = os.fspath(path)
    content, _ = _read(name)
    return parse_shard_map(content, name)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What `ShardMapWatcher.poll` found when the file changed.

    ``ok`` with the new map (now current), or not ``ok`` with the map still current
    (the old one) and the ``error`` that kept the new file out.
    """

    ok: bool
    shard_map: ShardMap
    error: ShardMapError | None


class ShardMapWatcher:
    """Keeps the shard map of `path` current; call `poll` every few seconds.

    The constructor loads the file and raises `ShardMapError` if it is bad (a worker
    must not start without a map). Not thread-safe: poll from one thread; `current`
    may be read from any.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        content, signature = _read(self._path)
        self._current = parse_shard_map(content, self._path)
        self._signature: _Signature | None = signature
        self._current_digest = _digest(content)
        self._seen_digest = self._current_digest  # last content reported on, good or bad

    @property
    def path(self) -> str:
        """The watched path, as given (symlinks are followed on every poll)."""
        return self._path

    @property
    def current(self) -> ShardMap:
        """The last good shard map."""
        return self._current

    def poll(self) -> ReloadResult | None:
        """None if the file has not changed since the last poll; else the outcome.

        A bad file (including a missing or unreadable one) gives ``ok=False`` once per
        distinct content; going back to the current content gives ``ok=True`` with the
        current map, so that a "reload failed" state can be cleared.
        """
        try:
            signature: _Signature | None = _signature(os.stat(self._path))
        except OSError:
            signature = None
        if signature is not None and signature == self._signature:
            return None
        try:
            content, signature = _read(self._path)
        except ShardMapError as exc:
            return self._unreadable(exc)
        self._signature = signature
        digest = _digest(content)
        if digest == self._seen_digest:
            return None
        self._seen_digest = digest
        if digest == self._current_digest:
            return ReloadResult(ok=True, shard_map=self._current, error=None)
        try:
            shard_map = parse_shard_map(content, self._path)
        except ShardMapError as exc:
            return ReloadResult(ok=False, shard_map=self._current, error=exc)
        self._current, self._current_digest = shard_map, digest
        return ReloadResult(ok=True, shard_map=shard_map, error=None)

    def _unreadable(self, exc: ShardMapError) -> ReloadResult | None:
        # No signature: every poll tries again (a failed open is cheap). The reason
        # stands in for the content, so the same failure is reported once.
        self._signature = None
        digest = _digest(repr(exc.problems).encode())
        if digest == self._seen_digest:
            return None
        self._seen_digest = digest
        return ReloadResult(ok=False, shard_map=self._current, error=exc)


def _read(path: str) -> tuple[bytes, _Signature]:
    """The file's content and the stat signature of the very file that was read."""
    try:
        with open(path, "rb") as file:
            content = file.read()
            return content, _signature(os.fstat(file.fileno()))
    except FileNotFoundError:
        raise ShardMapError(path, ["file not found"]) from None
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        raise ShardMapError(path, [f"cannot read the file: {reason}"]) from None


def _signature(stat: os.stat_result) -> _Signature:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _digest(content: bytes) -> bytes:
    return hashlib.sha256(content).digest()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``line 4, column 7: mapping values are not allowed here`` (1-based)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({exc.context})" if exc.context else ""
        problem = (exc.problem or "").removeprefix("but ")  # "but found …" reads oddly alone
        return f"not valid YAML: {where}{problem}{context}"
    return f"not valid YAML: {exc}"
