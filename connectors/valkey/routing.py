"""Calls routed by hash slot to a cluster's primaries, and the redirections they meet.

A `Call` is one command whose keys share one slot. `Round` writes every node's calls
as ONE pipelined write per node — every node written before any answer is read, so
the nodes work in parallel — and `Round.read()` takes each call's answer once, from
the node that answered it. What a node answers instead of running a call sends that
call (only that one) to another round:

- ``MOVED slot host:port``: the slot lives elsewhere now (a resharding finished, a
  failover); the slot map is patched and read again, the call goes to the new owner.
  Nothing ran.
- ``ASK slot host:port``: the slot is being migrated and the call's keys are not on
  the source (any more): the call goes to the target, preceded by ASKING. Nothing ran.
- ``TRYAGAIN``: a call of several keys of a migrating slot found some of them on each
  side; nothing ran. It is split (`Call.split`) into one call per op, sent to the
  slot's owner again — each then runs on the source or follows an ASK — so a migration
  that takes a while never holds the caller up; a call that cannot be split waits
  `TRYAGAIN_WAIT` first.
- "Function not found" (a promoted replica, a new node, FUNCTION FLUSH): the library is
  loaded on that node, once per node per `run`, and the call sent again. Nothing ran.
- "Script attempted to access a non local key": the call ran on the source of a slot
  being migrated, and stopped halfway — a function that replaces a key's value deletes
  it and writes it again, and the source refuses a script access to a key it no longer
  holds. What ran before stays (a script is not rolled back). `Call.recover` says what
  to send instead (`ClusterShard`: one op a call, or the rest of a lone op). The slot is
  remembered as migrating (`Topology.mark_migrating`) so the next calls there are sent
  one op each, which can always be told apart.

Every other answer, error or not, is the call's answer. A connection that fails
(refused, reset, timed out) ends the run with `Lost`: whatever was sent may or may not
have run, so the caller retries the whole operation (every cache op is idempotent).
Since a call's answer is taken only from a node that ran it, and a redirected call
never ran, no action is ever counted twice.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from valkey import exceptions as vx

from connectors.errors import ValkeyShardError, ValkeyUnavailable
from connectors.valkey.commands import WaitFor
from connectors.valkey.functions import Library, is_missing_function, load_functions, translate
from connectors.valkey.topology import Topology

log = logging.getLogger(__name__)

MAX_ROUNDS = 16  # rounds of redirections before a run gives up (as valkey-py's TTL)
TRYAGAIN_WAIT = 0.05  # seconds before re-sending a call that cannot be split
_ASKING = (b"ASKING",)  # sent before a call redirected by ASK
NON_LOCAL = "Script attempted to access a non local key"  # a script stopped halfway
# Answers of a call that did not run at all (nothing for a WAIT to wait for).
_NOT_RUN = ("MOVED ", "ASK ", "TRYAGAIN", "Function not found", "NOSCRIPT", "CLUSTERDOWN")


@dataclass(slots=True, eq=False)
class Call:
    """One command whose keys all hash to `slot`. `tag` is the caller's (which of its
    keys the call holds); `split`, if given, makes one call per key of it."""

    slot: int
    args: tuple[Any, ...]
    tag: Any = None
    split: Callable[[Call], list[Call]] | None = None
    node: str | None = None  # an ASK target; None: the slot's owner
    asking: bool = False
    reply: Any = None
    parts: list[Call] | None = None  # split after TRYAGAIN: the answers are theirs
    # Sent again after the script stopped halfway (non local key): the calls to send.
    recover: Callable[[Call], list[Call]] | None = None
    known: Any = None  # the answer already known; the reply only confirms it ran


def answered(calls: Sequence[Call]) -> list[Call]:
    """The calls that hold the answers: `calls`, each split one replaced by its parts."""
    out: list[Call] = []
    for call in calls:
        if call.parts is None:
            out.append(call)
        else:
            out += answered(call.parts)
    return out


class Lost(Exception):
    """A connection failed during a round: what was sent may or may not have run."""

    def __init__(self, error: ValkeyShardError) -> None:
        super().__init__(str(error))
        self.error = error


class Round:
    """`calls` written to their nodes (one pipelined write each); `read()` takes the
    answers. With `wait`, each node's write ends with WAIT (or WAITAOF)."""

    def __init__(self, topology: Topology, calls: Sequence[Call], *,
                 wait: WaitFor | None = None, stats: Counter[str] | None = None) -> None:
        self._topology = topology
        self._wait = wait
        self._stats: Counter[str] = Counter() if stats is None else stats
        self._sent: list[tuple[str, Any, list[Call], int]] = []  # node, connection, calls, n
        self.failure: ValkeyShardError | None = None  # set: nothing can be read
        by_node: dict[str, list[Call]] = {}
        try:
            for call in calls:
                by_node.setdefault(call.node or topology.node_of(call.slot), []).append(call)
        except ValkeyShardError as error:
            self.failure = error
            return
        for node, node_calls in by_node.items():
            commands: list[tuple[Any, ...]] = []
            for call in node_calls:
                if call.asking:
                    commands.append(_ASKING)
                commands.append(call.args)
            if wait is not None:
                commands.append(wait.command())
            pool = topology.pool(node)
            connection: Any = None
            try:
                connection = pool.get_connection("FCALL")
                connection.send_packed_command(connection.pack_commands(commands))
            except (vx.ValkeyError, OSError) as error:
                if connection is not None:
                    connection.disconnect()
                    pool.release(connection)
                self._fail(error, f"{node}: sending {len(node_calls)} calls")
                return
            self._sent.append((node, connection, node_calls, len(commands)))
            self._stats[f"write {node}"] += 1

    def read(self, loaded: set[str], library: Library) -> list[Call]:
        """Every node's answers; the calls to send again (redirected, split, or after a
        reload). Raises `Lost` if a connection fails (the rest are dropped)."""
        if self.failure is not None:
            raise Lost(self.failure)
        again: list[Call] = []
        answers: list[tuple[str, list[Call], list[Any]]] = []
        reloaded: set[str] = set()  # nodes given the library during this read
        sent, self._sent = self._sent, []
        for index, (node, connection, calls, count) in enumerate(sent):
            pool = self._topology.pool(node)
            replies: list[Any] = []
            try:
                for _ in range(count):
                    try:
                        replies.append(connection.read_response())
                    except vx.ResponseError as error:  # an answer: the next ones still come
                        replies.append(error)
            except (vx.ValkeyError, OSError) as error:
                connection.disconnect()
                pool.release(connection)
                _drop(self._topology, sent[index + 1:])
                raise Lost(self._fail(error, f"{node}: reading {len(calls)} answers")) \
                    from error
            pool.release(connection)
            answers.append((node, calls, replies))
        for node, calls, replies in answers:
            waited = replies.pop() if self._wait is not None else None
            position = 0
            ran = False  # did any call run there (so that WAIT's answer matters)?
            for call in calls:
                if call.asking:
                    asked = replies[position]
                    position += 1
                    if isinstance(asked, Exception):  # ASKING refused (ACL): the answer
                        call.reply = asked
                        continue
                reply = replies[position]
                position += 1
                if isinstance(reply, vx.ResponseError):
                    ran = ran or not str(reply).startswith(_NOT_RUN)
                    again += self._redirect(node, call, reply, loaded, reloaded, library)
                else:
                    call.reply = reply
                    ran = True
            if self._wait is not None and ran:
                if isinstance(waited, Exception):
                    raise translate(waited, shard=self._topology.shard, command="WAIT")
                self._wait.check(waited, shard=self._topology.shard)
        return again

    def _redirect(self, node: str, call: Call, error: vx.ResponseError, loaded: set[str],
                  reloaded: set[str], library: Library) -> list[Call]:
        text = str(error)
        if text.startswith(("MOVED ", "ASK ")):
            kind, slot, address = text.split()[:3]
            self._stats[kind.lower()] += 1
            if kind == "MOVED":
                self._topology.moved(int(slot), address)
                call.node, call.asking = None, False
            else:
                call.node, call.asking = address, True
                self._topology.mark_migrating(int(slot))
            return [call]
        if text.startswith("TRYAGAIN"):
            self._stats["tryagain"] += 1
            self._topology.mark_migrating(call.slot)
            if call.split is not None:
                return _replace(call, call.split(call))
            time.sleep(TRYAGAIN_WAIT)
            return [call]
        if NON_LOCAL in text and call.recover is not None:
            self._stats["nonlocal"] += 1
            self._topology.mark_migrating(call.slot)
            return _replace(call, call.recover(call))
        if is_missing_function(error) and node in reloaded:
            return [call]  # sent before the reload
        if is_missing_function(error) and node not in loaded:
            log.warning("valkey cluster shard %s: library %s missing on %s (a promoted "
                        "replica, a new node, FUNCTION FLUSH?); loading it",
                        self._topology.shard, library.name, node)
            load_functions(self._topology.client(node), shard=self._topology.shard,
                           library=library)
            loaded.add(node)
            reloaded.add(node)
            self._stats["reload"] += 1
            return [call]
        call.reply = error
        return []

    def discard(self) -> None:
        """Give up on the answers: their connections are closed."""
        sent, self._sent = self._sent, []
        _drop(self._topology, sent)

    def _fail(self, error: Exception, where: str) -> ValkeyShardError:
        self._topology.invalidate()
        _drop(self._topology, self._sent)
        self._sent = []
        self.failure = translate(error, shard=self._topology.shard,
                                 command=f"pipeline to {where}")
        return self.failure


def _replace(call: Call, parts: list[Call]) -> list[Call]:
    """`parts` answer for `call`; they go to the slot's owner (ASK if moved)."""
    call.parts = parts
    for part in parts:
        part.node, part.asking = None, False
    return parts


def _drop(topology: Topology, sent: Sequence[tuple[str, Any, list[Call], int]]) -> None:
    for node, connection, _, _ in sent:
        connection.disconnect()
        topology.pool(node).release(connection)


def run(topology: Topology, calls: Sequence[Call], *, library: Library,
        wait: WaitFor | None = None, first: Round | None = None,
        stats: Counter[str] | None = None) -> None:
    """Send `calls` (or read `first`, already sent) and follow their redirections until
    every call has its answer (`Call.reply`). Raises `Lost` on a connection failure,
    ValkeyUnavailable after `MAX_ROUNDS`, and what a reload raises. `stats` counts the
    pipelined writes per node ("write <node>") and the redirections met ("moved",
    "ask", "tryagain", "reload")."""
    loaded: set[str] = set()
    current = first if first is not None else Round(topology, calls, wait=wait, stats=stats)
    for _ in range(MAX_ROUNDS):
        again = current.read(loaded, library)
        if not again:
            return
        topology.ensure()  # after a MOVED: the whole map again
        current = Round(topology, again, wait=wait, stats=stats)
    current.discard()
    raise ValkeyUnavailable(f"valkey cluster shard {topology.shard!r}: still redirected after "
                            f"{MAX_ROUNDS} rounds (slots moving back and forth?): retrying",
                            shard=topology.shard, command="FCALL")
