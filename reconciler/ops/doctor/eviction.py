"""Doctor's eviction check: a shard's `maxmemory-policy` must not evict fences.

A fence (SPEC §2) is what stops a slow writer from putting back a version older than a
change the reconciler has applied; evicted before its TTL, it lets that writer in (the
delete-then-stale-set race). Which policies can evict one:

- `allkeys-*` (lru, lfu, random): any key, fences included;
- `volatile-*` (lru, lfu, random, ttl): keys with a TTL, and every fence has one —
  `volatile-ttl` evicts the shortest-lived first, the fences;
- `noeviction`: none; a full shard refuses writes (OOM) instead, and the worker
  reports it (with this advice) rather than a fence being lost without a word.

Read from `INFO memory`, which the worker's least-privilege ACL user may run
(`CONFIG GET` is an admin command).
"""

from __future__ import annotations

from typing import Any

from reconciler.ops.doctor.checklist import OK, WARN, Check

SAFE_POLICY = "noeviction"  # the one policy that never evicts a fence
FIX = (f"CONFIG SET maxmemory-policy {SAFE_POLICY} (and in the server's config file), with "
       "maxmemory sized for the cached data plus headroom, and a TTL on the data the "
       "application's writer caches so that it expires by itself")


def eviction_check(name: str, url: str, client: Any) -> Check:
    """One line for shard `name`: OK for noeviction, WARN for a policy that can evict a
    fence (naming the shard, its policy and the fix), WARN when it cannot be read."""
    check = f"shard {name} eviction"
    try:
        memory = client.info("memory")
    except Exception as exc:  # noqa: BLE001 - the shard answered a moment ago
        return Check(WARN, check, f"{url}: cannot read maxmemory-policy (INFO memory: "
                                  f"{exc})", f"check it by hand: {FIX}")
    policy = str(memory.get("maxmemory_policy", "unknown"))
    limit = int(memory.get("maxmemory", 0) or 0)
    if policy == SAFE_POLICY:
        return Check(OK, check, f"{url}: maxmemory-policy {policy}: fences are never evicted")
    bound = (f"maxmemory {limit} bytes" if limit else
             "no maxmemory set now, but the policy applies as soon as one is")
    if policy.startswith("allkeys-"):
        why = "evicts any key, fences included"
    elif policy.startswith("volatile-"):
        why = ("evicts keys that have a TTL, and every fence has one"
               + (" (the shortest-lived first: the fences)" if policy == "volatile-ttl" else ""))
    else:
        why = "is not noeviction"
    return Check(WARN, check, f"{url}: maxmemory-policy {policy} {why} ({bound}); a fence "
                              "evicted before its TTL lets a slow writer put back the "
                              "version the reconciler just invalidated", FIX)
