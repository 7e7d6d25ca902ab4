"""The process's shutdown request (SIGTERM on Heroku), visible to long-running work.

A worker that receives SIGTERM sets ``requested``; a sync checks it between batches and in its
waits (``interruptible_sleep`` replaces ``time.sleep`` for Retry-After and backoff), stops, and
hands its job back, so the process exits well within the 30 s Heroku allows.
"""

from __future__ import annotations

import threading

requested = threading.Event()


class ShutdownRequested(Exception):
    """The process is shutting down: stop the work in hand and hand it back."""


def check() -> None:
    if requested.is_set():
        raise ShutdownRequested("the process is shutting down")


def interruptible_sleep(seconds: float) -> None:
    """``time.sleep`` that ends early, raising ShutdownRequested, when shutdown is requested."""
    if requested.wait(max(0.0, seconds)):
        raise ShutdownRequested("the process is shutting down")
