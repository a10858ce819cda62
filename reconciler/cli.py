"""The `reconciler` command line (also `python -m reconciler`).

Exit codes: 0 done, 1 bad input or a failed check, 2 a dependency failed at run time,
130 interrupted, 141 the reader of stdout went away (`reconciler plan ... | head`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from reconciler import __version__
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.logs import configure_logging
from reconciler.settings import CONFIG_ENV, DEFAULT_CONFIG, Settings, load_settings

log = logging.getLogger("reconciler")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"reconciler: configuration error: {exc}", file=sys.stderr)
        return 1
    except ReconcilerError as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of stdout is gone (`| head`): end quietly, as Unix tools do. Point
        # stdout at /dev/null so that the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a process killed by it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Keeps a Valkey look-aside cache honest from Debezium change events.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_arg(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("-c", "--config", default=None,
                         help=f"config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG})")

    run = commands.add_parser("run", help="the long-running worker")
    config_arg(run)
    run.set_defaults(handler=cmd_run)

    plan = commands.add_parser(
        "plan", help="dry run: print the cache actions each recorded event causes, one JSON "
                     "line per record; touches nothing")
    config_arg(plan)
    plan.add_argument("--input", type=Path, default=None,
                      help="JSONL file of records (default: stdin); each line {\"topic\", "
                           "\"key\", \"value\", \"headers\"}, binary records (Avro) with "
                           "\"key_b64\"/\"value_b64\" (base64) instead")
    plan.set_defaults(handler=cmd_plan)

    add_operations_commands(commands, config_arg)

    shard_map = commands.add_parser("shard-map", help="validate a shard map, or look up an id")
    shard_commands = shard_map.add_subparsers(dest="shard_command", required=True)
    check = shard_commands.add_parser("check", help="validate a shard map file")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=cmd_shard_map_check)
    lookup = shard_commands.add_parser("lookup", help="say where a neighbourhood lives")
    lookup.add_argument("file", type=Path)
    lookup.add_argument("id", type=int)
    lookup.set_defaults(handler=cmd_shard_map_lookup)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    configure_logging(settings.logging.level, settings.logging.format == "json")
    return settings


# --------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    from reconciler.pipeline.worker import run_worker

    return run_worker(_settings(args))


# --------------------------------------------------------------------------- plan


def cmd_plan(args: argparse.Namespace) -> int:
    from reconciler.ops.plan_input import read_records
    from reconciler.pipeline.batch import DeadLetter, plan_record
    from reconciler.pipeline.decoders import build_decoder
    from reconciler.pipeline.planner import Planner
    from shard_map import ShardMapError, load_shard_map

    settings = load_settings(args.config)
    configure_logging("WARNING", settings.logging.format == "json")
    try:
        shard_map = load_shard_map(settings.shard_map)
    except ShardMapError as exc:
        raise ConfigError(f"shard_map: {exc}") from exc
    planner = Planner.for_settings(settings, shard_map)
    decoder = build_decoder(settings, planner.columns)  # as the worker decodes
    try:
        source: IO[str] = args.input.open(encoding="utf-8") if args.input else sys.stdin
    except OSError as exc:
        print(f"reconciler plan: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return 1
    bad_lines = 0
    out = sys.stdout
    with source:
        for number, record in read_records(source):
            if isinstance(record, str):
                bad_lines += 1
                out.write(json.dumps({"line": number, "error": record}) + "\n")
                continue
            topic, key, value, partition, offset = record
            result = plan_record(decoder, planner, settings.max_event_bytes, topic,
                                 partition, offset, key, value)
            line = result.as_json(topic) if isinstance(result, DeadLetter) else result.as_json()
            out.write(json.dumps(line) + "\n")
    out.flush()
    if bad_lines:
        print(f"reconciler plan: {bad_lines} input line(s) were not records "
              "(see the `error` lines)", file=sys.stderr)
    return 1 if bad_lines else 0


# --------------------------------------------------------------------------- shard-map


def cmd_shard_map_check(args: argparse.Namespace) -> int:
    from shard_map import ShardMapError, load_shard_map

    try:
        shard_map = load_shard_map(args.file)
    except ShardMapError as exc:
        print(f"{exc}", file=sys.stderr)
        return 1
    print(f"{args.file}: OK — version {shard_map.version}, shards "
          f"{', '.join(shard_map.shard_names())}")
    return 0


def cmd_shard_map_lookup(args: argparse.Namespace) -> int:
    from shard_map import ShardMapError, ShardResolutionError, load_shard_map

    try:
        shard_map = load_shard_map(args.file)
    except ShardMapError as exc:
        print(f"{exc}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(shard_map.describe(args.id)))
    except ShardResolutionError as exc:
        print(f"{exc}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- replay, audit, doctor


def add_operations_commands(commands: Any, config_arg: Any) -> None:
    """The day-2 commands: replay, audit, doctor (see docs/operations.md)."""
    replay = commands.add_parser(
        "replay", help="backfill: re-process a topic range with its own consumer group",
        description="Re-process the change topics from --from to --to (the end offsets seen "
                    "at start by default) through the worker's own decode/plan/invalidate "
                    "path, under a consumer group of its own. Exit 0 when done, 130 when "
                    "stopped early (the command to resume is printed), 2 on failure.")
    config_arg(replay)
    replay.add_argument("--from", dest="start", required=True,
                        metavar="TIME|earliest|T:P:O[,…]",
                        help="where to start: `earliest`, an ISO 8601 time (UTC unless an "
                             "offset is given; looked up per partition by record "
                             "timestamp), or topic:partition:offset pairs (only those "
                             "partitions are replayed)")
    replay.add_argument("--to", dest="end", default="now", metavar="TIME|now|T:P:O[,…]",
                        help="where to stop (exclusive): `now` = the end offsets seen at "
                             "start (default), an ISO 8601 time, or topic:partition:offset "
                             "pairs")
    replay.add_argument("--rate", type=float, default=None, metavar="N",
                        help="at most N records per second (token bucket); 0 = no limit")
    replay.add_argument("--dry-run", action="store_true",
                        help="plan and count the actions by table, shard and kind; touch "
                             "neither Valkey nor the dead-letter topic")
    replay.add_argument("--topic", dest="topics", action="append", default=None,
                        metavar="TOPIC", help="replay only this configured topic (repeatable)")
    replay.add_argument("--group", default=None,
                        help="consumer group (default: <kafka.group_id>.replay.<UTC time>)")
    replay.add_argument("--json", action="store_true",
                        help="print the report as one JSON object on stdout")
    replay.add_argument("--progress-interval", type=float, default=10.0, metavar="SECONDS",
                        help="seconds between progress log lines when not on a terminal")
    replay.set_defaults(handler=cmd_replay)

    audit = commands.add_parser(
        "audit", help="compare cache entries with Postgres: fresh / stale / orphan counts",
        description="Read-only unless --repair. Exit 0 when nothing stale, orphaned or "
                    "ahead of Postgres remains, 1 when something does, 2 when Valkey or "
                    "Postgres failed (an ACL refusal names the command to grant).")
    config_arg(audit)
    audit.add_argument("--table", dest="tables", action="append", default=None,
                       metavar="SCHEMA.TABLE", help="audit this table (repeatable; default: "
                                                    "every configured table)")
    audit.add_argument("--sample", type=int, default=None, metavar="N",
                       help="look at N random entries per key template and shard instead of "
                            "scanning them all")
    audit.add_argument("--repair", action="store_true",
                       help="apply the reconciler's protocol to what is found: a versioned "
                            "op at the row's version for stale entries, a delete for orphans "
                            "and entries ahead of Postgres")
    audit.add_argument("--json", action="store_true",
                       help="print the summary as one JSON object on stdout")
    audit.add_argument("--rows-per-second", type=float, default=None, metavar="N",
                       help="at most N rows read from Postgres per second (default 5000)")
    audit.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                       help="re-check stale/orphan candidates after this long, so changes "
                            "in flight are not reported (default 2; 0 = no re-check)")
    audit.add_argument("--metrics-file", type=Path, default=None, metavar="PATH",
                       help="write the result for the node-exporter textfile collector "
                            "(reconciler_audit_entries{table,state}, "
                            "reconciler_audit_last_run_timestamp_seconds)")
    audit.add_argument("--pushgateway", default=None, metavar="URL",
                       help="push the same metrics to a Prometheus Pushgateway "
                            "(job cache-reconciler-audit)")
    audit.set_defaults(handler=cmd_audit)

    doctor = commands.add_parser(
        "doctor", help="preflight checklist: Kafka, shards, Postgres, the Debezium connector",
        description="One line per check: OK / WARN / FAIL <check>: <detail> — <what to do>. "
                    "Exit 0 unless something FAILs (1).")
    config_arg(doctor)
    doctor.add_argument("--json", action="store_true",
                        help="print the checks as one JSON object on stdout")
    doctor.add_argument("--max-retained-wal-mb", type=float, default=1024.0, metavar="MB",
                        help="WARN when the replication slot retains more WAL than this "
                             "(default 1024)")
    doctor.set_defaults(handler=cmd_doctor)


def cmd_replay(args: argparse.Namespace) -> int:
    import signal

    from reconciler.ops.replay import Replay, parse_bound, resume_command

    settings = _settings(args)
    try:
        start = parse_bound(args.start, start=True)
        end = parse_bound(args.end, start=False)
    except ValueError as exc:
        print(f"reconciler replay: {exc}", file=sys.stderr)
        return 1
    replay = Replay(settings, start=start, end=end, rate=args.rate, dry_run=args.dry_run,
                    group_id=args.group, topics=args.topics,
                    progress_interval=args.progress_interval)

    def stop(signum: int, _frame: Any) -> None:
        log.warning("%s: finishing the batch in flight, then stopping",
                    signal.Signals(signum).name)
        replay.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = replay.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    resume = (resume_command(args.config, report, rate=args.rate, dry_run=args.dry_run)
              if report.remaining() else None)
    print(json.dumps(report.as_json() | {"resume": resume}) if args.json else report.text())
    if report.error:
        print(f"reconciler replay: {report.error}", file=sys.stderr)
    if resume:
        print(f"reconciler replay: stopped before the end; to resume run:\n  {resume}",
              file=sys.stderr)
    if report.error:
        return 2
    return 130 if report.interrupted else 0


def cmd_audit(args: argparse.Namespace) -> int:
    from reconciler.ops.audit import DEFAULT_GRACE_SECONDS, DEFAULT_ROWS_PER_SECOND, run_audit

    settings = _settings(args)
    if args.sample is not None and args.sample < 1:
        print("reconciler audit: --sample must be at least 1", file=sys.stderr)
        return 1
    report = run_audit(
        settings, tables=args.tables, sample=args.sample, repair=args.repair,
        rows_per_second=args.rows_per_second or DEFAULT_ROWS_PER_SECOND,
        grace_seconds=DEFAULT_GRACE_SECONDS if args.grace is None else args.grace)
    if args.metrics_file is not None or args.pushgateway:
        from prometheus_client import push_to_gateway, write_to_textfile

        registry = report.registry()
        if args.metrics_file is not None:
            write_to_textfile(str(args.metrics_file), registry)
        if args.pushgateway:
            try:
                push_to_gateway(args.pushgateway, job="cache-reconciler-audit",
                                registry=registry, timeout=10)
            except OSError as exc:
                print(f"reconciler audit: pushing to {args.pushgateway} failed: {exc}",
                      file=sys.stderr)
                return 2
    print(json.dumps(report.as_json()) if args.json else report.text())
    verdict = report.verdict()
    for text in verdict:
        print(f"reconciler audit: {text}", file=sys.stderr)
    return 1 if verdict else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from reconciler.ops.doctor import run_doctor
    from reconciler.ops.doctor.checklist import FAIL, OK, WARN

    settings = load_settings(args.config)
    configure_logging("ERROR", settings.logging.format == "json")  # the checklist says it all
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # an unreachable broker is a FAIL line
    checks = run_doctor(settings,
                        max_retained_wal_bytes=int(args.max_retained_wal_mb * 1024 * 1024))
    counts = {status: sum(1 for c in checks if c.status == status) for status in (OK, WARN, FAIL)}
    if args.json:
        print(json.dumps({"checks": [c.as_json() for c in checks], "counts": counts,
                          "ok": counts[FAIL] == 0}))
    else:
        for check in checks:
            print(check.line())
        print(f"doctor: {counts[OK]} OK, {counts[WARN]} WARN, {counts[FAIL]} FAIL")
    return 1 if counts[FAIL] else 0
