"""Key templates: ``"post:{id}"`` → ``post:42``, and ``post:*`` for a truncate.

A template is literal text with ``{column}`` placeholders (``{{`` and ``}}`` escape
braces). It is compiled once, at start-up, into a tuple of parts so rendering on the
hot path is a handful of string concatenations.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass

# One token, scanned left to right as str.format does: an escaped brace, a {column}
# placeholder, or a stray brace.
TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")  # a Postgres column name, unquoted
GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")  # characters SCAN MATCH treats as pattern syntax


class TemplateError(ValueError):
    """A key template that cannot be compiled; the message says why."""


@dataclass(frozen=True, slots=True)
class KeyTemplate:
    """A compiled key template."""

    source: str  # the template as written in the config
    literals: tuple[str, ...]  # len(columns) + 1 literal pieces around the placeholders
    columns: tuple[str, ...]  # placeholder column names, in order
    versioned: bool  # versioned (hash with v/d) or a derived key that is simply deleted

    @classmethod
    def compile(cls, source: str, *, versioned: bool) -> KeyTemplate:
        if not source:
            raise TemplateError("template is empty")
        literals: list[str] = []
        columns: list[str] = []
        literal: list[str] = []  # pieces of the literal text since the last placeholder
        position = 0
        for match in TOKEN.finditer(source):
            literal.append(source[position:match.start()])
            position = match.end()
            token = match.group(0)
            if token in ("{{", "}}"):
                literal.append(token[0])
                continue
            if match.group(1) is None:
                raise TemplateError("unbalanced brace (write {{ or }} for a literal brace)")
            name = match.group(1).strip()
            if not IDENTIFIER.fullmatch(name):
                raise TemplateError(
                    f"placeholder {{{match.group(1)}}} is not a column name "
                    "(letters, digits, _ and $; no format specs)"
                )
            literals.append("".join(literal))
            literal = []
            columns.append(name)
        literal.append(source[position:])
        literals.append("".join(literal))
        return cls(source, tuple(literals), tuple(columns), versioned)

    def render(self, values: Mapping[str, str]) -> str:
        """The key for these already-formatted column values."""
        literals = self.literals
        if len(literals) == 2:  # the common one-placeholder case
            return literals[0] + values[self.columns[0]] + literals[1]
        parts = [literals[0]]
        for column, literal in zip(self.columns, literals[1:], strict=True):
            parts.append(values[column])
            parts.append(literal)
        return "".join(parts)

    def pattern(self) -> str:
        """A SCAN MATCH pattern for every key of this template (for a truncate)."""
        escaped = [GLOB_SPECIAL.sub(r"\\\1", literal) for literal in self.literals]
        return "*".join(escaped)


def overlapping_patterns(tables: dict[str, tuple[KeyTemplate, ...]]) -> list[str]:
    """Truncating one table would also remove another table's keys: e.g. `post:*` (from
    post:{id}) matches post:comments:{id}. One line per overlap, for a warning."""
    samples = {
        (table, template.source): template.render(dict.fromkeys(template.columns, "0"))
        for table, templates in tables.items() for template in templates
    }
    found = []
    for table, templates in tables.items():
        for template in templates:
            pattern = template.pattern()
            for (other, source), sample in samples.items():
                if other != table and fnmatch.fnmatchcase(sample, pattern):
                    found.append(f"a truncate of {table} removes keys matching {pattern!r}, "
                                 f"which also match {other}'s {source!r}")
    return found
