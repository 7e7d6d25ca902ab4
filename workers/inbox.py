"""What a delivery leaves for the workers, and how a drain job takes it: the pending protocol.

A delivery needs no RQ job of its own. The receiver records it in keys of ours, in one round
trip (:func:`record`): the copy to write in the inbox (a Redis list), or, when the worker reads
the issue's current state from Jira instead, the issue id in the site's refresh set
(``workers.refresh``). A drain job (``workers.jobs.drain``), enqueued through RQ's public API,
writes what is pending in batches. One drain job serves a whole burst: a mark says one is
queued and not yet started, and only a delivery that finds no mark enqueues one (a second round
trip, for the first delivery of a burst; the delivery is remembered in that same transaction,
so that if it fails nothing is remembered and Jira's redelivery is not taken for a duplicate).
A drain job removes the mark before it claims anything, so a delivery recorded after its last
claim always finds no mark and enqueues the next drain: nothing waits without a drain to come.

Claims (:func:`claim`) move items from the inbox to a list of the claiming job's own (by RQ
job id); they leave it only once written (:func:`done`), or go back to the head of the inbox
when the write failed (:func:`release`). A job that died (SIGKILL) leaves its list: its retry
by RQ (the same job id) takes it back first, and any drain takes back lists claimed more than
``STALE_CLAIM_SECONDS`` ago. Writing an item twice is harmless (CONTRACT.md invariant 3).
"""

from __future__ import annotations

import json
import time
import zlib
from hashlib import sha1
from typing import Any

import orjson
from redis import Redis
from redis.exceptions import NoScriptError, WatchError
from rq import Queue

from workers import queues

# The result of record().
RECORDED, DUPLICATE_ID, DUPLICATE_BODY = "recorded", "duplicate-id", "duplicate-body"

# KEYS: delivery key, body key, inbox, refresh pending set, drain mark. ARGV: delivery TTL (0: no
# id), body TTL (0: no body key), the inbox item (empty for none), the issue id to refresh ('' for
# none), its event time. Returns -1 (a remembered delivery id) or -2 (a remembered body):
# nothing written; 0 when no drain job is queued: nothing written either, the caller records the
# delivery with a drain job (enqueue); 1: recorded. Redis does not roll a script back, so the
# order matters: the item first (a refused write, e.g. out of memory, fails there, before
# anything is written), the delivery's marks last, so that a script stopped half-way never marks
# a delivery whose item is missing.
_RECORD = """
local ttl, body_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
if ttl > 0 and redis.call('exists', KEYS[1]) == 1 then return -1 end
if body_ttl > 0 and redis.call('exists', KEYS[2]) == 1 then return -2 end
if redis.call('exists', KEYS[5]) == 0 then return 0 end
if ARGV[3] ~= '' then redis.call('rpush', KEYS[3], ARGV[3]) end
if ARGV[4] ~= '' then redis.call('zadd', KEYS[4], 'NX', ARGV[5], ARGV[4]) end
if ttl > 0 then redis.call('set', KEYS[1], '1', 'EX', ttl) end
if body_ttl > 0 then redis.call('set', KEYS[2], '1', 'EX', body_ttl) end
return 1
"""
_RECORD_SHA = sha1(_RECORD.encode()).hexdigest()

# KEYS: inbox, owners set, this owner's claim list, then the claim lists of owners to take back
# (a dead earlier attempt of this job first). ARGV: batch, now, this owner, stale before, owners
# to take back... Returns the claimed items, oldest first.
_CLAIM = """
local function give_back(list, owner)
  while redis.call('lmove', list, KEYS[1], 'RIGHT', 'LEFT') do end
  redis.call('zrem', KEYS[2], owner)
end
local stale = redis.call('zrangebyscore', KEYS[2], '-inf', ARGV[4])
for _, owner in ipairs(stale) do
  if owner ~= ARGV[3] then give_back(string.gsub(KEYS[3], '[^:]*$', owner, 1), owner) end
end
give_back(KEYS[3], ARGV[3])
local items = redis.call('lrange', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items == 0 then return items end
redis.call('ltrim', KEYS[1], #items, -1)
redis.call('rpush', KEYS[3], unpack(items))
redis.call('zadd', KEYS[2], ARGV[2], ARGV[3])
return items
"""
_CLAIM_SHA = sha1(_CLAIM.encode()).hexdigest()


class Delivery:
    """What one delivery leaves for the workers: the copy to write (``item``: a job function
    name and its keyword arguments) or the issue to read again (``refresh``: site, issue id,
    event time)."""

    __slots__ = ("item", "refresh")

    def __init__(self, *, item: tuple[str, dict[str, Any]] | None = None, refresh: tuple[str, str, int] | None = None):
        self.item = item
        self.refresh = refresh


def _arg(value: Any) -> str:
    """A command argument as Redis receives it from redis-py (floats as their repr)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def encode_item(func: str, kwargs: dict[str, Any], *, compress: bool = True) -> bytes:
    """An inbox item: JSON, zlib-compressed when ``compress`` (as RQ stores a job's data: an 8 KB
    delivery then takes about a third of the room while it waits). The receiver compresses only
    when Redis's room is scarce (``receiver.capacity``): an item usually waits milliseconds, and
    compressing it cost about a tenth of a delivery's CPU. orjson writes it (several times as
    fast as the json module, on the hot path); the json module what orjson does not write
    (integers beyond 64 bits, nesting deeper than 254 levels)."""
    item = {"func": func, "kwargs": kwargs}
    try:
        data = orjson.dumps(item)
    except TypeError:  # orjson.JSONEncodeError
        data = json.dumps(item, separators=(",", ":")).encode()
    return zlib.compress(data, 1) if compress else data


def decode_item(raw: bytes) -> tuple[str, dict[str, Any]]:
    """``(function name, kwargs)`` of an inbox item, compressed or not (a zlib stream never starts
    with ``{``). Raises ValueError when it is not one."""
    try:
        item = json.loads(raw if raw[:1] == b"{" else zlib.decompress(raw))
    except zlib.error as exc:
        raise ValueError(f"not an inbox item: {exc}") from None
    if not isinstance(item, dict) or not isinstance(item.get("func"), str) or not isinstance(item.get("kwargs"), dict):
        raise ValueError("not an inbox item")
    return item["func"], item["kwargs"]


def record(
    issues_queue: Queue,
    delivery: Delivery,
    *,
    site: str,
    delivery_id: str | None,
    body_digest: str | None = None,
    replay_window: int = 0,
    compress: bool = True,
) -> str | None:
    """Record ``delivery`` for the workers and remember it (its id, and its body's SHA-256 hex
    for ``replay_window`` seconds), atomically; returns the id of the drain job it enqueued, or
    None when one was already queued.

    One round trip; two for the delivery that finds no drain job queued (the second a
    transaction, after a WATCH of the mark: the drain job through RQ's API, the delivery and the
    mark).

    Raises DuplicateDeliveryError when ``delivery_id`` was accepted before, or the same body
    within the replay window (nothing is recorded), and redis errors (nothing is remembered).
    ``compress``: whether the item is stored compressed (:func:`encode_item`).
    """
    connection = issues_queue.connection
    body_ttl = replay_window if body_digest and replay_window > 0 else 0
    keys = [
        queues.delivery_key(delivery_id) if delivery_id else queues.INBOX_KEY,
        queues.body_key(body_digest) if body_digest and body_ttl else queues.INBOX_KEY,
        queues.INBOX_KEY,
        queues.PENDING_KEY.format(site=delivery.refresh[0]) if delivery.refresh else queues.INBOX_KEY,
        queues.DRAIN_MARK_KEY,
    ]
    item = encode_item(*delivery.item, compress=compress) if delivery.item else b""
    args: list[Any] = [
        queues.DELIVERY_TTL_SECONDS if delivery_id else 0,
        body_ttl,
        item,
        delivery.refresh[1] if delivery.refresh else "",
        delivery.refresh[2] if delivery.refresh else 0,
    ]
    try:
        answer = int(connection.evalsha(_RECORD_SHA, len(keys), *keys, *args))
    except NoScriptError:
        answer = int(connection.eval(_RECORD, len(keys), *keys, *args))
    if answer == -1:
        raise DuplicateDeliveryError(f"delivery {delivery_id} was accepted before")
    if answer == -2:
        raise DuplicateDeliveryError(f"the body of delivery {delivery_id} was accepted before (a replay)")
    if answer == 1:
        return None
    # No drain job queued: the delivery, its drain job and the mark, in one transaction, which
    # fails (WatchError) if another delivery set the mark meanwhile: there is one drain job
    # queued per mark (the queue depth counts on it), and this delivery takes the script's path.
    with connection.pipeline() as pipe:
        try:
            pipe.watch(queues.DRAIN_MARK_KEY)
            if not pipe.exists(queues.DRAIN_MARK_KEY):
                job_id = queues.enqueue_drain(issues_queue, site, pipeline=pipe)
                if item:
                    pipe.rpush(queues.INBOX_KEY, item)
                if delivery.refresh:
                    pipe.zadd(keys[3], {delivery.refresh[1]: delivery.refresh[2]}, nx=True)
                if delivery_id:
                    pipe.set(keys[0], "1", ex=queues.DELIVERY_TTL_SECONDS)
                if body_ttl:
                    pipe.set(keys[1], "1", ex=body_ttl)
                pipe.execute()
                return job_id
        except WatchError:
            pass
    # A drain job was queued meanwhile: the script's path again.
    return record(
        issues_queue,
        delivery,
        site=site,
        delivery_id=delivery_id,
        body_digest=body_digest,
        replay_window=replay_window,
        compress=compress,
    )


class DuplicateDeliveryError(Exception):
    """The delivery was accepted before (its id, or its body within the replay window, is
    remembered): nothing was recorded."""


def unmark(connection: Redis) -> None:
    """A drain job starts: deliveries from now on enqueue the next one."""
    connection.delete(queues.DRAIN_MARK_KEY)


def ensure_drain(issues_queue: Queue, site: str) -> str | None:
    """Enqueue a drain job unless one is queued (its mark): one transaction, which fails
    (WatchError) if the mark was set meanwhile; returns the job's id, or None."""
    with issues_queue.connection.pipeline() as pipe:
        try:
            pipe.watch(queues.DRAIN_MARK_KEY)
            if pipe.exists(queues.DRAIN_MARK_KEY):
                return None
            return queues.enqueue_drain(issues_queue, site, pipeline=pipe, execute=True)
        except WatchError:
            return None


def recover_drain(issues_queue: Queue, site: str) -> str | None:
    """Enqueue a drain job when the mark names one that is no longer queued; returns its id, or
    None when the mark is absent or its job still waits in the queue.

    A drain job caught between RQ's dequeue and its start when Redis or its worker died sits in
    RQ's intermediate queue, and RQ gives it back only about a minute later: meanwhile its mark
    stays, so no delivery enqueues a drain and deliveries wait. The workers call this at every
    maintenance (workers.worker). A job that was only dequeued a moment ago starts and removes
    the new mark: the next delivery enqueues one more drain, which finds little or nothing to do.
    """
    with issues_queue.connection.pipeline() as pipe:
        try:
            pipe.watch(queues.DRAIN_MARK_KEY)
            marked = pipe.get(queues.DRAIN_MARK_KEY)
            if marked is None or pipe.lpos(issues_queue.key, _arg(marked)) is not None:
                return None
            return queues.enqueue_drain(issues_queue, site, pipeline=pipe, execute=True)
        except WatchError:  # a drain started or was enqueued meanwhile
            return None


def backlog(connection: Redis, issues_queue: Queue) -> int:
    """What waits for the issues queue's workers: deliveries in the inbox (claimed ones not
    counted) and jobs in the queue, less the drain job queued for those deliveries."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.llen(queues.INBOX_KEY)
        pipe.llen(issues_queue.key)
        pipe.exists(queues.DRAIN_MARK_KEY)
        waiting, jobs, marked = pipe.execute()
    return max(0, int(waiting) + int(jobs) - int(marked))


def claim(connection: Redis, owner: str, batch: int) -> list[tuple[str, dict[str, Any]] | Exception]:
    """Move up to ``batch`` items from the inbox to ``owner``'s claim (after taking back what a
    dead earlier attempt of ``owner``, or any owner whose claim is stale, left); returns them
    decoded, oldest first (an item that cannot be read as the ValueError it raised)."""
    now = time.time()
    keys = [queues.INBOX_KEY, queues.INBOX_OWNERS_KEY, queues.INBOX_CLAIM_KEY.format(owner=owner)]
    args: list[Any] = [batch, now, owner, now - queues.STALE_CLAIM_SECONDS]
    try:
        raw = connection.evalsha(_CLAIM_SHA, len(keys), *keys, *args)
    except NoScriptError:
        raw = connection.eval(_CLAIM, len(keys), *keys, *args)
    items: list[tuple[str, dict[str, Any]] | Exception] = []
    for entry in raw:
        try:
            items.append(decode_item(entry))
        except ValueError as exc:
            items.append(exc)
    return items


def done(connection: Redis, owner: str) -> None:
    """``owner``'s claimed items are written: forget them."""
    with connection.pipeline(transaction=True) as pipe:
        pipe.delete(queues.INBOX_CLAIM_KEY.format(owner=owner))
        pipe.zrem(queues.INBOX_OWNERS_KEY, owner)
        pipe.execute()


def release(connection: Redis, owner: str) -> None:
    """``owner``'s write failed: its items go back to the head of the inbox, in their order."""
    claim_key = queues.INBOX_CLAIM_KEY.format(owner=owner)
    connection.eval(
        "while redis.call('lmove', KEYS[2], KEYS[1], 'RIGHT', 'LEFT') do end "
        "redis.call('zrem', KEYS[3], ARGV[1]) return 1",
        3,
        queues.INBOX_KEY,
        claim_key,
        queues.INBOX_OWNERS_KEY,
        owner,
    )
