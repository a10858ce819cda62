"""Observability: the metrics bundle, the metrics port (health, readiness,
freshness), the freshness watermarks, consumer lag and retention gaps."""
