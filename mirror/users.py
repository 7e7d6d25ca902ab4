"""Jira users and the team's member list, and how far the two are matched.

* :func:`sync_users` mirrors ``GET /rest/api/3/users/search`` into ``jira_user``. Users are keyed
  by ``accountId``: ``emailAddress`` is absent whenever the user's privacy settings hide it
  (docs/jira.md, "Other reads"), so it is stored when visible and NULL otherwise.
* :func:`import_members` loads the team's own list (CSV ``email,name,external_id``) into
  ``jira_member``, all or nothing.
* :func:`match_report` says how many distinct assignees of live issues are matched to a member
  (Jira e-mail equals member e-mail, case-insensitively).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import os
import re
from typing import Any, Iterable, Iterator, Protocol

from mirror import store
from mirror.db import database
from mirror.issues import utc_now
from mirror.models import Issue, Member, User

log = logging.getLogger(__name__)

__all__ = ["MemberImportError", "import_members", "match_report", "sync_users"]

MEMBER_COLUMNS = ("email", "name", "external_id")
# Deliberately loose (addresses are compared, not delivered to): one @, something either side,
# a dot in the domain, no spaces.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_FIELD_LIMITS = {"email": 320, "name": 255, "external_id": 255}
MAX_REPORTED_PROBLEMS = 50
SYNC_BATCH = 1000


class UserSource(Protocol):
    """What :func:`sync_users` needs of a Jira client (``mirror.jira.JiraClient`` fits)."""

    def iter_users(self) -> Iterable[dict[str, Any]]: ...


class MemberImportError(ValueError):
    """The member file cannot be imported; ``problems`` lists ``line N: why`` (nothing was written)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = problems or []
        shown = self.problems[:MAX_REPORTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        lines = [message, *("  " + p for p in shown)]
        if more > 0:
            lines.append(f"  … and {more} more")
        super().__init__("\n".join(lines))


# --- Jira users -------------------------------------------------------------------------------


def _user_row(site: str, user: Any, now: dt.datetime) -> dict[str, Any] | None:
    if not isinstance(user, dict):
        return None
    account_id = user.get("accountId")
    if not isinstance(account_id, str) or not account_id or len(account_id) > 128:
        return None
    email = user.get("emailAddress")
    email = email.strip() if isinstance(email, str) and email.strip() else None
    name = user.get("displayName")
    account_type = user.get("accountType")
    active = user.get("active")
    return {
        "site": site,
        "account_id": account_id,
        "display_name": name[:255] if isinstance(name, str) else None,
        "email": email if email and len(email) <= 320 else None,
        "active": active if isinstance(active, bool) else True,
        "account_type": account_type[:32] if isinstance(account_type, str) else None,
        "synced_at": now,
    }


def sync_users(client: UserSource, site: str) -> dict[str, int]:
    """Mirror every Jira user into ``jira_user``; returns counts (seen, written, with_email,
    hidden_email, inactive, skipped). Raises what the client raises (``JiraError``) and
    database errors; users written before such an error stay written (a re-run completes it)."""
    counts = {"seen": 0, "written": 0, "with_email": 0, "hidden_email": 0, "inactive": 0, "skipped": 0}
    now = utc_now()
    seen_ids: set[str] = set()
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        if batch:
            counts["written"] += store.upsert_users(batch)
            batch.clear()

    for user in client.iter_users():
        counts["seen"] += 1
        row = _user_row(site, user, now)
        # A user twice in the listing (pages shift while they are read) is written once.
        if row is None or row["account_id"] in seen_ids:
            counts["skipped"] += 1
            continue
        seen_ids.add(row["account_id"])
        counts["with_email" if row["email"] else "hidden_email"] += 1
        counts["inactive"] += not row["active"]
        batch.append(row)
        if len(batch) >= SYNC_BATCH:
            flush()
    flush()
    log.info(
        "users synced site=%s seen=%d written=%d hidden_email=%d inactive=%d skipped=%d",
        site,
        counts["seen"],
        counts["written"],
        counts["hidden_email"],
        counts["inactive"],
        counts["skipped"],
    )
    return counts


# --- team members -----------------------------------------------------------------------------


def _read_members(text: str) -> list[dict[str, Any]]:
    """Parse and validate the CSV; raises MemberImportError with every problem found."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise MemberImportError(f"line 1: not CSV ({exc})") from None
    if header is None:
        raise MemberImportError("the file is empty: expected a header line email,name,external_id")
    columns = [h.strip().lower() for h in header]
    unknown = [c for c in columns if c not in MEMBER_COLUMNS]
    why = None
    if "email" not in columns:
        why = "no 'email' column"
    elif unknown:
        why = "unknown column(s) " + ", ".join(repr(c) for c in unknown)
    elif len(set(columns)) != len(columns):
        why = "a column appears twice"
    if why:
        raise MemberImportError(f"line 1: the header must be email,name,external_id ({why})")

    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    now = utc_now()
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(f"line {reader.line_num}: not CSV ({exc})")
            break  # the reader cannot resynchronise after a broken quote
        line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue  # blank lines are allowed
        if len(record) != len(columns):
            problems.append(f"line {line}: {len(record)} field(s), the header has {len(columns)}")
            continue
        values = {c: v.strip() for c, v in zip(columns, record)}
        email = values.get("email", "").lower()
        if not email:
            problems.append(f"line {line}: email is empty")
            continue
        if not _EMAIL.match(email):
            problems.append(f"line {line}: {email!r} is not an e-mail address")
            continue
        too_long = [c for c, v in values.items() if len(v) > _FIELD_LIMITS[c]]
        if too_long:
            problems.append(f"line {line}: {too_long[0]} is longer than {_FIELD_LIMITS[too_long[0]]} characters")
            continue
        if email in first_line:
            problems.append(f"line {line}: {email} already appears on line {first_line[email]}")
            continue
        first_line[email] = line
        rows.append(
            {
                "email": email,
                "name": values.get("name") or None,
                "external_id": values.get("external_id") or None,
                "imported_at": now,
            }
        )
    if problems:
        raise MemberImportError(f"{len(problems)} bad row(s); nothing was imported:", problems)
    return rows


def import_members(path: str | os.PathLike[str]) -> dict[str, int]:
    """Load a members CSV (header ``email,name,external_id``; ``name`` and ``external_id`` may
    be left out) into ``jira_member``: e-mail stored lower-case, a known e-mail updated.

    All or nothing: any bad row raises :class:`MemberImportError` listing every bad line, and
    nothing is written. Returns counts (rows, created, updated). Raises OSError when the file
    cannot be read.
    """
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")  # spreadsheets often start UTF-8 CSV with a BOM
    except UnicodeDecodeError as exc:
        raise MemberImportError(f"the file is not UTF-8 (byte {exc.start})") from None
    rows = _read_members(text)
    with database.atomic():
        emails = [r["email"] for r in rows]
        known: set[str] = set()
        for start in range(0, len(emails), 500):
            chunk = emails[start : start + 500]
            known.update(m.email for m in Member.select(Member.email).where(Member.email.in_(chunk)))
        store.upsert_members(rows)
    counts = {"rows": len(rows), "created": len(rows) - len(known), "updated": len(known)}
    log.info("members imported rows=%d created=%d updated=%d", counts["rows"], counts["created"], counts["updated"])
    return counts


# --- matching ---------------------------------------------------------------------------------


def _tuples(query: Any) -> Iterator[tuple[Any, ...]]:
    return iter(query.tuples())


def match_report(site: str) -> dict[str, Any]:
    """How the distinct assignees of live (not deleted) issues match the member list.

    An assignee matches when its Jira user's e-mail equals a member's e-mail, case-insensitively.
    Unknown account ids (no ``jira_user`` row: run ``users sync``) and hidden e-mails are
    unmatched. Inactive users still match; they are also counted in ``matched_inactive``.
    Returns ``{assignees, matched, unmatched, matched_inactive, unmatched_by_reason:
    {unknown_user, hidden_email, no_member}, members, users, unmatched_accounts: [{account_id,
    display_name, reason}]}``. Reads through the bound database (the caller owns the
    connection); raises database errors.
    """
    assignees = [
        row[0]
        for row in _tuples(
            Issue.select(Issue.assignee_account_id)
            .where(Issue.site == site, Issue.deleted_at.is_null(), Issue.assignee_account_id.is_null(False))
            .distinct()
        )
    ]
    users: dict[str, tuple[str | None, str | None, bool]] = {}
    for start in range(0, len(assignees), 500):
        chunk = assignees[start : start + 500]
        for account_id, name, email, active in _tuples(
            User.select(User.account_id, User.display_name, User.email, User.active).where(
                User.site == site, User.account_id.in_(chunk)
            )
        ):
            users[account_id] = (name, email, bool(active))
    member_emails = {row[0] for row in _tuples(Member.select(Member.email))}
    user_count = User.select().where(User.site == site).count()

    reasons = {"unknown_user": 0, "hidden_email": 0, "no_member": 0}
    matched = matched_inactive = 0
    unmatched_accounts: list[dict[str, Any]] = []
    for account_id in sorted(assignees):
        user = users.get(account_id)
        if user is None:
            reason = "unknown_user"
        elif not user[1]:
            reason = "hidden_email"
        elif user[1].lower() not in member_emails:
            reason = "no_member"
        else:
            matched += 1
            matched_inactive += not user[2]
            continue
        reasons[reason] += 1
        unmatched_accounts.append(
            {"account_id": account_id, "display_name": user[0] if user else None, "reason": reason}
        )
    return {
        "assignees": len(assignees),
        "matched": matched,
        "unmatched": len(assignees) - matched,
        "matched_inactive": matched_inactive,
        "unmatched_by_reason": reasons,
        "members": len(member_emails),
        "users": int(user_count),
        "unmatched_accounts": unmatched_accounts,
    }
