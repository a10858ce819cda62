"""Audit: compare what the cache holds with Postgres, and optionally repair it.

For each configured table, every versioned key template built only from primary-key
columns (and naming all of them) can be read back into a row: its keys are found on
every shard (``SCAN MATCH``, or a random sample), parsed back into primary-key
values, and the rows' versions read from Postgres in batches (one statement per
batch, rate-limited). Each entry is then:

    fresh   data cached at the row's version
    stale   data cached at an older version (or of unknown version: not a valid entry)
    orphan  data cached for a row that no longer exists
    ahead   data cached at a newer version than Postgres has: the row's versions went
            back (deleted and re-inserted, its version column restarted: SPEC §2) or
            the DSN is a lagging replica. The reconciler would call it fresh forever.
    fence   a fence (no data): not an entry to compare, counted apart
    unparsed a key that does not name a row (does not parse, or is not a literal of
            the primary key's type)

Stale, orphan and ahead entries are findings: the audit fails while any remains.
Candidates are looked at again after a grace period, so a change the live worker is
about to reconcile (or a replica about to catch up) is not reported. ``repair`` then
applies the reconciler's own protocol through ``Shard.apply``: a versioned op at the
row's version for stale entries (the entry becomes a fence unless something newer was
written meanwhile), a delete op for orphans and for entries ahead (removed and fenced
for ``fence_ttl``, as if the row had been deleted: a miss is always safe). Nothing is
written unless asked.

Templates that cannot be read back (a non-key column, a missing key column) and
unversioned templates are listed as not auditable.

Valkey errors are errors, never findings: an error reply (a command the ACL user may
not run, a key outside its patterns, a server loading) or a timeout stops the audit
(``FatalError``, exit 2) with a message naming the shard, the command, its ACL
categories and the grant (``AUDIT_GRANT``, the user's least privilege). An entry that
could not be read is never counted.
With several ``sources`` every source's database is asked for each key's row (see
``auditor``); a row found in more than one is *ambiguous*, a finding.
Modules: ``targets`` (which templates can be audited), ``keyparse`` (a key back to its
primary-key values), ``auditor`` (``Auditor``), ``run`` (``run_audit``: the clients and
sessions), ``findings`` (the states, ``AuditReport`` as JSON, text and Prometheus gauges).
"""

from reconciler.ops.audit.auditor import DEFAULT_GRACE_SECONDS, DEFAULT_ROWS_PER_SECOND
from reconciler.ops.audit.findings import AuditReport
from reconciler.ops.audit.run import run_audit

__all__ = ["DEFAULT_GRACE_SECONDS", "DEFAULT_ROWS_PER_SECOND", "AuditReport", "run_audit"]
