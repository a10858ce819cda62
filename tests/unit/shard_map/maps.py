"""Shard map documents shared by the shard_map tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shard_map import ShardMapError, validate_document

# The file name every validation test reports against.
PATH = "maps/shard_map.yaml"

# The example of SPEC §4, as YAML text.
EXAMPLE_YAML = """\
version: 7                      # exported as a metric
shards:
  a: {url: "valkey://127.0.0.1:6379/0"}
  b: {url: "valkey://127.0.0.1:6380/0"}
ranges:                         # inclusive neighbourhood-id ranges
  - {from: 1,   to: 500,  shard: a}
  - {from: 501, to: 1000, shard: b}
moving:                         # neighbourhoods being migrated: invalidate on both
  - {from: 400, to: 450, source: a, target: b}
default: null                   # shard for ids outside every range; null = dead-letter
"""


def example() -> dict[str, Any]:
    """The SPEC example as parsed data, a fresh copy each call (tests mutate it)."""
    return copy.deepcopy(
        {
            "version": 7,
            "shards": {
                "a": {"url": "valkey://127.0.0.1:6379/0"},
                "b": {"url": "valkey://127.0.0.1:6380/0"},
            },
            "ranges": [
                {"from": 1, "to": 500, "shard": "a"},
                {"from": 501, "to": 1000, "shard": "b"},
            ],
            "moving": [{"from": 400, "to": 450, "source": "a", "target": "b"}],
            "default": None,
        }
    )


def problems(doc: object) -> tuple[str, ...]:
    """The problems `validate_document` finds in `doc`; fails the test if it finds none."""
    with pytest.raises(ShardMapError) as info:
        validate_document(doc, PATH)
    error = info.value
    assert error.path == PATH
    assert PATH in str(error)
    for problem in error.problems:
        assert problem in str(error)
    return error.problems


def only_problem(doc: object) -> str:
    """The single problem in `doc`."""
    found = problems(doc)
    assert len(found) == 1, found
    return found[0]
