"""Whether Redis has room for another job: the receiver stops accepting before Redis is full.

When the workers are down for long, the queue grows in Redis. A Redis that reaches its
``maxmemory`` (with ``noeviction``, Heroku Redis's default) refuses every write, and RQ's
worker writes before it dequeues anything (its registration, the move of a job to the started
registry): the workers could then never drain the queue, and the mirror would stay stuck until
an operator made room. So the receiver answers 503 (Jira delivers again later) once what is left
of Redis's ``maxmemory`` falls to a reserve for the workers and the syncs: a tenth of it, and at
least ``RESERVE_BYTES`` (a worker starting a batch of jobs needs about a megabyte at once).
``INFO memory`` is asked once a second per process while Redis is far from full, and at every
delivery once it is close, so a burst cannot overshoot. "Close" follows the rate at which Redis is
filling: a process that saw it grow by G bytes a second between two readings asks at every
delivery once the room left is under a fifth of the room or under 2 x G x the reading interval,
whichever is larger (several web processes fill it at once; one process's second-long gap must
not let them run past the reserve). A Redis without ``maxmemory`` is never full here.

The same reading says whether room is scarce (:meth:`RedisCapacity.scarce`: half of ``maxmemory``
used): the receiver then stores deliveries compressed (``workers.inbox.encode_item``), a third of
their size, so that a backlog fits about three times as many before the 503s begin. While room is
plentiful (or Redis has no ``maxmemory``) they are stored as they are: a delivery usually waits
milliseconds, and compressing it cost about a tenth of its CPU.
"""

from __future__ import annotations

import logging
import threading
import time

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

RESERVE_SHARE = 0.1
RESERVE_BYTES = 4 * 1024 * 1024
SCARCE_SHARE = 0.5
GROWTH_HALF_LIFE = 30.0


class RedisCapacity:
    def __init__(self, connection: Redis, *, ttl: float = 1.0):
        self.connection, self.ttl = connection, ttl
        self._full = False
        self._scarce = True  # until Redis is read
        self._close = False
        self._read_at = float("-inf")
        self._last_used: int | None = None
        self._growth = 0.0  # bytes a second, the fastest lately seen (half-life GROWTH_HALF_LIFE)
        self._lock = threading.Lock()

    def full(self) -> bool:
        """Redis has no more than its reserve left. Raises nothing: when Redis does not answer,
        the enqueue that follows finds out and answers 503 itself."""
        now = time.monotonic()
        ttl = 0.0 if self._close else self.ttl
        if now - self._read_at < ttl:
            return self._full
        with self._lock:
            if now - self._read_at >= ttl:
                try:
                    memory = self.connection.info("memory")
                    limit = int(memory.get("maxmemory") or 0)
                    used = int(memory.get("used_memory") or 0)
                    room = limit - max(RESERVE_SHARE * limit, RESERVE_BYTES)
                    full = bool(limit) and used >= room
                    self._scarce = bool(limit) and used >= SCARCE_SHARE * limit
                    if self._last_used is not None and now > self._read_at:
                        elapsed = now - self._read_at
                        growth = (used - self._last_used) / elapsed
                        self._growth = max(growth, self._growth * 0.5 ** (elapsed / GROWTH_HALF_LIFE))
                    margin = max(0.2 * room, 2 * self._growth * self.ttl)
                    self._close = bool(limit) and used >= room - margin
                    self._last_used = used
                    if full and not self._full:
                        log.warning("redis nearly full used=%d maxmemory=%d: refusing deliveries", used, limit)
                    self._full = full
                except RedisError:
                    self._full = self._close = False
                    self._scarce = True
                    self._last_used = None
                self._read_at = now
        return self._full

    def scarce(self) -> bool:
        """At the last reading (:meth:`full`), Redis had a ``maxmemory`` and had used half of it or
        more (True before the first reading, and when Redis did not answer)."""
        return self._scarce
