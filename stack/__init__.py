"""The project's local stack (Postgres, Kafka, Kafka Connect + Debezium, Valkey)."""
