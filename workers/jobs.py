"""Job functions: thin. A pure mapping, one write through ``mirror.store``, errors raised so
RQ's retries and failed registry see them (STYLE.md, "Jobs are thin")."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

import peewee as pw

from mirror import store
from mirror.db import database
from mirror.issues import to_row

log = logging.getLogger(__name__)


@contextmanager
def db_session() -> Iterator[None]:
    """Use the worker's open connection; drop it when it broke so the retry reconnects."""
    try:
        yield
    except (pw.OperationalError, pw.InterfaceError):
        if not database.is_closed():
            try:
                database.close()
            except Exception:  # the connection is already gone; nothing to release
                pass
        raise


def upsert_issue(site: str, issue: dict[str, Any], event_ts: int, source: str = "webhook") -> str:
    """Write the issue's version unless the mirror holds a newer one; returns the outcome."""
    row = to_row(site, issue, source=source, event_ts=event_ts)
    with db_session():
        changed = store.upsert_issues([row])
    outcome = "applied" if changed else "stale"
    log.info("upsert key=%s id=%s source=%s outcome=%s", row["key"], row["issue_id"], source, outcome)
    return outcome


def delete_issue(site: str, issue: dict[str, Any], event_ts: int, source: str = "webhook") -> str:
    """Soft-delete the issue (a tombstone when the mirror never saw it)."""
    row = to_row(site, issue, source=source, event_ts=event_ts)
    with db_session():
        changed = store.delete_issues([row])
    outcome = "deleted" if changed else "already-deleted"
    log.info("delete key=%s id=%s outcome=%s", row["key"], row["issue_id"], outcome)
    return outcome
