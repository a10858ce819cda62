"""What can be audited: the key templates that name exactly one row.

A versioned template built only from primary-key columns, and naming all of them, can
be read back into a row (``keyparse``); every other template is listed with the reason
it is not auditable (unversioned: a derived key with nothing to compare; a non-key
column; a missing key column).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.errors import ConfigError
from reconciler.ops.audit.keyparse import parse_key
from reconciler.settings import Settings
from reconciler.templates import KeyTemplate


@dataclass(frozen=True, slots=True)
class Target:
    """One auditable key template of one table."""

    table: str
    template: KeyTemplate
    primary_key: tuple[str, ...]
    version_column: str
    others: tuple[KeyTemplate, ...]  # every other configured template, to tell keys apart

    def parse(self, key: str) -> tuple[str, ...] | None:
        """The primary-key values a key names, or None (not parseable, ambiguous, or
        the key of a more specific template)."""
        values = parse_key(self.template, key, others=self.others)
        if values is None:
            return None
        try:
            return tuple(values[column] for column in self.primary_key)
        except KeyError:
            return None


def targets(settings: Settings, tables: Sequence[str] | None
            ) -> tuple[list[Target], dict[str, list[dict[str, str]]]]:
    """The auditable templates of the chosen tables, and why the others are not."""
    chosen = list(tables or settings.tables)
    unknown = [t for t in chosen if t not in settings.tables]
    if unknown:
        raise ConfigError(f"--table {', '.join(unknown)}: not configured (tables: "
                          f"{', '.join(settings.tables)})")
    every = [t for spec in settings.tables.values() for t in spec.templates()]
    out: list[Target] = []
    skipped: dict[str, list[dict[str, str]]] = {}
    for name in chosen:
        spec = settings.tables[name]
        primary_key = tuple(spec.primary_key)
        for template in spec.templates():
            reason = None
            if not template.versioned:
                reason = "unversioned (a derived key: nothing to compare)"
            elif not set(template.columns) <= set(primary_key):
                extra = sorted(set(template.columns) - set(primary_key))
                reason = f"uses non-key column(s) {', '.join(extra)}: cannot name one row"
            elif set(template.columns) != set(primary_key):
                missing = sorted(set(primary_key) - set(template.columns))
                reason = f"lacks primary-key column(s) {', '.join(missing)}"
            if reason is not None:
                skipped.setdefault(name, []).append({"template": template.source,
                                                     "reason": reason})
                continue
            out.append(Target(name, template, primary_key, spec.version_column,
                              tuple(t for t in every if t is not template)))
    return out, skipped
