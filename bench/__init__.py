"""Benchmarks of the reconciler against the local stack (`python -m stack up`).

`python -m bench throughput|latency|backlog|sweep` — see docs/benchmarks.md for what
each measures and how to read the figures. Layout:

- `env`: the stack's endpoints, the worker code under measurement, a worker config per
  run, topics and shards.
- `events`: the workload (seeded) and the Debezium envelope it is written in;
  `producer`: writing it into Kafka, in bulk or paced.
- `cache`: pre-population through the writer helper, and the expected results.
- `runner`: one measured consumer (ceiling, `naive` or our worker) in a process of its
  own, counting with a `meter`; `process`: starting runners, alone or as a `group` in
  one consumer group; `probe`: watching keys for their fence.
- `harness`: a topic of the workload and measurements on it, shared by `throughput`
  and `sweep`; `servers`: Valkey servers of a benchmark's own.
- `throughput`, `latency`, `backlog`, `sweep` (over `dimensions`, drawn by `plot`):
  the benchmarks; `report`, `profile`: results files, tables, percentiles and profile
  summaries.
"""
