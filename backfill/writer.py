"""A writer thread: database writes run in order on a thread of their own, on its own connection,
while the sync goes on reading and mapping (the database's time overlaps the rest of the run).

At most ``in_flight`` writes wait in its queue: the reader waits for the oldest beyond that, so
memory stays bounded whatever the speed of the database. A write that raised raises again in the
caller, at its next :meth:`Writer.submit` or at :meth:`Writer.wait`.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
from typing import Any, Callable

from mirror.db import asynchronous_commit, database, prefer_fast_compression


def _on_own_connection(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on this thread's own connection (opened once, kept for the thread's life;
    its large values compressed the cheap way, ``db.prefer_fast_compression``, its commits not
    waiting for the disk, ``db.asynchronous_commit``)."""
    if database.is_closed():
        database.connect()
        prefer_fast_compression()
        asynchronous_commit()
    return fn(*args)


def _close_own_connection() -> None:
    if not database.is_closed():
        database.close()


class Writer:
    """Writes in order on one thread (started at the first write). Not thread-safe: one caller."""

    def __init__(self, name: str, *, in_flight: int = 4):
        self.name = name
        self.in_flight = max(1, in_flight)
        self._pool: cf.ThreadPoolExecutor | None = None
        self._writes: collections.deque[cf.Future[Any]] = collections.deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; waits while more than ``in_flight`` are queued. Raises what an
        earlier write raised."""
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix=self.name)
        self._writes.append(self._pool.submit(_on_own_connection, fn, *args))
        while self._writes and (len(self._writes) > self.in_flight or self._writes[0].done()):
            self._writes.popleft().result()

    def wait(self) -> None:
        """Every queued write done; raises what one raised."""
        while self._writes:
            self._writes.popleft().result()

    def close(self) -> None:
        """Let the queued writes finish (their rows are good ones), then end the thread and its
        connection. Raises nothing: a caller that needs the outcome calls :meth:`wait` first."""
        if self._pool is not None:
            self._pool.submit(_close_own_connection)
            self._pool.shutdown(wait=True)
            self._pool = None
            self._writes.clear()
