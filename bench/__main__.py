"""`python -m bench KIND [options]`, KIND one of throughput, latency, backlog, planning,
decode, sweep, shards, wakeups (see docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.env import Endpoints
from bench.report import RESULTS_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR,
                        help="where results are written (default: bench/results)")
    sub = parser.add_subparsers(dest="kind", required=True)

    tp = sub.add_parser("throughput", help="ceiling vs naive vs our worker, same data")
    tp.add_argument("--events", type=int, default=500_000, help="Kafka records (default 500k)")
    tp.add_argument("--keys", type=int, default=100_000, help="rows at the start")
    tp.add_argument("--partitions", type=int, default=6)
    tp.add_argument("--envelope", choices=("schema", "bare"), default="schema",
                    help="JSON converter schemas.enable true (the local connector) or false")
    tp.add_argument("--compression", default="lz4", help="producer compression.type")
    tp.add_argument("--naive-events", type=int, default=20_000)
    tp.add_argument("--naive-seconds", type=float, default=60.0)
    tp.add_argument("--runs", type=int, default=1, help="repeat the measurements N times")
    tp.add_argument("--profile", choices=("pyinstrument", "py-spy"), action="append",
                    default=[], help="one more worker run under this profiler (repeatable)")
    tp.add_argument("--seed", type=int, default=1)
    tp.add_argument("--keep-topic", action="store_true")
    tp.add_argument("--peer", choices=("camel",), action="append", default=[],
                    help="also measure this peer beside the worker (repeatable; its runtime "
                         "is downloaded the first time): camel, Apache Camel 4.17.0")

    lat = sub.add_parser("latency", help="Kafka append -> invalidated, and Postgres commit -> "
                                         "invalidated, at fixed offered rates")
    lat.add_argument("--rates", default="100,1000,5000,20000",
                     help="records/s, comma-separated")
    lat.add_argument("--seconds", type=float, default=20.0, help="per rate")
    lat.add_argument("--idle-seconds", type=float, default=20.0,
                     help="how long the idle worker's CPU is measured (0: skip it)")
    lat.add_argument("--debezium-rate", type=float, default=300.0,
                     help="Postgres updates/s for the Debezium run (0: skip it)")
    lat.add_argument("--debezium-seconds", type=float, default=20.0)

    bl = sub.add_parser("backlog", help="catch-up time and RSS over a backlog")
    bl.add_argument("--events", type=int, default=1_000_000)
    bl.add_argument("--keys", type=int, default=100_000)
    bl.add_argument("--partitions", type=int, default=6)
    bl.add_argument("--compression", default="lz4")
    bl.add_argument("--seed", type=int, default=1)

    plan = sub.add_parser("planning", help="the worst-case time to plan one record: "
                          "recorded, largest accepted, hostile (no stack needed)")
    plan.add_argument("--repeat", type=int, default=5, help="runs per record (min is shown)")
    plan.add_argument("--limit", type=float, default=20.0,
                      help="seconds after which a record is stopped and larger ones skipped")
    plan.add_argument("--case", action="append", default=None,
                      help="only this case (repeatable; default: all)")

    dec = sub.add_parser("decode", help="the decode cost per record, Avro and flattened "
                         "beside JSON, on the recorded workload (no stack needed)")
    dec.add_argument("--rounds", type=int, default=7, help="timed rounds (the median is shown)")

    sw = sub.add_parser("sweep", help="how cost grows: the worker's CPU per event and "
                        "events/s against partitions, shards, keys per event, event size "
                        "and workers in a group, each point with its ceiling; JSON and a PNG")
    sw.add_argument("--dimension", action="append", default=None,
                    help="partitions, shards, keys, size or workers (repeatable; default: "
                         "all five)")
    sw.add_argument("--points", action="append", default=None,
                    help="comma-separated values for the --dimension in the same position "
                         "(default: 6,12,24,48,96 partitions; 2,4,8,16 shards; 1,2,4,8 "
                         "keys; 1,4,16,64 KB; 1,2,3 workers)")
    sw.add_argument("--events", type=int, default=200_000, help="Kafka records per point")
    sw.add_argument("--keys", type=int, default=100_000, help="rows at the start")
    sw.add_argument("--max-topic-mb", type=int, default=2000,
                    help="fewer records where a point's values would pass this")
    sw.add_argument("--runs", type=int, default=1, help="measurements per point")
    sw.add_argument("--flag-factor", type=float, default=1.5,
                    help="growth beyond this times the work per event's is super-linear")
    sw.add_argument("--seed", type=int, default=1)

    sk = sub.add_parser("shards", help="shard kinds: the worker's events/s and CPU per event "
                        "with shard b on a Valkey Cluster beside standalone shards, each "
                        "with and without WAIT (wait: {replicas: 1}), each with its ceiling")
    sk.add_argument("--events", type=int, default=200_000,
                    help="Kafka records (default 200k, as a sweep point)")
    sk.add_argument("--keys", type=int, default=100_000, help="rows at the start")
    sk.add_argument("--runs", type=int, default=1,
                    help="measurements of every layout (medians and spread over them)")
    sk.add_argument("--seed", type=int, default=1)

    wk = sub.add_parser("wakeups", help="a batch's CPU against the sleep before it: the "
                        "pipeline in-process on the stack's Valkeys, no Kafka")
    wk.add_argument("--batch", type=int, default=20, help="records per batch (default 20: "
                    "a 32 KB fetch of the latency benchmark's records)")
    wk.add_argument("--batches", type=int, default=200, help="batches per point")
    wk.add_argument("--rounds", type=int, default=5, help="rounds over the gaps (medians)")

    for command in (tp, lat, bl, sw, sk):
        command.add_argument("--worker-client", metavar="PROPERTY=VALUE", action="append",
                             default=[], help="an extra librdkafka property in the worker's "
                             "kafka.client (and the ceiling with the worker's settings); "
                             "repeatable")
    for command in (tp, lat, bl, plan, sw, sk):
        command.add_argument("--worker-ref", metavar="GIT_REF",
                             help="measure the worker code of this commit (extracted with "
                                  "git archive) instead of the working tree")
    args = parser.parse_args(argv)
    if args.kind == "planning":
        from bench.planning import run_planning

        run_planning(worker_ref=args.worker_ref, repeat=args.repeat, limit=args.limit,
                     out_dir=args.out_dir, cases=args.case)
        return 0
    if args.kind == "decode":
        from bench.decode import run_decode

        run_decode(args.rounds, args.out_dir)
        return 0
    endpoints = Endpoints.load()
    if args.kind == "wakeups":
        from bench.wakeups import run_wakeups

        run_wakeups(endpoints, batch=args.batch, batches=args.batches, rounds=args.rounds,
                    out_dir=args.out_dir)
        return 0
    if args.kind == "throughput":
        from bench.throughput import Options, run_throughput

        run_throughput(endpoints, Options(
            events=args.events, keys=args.keys, partitions=args.partitions,
            schemas=args.envelope == "schema", compression=args.compression,
            naive_records=args.naive_events, naive_seconds=args.naive_seconds, runs=args.runs,
            seed=args.seed, profile=tuple(args.profile), keep_topic=args.keep_topic,
            worker_ref=args.worker_ref,
            worker_client=dict(item.split("=", 1) for item in args.worker_client),
            peers=tuple(args.peer)),
            args.out_dir)
    elif args.kind == "latency":
        from bench.latency import LatencyOptions, run_latency

        run_latency(endpoints, LatencyOptions(
            rates=tuple(float(r) for r in args.rates.split(",") if r),
            seconds=args.seconds, idle_seconds=args.idle_seconds,
            debezium_rate=args.debezium_rate,
            debezium_seconds=args.debezium_seconds, worker_ref=args.worker_ref,
            worker_client=dict(item.split("=", 1) for item in args.worker_client)),
            args.out_dir)
    elif args.kind == "sweep":
        from bench.dimensions import choose
        from bench.sweep import SweepOptions, run_sweep

        try:
            dimensions = choose(args.dimension, args.points)
        except ValueError as exc:
            parser.error(str(exc))
        run_sweep(endpoints, SweepOptions(
            dimensions=dimensions, events=args.events, keys=args.keys,
            max_topic_mb=args.max_topic_mb, runs=args.runs, seed=args.seed,
            flag_factor=args.flag_factor, worker_ref=args.worker_ref,
            worker_client=dict(item.split("=", 1) for item in args.worker_client)),
            args.out_dir)
    elif args.kind == "shards":
        from bench.shard_kinds import ShardKindOptions, run_shard_kinds

        run_shard_kinds(endpoints, ShardKindOptions(
            events=args.events, keys=args.keys, runs=args.runs, seed=args.seed,
            worker_ref=args.worker_ref,
            worker_client=dict(item.split("=", 1) for item in args.worker_client)),
            args.out_dir)
    else:
        from bench.backlog import BacklogOptions, run_backlog

        run_backlog(endpoints, BacklogOptions(
            events=args.events, keys=args.keys, partitions=args.partitions,
            compression=args.compression, seed=args.seed, worker_ref=args.worker_ref,
            worker_client=dict(item.split("=", 1) for item in args.worker_client)),
            args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
