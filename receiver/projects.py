"""Which projects are tracked, as the receiver sees them.

The receiver must keep accepting deliveries while the database is down (CONTRACT.md: nothing
accepted is lost, and the queue, not the database, is what a 202 promises). So the set is
read from the database at most every ``ttl`` seconds, the last answer is kept when the
database fails, and when it has never answered the delivery is accepted (``None``: unknown)
and the worker writes it.
"""
from __future__ import annotations

import logging
import threading
import time

from mirror import store
from mirror.db import database

log = logging.getLogger(__name__)


class TrackedProjects:
    def __init__(self, site: str, *, ttl: float = 5.0):
        self.site = site
        self.ttl = ttl
        self._keys: frozenset[str] | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        self._read_at = 0.0

    def keys(self) -> frozenset[str] | None:
        now = time.monotonic()
        if self._keys is not None and now - self._read_at < self.ttl:
            return self._keys
        with self._lock:
            if self._keys is not None and now - self._read_at < self.ttl:
                return self._keys
            try:
                with database.connection_context():
                    self._keys = frozenset(store.tracked_keys(self.site))
            except Exception as exc:  # the database is down: keep what we knew
                log.warning("tracked projects unavailable error=%s", type(exc).__name__)
            self._read_at = now
            return self._keys
