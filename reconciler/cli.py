"""The `reconciler` command line (also `python -m reconciler`).

Exit codes: 0 done, 1 bad input or a failed check, 2 a dependency failed at run time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
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
                           "\"key\", \"value\", \"headers\"}")
    plan.set_defaults(handler=cmd_plan)

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
    from reconciler.worker import run_worker

    return run_worker(_settings(args))


# --------------------------------------------------------------------------- plan


def cmd_plan(args: argparse.Namespace) -> int:
    from connectors.debezium.decode import Decoder
    from reconciler.planner import DeadLetter, Planner, plan_record
    from shard_map import ShardMapError, load_shard_map

    settings = load_settings(args.config)
    configure_logging("WARNING", settings.logging.format == "json")
    try:
        shard_map = load_shard_map(settings.shard_map)
    except ShardMapError as exc:
        raise ConfigError(f"shard_map: {exc}") from exc
    planner = Planner(settings.tables, shard_map,
                      unknown_tables_error=settings.unknown_tables == "error")
    decoder = Decoder(heartbeat_prefix=settings.kafka.heartbeat_topic_prefix)
    try:
        source: IO[str] = args.input.open(encoding="utf-8") if args.input else sys.stdin
    except OSError as exc:
        print(f"reconciler plan: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return 1
    bad_lines = 0
    out = sys.stdout
    with source:
        for number, record in _records(source):
            if isinstance(record, str):
                bad_lines += 1
                out.write(json.dumps({"line": number, "error": record}) + "\n")
                continue
            topic, key, value, partition, offset = record
            result = plan_record(decoder, planner, settings.max_event_bytes, topic,
                                 partition, offset, key, value)
            if isinstance(result, DeadLetter):
                line: dict[str, Any] = {"topic": topic, "dead_letter": result.message,
                                        "reason": result.reason}
            else:
                line = result.as_json()
            out.write(json.dumps(line) + "\n")
    out.flush()
    if bad_lines:
        print(f"reconciler plan: {bad_lines} input line(s) were not records "
              "(see the `error` lines)", file=sys.stderr)
    return 1 if bad_lines else 0


Record = tuple[str, bytes | None, bytes | None, int, int]


def _records(lines: IO[str]) -> Iterator[tuple[int, Record | str]]:
    """(line number, input record), or an error string for a line that is not one."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield number, f"input line {number} is not JSON: {exc}"
            continue
        if not isinstance(item, dict) or not isinstance(item.get("topic"), str):
            yield number, f"input line {number}: expected an object with a string `topic`"
            continue
        fields = []
        for name in ("key", "value"):
            text = item.get(name)
            if text is not None and not isinstance(text, str):
                yield number, (f"input line {number}: `{name}` must be a string (the raw "
                               "record) or null")
                break
            try:
                fields.append(None if text is None else text.encode("utf-8", "surrogateescape"))
            except UnicodeEncodeError as exc:  # a lone surrogate no raw byte escapes to
                yield number, f"input line {number}: `{name}` cannot be encoded: {exc.reason}"
                break
        else:
            partition = item.get("partition", 0)
            offset = item.get("offset", number - 1)
            yield number, (item["topic"], fields[0], fields[1],
                           partition if isinstance(partition, int) else 0,
                           offset if isinstance(offset, int) else number - 1)


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
