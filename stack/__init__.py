"""The project's local stack (Postgres, Kafka, Kafka Connect + Debezium, Valkey):
``python -m stack up|down|restart|status|env [service ...]``.

Modules, each importing only those below it (import-linter pins it):

- ``__main__``, ``capture/``: the command line; recording the Debezium fixtures.
- ``services``: the services in start order; up, down, restart, status, endpoints.
- ``apicurio``: the schema registry (on demand) and the Avro connector writing through it.
- ``connect``: Kafka Connect and the Debezium connector; ``valkey_cluster``: a Valkey
  Cluster of six nodes, and the helpers that fail and move them.
- ``postgres``, ``kafka``, ``valkey``: one server each (valkey: the shards, valkey-acl
  and valkey-tls); kafka also the Java side Connect shares.
- ``security``, ``toxiproxy``: the secured side's configuration and secrets; the fault
  suite's network proxy.
- ``process``: the stack's folders, its error, spawning, waiting for and stopping a
  server, ports.
"""
