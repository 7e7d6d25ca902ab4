"""Which projects are tracked, as the receiver sees them.

The receiver must keep accepting deliveries while the database is down (docs/contract.md: nothing
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
from mirror.models import Issue

log = logging.getLogger(__name__)


class TrackedProjects:
    def __init__(self, site: str, *, ttl: float = 5.0):
        self.site = site
        self.ttl = ttl
        self._keys: frozenset[str] | None = None
        self._ids: frozenset[str] = frozenset()
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
                    scope = store.Scope.of(self.site)
                self._keys, self._ids = scope.keys, scope.ids
            except Exception as exc:  # the database is down: keep what we knew
                log.warning("tracked projects unavailable error=%s", type(exc).__name__)
            self._read_at = now
            return self._keys

    def tracks(self, project_id: str | None, key: str) -> bool | None:
        """Whether the project is tracked: by Jira id (a renamed key is followed), else by key.
        None when the database never answered (unknown: the delivery is accepted)."""
        keys = self.keys()
        if keys is None:
            return None
        if project_id and project_id in self._ids:
            return True
        return key in keys

    def mirrors(self, issue_id: str) -> bool:
        """Whether the mirror holds a live row of the issue (then a delivery of an untracked
        project is its move out of scope, or its deletion after one: it must be applied). True
        when the database does not answer (accepting costs a job; ignoring could leave it stale)."""
        try:
            with database.connection_context():
                return (
                    Issue.select(Issue.id)
                    .where(Issue.site == self.site, Issue.issue_id == issue_id, Issue.deleted_at.is_null())
                    .exists()
                )
        except Exception as exc:
            log.warning("issue lookup unavailable error=%s", type(exc).__name__)
            return True
