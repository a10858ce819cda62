"""Record real Debezium events into ``tests/fixtures/debezium/``.

``python -m stack.capture`` (the stack must be up: ``python -m stack up``):

1. seeds one row in each of posts, comments and profiles (the initial snapshot's
   ``op: r`` events);
2. registers two temporary connectors derived from ``stack/connect/nd-postgres.json``:
   topic prefix ``capjson`` (JSON converter, ``schemas.enable=true``) and ``capbare``
   (``schemas.enable=false``), each with its own replication slot, on the same
   publication, and waits until both run and have finished their snapshot;
3. runs a scripted workload covering every event shape of SPEC section 3, one
   transaction per step;
4. reads every topic of each prefix from the beginning, keeps the records this run
   caused (by transaction id and seeded key: other tests may write concurrently),
   orders them as the workload ran, checks that every shape is present (failing
   loudly otherwise) and writes ``schemas_true.jsonl`` / ``schemas_false.jsonl`` (the
   input format of ``reconciler plan``) and a generated ``README.md``;
5. always (``finally``) stops the connectors, resets their offsets, deletes them,
   drops their replication slots (as the superuser: a leftover slot retains WAL
   forever), deletes their topics and the rows the run created.

Modules, from the bottom: ``records`` (the fixture files, `Record`, the payload's
fields), ``topics`` and ``debezium`` (the capture's topics, connectors and slots),
``workload`` (the SQL it runs), ``order`` (which records, in which order),
``checks`` (one check per event shape), ``readme`` and ``run`` (start to end).
"""
