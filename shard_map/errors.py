"""The shard map's errors.

Two branches, one per moment things can go wrong::

    ValueError
     └── ShardMapError          the file is unusable (missing, not YAML, invalid);
                                carries every problem found, each naming its entry
    LookupError
     └── ShardResolutionError   a neighbourhood id outside every range of a map with
                                no ``default``: the event is dead-lettered

The reconciler translates both at its boundary into its own tree (see
``reconciler.errors``): a ``ShardMapError`` at start-up stops the process, on a reload
it keeps the old map; a ``ShardResolutionError`` dead-letters one record.
"""

from __future__ import annotations

from collections.abc import Iterable


class ShardMapError(ValueError):
    """A shard map file that cannot be used.

    ``path`` is the file, ``problems`` every problem found (all of them, not only the
    first), each a sentence that names the offending entry, e.g. ``ranges[1] {from:
    450, to: 600, shard: b} overlaps ranges[0] {from: 1, to: 500, shard: a}``.
    """

    path: str
    problems: tuple[str, ...]

    def __init__(self, path: str, problems: Iterable[str]) -> None:
        self.path = path
        self.problems = tuple(problems) or ("invalid (no detail given)",)
        super().__init__(self._message())

    def _message(self) -> str:
        if len(self.problems) == 1:
            return f"invalid shard map {self.path}: {self.problems[0]}"
        lines = "".join(f"\n  - {problem}" for problem in self.problems)
        return f"invalid shard map {self.path} ({len(self.problems)} problems):{lines}"

    def __reduce__(self) -> tuple[type[ShardMapError], tuple[str, tuple[str, ...]]]:
        return (type(self), (self.path, self.problems))


class ShardResolutionError(LookupError):
    """A neighbourhood id that no range covers, in a map whose ``default`` is null."""

    neighbourhood_id: int
    map_version: int

    def __init__(self, neighbourhood_id: int, map_version: int) -> None:
        self.neighbourhood_id = neighbourhood_id
        self.map_version = map_version
        super().__init__(
            f"neighbourhood id {neighbourhood_id} is outside every range of shard map "
            f"version {map_version}, which has no default shard: add a range that "
            f"covers it, or set `default`"
        )

    def __reduce__(self) -> tuple[type[ShardResolutionError], tuple[int, int]]:
        return (type(self), (self.neighbourhood_id, self.map_version))
