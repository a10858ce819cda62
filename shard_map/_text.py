"""How problems show values: entries in YAML flow style, URLs without passwords.

Problems quote the entry they are about the way the user wrote it
(``ranges[1] {from: 450, to: 600, shard: b}``), so that it can be found in the file.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

# Strings shown without quotes; everything else is JSON-quoted so that blanks show.
_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+-]+")
# Plain-looking strings that YAML would read as something else, so they are quoted.
_YAML_SPECIAL = re.compile(
    r"(?i:null|~|true|false|yes|no|on|off|y|n)|[-+]?(\d[\d_]*(\.\d*)?|\.\d+)([eE][-+]?\d+)?"
)
# Longest rendering of one value before it is cut (a problem is one readable line).
MAX_RENDERED = 120
# Stands in for a password in any URL shown in a message.
REDACTED = "***"


def render(value: object) -> str:
    """One value in YAML flow style, cut to `MAX_RENDERED` characters."""
    text = _render(value)
    return text if len(text) <= MAX_RENDERED else text[: MAX_RENDERED - 1] + "…"


def _render(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and not _YAML_SPECIAL.fullmatch(value):
            return value
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        items = ", ".join(f"{_render(k)}: {_render(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    return repr(value)


def ids(first: int, last: int) -> str:
    """``id 5`` or ``ids 5..9``."""
    return f"id {first}" if first == last else f"ids {first}..{last}"


def redact_url(url: str) -> str:
    """The URL with any password replaced by `REDACTED` (it may end up in a log)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user, _, _ = userinfo.partition(":")
    return parts._replace(netloc=f"{user}:{REDACTED}@{hostinfo}").geturl()


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a choice is close to `word`, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
