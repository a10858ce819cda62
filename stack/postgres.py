"""PostgreSQL 15 (Debian's): one cluster under ``.stack/postgres`` with logical
decoding on, the ``nd`` database with ``stack/postgres/schema.sql``, and the roles of
`PG_ROLES` (the application, Debezium, the reconciler). ``provision(PG_DB2,
via_root=True, ids_from=PG_DB2_IDS)`` adds a second database with the same schema, whose
publication publishes partitioned tables via their root and whose ids start far above
the first's, as sharded databases keep their keys apart (``connect-nd2`` does, on
demand).

initdb and postgres refuse to run as root: as root, they run as the ``postgres`` user,
and the cluster moves to that user's home when it cannot reach ``.stack/``.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from stack.process import (
    HOST,
    LOG_DIR,
    ROOT,
    STACK_DIR,
    START_TIMEOUT,
    Service,
    StackError,
    ensure_port_free,
    log,
    pid_alive,
    port_open,
    tail,
    wait_for,
)

PG_PORT = int(os.environ.get("CR_STACK_PG_PORT", "25432"))
PG_BIN_CANDIDATES = [Path("/usr/lib/postgresql/15/bin")]  # Debian's postgresql-15
PG_DB = "nd"  # the application's database
PG_DB2 = "nd2"  # a second one, the same schema (a second source: `python -m stack up connect-nd2`)
PG_DB2_IDS = 10**12  # where nd2's id sequences start: its rows' keys never meet nd's
PUBLICATION = "nd_publication"  # in each database, created by schema.sql
ID_SEQUENCES = ("posts_id_seq", "comments_id_seq", "events_id_seq")  # bigserial ids
# Local, throw-away credentials of the test stack (never used outside it).
PG_ROLES = {"app": "app-local", "debezium": "debezium-local", "reconciler": "reconciler-local"}
SCHEMA = ROOT / "stack" / "postgres" / "schema.sql"  # tables, grants, publication, triggers


def pg_bin(tool: str) -> str:
    for candidate in PG_BIN_CANDIDATES:
        if (candidate / tool).exists():
            return str(candidate / tool)
    found = shutil.which(tool)
    if found:
        return found
    raise StackError(
        f"postgres: {tool} not found in {', '.join(map(str, PG_BIN_CANDIDATES))} or PATH; "
        "install Debian's postgresql-15 (scripts/setup does)"
    )


def _postgres_can_reach(path: Path) -> bool:
    """Whether the `postgres` user can traverse every folder down to `path`."""
    for folder in [*reversed(path.parents), path]:
        try:
            mode = folder.stat().st_mode
        except FileNotFoundError:
            return True  # created by us below, readable by all
        if not mode & 0o001:  # no search permission for others
            return False
    return True


def _pg_home() -> Path:
    """Where the cluster lives: under .stack/, unless the server (running as the
    `postgres` user when we are root) cannot reach it — a checkout under /root, say —
    then in the postgres user's own home, one folder per stack."""
    default = STACK_DIR / "postgres"
    if os.geteuid() != 0 or _postgres_can_reach(STACK_DIR):
        return default
    digest = hashlib.sha256(str(STACK_DIR).encode()).hexdigest()[:12]
    return Path("/var/lib/postgresql") / f"cache-reconciler-{digest}"


PG_HOME = _pg_home()
PG_DATA = PG_HOME / "data"
PG_SOCKET_DIR = PG_HOME / "socket"
PG_LOG = PG_HOME / "postgres.log"  # written by the server itself, as the postgres user


def _pg_user_argv() -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise StackError("postgres: running as root but there is no `postgres` user "
                         "to run the server as (install Debian's postgresql-15)") from exc
    return ["runuser", "-u", "postgres", "--"]


def _chown_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        for p in [path, *path.rglob("*")]:
            os.chown(p, entry.pw_uid, entry.pw_gid)


def pg_pid() -> int | None:
    """The postmaster of the stack's data folder, if it is alive (on whatever port)."""
    try:
        pid = int((PG_DATA / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def running() -> bool:
    return pg_pid() is not None and port_open(PG_PORT)


def psql(sql: str, db: str = "postgres", check: bool = True) -> str:
    argv = [*_pg_user_argv(), pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", str(PG_SOCKET_DIR), "-p", str(PG_PORT), "-U", "postgres", "-d", db,
            "-At", "-c", sql]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise StackError(f"postgres: psql failed: {proc.stderr.strip()}\nSQL: {sql[:300]}")
    return proc.stdout.strip()


def start() -> None:
    log_path = PG_LOG
    if running():
        log("postgres already running")
    else:
        ensure_port_free("postgres", PG_PORT, "CR_STACK_PG_PORT")
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        PG_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        if not (PG_DATA / "PG_VERSION").exists():
            PG_DATA.mkdir(parents=True, exist_ok=True)
            _chown_to_postgres(PG_HOME)
            init = subprocess.run(
                [*_pg_user_argv(), pg_bin("initdb"), "-D", str(PG_DATA), "-U", "postgres",
                 "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                 "--locale=C.UTF-8"],
                check=False, capture_output=True, text=True,
            )
            if init.returncode != 0:
                raise StackError(
                    f"postgres: initdb failed for {PG_DATA} (the server runs as the "
                    f"`postgres` user, which must be able to reach that folder):\n"
                    f"{init.stderr.strip() or init.stdout.strip()}")
            (PG_DATA / "pg_hba.conf").write_text(
                "local all         postgres                 trust\n"
                "local all         all                      scram-sha-256\n"
                f"host  all         all      {HOST}/32   scram-sha-256\n"
                f"host  replication debezium {HOST}/32   scram-sha-256\n"
            )
        (PG_DATA / "postgresql.auto.conf").write_text(
            f"listen_addresses = '{HOST}'\n"
            f"port = {PG_PORT}\n"
            f"unix_socket_directories = '{PG_SOCKET_DIR}'\n"
            "wal_level = logical\n"
            "max_wal_senders = 10\n"
            "max_replication_slots = 10\n"
            "max_connections = 200\n"
            "shared_buffers = 128MB\n"
            # A throw-away test cluster: durability traded for speed.
            "fsync = off\nfull_page_writes = off\nsynchronous_commit = off\n"
        )
        log_path.touch()
        _chown_to_postgres(PG_HOME)
        if PG_HOME != STACK_DIR / "postgres":
            link = LOG_DIR / "postgres.log"
            link.unlink(missing_ok=True)
            link.symlink_to(log_path)
        proc = subprocess.run(
            [*_pg_user_argv(), pg_bin("pg_ctl"), "-D", str(PG_DATA), "-l", str(log_path),
             "-w", "-t", str(int(START_TIMEOUT)), "start"],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise StackError(f"postgres did not start; see {log_path}:\n{proc.stdout}"
                             f"{proc.stderr}\n{tail(log_path)}")
        wait_for("postgres", lambda: port_open(PG_PORT), log_path)
    provision()


def provision(db: str = PG_DB, *, via_root: bool = False, ids_from: int | None = None) -> None:
    """The roles, the database `db` and the schema (idempotent: run on every start);
    with `via_root`, the publication publishes partitioned tables as their root
    (publish_via_partition_root) rather than per leaf partition; with `ids_from`, the
    id sequences give no id below it."""
    roles = ";".join(
        f"""DO $$ BEGIN
              IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                CREATE ROLE {role} LOGIN PASSWORD '{password}';
              END IF;
            END $$"""
        for role, password in PG_ROLES.items()
    )
    psql(roles)
    # Debezium: REPLICATION + LOGIN (+ SELECT, granted in schema.sql); never superuser.
    psql("ALTER ROLE debezium WITH REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE")
    if not psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'"):
        psql(f"CREATE DATABASE {db} OWNER app")
    schema = SCHEMA.read_text()
    # The schema is owned by the application role, as in production.
    psql("SET ROLE app;\n" + schema, db=db)
    if via_root and psql(f"SELECT 1 FROM pg_publication WHERE pubname = '{PUBLICATION}' "
                         "AND NOT pubviaroot", db=db):
        psql(f"SET ROLE app; ALTER PUBLICATION {PUBLICATION} "
             "SET (publish_via_partition_root = true)", db=db)
    if ids_from is not None:
        psql("SET ROLE app; " + " ".join(
            f"SELECT setval('{seq}', {ids_from}) FROM {seq} WHERE last_value < {ids_from};"
            for seq in ID_SEQUENCES), db=db)


def stop() -> None:
    if pg_pid() is None:  # not "running": a server still starting, or on an old port
        return
    subprocess.run(
        [*_pg_user_argv(), pg_bin("pg_ctl"), "-D", str(PG_DATA), "-m", "fast", "-w", "stop"],
        capture_output=True, check=False,
    )


SERVICE = Service("postgres", start, stop, running)
