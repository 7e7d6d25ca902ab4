"""Webhook jobs read the issue's current state from Jira, coalesced: one bulk read for many.

The decision (issue "Backfill", point 3): a webhook is a trustworthy *trigger*, not the row.
Its issue is rendered REST-v2 style (wiki-markup description, cut-short comments, the actor's
offsets), while a backfill reads REST v3. So when Jira is configured, a webhook job does not
write the delivery's copy: the receiver adds the issue id to a pending set in the same Redis
transaction as the job, and the job reads every pending id through ``issue/bulkfetch`` (100 a
call, current state, no index lag), writing rows of exactly the shape a backfill writes, with
the same field list. A burst for one issue, or a bulk edit of many, costs one call per 100
distinct issues: 1,000 deliveries of a bulk edit are about 10 calls. Without Jira credentials
the delivery's copy is written as it is (``workers.jobs``).

A claimed id moves to a ``processing`` set with the claim time; it leaves it only after its row
is written. A job that fails puts its ids back; one that dies (SIGKILL) leaves them, and the
next claim moves claims older than ``STALE_CLAIM_SECONDS`` back to pending. An event that
arrives while its issue is being read adds the id to pending again, so the newer state is read
again: nothing is lost, whatever the timing.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from redis import Redis

from mirror import store
from mirror.issues import ISSUE_FIELDS, epoch_ms, to_row, utc_now
from mirror.jira import JiraClient

log = logging.getLogger(__name__)

PENDING_KEY = "jira-mirror:refresh:pending:{site}"
PROCESSING_KEY = "jira-mirror:refresh:processing:{site}"
BATCH = 100
STALE_CLAIM_SECONDS = 120
MAX_BATCHES_PER_JOB = 50

# KEYS: pending, processing. ARGV: batch, now, stale before. Returns the claimed ids.
_CLAIM = """
local stale = redis.call('zrangebyscore', KEYS[2], '-inf', ARGV[3])
for _, id in ipairs(stale) do
  redis.call('zrem', KEYS[2], id)
  redis.call('zadd', KEYS[1], 'NX', ARGV[2], id)
end
local ids = redis.call('zrange', KEYS[1], 0, tonumber(ARGV[1]) - 1)
for _, id in ipairs(ids) do
  redis.call('zrem', KEYS[1], id)
  redis.call('zadd', KEYS[2], ARGV[2], id)
end
return ids
"""

# KEYS: pending, processing. ARGV: now, ids... Put ids back in pending (a failed read).
_RELEASE = """
for i = 2, #ARGV do
  redis.call('zrem', KEYS[2], ARGV[i])
  redis.call('zadd', KEYS[1], 'NX', ARGV[1], ARGV[i])
end
return #ARGV - 1
"""


def add_pending(pipe: Any, site: str, issue_id: str, event_ts: int) -> None:
    """Mark an issue for a refresh (in the receiver's transaction)."""
    pipe.zadd(PENDING_KEY.format(site=site), {issue_id: event_ts}, nx=True)


def pending_count(connection: Redis, site: str) -> int:
    return int(connection.zcard(PENDING_KEY.format(site=site)))


def claim(connection: Redis, site: str, batch: int = BATCH) -> list[str]:
    now = time.time()
    raw = connection.eval(_CLAIM, 2, PENDING_KEY.format(site=site), PROCESSING_KEY.format(site=site),
                          batch, now, now - STALE_CLAIM_SECONDS)
    return [i.decode() if isinstance(i, bytes) else str(i) for i in raw]


def release(connection: Redis, site: str, ids: list[str]) -> None:
    if ids:
        connection.eval(_RELEASE, 2, PENDING_KEY.format(site=site), PROCESSING_KEY.format(site=site),
                        time.time() * 1000, *ids)


def done(connection: Redis, site: str, ids: list[str]) -> None:
    if ids:
        connection.zrem(PROCESSING_KEY.format(site=site), *ids)


def refresh_pending(connection: Redis, client: JiraClient, site: str) -> dict[str, int]:
    """Read every pending issue from Jira in bulk and write it; returns counts.

    Raises what the read or the write raised, after putting the claimed ids back.
    """
    counts = {"fetched": 0, "written": 0, "deleted": 0, "calls": 0}
    for _ in range(MAX_BATCHES_PER_JOB):
        ids = claim(connection, site)
        if not ids:
            break
        try:
            read_at = epoch_ms(utc_now())
            issues, _errors = client.bulkfetch(ids, fields=ISSUE_FIELDS)
            counts["calls"] += 1
            found = {str(i.get("id")) for i in issues}
            rows = [to_row(site, issue, source="webhook", event_ts=read_at) for issue in issues]
            counts["fetched"] += len(rows)
            counts["written"] += store.upsert_issues(rows) if rows else 0
            gone = [i for i in ids if i not in found]
            if gone:  # a current read that does not find an issue: it was deleted
                counts["deleted"] += store.mark_deleted(site, gone, source="webhook")
        except BaseException:
            release(connection, site, ids)
            raise
        done(connection, site, ids)
    return counts
