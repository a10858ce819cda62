"""Apache Kafka, a single KRaft node (broker and controller in one JVM), and the Java
side shared with Kafka Connect: the jars Maven resolves from ``stack/maven/<name>/``,
the ``java`` command line, the log4j configuration.

Three listeners: PLAINTEXT (everything but the security tests; ``User:ANONYMOUS``, a
super user), CONTROLLER, and SASL_SSL with SCRAM-SHA-512 for the security tests
(`stack.security` writes its properties; `ensure_users()` its credential).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from stack import security
from stack.process import (
    HOST,
    LIB_DIR,
    ROOT,
    STACK_DIR,
    StackError,
    daemon,
    ensure_port_free,
    log,
    port_open,
)

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

KAFKA_PORT = int(os.environ.get("CR_STACK_KAFKA_PORT", "29092"))  # PLAINTEXT
KAFKA_CONTROLLER_PORT = int(os.environ.get("CR_STACK_KAFKA_CONTROLLER_PORT", "29093"))
# Java heap: small enough for a 2-core CI machine, large enough for the benchmark's
# million-event topic.
KAFKA_HEAP = os.environ.get("CR_STACK_KAFKA_HEAP", "-Xms256m -Xmx768m")
KAFKA_DIR = STACK_DIR / "kafka"  # server.properties and the log folder (data/)
SCRAM_ITERATIONS = 8192  # of the SCRAM credential of security.KAFKA_USER
MAVEN_UNREACHABLE = "Could not transfer"  # mvn's words for a download that failed
MAVEN_OPTIONS = {  # copy-dependencies options per stack/maven/<name>
    # Connect's own slf4j is shared with plugins; a second copy only warns.
    "debezium": ("-DexcludeArtifactIds=slf4j-api",),
    # A plugin must not bring Kafka's own classes: Connect's would clash with them.
    "apicurio-converter": ("-DexcludeGroupIds=org.apache.kafka",),
}

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


# --------------------------------------------------------------------------- Java


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
    argv = ["mvn", "-B", "-q", "-Dstyle.color=never", "-f", str(pom),
            "dependency:copy-dependencies", "-DincludeScope=runtime",
            f"-DoutputDirectory={target}", *MAVEN_OPTIONS.get(name, ())]
    proc = subprocess.run(
        argv,
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        transfer = next((line for line in output.splitlines() if MAVEN_UNREACHABLE in line), None)
        if transfer is not None:
            raise StackError(
                f"mvn could not download the jars of {pom.relative_to(ROOT)}: is Maven Central "
                f"reachable from here? {transfer.removeprefix('[ERROR]').strip()}\n"
                f"They are downloaded once (into ~/.m2, then {target}): run this again where "
                "Maven Central can be reached.")
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


def java_argv(lib: Path, main_class: str, heap: str, *args: str) -> list[str]:
    """The command line of `main_class` with the jars of `lib` (from `maven_jars()`)."""
    log4j = STACK_DIR / "log4j2.yaml"
    log4j.write_text(LOG4J2)
    return [java(), *heap.split(), "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", str(lib / "*"), main_class, *args]


# --------------------------------------------------------------------------- the broker


def properties() -> Path:
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


def bootstrap() -> str:
    return f"{HOST}:{KAFKA_PORT}"


def admin() -> AdminClient:
    """A quiet admin client on the PLAINTEXT listener (ImportError without
    confluent_kafka: the stack runs before the project is installed)."""
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("stack.kafka-probe")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    return AdminClient({"bootstrap.servers": bootstrap(), "log_level": 0,
                        "logger": quiet})  # type: ignore[dict-item]


def ready() -> bool:
    try:
        client = admin()
    except ImportError:
        return port_open(KAFKA_PORT)
    return bool(client.list_topics(timeout=2).brokers)


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


def command() -> list[str]:
    """The broker's command line, its storage formatted first if new."""
    ensure_port_free("kafka controller", KAFKA_CONTROLLER_PORT, "CR_STACK_KAFKA_CONTROLLER_PORT")
    ensure_port_free("kafka sasl_ssl", security.KAFKA_SASL_PORT, "CR_STACK_KAFKA_SASL_PORT")
    lib = maven_jars("kafka")
    props = properties()
    if not (KAFKA_DIR / "data" / "meta.properties").exists():
        proc = subprocess.run(
            java_argv(lib, "kafka.tools.StorageTool", "-Xmx256m", "format",
                      "-t", kafka_cluster_id(), "-c", str(props)),
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise StackError(
                f"kafka: formatting the KRaft storage failed:\n{proc.stdout}{proc.stderr}")
    return java_argv(lib, "kafka.Kafka", KAFKA_HEAP, str(props))


def ensure_users() -> None:
    """(Re)write the SCRAM credential of `security.KAFKA_USER` (idempotent), through the
    PLAINTEXT listener, once the broker answers."""
    if not port_open(security.KAFKA_SASL_PORT):
        log(f"kafka: no SASL_SSL listener on {HOST}:{security.KAFKA_SASL_PORT}: the broker "
            "was started before it was configured; `python -m stack restart kafka connect` "
            "adds it")
        return
    user, password = security.KAFKA_USER, security.secret(f"kafka-{security.KAFKA_USER}")
    try:
        from confluent_kafka.admin import (  # type: ignore[attr-defined]
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialUpsertion,
        )
    except ImportError:
        _users_with_java(user, password)
        return
    client = admin()
    upsertion = UserScramCredentialUpsertion(
        user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
        password.encode())
    for future in client.alter_user_scram_credentials([upsertion]).values():
        try:
            future.result(timeout=30)
        except Exception as exc:
            raise StackError(f"kafka: could not set the SCRAM credential of {user}: "
                             f"{exc}") from exc


def _users_with_java(user: str, password: str) -> None:
    proc = subprocess.run(
        java_argv(maven_jars("kafka"), "kafka.admin.ConfigCommand", "-Xmx256m",
                  "--bootstrap-server", bootstrap(), "--alter", "--entity-type", "users",
                  "--entity-name", user, "--add-config",
                  f"{security.SASL_MECHANISM}=[iterations={SCRAM_ITERATIONS},"
                  f"password={password}]"),
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StackError(f"kafka: could not set the SCRAM credential of {user}:\n"
                         f"{proc.stderr[-2000:]}")


SERVICE = daemon("kafka", KAFKA_PORT, "CR_STACK_KAFKA_PORT", command, ready, then=ensure_users)
