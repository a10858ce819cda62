"""How a shard's server is reached: a connection pool from its URL (valkey://, or
valkeys:// for TLS) and the credentials and TLS files given apart, and the URL as it may
be logged (without its user information)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import valkey
from valkey.connection import parse_url

TLS_SCHEMES = frozenset({"valkeys", "rediss"})  # URL schemes that mean TLS
SCHEMES = frozenset({"valkey", "redis", *TLS_SCHEMES})  # accepted URL schemes


def redact(url: str) -> str:
    """`url` without its user information (user name and password)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc, query="").geturl()


def connection_pool(url: str, *, username: str | None = None, password: str | None = None,
                    tls_ca_file: str | None = None, tls_cert_file: str | None = None,
                    tls_key_file: str | None = None,
                    socket_timeout: float = 5.0) -> valkey.ConnectionPool:
    """A bytes-in, bytes-out connection pool for `url` (valkey[s]:// or redis[s]://).

    `username`/`password` override any given in the URL. The TLS files are only
    accepted with a TLS scheme (valkeys://, rediss://); with TLS the server's
    certificate must verify against `tls_ca_file` (or the system CAs) and name the host.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"valkey URL {redact(url)!r}: scheme must be one of "
                         f"{', '.join(sorted(SCHEMES))}, got {scheme!r}")
    tls = {"ssl_ca_certs": tls_ca_file, "ssl_certfile": tls_cert_file,
           "ssl_keyfile": tls_key_file}
    if scheme not in TLS_SCHEMES and any(tls.values()):
        raise ValueError(f"valkey URL {redact(url)!r}: TLS files were given but the scheme "
                         f"is {scheme}://; use valkeys:// (or rediss://) for TLS")
    kwargs: dict[str, Any] = parse_url(url)
    if username is not None:
        kwargs["username"] = username
    if password is not None:
        kwargs["password"] = password
    if scheme in TLS_SCHEMES:
        kwargs.update({key: value for key, value in tls.items() if value})
        # The certificate must name the host (valkey-py does not check by default);
        # `?ssl_check_hostname=false` in the URL opts out.
        kwargs.setdefault("ssl_check_hostname", True)
    kwargs.setdefault("socket_timeout", socket_timeout)
    kwargs.setdefault("socket_connect_timeout", socket_timeout)
    kwargs["decode_responses"] = False
    return valkey.ConnectionPool(**kwargs)
