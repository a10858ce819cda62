"""Benchmarks of the reconciler against the local stack (`python -m stack up`).

`python -m bench throughput|latency|backlog` — see docs/benchmarks.md for what each
measures and how to read the figures. Layout:

- `env`: the stack's endpoints, the worker code under measurement, a worker config per
  run, topics and shards.
- `events`: the workload (seeded) and the Debezium envelope it is written in;
  `producer`: writing it into Kafka, in bulk or paced.
- `cache`: pre-population through the writer helper, and the expected results.
- `runner`: one measured consumer (ceiling, naive or our worker) in a process of its
  own; `process`: starting runners; `probe`: watching keys for their fence.
- `throughput`, `latency`, `backlog`: the benchmarks; `report`, `profile`: results
  files, tables, percentiles and profile summaries.
"""
