"""The in-memory state of one simulated Jira Cloud site.

What this imitates (Jira Cloud platform REST v3, https://developer.atlassian.com/cloud/jira/platform/):

* Issues have a numeric string ``id`` that never changes and a ``key`` ``PROJ-n`` that changes when
  the issue moves to another project ("Move issues", the key takes the target project's next
  number; the old key keeps resolving to the issue). A project's key can be renamed: same
  project id, every issue becomes ``NEW-<same number>``, former keys keep resolving.
* Every issue change bumps ``updated`` (millisecond precision; a project key rename edits no
  issue and does not) and is recorded with a changelog
  (``changelog.items`` of ``field``/``from``/``fromString``/``to``/``toString``), which the webhook
  pusher turns into ``jira:issue_*`` events.
* Search is eventually consistent ("Search results may be delayed" in the search/jql docs; the
  ``reconcileIssues`` parameter exists because of it): every version of an issue is kept with the
  time it became current, so a reader can ask what the site looked like ``n`` seconds ago.

Issues are kept as immutable, slotted :class:`IssueVersion` records (a few hundred bytes each), so
a site of 100,000 issues is generated in a couple of seconds and fits in tens of megabytes.
Rendering to JSON lives in :mod:`simulator.render`; this module imports nothing from the mirror.
"""

from __future__ import annotations

import bisect
import dataclasses
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

__all__ = [
    "ActivityEvent",
    "ChangeEvent",
    "Comment",
    "History",
    "Worklog",
    "IssueNotFoundError",
    "IssueVersion",
    "Project",
    "ProjectEvent",
    "Site",
    "SiteError",
    "Status",
    "User",
    "STATUSES",
    "ISSUE_TYPES",
    "PRIORITIES",
    "SEVERITIES",
    "CUSTOM_FIELDS",
]

Clock = Callable[[], float]
"""A function answering the current time in epoch seconds (``time.time`` by default)."""


class SiteError(Exception):
    """A mutation or lookup the site cannot perform (unknown project, bad field value...)."""


class IssueNotFoundError(SiteError):
    """The issue id or key does not exist on the site, or the issue was deleted."""


# --- reference data -------------------------------------------------------------------------
# Ids and names follow a fresh Jira Software Cloud site ("To Do"/"In Progress"/"Done" with the
# three status categories new/indeterminate/done, priorities 1-5, the default issue types).


@dataclass(frozen=True)
class Status:
    """A workflow status and its status category (``new``, ``indeterminate`` or ``done``)."""

    id: str
    name: str
    category: str


STATUSES: dict[str, Status] = {
    s.name: s
    for s in (
        Status("10000", "To Do", "new"),
        Status("10001", "Backlog", "new"),
        Status("3", "In Progress", "indeterminate"),
        Status("10002", "In Review", "indeterminate"),
        Status("10003", "Done", "done"),
        Status("10004", "Won't Do", "done"),
    )
}

STATUS_CATEGORIES: dict[str, tuple[int, str, str]] = {
    # key: (id, name, colorName)
    "new": (2, "To Do", "blue-gray"),
    "indeterminate": (4, "In Progress", "yellow"),
    "done": (3, "Done", "green"),
}

ISSUE_TYPES: dict[str, str] = {"Epic": "10000", "Task": "10001", "Bug": "10002", "Story": "10003"}
PRIORITIES: dict[str, str] = {"Highest": "1", "High": "2", "Medium": "3", "Low": "4", "Lowest": "5"}
SEVERITIES: dict[str, str] = {"S1 - Critical": "10100", "S2 - Major": "10101",
                              "S3 - Minor": "10102", "S4 - Trivial": "10103"}

#: Custom fields of the site: id -> (name, schema type, IssueVersion attribute or None).
#: ``customfield_10032`` exists but is never set, as so many custom fields on real sites. Story
#: points and sprints are Jira Software fields whose ids differ per site (AGILE_FIELD_CHOICES).
CUSTOM_FIELDS: dict[str, tuple[str, str, str | None]] = {
    "customfield_10030": ("Customer reference", "string", "customer_ref"),
    "customfield_10031": ("Severity", "option", "severity"),
    "customfield_10032": ("Legacy ticket", "string", None),
}

_ATTR_BY_CUSTOM_ID = {cid: attr for cid, (_n, _t, attr) in CUSTOM_FIELDS.items() if attr}

#: Jira Software's story-point and sprint fields are custom fields created per site, so their
#: ids differ from site to site (JIRA.md; e.g. team-managed "Story point estimate" 10016,
#: company-managed "Story Points" 10026/10028, "Sprint" 10020 or 10010 on older sites). A site
#: takes one pair by its seed: (story points id, its name, sprint id).
AGILE_FIELD_CHOICES: tuple[tuple[str, str, str], ...] = (
    ("customfield_10016", "Story point estimate", "customfield_10020"),
    ("customfield_10026", "Story Points", "customfield_10010"),
    ("customfield_10028", "Story Points", "customfield_10104"),
    ("customfield_10106", "Story point estimate", "customfield_10007"),
)
#: Every id a story-point or sprint field may have on some site (fields a request may name).
AGILE_FIELD_IDS: tuple[str, ...] = tuple(dict.fromkeys(
    [sp for sp, _n, _s in AGILE_FIELD_CHOICES] + [sprint for _sp, _n, sprint in AGILE_FIELD_CHOICES]))
STORY_POINTS_TYPE = "com.pyxis.greenhopper.jira:jsw-story-points"
SPRINT_TYPE = "com.pyxis.greenhopper.jira:gh-sprint"
#: Sprints of every board: id -> (name suffix, state). Ids 1-6 closed, 7 active, 8 future.
SPRINTS: dict[int, str] = {n: ("closed" if n < 7 else "active" if n == 7 else "future") for n in range(1, 9)}

TIME_ZONES = (
    "America/Los_Angeles", "America/New_York", "America/Sao_Paulo", "Europe/London",
    "Europe/Berlin", "Asia/Kolkata", "Asia/Kathmandu", "Asia/Tokyo", "Australia/Sydney",
    "America/St_Johns", "UTC", "Pacific/Auckland",
)

FIRST_NAMES = ("Ana", "Bjørn", "Chloé", "Dmitri", "Efua", "François", "Gita", "Hiroshi", "Ines",
               "Jamal", "Kasia", "Lars", "Mei", "Nikolai", "Olga", "Priya", "Quentin", "Rosa",
               "Søren", "Tomás", "Uma", "Vikram", "Wen", "Xavier", "Yara", "Zoë", "Łukasz",
               "José", "Ayşe", "Nguyễn")
LAST_NAMES = ("Andersen", "Brown", "Castillo", "Dubois", "Eze", "Fischer", "García", "Haddad",
              "Ivanova", "Jensen", "Kowalski", "Lee", "Müller", "Nakamura", "O'Brien", "Patel",
              "Quinn", "Rossi", "Schmidt", "Tanaka", "Üzüm", "Virtanen", "Wang", "Yılmaz", "Zhang")

_VERBS = ("Fix", "Add", "Remove", "Refactor", "Investigate", "Document", "Migrate", "Upgrade",
          "Improve", "Support", "Handle", "Optimise", "Revert", "Clean up", "Automate", "Test")
_OBJECTS = ("login flow", "payment retries", "CSV export", "search index", "webhook handler",
            "billing page", "OAuth refresh", "rate limiter", "dark mode", "audit log",
            "onboarding email", "API pagination", "S3 uploads", "mobile layout", "SSO for Okta",
            "time zone handling", "date picker", "invoice PDF", "Slack notifications",
            "permissions cache", "Überweisungen", "日本語の翻訳", "naïve café menu", "кэш сессий",
            "résumé parser", "emoji 🎉 reactions")
_QUALIFIERS = ("", "", "", " on Safari", " for EU customers", " after deploy", " (regression)",
               " in staging", " when offline", " 🚀", " 🐛", " — follow-up", " [P1]", " ✅",
               " for user \"admin\"", " & cleanup", " <script>", " 100% of the time")
_LABELS = ("backend", "frontend", "tech-debt", "customer", "security", "performance", "ux", "api",
           "infra", "flaky-test", "release-blocker", "i18n", "docs", "needs-triage")
_SENTENCES = (
    "Steps to reproduce are in the linked support ticket.",
    "The customer reports this happens about once a day.",
    "Expected: the page loads in under a second. Actual: it times out.",
    "See the stack trace in the attached log for details.",
    "Ça marche en local mais pas en production.",
    "Wir sollten das vor dem nächsten Release beheben. 🙏",
    "この問題は再現できます。",
    "Acceptance criteria: all existing tests pass and the new case is covered.",
    "Blocked until the upstream library ships a fix.",
    "Low risk; behind a feature flag.",
)


# --- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    """A Jira project: ``key`` (e.g. ``DEMO``), numeric string ``id`` and ``name``."""

    key: str
    id: str
    name: str


@dataclass(frozen=True)
class User:
    """An Atlassian account. ``email`` is ``None`` when hidden by the user's privacy settings."""

    account_id: str
    display_name: str
    email: str | None
    active: bool
    time_zone: str


@dataclass(frozen=True, slots=True)
class IssueVersion:
    """One version of an issue, immutable. Times are epoch milliseconds (UTC).

    ``project`` is the project key, ``num`` the number in the key. ``description`` is plain text
    (paragraphs split by blank lines, ``- `` bullet lines), rendered to ADF for REST v3 and to
    wiki markup for webhooks. ``severity`` is the option value of ``customfield_10031``.
    """

    id: str
    key: str
    project: str
    num: int
    summary: str
    status: str
    issuetype: str
    priority: str | None
    assignee: str | None
    reporter: str
    creator: str
    labels: tuple[str, ...]
    created: int
    updated: int
    resolutiondate: int | None
    description: str | None
    story_points: float | None
    customer_ref: str | None
    severity: str | None
    sprints: tuple[int, ...] = ()

    @property
    def status_category(self) -> str:
        return STATUSES[self.status].category


@dataclass(frozen=True)
class ChangeEvent:
    """What one mutation did, for the webhook pusher.

    ``kind`` is ``created``, ``updated``, ``moved`` or ``deleted``; ``event_type`` the Jira
    ``issue_event_type_name`` (``issue_created``, ``issue_updated``, ``issue_generic``,
    ``issue_assigned``, ``issue_moved``, ``issue_deleted``). ``after`` is ``None`` for a deletion.
    ``items`` are changelog items shaped like Jira's (``field``, ``fieldtype``, ``fieldId``,
    ``from``, ``fromString``, ``to``, ``toString``).
    """

    kind: str
    event_type: str
    issue_id: str
    before: IssueVersion | None
    after: IssueVersion | None
    actor: str
    timestamp: int
    changelog_id: str | None
    items: tuple[dict[str, Any], ...] = ()

    @property
    def issue(self) -> IssueVersion:
        """The version a webhook shows: the new one, or the last one for a deletion."""
        version = self.after or self.before
        assert version is not None
        return version


@dataclass(frozen=True)
class ProjectEvent:
    """What a project mutation did, for the webhook pusher.

    ``kind`` is ``project_updated`` (the only one so far: a key rename); ``before`` and ``after``
    are the project as it was and as it is (same ``id``), ``actor`` the account that made it.
    """

    kind: str
    before: Project
    after: Project
    actor: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment: ``body`` plain text (ADF in REST v3, wiki markup in webhooks); times in ms."""

    id: str
    issue_id: str
    author: str
    body: str
    created: int
    updated: int


@dataclass(frozen=True, slots=True)
class Worklog:
    """A worklog: ``started``, ``created``, ``updated`` in ms, ``seconds`` spent."""

    id: str
    issue_id: str
    author: str
    started: int
    seconds: int
    comment: str | None
    created: int
    updated: int


@dataclass(frozen=True, slots=True)
class History:
    """One change history of an issue's changelog: id, time (ms), author, items."""

    id: str
    created: int
    author: str
    items: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class ActivityEvent:
    """A comment or worklog change, for the webhook pusher: ``kind`` is the webhook event
    (``comment_created``...``worklog_deleted``), ``entity`` the record (its last state for a
    deletion), ``issue`` the issue's current version."""

    kind: str
    entity: Comment | Worklog
    issue: IssueVersion
    actor: str
    timestamp: int


# History of one issue: (time it became current in the site's search index, version or None
# for a deletion tombstone), oldest first.
_History = list[tuple[int, "IssueVersion | None"]]


class Site:
    """A simulated Jira Cloud site: projects, users, issues and their history. Thread-safe.

    Args:
        clock: answers "now" in epoch seconds; ``time.time`` by default. Inject one to freeze or
            drive time in tests.
        seed: seeds the ``random.Random`` used for random mutations.
        history_keep_seconds: versions older than this (and superseded) are dropped, bounding
            memory; it must exceed any index lag you simulate.

    All mutation methods take the lock, record a new version, and then (outside the lock) call
    every listener registered with :meth:`subscribe` with a :class:`ChangeEvent`.
    """

    def __init__(self, *, clock: Clock | None = None, seed: int = 0,
                 history_keep_seconds: float = 3600.0) -> None:
        self._lock = threading.RLock()
        self.clock: Clock = clock or time.time
        self.rng = random.Random(seed)
        self.history_keep_ms = int(history_keep_seconds * 1000)
        self.projects: dict[str, Project] = {}
        self.users: dict[str, User] = {}
        self.me: User | None = None
        self._next_num: dict[str, int] = {}
        self._history: dict[str, _History] = {}
        self._by_key: dict[str, str] = {}
        self._aliases: dict[str, str] = {}
        self._project_aliases: dict[str, str] = {}
        self._next_id = 10001
        self._next_changelog = 10000
        self._mutation_times: list[int] = []
        self._last_since = 0
        self._listeners: list[Callable[[Any], None]] = []
        self.counts: dict[str, int] = {"created": 0, "updated": 0, "moved": 0, "deleted": 0,
                                       "project_updated": 0, "comment_created": 0, "comment_updated": 0,
                                       "comment_deleted": 0, "worklog_created": 0, "worklog_updated": 0,
                                       "worklog_deleted": 0}
        self.seed = seed
        choice = AGILE_FIELD_CHOICES[seed % len(AGILE_FIELD_CHOICES)]
        #: This site's story-point field (id, name) and sprint field id.
        self.story_points_field, self.story_points_name, self.sprint_field = choice
        # Changelogs, comments and worklogs: what mutations recorded; generated issues derive
        # theirs from their first version (_origin) on demand, so a big site costs no memory.
        self._origin: dict[str, IssueVersion] = {}
        self._histories: dict[str, list[History]] = {}
        self._comments: dict[str, dict[str, Comment]] = {}
        self._worklogs: dict[str, dict[str, Worklog]] = {}
        self._comment_index: dict[str, str] = {}  # comment id -> issue id
        self._worklog_index: dict[str, str] = {}
        self._worklog_changes: list[tuple[int, int]] = []  # (updated ms, worklog id), in time order
        self._worklog_deletions: list[tuple[int, int]] = []
        self._next_comment = 20000
        self._next_worklog = 30000

    # --- time ---------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The site clock in epoch milliseconds."""
        return int(self.clock() * 1000)

    # --- setup --------------------------------------------------------------------------

    def add_project(self, key: str, name: str | None = None) -> Project:
        """Creates a project (ids count from 10000). Raises :class:`SiteError` if the key exists."""
        key = key.upper()
        with self._lock:
            if key in self.projects:
                raise SiteError(f"project {key} exists")
            project = Project(key=key, id=str(10000 + len(self.projects)),
                              name=name or f"{key.title()} Project")
            self.projects[key] = project
            self._next_num[key] = 1
            return project

    def add_user(self, display_name: str, *, email: str | None = None, active: bool = True,
                 time_zone: str = "UTC", account_id: str | None = None) -> User:
        """Adds an Atlassian account; the account id looks like Jira's ``712020:<uuid>``."""
        with self._lock:
            if account_id is None:
                n = len(self.users) + 1
                account_id = f"712020:{n:08x}-{(n * 7919) % 65536:04x}-4a{n % 100:02d}-9c0d-{n * 104729:012x}"
            user = User(account_id, display_name, email, active, time_zone)
            self.users[account_id] = user
            return user

    @classmethod
    def generate(cls, projects: Mapping[str, int] | None = None, *, seed: int = 1, users: int = 40,
                 clock: Clock | None = None, now_ms: int | None = None, history_days: float = 365.0,
                 me_email: str = "sim@example.com", me_time_zone: str = "America/Los_Angeles",
                 history_keep_seconds: float = 3600.0, activity: bool = True) -> "Site":
        """Builds a site with ``projects`` (key -> issue count) of deterministic random issues.

        The same seed and ``now_ms`` give the same site. Issues are created over the last
        ``history_days`` days, ids in creation order across projects (as Jira allocates them),
        keys numbered per project. Generated versions are indexed from the start (the index lag
        only hides changes made afterwards). 100,000 issues take about two seconds.

        With ``activity``, issues get changelogs (derived from their status and dates, on
        demand), comments and worklogs; a few get more than one embedded page of either.
        """
        site = cls(clock=clock, seed=seed, history_keep_seconds=history_keep_seconds)
        rng = random.Random(seed)
        projects = dict(projects if projects is not None else {"DEMO": 1000})
        for key in projects:
            site.add_project(key)
        site.me = site.add_user("Simulator Bot", email=me_email, time_zone=me_time_zone)
        for i in range(users):
            name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
            hidden = rng.random() < 0.4
            email = None if hidden else (
                name.lower().replace(" ", ".").replace("'", "").encode("ascii", "ignore").decode()
                + f"{i}@example.com")
            site.add_user(name, email=email, active=rng.random() > 0.1,
                          time_zone=rng.choice(TIME_ZONES))
        now = site.now_ms() if now_ms is None else now_ms
        span = int(history_days * 86_400_000)
        plan = [(now - span + rng.randrange(span - 120_000), key)
                for key, count in projects.items() for _ in range(count)]
        plan.sort()
        account_ids = list(site.users)
        with site._lock:
            for created, key in plan:
                version = site._random_version(rng, key, created, now, account_ids)
                site._history[version.id] = [(0, version)]
                site._by_key[version.key] = version.id
                site._origin[version.id] = version
            if activity:
                site._generate_activity(random.Random(seed * 7919 + 1), account_ids)
        return site

    def _random_version(self, rng: random.Random, project: str, created: int, now: int,
                        account_ids: Sequence[str]) -> IssueVersion:
        # Caller holds the lock. Most issues were touched soon after creation; a few recently.
        issue_id = str(self._next_id)
        self._next_id += 1
        num = self._next_num[project]
        self._next_num[project] = num + 1
        updated = created + int((now - 60_000 - created) * rng.random() ** 3)
        status = rng.choice(_STATUS_NAMES)
        done = STATUSES[status].category == "done"
        return IssueVersion(
            id=issue_id, key=f"{project}-{num}", project=project, num=num,
            summary=_summary(rng), status=status, issuetype=rng.choice(_TYPE_NAMES),
            priority=None if rng.random() < 0.1 else rng.choice(_PRIORITY_NAMES),
            assignee=None if rng.random() < 0.25 else rng.choice(account_ids),
            reporter=rng.choice(account_ids), creator=rng.choice(account_ids),
            labels=_labels(rng), created=created, updated=updated,
            resolutiondate=updated if done else None, description=_description(rng),
            story_points=None if rng.random() < 0.4 else float(rng.choice((1, 2, 3, 5, 8, 13, 0.5))),
            customer_ref=None if rng.random() < 0.7 else f"CASE-{rng.randrange(100000):05d}",
            severity=None if rng.random() < 0.5 else rng.choice(_SEVERITY_NAMES),
            sprints=_sprints_for(issue_id),
        )

    # --- listeners ----------------------------------------------------------------------

    def subscribe(self, listener: Callable[[Any], None]) -> None:
        """Calls ``listener(event)`` after every mutation, in the mutating thread.

        ``event`` is a :class:`ChangeEvent` for an issue change, a :class:`ProjectEvent` for a
        project change (:meth:`rename_project`).
        """
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[Any], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _emit(self, event: Any) -> Any:
        with self._lock:
            self.counts[event.kind] += 1
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event)
        return event

    # --- reads --------------------------------------------------------------------------

    def resolve(self, id_or_key: str) -> str | None:
        """The id of a live or deleted issue by id, key or former key (case-insensitive key)."""
        ref = str(id_or_key).strip()
        with self._lock:
            if ref in self._history:
                return ref
            upper = ref.upper()
            return self._by_key.get(upper) or self._aliases.get(upper)

    def get(self, id_or_key: str) -> IssueVersion | None:
        """The current version of an issue, or ``None`` if unknown or deleted (no index lag)."""
        with self._lock:
            issue_id = self.resolve(id_or_key)
            if issue_id is None:
                return None
            return self._history[issue_id][-1][1]

    def issue_ids(self, *, include_deleted: bool = False) -> list[str]:
        """Ids of the current (optionally also deleted) issues, in id order."""
        with self._lock:
            return [i for i, h in self._history.items() if include_deleted or h[-1][1] is not None]

    def current(self, project: str | None = None) -> list[IssueVersion]:
        """The current versions of all live issues (of one project if given)."""
        with self._lock:
            out = [h[-1][1] for h in self._history.values() if h[-1][1] is not None]
        return [v for v in out if project is None or v.project == project]  # type: ignore[union-attr]

    def history(self, issue_id: str) -> list[tuple[int, IssueVersion | None]]:
        """Every kept version of an issue with the time (ms) it became current."""
        with self._lock:
            return list(self._history.get(issue_id, ()))

    def visible(self, at_ms: int | None = None) -> list[IssueVersion]:
        """The issues as the search index saw them at ``at_ms`` (``None``: now, no lag).

        An issue created after ``at_ms`` is absent, one updated after shows its older version,
        one deleted after still shows.
        """
        with self._lock:
            if at_ms is None or at_ms >= self._last_since:
                return [h[-1][1] for h in self._history.values() if h[-1][1] is not None]
            out: list[IssueVersion] = []
            for h in self._history.values():
                for since, version in reversed(h):
                    if since <= at_ms:
                        if version is not None:
                            out.append(version)
                        break
            return out

    def snapshot(self, at_ms: int | None = None) -> tuple[int, list[IssueVersion]]:
        """:meth:`view_seq` and :meth:`visible` read atomically (no mutation in between)."""
        with self._lock:
            return self.view_seq(at_ms), self.visible(at_ms)

    def view_seq(self, at_ms: int | None = None) -> int:
        """A number that changes whenever :meth:`visible` at ``at_ms`` could change (cache key)."""
        with self._lock:
            if at_ms is None:
                return len(self._mutation_times)
            return bisect.bisect_right(self._mutation_times, at_ms)

    def project_of_key(self, key: str) -> str:
        return key.rsplit("-", 1)[0].upper()

    def find_project(self, id_key_or_former_key: str) -> Project | None:
        """A project by id, key or former key (keys case-insensitive); ``None`` if unknown.

        Jira keeps a renamed project's former keys resolving ("Jira reserves all previous
        historical keys", Atlassian KB "Migration of Jira's historical keys for issues and
        projects"), so an issue version recorded before a rename still finds its project.
        """
        ref = str(id_key_or_former_key).strip()
        with self._lock:
            upper = ref.upper()
            key = upper if upper in self.projects else self._project_aliases.get(upper)
            if key is not None:
                return self.projects[key]
            for project in self.projects.values():
                if project.id == ref:
                    return project
            return None

    def project_keys(self) -> dict[str, str]:
        """Every key a project answers to, current or former, mapped to its current key."""
        with self._lock:
            out = {key: key for key in self.projects}
            out.update(self._project_aliases)
            return out

    # --- mutations ----------------------------------------------------------------------

    def _stamp(self) -> int:
        # Caller holds the lock. Index times are non-decreasing even if the clock steps back.
        since = max(self.now_ms(), self._last_since)
        self._last_since = since
        self._mutation_times.append(since)
        return since

    def _record(self, issue_id: str, since: int, version: IssueVersion | None) -> None:
        history = self._history.setdefault(issue_id, [])
        history.append((since, version))
        horizon = since - self.history_keep_ms
        while len(history) > 1 and history[1][0] <= horizon:
            history.pop(0)

    def _actor(self, actor: str | None) -> str:
        if actor is not None:
            if actor not in self.users:
                raise SiteError(f"unknown user {actor}")
            return actor
        active = [u.account_id for u in self.users.values() if u.active] or list(self.users)
        if not active:
            raise SiteError("the site has no users")
        return self.rng.choice(active)

    def _changelog_id(self) -> str:
        self._next_changelog += 1
        return str(self._next_changelog)

    def create_issue(self, project: str, *, actor: str | None = None, **fields: Any) -> ChangeEvent:
        """Creates an issue in ``project`` (random content, overridden by ``fields``).

        ``project`` is a key, a former key or an id. ``fields`` take the names of
        :meth:`update_issue`. Raises :class:`SiteError`.
        """
        with self._lock:
            found = self.find_project(project)
            if found is None:
                raise SiteError(f"unknown project {project}")
            key = found.key
            actor_id = self._actor(actor)
            since = self._stamp()
            version = self._random_version(self.rng, key, since, since, list(self.users))
            version = dataclasses.replace(version, created=since, updated=since, reporter=actor_id,
                                          creator=actor_id, resolutiondate=None, status="To Do")
            if fields:
                version = self._apply(version, fields, since)
            self._record(version.id, since, version)
            self._by_key[version.key] = version.id
            event = ChangeEvent("created", "issue_created", version.id, None, version, actor_id,
                                since, self._changelog_id(), ())
        return self._emit(event)

    def update_issue(self, issue_id: str, *, actor: str | None = None, **changes: Any) -> ChangeEvent:
        """Changes an issue; random edits when no ``changes`` are given.

        Accepted names: ``summary``, ``status`` (name), ``issuetype`` (name), ``priority`` (name
        or None), ``assignee`` / ``reporter`` (account id or None), ``labels`` (list),
        ``description`` (text or None), ``story_points``, ``customer_ref``, ``severity`` (option
        value), or the ``customfield_100xx`` ids. ``updated`` becomes now (strictly after the
        previous ``updated``). Raises :class:`IssueNotFoundError` / :class:`SiteError`.
        """
        with self._lock:
            before = self._live(issue_id)
            actor_id = self._actor(actor)
            if not changes:
                changes = self._random_changes(before)
            since = self._stamp()
            updated = max(since, before.updated + 1)
            after = self._apply(before, changes, updated)
            after = dataclasses.replace(after, updated=updated)
            items = tuple(_diff(before, after, self.users, self.projects, self))
            self._record(before.id, since, after)
            fields_changed = {i.get("fieldId") for i in items}
            if "status" in fields_changed:
                event_type = "issue_generic"
            elif fields_changed == {"assignee"}:
                event_type = "issue_assigned"
            else:
                event_type = "issue_updated"
            event = ChangeEvent("updated", event_type, before.id, before, after, actor_id, updated,
                                self._changelog_id(), items)
            self._record_history(event)
        return self._emit(event)

    def move_issue(self, issue_id: str, to_project: str, *, actor: str | None = None) -> ChangeEvent:
        """Moves an issue to another project: same id, new key ``TO-<next number>``.

        The old key keeps resolving to the issue (GET, bulkfetch, ``key =`` in JQL), as in Jira.
        """
        with self._lock:
            before = self._live(issue_id)
            found = self.find_project(to_project)
            if found is None:
                raise SiteError(f"unknown project {to_project}")
            target = found.key
            if target == before.project:
                raise SiteError(f"{before.key} is already in {target}")
            actor_id = self._actor(actor)
            since = self._stamp()
            num = self._next_num[target]
            self._next_num[target] = num + 1
            after = dataclasses.replace(before, key=f"{target}-{num}", project=target, num=num,
                                        updated=max(since, before.updated + 1))
            self._record(before.id, since, after)
            del self._by_key[before.key]
            self._aliases[before.key] = before.id
            self._by_key[after.key] = after.id
            items = tuple(_diff(before, after, self.users, self.projects, self))
            event = ChangeEvent("moved", "issue_moved", before.id, before, after, actor_id,
                                after.updated, self._changelog_id(), items)
            self._record_history(event)
        return self._emit(event)

    def rename_project(self, old_key: str, new_key: str, *, actor: str | None = None) -> None:
        """Changes a project's key: same id, every issue becomes ``NEW-<same number>``.

        As in Jira ("Edit a project's details"; Atlassian KB "Migration of Jira's historical keys
        for issues and projects"): the project id never changes, the old project key and the old
        issue keys keep resolving (``GET issue``, bulkfetch, ``GET project``, ``project =`` and
        ``key =`` in JQL) and cannot be taken by another project. A key change re-indexes the
        project in the background and edits no issue: the issues' ``updated`` stays as it was
        and no ``jira:issue_*`` event is sent, only a ``project_updated`` one (a
        :class:`ProjectEvent`). Search shows the new keys once the index catches up (the re-index
        is subject to the index lag like any change). Raises :class:`SiteError` for an unknown
        project, a malformed key or a key in use (or reserved by another project).
        """
        old, new = old_key.strip().upper(), new_key.strip().upper()
        if not _PROJECT_KEY.match(new):
            raise SiteError(f"invalid project key {new_key!r}")
        with self._lock:
            if old not in self.projects:
                raise SiteError(f"unknown project {old_key}")
            if new in self.projects or self._project_aliases.get(new, old) != old:
                raise SiteError(f"project key {new} is in use")
            actor_id = self._actor(actor)
            before = self.projects.pop(old)
            after = dataclasses.replace(before, key=new)
            self.projects[new] = after
            self._next_num[new] = self._next_num.pop(old)
            self._project_aliases.pop(new, None)  # taking a former key of its own back
            for former, current in list(self._project_aliases.items()):
                if current == old:
                    self._project_aliases[former] = new
            self._project_aliases[old] = new
            since = self._stamp()
            for history in self._history.values():
                version = history[-1][1]
                if version is None or version.project != old:
                    continue
                renamed = dataclasses.replace(version, key=f"{new}-{version.num}", project=new)
                self._record(version.id, since, renamed)
                self._by_key.pop(version.key, None)
                self._aliases[version.key] = version.id
                self._by_key[renamed.key] = version.id
                self._aliases.pop(renamed.key, None)
            event = ProjectEvent("project_updated", before, after, actor_id, since)
        self._emit(event)

    def delete_issue(self, issue_id: str, *, actor: str | None = None) -> ChangeEvent:
        """Deletes an issue: GET answers 404 at once, search keeps showing it during the lag."""
        with self._lock:
            before = self._live(issue_id)
            actor_id = self._actor(actor)
            since = self._stamp()
            self._record(before.id, since, None)
            self._by_key.pop(before.key, None)
            event = ChangeEvent("deleted", "issue_deleted", before.id, before, None, actor_id,
                                since, None, ())
        return self._emit(event)

    # --- changelogs, comments, worklogs ---------------------------------------------------

    def _record_history(self, event: ChangeEvent) -> None:
        # Caller holds the lock. Jira keeps a change history per edit (not for the creation).
        if event.items and event.changelog_id:
            self._histories.setdefault(event.issue_id, []).append(
                History(event.changelog_id, event.timestamp, event.actor, tuple(event.items)))

    def changelog(self, issue_id: str) -> list[History]:
        """The issue's change histories, oldest first: those derived from a generated issue's
        first version, then those its mutations recorded. Empty for an unknown issue."""
        with self._lock:
            origin = self._origin.get(issue_id)
            out = _generated_histories(self, origin) if origin is not None else []
            return out + list(self._histories.get(issue_id, ()))

    def comments(self, issue_id: str) -> list[Comment]:
        """The issue's comments, oldest first."""
        with self._lock:
            return sorted(self._comments.get(issue_id, {}).values(), key=lambda c: (c.created, int(c.id)))

    def worklogs(self, issue_id: str) -> list[Worklog]:
        """The issue's worklogs, by creation time."""
        with self._lock:
            return sorted(self._worklogs.get(issue_id, {}).values(), key=lambda w: (w.created, int(w.id)))

    def comment(self, comment_id: str) -> Comment | None:
        with self._lock:
            issue_id = self._comment_index.get(str(comment_id))
            return self._comments.get(issue_id, {}).get(str(comment_id)) if issue_id else None

    def worklog(self, worklog_id: str) -> Worklog | None:
        with self._lock:
            issue_id = self._worklog_index.get(str(worklog_id))
            return self._worklogs.get(issue_id, {}).get(str(worklog_id)) if issue_id else None

    def worklog_changes(self, since_ms: int, until_ms: int, *, deleted: bool = False) -> list[tuple[int, int]]:
        """(time, worklog id) of worklogs updated (or deleted) after ``since_ms`` up to ``until_ms``,
        oldest first; a worklog changed several times is listed at its last change."""
        with self._lock:
            log = self._worklog_deletions if deleted else self._worklog_changes
            start = bisect.bisect_right(log, (since_ms, 2**62))
            latest: dict[int, int] = {}
            for when, wid in log[start:]:
                if when > until_ms:
                    break
                latest[wid] = when
            return sorted((when, wid) for wid, when in latest.items())

    def _put_comment(self, comment: Comment) -> None:
        self._comments.setdefault(comment.issue_id, {})[comment.id] = comment
        self._comment_index[comment.id] = comment.issue_id

    def _put_worklog(self, worklog: Worklog) -> None:
        self._worklogs.setdefault(worklog.issue_id, {})[worklog.id] = worklog
        self._worklog_index[worklog.id] = worklog.issue_id
        bisect.insort(self._worklog_changes, (worklog.updated, int(worklog.id)))

    def _touch(self, issue: IssueVersion) -> tuple[int, IssueVersion]:
        # Caller holds the lock. A comment bumps the issue's `updated` (Jira: issue_commented).
        since = self._stamp()
        after = dataclasses.replace(issue, updated=max(since, issue.updated + 1))
        self._record(issue.id, since, after)
        return after.updated, after

    def add_comment(self, issue_id: str, body: str | None = None, *, actor: str | None = None) -> ActivityEvent:
        """Adds a comment (random text unless given). Raises IssueNotFoundError / SiteError."""
        with self._lock:
            issue = self._live(issue_id)
            actor_id = self._actor(actor)
            self._next_comment += 1
            now, issue = self._touch(issue)
            comment = Comment(str(self._next_comment), issue.id, actor_id, body or self.rng.choice(_SENTENCES),
                              now, now)
            self._put_comment(comment)
            event = ActivityEvent("comment_created", comment, issue, actor_id, now)
        return self._emit(event)

    def update_comment(self, comment_id: str, body: str | None = None, *, actor: str | None = None
                       ) -> ActivityEvent:
        """Edits a comment: new body, later ``updated``. Raises SiteError for an unknown comment."""
        with self._lock:
            old = self.comment(comment_id)
            if old is None:
                raise SiteError(f"unknown comment {comment_id}")
            issue = self._live(old.issue_id)
            actor_id = self._actor(actor)
            now, issue = self._touch(issue)
            comment = dataclasses.replace(old, body=body or f"{old.body} (edited)", updated=max(now, old.updated + 1))
            self._put_comment(comment)
            event = ActivityEvent("comment_updated", comment, issue, actor_id, comment.updated)
        return self._emit(event)

    def delete_comment(self, comment_id: str, *, actor: str | None = None) -> ActivityEvent:
        """Deletes a comment. Raises SiteError for an unknown comment."""
        with self._lock:
            old = self.comment(comment_id)
            if old is None:
                raise SiteError(f"unknown comment {comment_id}")
            issue = self._live(old.issue_id)
            actor_id = self._actor(actor)
            now, issue = self._touch(issue)
            del self._comments[old.issue_id][old.id]
            del self._comment_index[old.id]
            event = ActivityEvent("comment_deleted", old, issue, actor_id, now)
        return self._emit(event)

    def add_worklog(self, issue_id: str, seconds: int | None = None, *, started: int | None = None,
                    comment: str | None = None, actor: str | None = None) -> ActivityEvent:
        """Logs work on an issue. Raises IssueNotFoundError / SiteError."""
        with self._lock:
            issue = self._live(issue_id)
            actor_id = self._actor(actor)
            now = self._stamp()
            self._next_worklog += 1
            worklog = Worklog(str(self._next_worklog), issue.id, actor_id, started or now - 3_600_000,
                              seconds or 60 * self.rng.choice((15, 30, 60, 90, 120, 240)), comment, now, now)
            self._put_worklog(worklog)
            event = ActivityEvent("worklog_created", worklog, issue, actor_id, now)
        return self._emit(event)

    def update_worklog(self, worklog_id: str, seconds: int | None = None, *, actor: str | None = None
                       ) -> ActivityEvent:
        """Changes a worklog's time spent. Raises SiteError for an unknown worklog."""
        with self._lock:
            old = self.worklog(worklog_id)
            if old is None:
                raise SiteError(f"unknown worklog {worklog_id}")
            issue = self._live(old.issue_id)
            actor_id = self._actor(actor)
            now = self._stamp()
            worklog = dataclasses.replace(old, seconds=seconds or old.seconds + 900, updated=max(now, old.updated + 1))
            self._put_worklog(worklog)
            event = ActivityEvent("worklog_updated", worklog, issue, actor_id, worklog.updated)
        return self._emit(event)

    def delete_worklog(self, worklog_id: str, *, actor: str | None = None) -> ActivityEvent:
        """Deletes a worklog (``worklog/deleted`` lists it). Raises SiteError for an unknown worklog."""
        with self._lock:
            old = self.worklog(worklog_id)
            if old is None:
                raise SiteError(f"unknown worklog {worklog_id}")
            issue = self._live(old.issue_id)
            actor_id = self._actor(actor)
            now = self._stamp()
            del self._worklogs[old.issue_id][old.id]
            del self._worklog_index[old.id]
            bisect.insort(self._worklog_deletions, (now, int(old.id)))
            event = ActivityEvent("worklog_deleted", old, issue, actor_id, now)
        return self._emit(event)

    def _generate_activity(self, rng: random.Random, account_ids: Sequence[str]) -> None:
        # Caller holds the lock. About a third of the issues have comments and a sixth have
        # worklogs; one in 500 has more comments (one in 1,000 more worklogs) than
        # an issue embeds (EMBEDDED_PAGE), so that the per-issue endpoints are needed.
        for issue_id, v in self._origin.items():
            roll = rng.random()
            count = 0 if roll < 0.65 else EMBEDDED_PAGE + 5 if roll > 0.998 else rng.randint(1, 3)
            span = max(1, v.updated - v.created)
            for _ in range(count):
                self._next_comment += 1
                created = v.created + rng.randrange(span)
                self._put_comment(Comment(str(self._next_comment), issue_id, rng.choice(account_ids),
                                          _shared(rng.choice(_SENTENCES)), created, created))
            roll = rng.random()
            count = 0 if roll < 0.84 else EMBEDDED_PAGE + 3 if roll > 0.999 else rng.randint(1, 2)
            for _ in range(count):
                self._next_worklog += 1
                created = v.created + rng.randrange(span)
                self._put_worklog(Worklog(str(self._next_worklog), issue_id, rng.choice(account_ids),
                                          created - 3_600_000, 60 * rng.choice((15, 30, 60, 90, 120, 240, 480)),
                                          None, created, created))

    def random_mutation(self, *, weights: Mapping[str, float] | None = None,
                        projects: Iterable[str] | None = None) -> ChangeEvent | ActivityEvent:
        """One random create / update / move / delete (default weights 25/65/4/6 %); with
        ``comment`` or ``worklog`` weights, a random add, edit or deletion of one of those too."""
        w = dict(weights or {"create": 25, "update": 65, "move": 4, "delete": 6})
        keys = [k.upper() for k in (projects or self.projects)]
        with self._lock:
            kind = self.rng.choices(list(w), weights=list(w.values()))[0]
            live = None
            if kind != "create":
                live = self._random_live(keys)
                if live is None:
                    kind = "create"
            if kind == "move" and len(self.projects) < 2:
                kind = "update"
            project = self.rng.choice(keys)
            target = None
            if kind == "move" and live is not None:
                others = [k for k in self.projects if k != live.project]
                target = self.rng.choice(others)
        if kind == "create":
            return self.create_issue(project)
        assert live is not None
        if kind == "update":
            return self.update_issue(live.id)
        if kind == "move":
            assert target is not None
            return self.move_issue(live.id, target)
        if kind in ("comment", "worklog"):
            return self._random_activity(kind, live)
        return self.delete_issue(live.id)

    def _random_activity(self, kind: str, live: IssueVersion) -> ActivityEvent:
        existing = self.comments(live.id) if kind == "comment" else self.worklogs(live.id)
        roll = self.rng.random()
        if not existing or roll < 0.5:
            return self.add_comment(live.id) if kind == "comment" else self.add_worklog(live.id)
        target = self.rng.choice(existing).id
        if roll < 0.85:
            return self.update_comment(target) if kind == "comment" else self.update_worklog(target)
        return self.delete_comment(target) if kind == "comment" else self.delete_worklog(target)

    def _random_live(self, projects: Sequence[str]) -> IssueVersion | None:
        # Caller holds the lock. Sample ids until a live one of the wanted projects turns up.
        if not self._history:
            return None
        ids = None
        for _ in range(64):
            if ids is None:
                ids = list(self._history) if len(self._history) < 5000 else None
            issue_id = (self.rng.choice(ids) if ids is not None
                        else str(self.rng.randrange(10001, self._next_id)))
            h = self._history.get(issue_id)
            version = h[-1][1] if h else None
            if version is not None and version.project in projects:
                return version
        for h in self._history.values():
            version = h[-1][1]
            if version is not None and version.project in projects:
                return version
        return None

    def _live(self, issue_id: str) -> IssueVersion:
        resolved = self.resolve(issue_id)
        version = self._history[resolved][-1][1] if resolved is not None else None
        if version is None:
            raise IssueNotFoundError(f"issue {issue_id} does not exist")
        return version

    def _random_changes(self, v: IssueVersion) -> dict[str, Any]:
        rng = self.rng
        choice = rng.choice(("status", "status", "summary", "assignee", "priority", "labels",
                             "description", "story_points", "severity", "multi"))
        changes: dict[str, Any] = {}
        if choice in ("status", "multi"):
            changes["status"] = rng.choice([s for s in _STATUS_NAMES if s != v.status])
        if choice in ("summary", "multi"):
            changes["summary"] = _summary(rng)
        if choice in ("assignee", "multi"):
            candidates = [u.account_id for u in self.users.values() if u.active]
            changes["assignee"] = None if rng.random() < 0.2 else rng.choice(candidates)
        if choice == "priority":
            changes["priority"] = rng.choice([p for p in _PRIORITY_NAMES if p != v.priority])
        if choice == "labels":
            changes["labels"] = list(_labels(rng))
        if choice == "description":
            changes["description"] = _description(rng) or _SENTENCES[0]
        if choice == "story_points":
            changes["story_points"] = float(rng.choice((1, 2, 3, 5, 8, 13)))
        if choice == "severity":
            changes["severity"] = rng.choice(_SEVERITY_NAMES)
        return changes

    def _apply(self, v: IssueVersion, changes: Mapping[str, Any], now: int) -> IssueVersion:
        values: dict[str, Any] = {}
        for name, value in changes.items():
            attr = _ATTR_BY_CUSTOM_ID.get(name, name)
            if name == self.story_points_field:
                attr = "story_points"
            elif name == self.sprint_field:
                attr = "sprints"
            if attr == "sprints":
                ids = tuple(int(x["id"] if isinstance(x, dict) else x) for x in value or ())
                if any(i not in SPRINTS for i in ids):
                    raise SiteError(f"unknown sprint in {value!r}")
                values["sprints"] = ids
                continue
            if attr == "status":
                if value not in STATUSES:
                    raise SiteError(f"unknown status {value!r}")
                values["status"] = value
                done = STATUSES[value].category == "done"
                values["resolutiondate"] = (v.resolutiondate or now) if done else None
            elif attr == "issuetype":
                if value not in ISSUE_TYPES:
                    raise SiteError(f"unknown issue type {value!r}")
                values[attr] = value
            elif attr == "priority":
                if value is not None and value not in PRIORITIES:
                    raise SiteError(f"unknown priority {value!r}")
                values[attr] = value
            elif attr in ("assignee", "reporter"):
                if value is not None and value not in self.users:
                    raise SiteError(f"unknown user {value!r}")
                if attr == "reporter" and value is None:
                    raise SiteError("reporter cannot be empty")
                values[attr] = value
            elif attr == "labels":
                values[attr] = tuple(str(x) for x in value or ())
            elif attr == "severity":
                if value is not None and value not in SEVERITIES:
                    raise SiteError(f"unknown severity {value!r}")
                values[attr] = value
            elif attr == "story_points":
                values[attr] = None if value is None else float(value)
            elif attr in ("summary", "description", "customer_ref"):
                if attr == "summary" and not value:
                    raise SiteError("summary cannot be empty")
                values[attr] = value
            else:
                raise SiteError(f"field {name!r} cannot be set")
        return dataclasses.replace(v, **values)


# Jira's default project key format: an uppercase letter, then uppercase letters, digits or
# underscores, 2 to 10 characters ("Edit a project's details").
_PROJECT_KEY = re.compile(r"^[A-Z][A-Z0-9_]{1,9}$")

_STATUS_NAMES = tuple(STATUSES)
_TYPE_NAMES = tuple(ISSUE_TYPES)
_PRIORITY_NAMES = tuple(PRIORITIES)
_SEVERITY_NAMES = tuple(SEVERITIES)


# Generated texts repeat a lot: share one string object per distinct text (saves ~15 MB / 100k).
_TEXTS: dict[str, str] = {}


def _shared(text: str) -> str:
    if len(_TEXTS) > 200_000:
        _TEXTS.clear()
    return _TEXTS.setdefault(text, text)


def _summary(rng: random.Random) -> str:
    text = f"{rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_QUALIFIERS)}"
    if rng.random() < 0.03:
        # Summaries run up to Jira's 255-character limit now and then.
        text = (text + " — " + " ".join(rng.choice(_SENTENCES) for _ in range(6)))[:255]
    return _shared(text)


_NO_LABELS: tuple[str, ...] = ()


def _labels(rng: random.Random) -> tuple[str, ...]:
    n = rng.choice((0, 0, 0, 1, 1, 2, 3))
    if n == 0:
        return _NO_LABELS
    return tuple(sorted({rng.choice(_LABELS) for _ in range(n)}))


def _description(rng: random.Random) -> str | None:
    r = rng.random()
    if r < 0.35:
        return None
    text = " ".join(rng.choice(_SENTENCES) for _ in range(rng.randint(1, 3)))
    if r > 0.85:
        text += "\n\n" + "\n".join(f"- {rng.choice(_SENTENCES)}" for _ in range(rng.randint(2, 4)))
    return _shared(text)


# --- changelog ------------------------------------------------------------------------------


def _item(field: str, field_id: str | None, frm: Any, frm_s: Any, to: Any, to_s: Any,
          fieldtype: str = "jira") -> dict[str, Any]:
    item: dict[str, Any] = {"field": field, "fieldtype": fieldtype}
    if field_id is not None:
        item["fieldId"] = field_id
    item.update({"from": None if frm is None else str(frm),
                 "fromString": None if frm_s is None else str(frm_s),
                 "to": None if to is None else str(to), "toString": None if to_s is None else str(to_s)})
    return item


def _workflow_id(project: Project) -> str:
    """The id of a project's workflow (one per project here)."""
    return str(10120 + int(project.id) - 10000)


def _diff(a: IssueVersion, b: IssueVersion, users: Mapping[str, User],
          projects: Mapping[str, Project], site: "Site | None" = None) -> list[dict[str, Any]]:
    """Jira changelog items for the difference between two versions of an issue."""

    def user_name(account_id: str | None) -> str | None:
        return users[account_id].display_name if account_id in users else None

    items: list[dict[str, Any]] = []
    if a.project != b.project:
        # As the recorded move (tests/payloads/issue_moved.json): project (by id and name), the
        # project's Workflow, then Key; Workflow and Key items carry no fieldId.
        pa, pb = projects[a.project], projects[b.project]
        items.append(_item("project", "project", pa.id, pa.name, pb.id, pb.name))
        items.append(_item("Workflow", None, _workflow_id(pa), f"{pa.key}: Software Workflow",
                           _workflow_id(pb), f"{pb.key}: Software Workflow"))
        items.append(_item("Key", None, None, a.key, None, b.key))
    if a.summary != b.summary:
        items.append(_item("summary", "summary", None, a.summary, None, b.summary))
    if a.status != b.status:
        sa, sb = STATUSES[a.status], STATUSES[b.status]
        items.append(_item("status", "status", sa.id, sa.name, sb.id, sb.name))
        if (a.resolutiondate is None) != (b.resolutiondate is None):
            items.append(_item("resolution", "resolution",
                               None if a.resolutiondate is None else "10000",
                               None if a.resolutiondate is None else "Done",
                               None if b.resolutiondate is None else "10000",
                               None if b.resolutiondate is None else "Done"))
    if a.issuetype != b.issuetype:
        items.append(_item("issuetype", "issuetype", ISSUE_TYPES[a.issuetype], a.issuetype,
                           ISSUE_TYPES[b.issuetype], b.issuetype))
    if a.priority != b.priority:
        items.append(_item("priority", "priority", PRIORITIES.get(a.priority or ""), a.priority,
                           PRIORITIES.get(b.priority or ""), b.priority))
    for name in ("assignee", "reporter"):
        x, y = getattr(a, name), getattr(b, name)
        if x != y:
            items.append(_item(name, name, x, user_name(x), y, user_name(y)))
    if a.labels != b.labels:
        items.append(_item("labels", "labels", None, " ".join(a.labels), None, " ".join(b.labels)))
    if a.description != b.description:
        items.append(_item("description", "description", None, a.description, None, b.description))
    for cid, (cname, _type, attr) in CUSTOM_FIELDS.items():
        if attr and getattr(a, attr) != getattr(b, attr):
            x, y = getattr(a, attr), getattr(b, attr)
            if attr == "severity":
                items.append(_item(cname, cid, SEVERITIES.get(x or ""), x, SEVERITIES.get(y or ""),
                                   y, fieldtype="custom"))
            else:
                items.append(_item(cname, cid, None, x, None, y, fieldtype="custom"))
    if site is not None and a.story_points != b.story_points:
        items.append(_item(site.story_points_name, site.story_points_field, None, a.story_points, None,
                           b.story_points, fieldtype="custom"))
    if site is not None and a.sprints != b.sprints:
        items.append(_item("Sprint", site.sprint_field, ", ".join(map(str, a.sprints)) or None,
                           ", ".join(_sprint_name(i) for i in a.sprints) or None,
                           ", ".join(map(str, b.sprints)) or None,
                           ", ".join(_sprint_name(i) for i in b.sprints) or None, fieldtype="custom"))
    return items


#: Comments and worklogs an issue embeds (``fields.comment``, ``fields.worklog``: the first page).
EMBEDDED_PAGE = 20

# A generated issue's workflow path to its status: the statuses it went through after To Do.
_PATHS: dict[str, tuple[str, ...]] = {
    "To Do": (), "Backlog": ("Backlog",), "In Progress": ("In Progress",),
    "In Review": ("In Progress", "In Review"), "Done": ("In Progress", "In Review", "Done"),
    "Won't Do": ("Won't Do",),
}


def _generated_histories(site: "Site", v: IssueVersion) -> list[History]:
    """The change histories of a generated issue, derived from its first version: the status
    changes that led from To Do to its status, spread between ``created`` and ``updated`` (the
    last at ``updated``), now and then an assignee change. Deterministic per site seed and issue."""
    rng = random.Random(f"{site.seed}:{v.id}")
    path = _PATHS.get(v.status, ())
    if v.status == "To Do" and rng.random() < 0.2:
        path = ("In Progress", "To Do")  # started, then put back
    span = v.updated - v.created
    if not path or span < len(path) + 1:
        return []
    times = sorted(v.created + 1 + rng.randrange(span - 1) for _ in range(len(path) - 1)) + [v.updated]
    author = v.assignee or v.reporter
    out: list[History] = []
    before = "To Do"
    base = 5_000_000_000 + int(v.id) * 16
    for n, (status, when) in enumerate(zip(path, times)):
        a, b = STATUSES[before], STATUSES[status]
        out.append(History(str(base + n), when, author, (_item("status", "status", a.id, a.name, b.id, b.name),)))
        before = status
    return out


def _sprint_name(sprint_id: int) -> str:
    return f"Sprint {sprint_id}"


def _sprints_for(issue_id: str) -> tuple[int, ...]:
    """A generated issue's sprints, from its id (no draw from the site's random sequence)."""
    n = int(issue_id)
    if n % 5 < 2:
        return ()
    first = 1 + n % len(SPRINTS)
    return (first,) if n % 3 else tuple(sorted({first, 1 + (first % len(SPRINTS))}))
