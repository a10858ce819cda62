"""The local stack's generated identifiers are safe to pass on a command line."""

import base64

from stack.kafka import kafka_cluster_id


def test_kafka_cluster_id_never_reads_as_an_option() -> None:
    # One draw in 64 used to start with "-", which the storage tool took for an option.
    ids = [kafka_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    for cluster_id in ids[:50]:
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
