"""The edges of cache-reconciler: Debezium, Kafka, Valkey and Postgres clients.

Never imports `reconciler` or `shard_map` (pinned by import-linter).
"""
