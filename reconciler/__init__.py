"""cache-reconciler: keeps a Valkey look-aside cache honest from Debezium change events."""

__version__ = "0.1.0"
