"""Keys back to column values: ``post:42`` under ``post:{id}`` is ``{"id": "42"}``.

What `audit` needs to find the row behind a cache key. A key is read back only when it
parses one way (placeholders next to each other, or a value containing the literal
text between them, can make it ambiguous: then it is not read at all), and not when a
more specific configured template also matches it (``post:42:comments`` belongs to
``post:{id}:comments``, not to ``post:{id}``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from reconciler.templates import KeyTemplate


@functools.lru_cache(maxsize=256)
def key_pattern(template: KeyTemplate, *, lazy: bool = True) -> re.Pattern[str]:
    """A regular expression matching every key of `template`, a group per placeholder."""
    group = "(.*?)" if lazy else "(.*)"
    parts = [re.escape(template.literals[0])]
    for literal in template.literals[1:]:
        parts += [group, re.escape(literal)]
    return re.compile("".join(parts), re.DOTALL)


def parse_key(template: KeyTemplate, key: str,
              others: Iterable[KeyTemplate] = ()) -> dict[str, str] | None:
    """The column values `key` was rendered from, or None: it does not match, matches
    more than one way, gives one column two values, or is a key of one of `others`
    with more literal text (a more specific template)."""
    values = _values(template, key)
    if values is None:
        return None
    specific = _literal_length(template)
    for other in others:
        if _literal_length(other) > specific and _values(other, key) is not None:
            return None
    return values


def _values(template: KeyTemplate, key: str) -> dict[str, str] | None:
    lazy = key_pattern(template, lazy=True).fullmatch(key)
    greedy = key_pattern(template, lazy=False).fullmatch(key)
    if lazy is None or greedy is None or lazy.groups() != greedy.groups():
        return None
    values: dict[str, str] = {}
    for column, value in zip(template.columns, lazy.groups(), strict=True):
        if values.setdefault(column, value) != value:
            return None  # the same column twice, with two values
    return values


def _literal_length(template: KeyTemplate) -> int:
    return sum(len(literal) for literal in template.literals)
