"""The pipeline: from Kafka records to acknowledged invalidations and stored offsets.

`worker.Worker` is the group member that drives a `pipeline.Pipeline`; `compose`
builds their parts; `batch` decodes and plans a batch (`planner` is the pure decision
per event); `invalidator` runs a batch's actions on the `shards`; `deadletter` keeps
the records that cannot be processed; `hooks` and `faults` are the observation and
fault points; `testing` holds the in-memory source for unit tests.
"""
