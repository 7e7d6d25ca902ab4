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
next claim moves claims older than ``STALE_CLAIM_SECONDS`` back to pending. A job also notes
what it holds in a set of its own: when RQ retries a job whose worker died (abandoned job, the
same job id), its first claim takes back what the dead attempt held, at once, rather than
finding the pending set empty and leaving those issues unread until the claims go stale. An event that
arrives while its issue is being read adds the id to pending again, so the newer state is read
again: nothing is lost, whatever the timing.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence, Union

from redis import Redis

from mirror import history_store, store
from mirror.issues import ISSUE_FIELDS, epoch_ms, to_row, utc_now
from mirror.jira import JiraClient, JiraNotFoundError, issue_error_ids
from workers.queues import CLAIMS_KEY, CLAIMS_TTL_SECONDS, PENDING_KEY, PROCESSING_KEY, STALE_CLAIM_SECONDS

log = logging.getLogger(__name__)

BATCH = 100
MAX_BATCHES_PER_JOB = 50
# A claim waits up to this long while webhooks of a burst keep arriving (see gather).
LINGER_SECONDS = 0.5
LINGER_POLL_SECONDS = 0.05

# KEYS: pending, processing, the claims of each job running this read (the first records the new
# claims). ARGV: batch, now, stale before, claims ttl (0: no owner). Returns the claimed ids. What
# those claims sets still hold was left by an earlier attempt of the same jobs that died (a live
# attempt empties its set batch by batch): back to pending.
_CLAIM = """
if tonumber(ARGV[4]) > 0 then
  for k = 3, #KEYS do
    for _, id in ipairs(redis.call('smembers', KEYS[k])) do
      if redis.call('zrem', KEYS[2], id) == 1 then
        redis.call('zadd', KEYS[1], 'NX', ARGV[2], id)
      end
    end
    redis.call('del', KEYS[k])
  end
end
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
if #ids > 0 and tonumber(ARGV[4]) > 0 then
  redis.call('sadd', KEYS[3], unpack(ids))
  redis.call('expire', KEYS[3], ARGV[4])
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


def pending_count(connection: Redis, site: str) -> int:
    return int(connection.zcard(PENDING_KEY.format(site=site)))


def forget(connection: Redis, site: str, ids: list[str]) -> None:
    """Unmark ``ids``: a worker that cannot read Jira wrote the deliveries' copies instead."""
    if ids:
        connection.zrem(PENDING_KEY.format(site=site), *ids)


Owners = Union[str, Sequence[str], None]


def _owners(owner: Owners) -> list[str]:
    """The RQ job ids running a read: one job, or a batch of them (``workers.worker``)."""
    if owner is None:
        return []
    return [owner] if isinstance(owner, str) else [o for o in owner if o]


def _claims_key(site: str, owner: str | None) -> str:
    return CLAIMS_KEY.format(site=site, owner=owner or "-")


def claim(connection: Redis, site: str, batch: int = BATCH, *, owner: Owners = None) -> list[str]:
    """Move up to ``batch`` pending ids to processing and return them; ``owner`` (the RQ job id, or
    the ids of a batch of jobs) first takes back what dead earlier attempts of those jobs held."""
    now = time.time()
    owners = _owners(owner)
    keys = [_claims_key(site, o) for o in owners] or [_claims_key(site, None)]
    raw = connection.eval(
        _CLAIM,
        2 + len(keys),
        PENDING_KEY.format(site=site),
        PROCESSING_KEY.format(site=site),
        *keys,
        batch,
        now,
        now - STALE_CLAIM_SECONDS,
        CLAIMS_TTL_SECONDS if owners else 0,
    )
    return [i.decode() if isinstance(i, bytes) else str(i) for i in raw]


def release(connection: Redis, site: str, ids: list[str], *, owner: Owners = None) -> None:
    if ids:
        connection.eval(
            _RELEASE, 2, PENDING_KEY.format(site=site), PROCESSING_KEY.format(site=site), time.time() * 1000, *ids
        )
        owners = _owners(owner)
        if owners:
            connection.srem(_claims_key(site, owners[0]), *ids)


def done(connection: Redis, site: str, ids: list[str], *, owner: Owners = None) -> None:
    if ids:
        owners = _owners(owner)
        with connection.pipeline(transaction=False) as pipe:
            pipe.zrem(PROCESSING_KEY.format(site=site), *ids)
            if owners:
                pipe.srem(_claims_key(site, owners[0]), *ids)
            pipe.execute()


def gather(connection: Redis, site: str, *, linger: float = LINGER_SECONDS, poll: float = LINGER_POLL_SECONDS) -> int:
    """Wait, at most ``linger`` seconds, while a burst is still arriving: the pending count grew in
    the last ``poll`` and a call would take fewer than ``BATCH`` ids. Jira sends a bulk edit's
    webhooks over seconds; reading each trickle as it lands would cost a call per trickle (a
    1,000-issue edit: ~35 calls instead of ~10). A lone edit waits one ``poll``. Returns the count."""
    deadline = time.monotonic() + linger
    count = pending_count(connection, site)
    while 0 < count < BATCH and time.monotonic() < deadline:
        time.sleep(poll)
        grown = pending_count(connection, site)
        if grown <= count:
            return grown
        count = grown
    return count


class IssuesNotReturnedError(RuntimeError):
    """``bulkfetch`` listed pending issues in ``issueErrors`` (not returned *this time*): they are
    back in pending and the job fails, so that RQ retries it with backoff (never a deletion)."""


def refresh_pending(connection: Redis, client: JiraClient, site: str, *, owner: Owners = None) -> dict[str, int]:
    """Read every pending issue from Jira in bulk and write it; returns counts. ``owner``: the
    RQ job id (see the module docstring).

    Only Jira's word deletes (CONTRACT.md invariant 7): an id absent from bulkfetch is read with
    ``GET issue`` (404: deleted; found: written); an id in ``issueErrors`` is put back. A row
    whose project is not tracked leaves the live mirror (invariant 6).

    Raises what the read or the write raised, after putting the claimed ids back, and
    IssuesNotReturnedError (after the rest was written) when Jira did not return some.
    """
    counts = {"fetched": 0, "written": 0, "deleted": 0, "calls": 0}
    unreturned: list[str] = []
    for _ in range(MAX_BATCHES_PER_JOB):
        gather(connection, site)
        ids = claim(connection, site, owner=owner)
        if not ids:
            break
        try:
            errored = _refresh(client, site, ids, counts)
        except BaseException:
            release(connection, site, ids, owner=owner)
            raise
        done(connection, site, [i for i in ids if i not in errored], owner=owner)
        if errored:
            release(connection, site, sorted(errored), owner=owner)
            unreturned.extend(errored)
            break  # they would be claimed again at once: RQ's retry waits first
    if unreturned:
        raise IssuesNotReturnedError(
            f"Jira could not return {len(unreturned)} issue(s) this time (bulkfetch issueErrors): "
            f"{', '.join(unreturned[:10])}; they stay pending and are read again"
        )
    return counts


def _refresh(client: JiraClient, site: str, ids: list[str], counts: dict[str, int]) -> set[str]:
    """Read ``ids`` and write what Jira says; returns the ids in ``issueErrors``."""
    read_at = epoch_ms(utc_now())
    issues, errors = client.bulkfetch(ids, fields=ISSUE_FIELDS)
    counts["calls"] += 1
    found = {str(i.get("id")) for i in issues}
    errored = set(issue_error_ids(errors, ids, found))
    agile = history_store.agile_for(site)
    rows = [to_row(site, issue, source="webhook", event_ts=read_at, agile=agile) for issue in issues]
    gone: list[str] = []
    for issue_id in ids:
        if issue_id in found or issue_id in errored:
            continue
        # Absent from bulkfetch (deleted, or not visible): a GET of the one issue is Jira's word.
        read_at = epoch_ms(utc_now())
        counts["calls"] += 1
        try:
            rows.append(
                to_row(
                    site,
                    client.get_issue(issue_id, fields=ISSUE_FIELDS),
                    source="webhook",
                    event_ts=read_at,
                    agile=agile,
                )
            )
        except JiraNotFoundError:
            gone.append(issue_id)
    counts["fetched"] += len(rows)
    if rows:
        counts["written"] += store.upsert_issues(store.out_of_scope(rows, store.Scope.of(site)), current=True)
    if gone:
        counts["deleted"] += store.mark_deleted(site, gone, source="webhook")
    return errored
