"""What every config section shares: strict models, secrets read from files and
masked when printed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from reconciler.errors import ConfigError

TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*")  # schema.table
# Client property names whose values are masked when settings are printed.
SECRET_WORDS = ("password", "secret", "token", "credential", "key.pem", "oauthbearer.config",
                "jaas")


class Strict(BaseModel):
    """Base of every config section: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def one_of(value: object, file: Path | None, name: str) -> None:
    if value is not None and file is not None:
        raise ValueError(f"set {name} or {name}_file, not both")


def without_userinfo(url: str) -> str:
    """A URL with any user:password@ replaced by ***@."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def masked_client(client: dict[str, Any]) -> dict[str, Any]:
    """librdkafka properties with the values of secret-looking names masked."""
    return {name: "**********" if any(word in name.lower() for word in SECRET_WORDS) else value
            for name, value in client.items()}


def read_secret_file(path: Path, field: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror}") from exc
