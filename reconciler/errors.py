"""The reconciler's errors, and what the worker does with each.

The packages below the reconciler raise their own errors (``connectors.errors``,
``shard_map.errors``); the reconciler translates them at its boundary into one tree::

    ReconcilerError
    ├── ConfigError              bad config file or environment: start-up stops and the
    │                            message names the file, the field and the problem
    ├── PoisonRecordError        a record that can never be processed (undecodable,
    │   │                        unknown op, unconfigured table with unknown_tables=error,
    │   │                        oversized, neighbourhood outside every shard range):
    │   │                        dead-lettered with its reason, processing moves on
    │   └── (carries ``reason``: a low-cardinality label for the metric and the header)
    ├── TransientError           Valkey or Kafka unavailable (connection refused/reset,
    │   │                        timeout, failover, broker down): retried with backoff
    │   │                        inside a budget; past it, RetryBudgetExceeded
    │   └── RetryBudgetExceeded  the worker stops without storing the offsets of the
    │                            failed batch, and exits non-zero (Kubernetes restarts it)
    └── FatalError               the server refused us (ACL, wrong password, OOM) or the
                                 dead-letter topic refused a record: no retry can help;
                                 the worker stops without storing offsets, exits non-zero

Messages say what, where (``topic[partition]@offset``, the config field, the shard)
and what to do.
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """Root of every error the reconciler raises on purpose."""


class ConfigError(ReconcilerError):
    """The configuration file or environment is invalid."""


class PoisonRecordError(ReconcilerError):
    """A record that can never be processed: it goes to the dead-letter topic."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # low-cardinality label: metric and dead-letter header
        self.message = message


class TransientError(ReconcilerError):
    """A dependency is unavailable for now; the operation is retried."""


class RetryBudgetExceeded(TransientError):
    """A transient error outlasted the retry budget."""


class FatalError(ReconcilerError):
    """An error no retry can fix: the worker stops without storing offsets."""
