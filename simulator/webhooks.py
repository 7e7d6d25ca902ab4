"""Pushes webhooks the way Jira Cloud delivers them.

What this imitates ("Webhooks", https://developer.atlassian.com/cloud/jira/platform/webhooks/):

* Body: ``timestamp`` (epoch ms), ``webhookEvent`` (``jira:issue_created`` / ``_updated`` /
  ``_deleted``), ``issue_event_type_name`` (``issue_created``, ``issue_updated``,
  ``issue_generic``, ``issue_assigned``, ``issue_moved``, ``issue_deleted``), ``user`` (the actor),
  ``issue`` rendered REST-v2 style (``self`` under ``/rest/api/2/``, ``description`` as wiki
  markup, date-times with the actor's offset, empty comment/worklog lists), ``changelog``
  (``id`` and ``items``; present on ``issue_created`` too, absent on deletion),
  ``matchedWebhookIds``.
* A project key rename (:meth:`Site.rename_project`) sends one ``project_updated`` event with the
  project as it now is (numeric ``id``, new ``key``), and no issue events: the key change edits
  no issue.
* Headers: ``X-Atlassian-Webhook-Identifier`` (unique per delivery, repeated on retries and
  duplicates), ``X-Atlassian-Webhook-Retry`` (the retry count, 0 on the first attempt),
  ``X-Atlassian-Webhook-Flow: Primary``, and for a webhook with a secret
  ``X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>``.
* Delivery: at least once, possibly more than once, possibly out of order. Retries on 408, 409,
  425, 429, any 5xx, timeouts and refused connections, with exponential backoff (±30 % jitter) up
  to ``max_retries`` times; any other 4xx is final.

Several secrets mean several registered admin webhooks pointing at the same URL: each event is
delivered once per webhook, each with its own identifier and signature. Non-issue events
(``comment_created`` with or without an ``issue``, ``worklog_updated``, ``project_created``,
``jira:version_released``) can be emitted to check that a receiver ignores them politely.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import hmac
import http.client
import itertools
import json
import logging
import random
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import urlsplit

from .model import ActivityEvent, ChangeEvent, Comment, ProjectEvent, Site
from .render import comment_json, format_time, issue_v2, user_json, worklog_json

__all__ = ["NON_ISSUE_KINDS", "PreparedRequest", "WebhookPusher", "issue_payload",
           "non_issue_payload", "project_payload", "sign"]

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
NON_ISSUE_KINDS = ("comment_created", "comment_created_no_issue", "worklog_updated",
                   "project_created", "jira:version_released")


def sign(body: bytes, secret: str) -> str:
    """The ``X-Hub-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class PreparedRequest:
    """A webhook request as it goes on the wire: URL, exact body bytes and headers."""

    url: str
    body: bytes
    headers: dict[str, str]


def issue_payload(event: ChangeEvent, site: Site, base_url: str,
                  webhook_id: int = 1) -> dict[str, Any]:
    """The body Jira sends for an issue change (``jira:issue_*``)."""
    actor = site.users.get(event.actor)
    tz = actor.time_zone if actor else "UTC"
    webhook_event = {"created": "jira:issue_created", "deleted": "jira:issue_deleted"}.get(
        event.kind, "jira:issue_updated")
    body: dict[str, Any] = {
        "timestamp": event.timestamp,
        "webhookEvent": webhook_event,
        "issue_event_type_name": event.event_type,
        "user": user_json(actor, base_url, api=2),
        "issue": issue_v2(event.issue, site, base_url, tz),
        "matchedWebhookIds": [webhook_id],
    }
    if event.kind != "deleted":
        body["changelog"] = {"id": event.changelog_id, "items": [dict(i) for i in event.items]}
    return body


def activity_payload(event: ActivityEvent, site: Site, base_url: str, webhook_id: int = 1) -> dict[str, Any]:
    """The body Jira sends for a comment or worklog change (``comment_*``, ``worklog_*``).

    Shaped like the recorded bodies (tests/payloads/comment_created.json, worklog_updated.json;
    zulip's Jira webhook fixtures): REST-v2 rendering (a wiki-markup body), the actor's offsets;
    a comment event carries a short form of its issue (no ``updated``), a worklog event only
    the worklog with its ``issueId``.
    """
    actor = site.users.get(event.actor)
    tz = actor.time_zone if actor else "UTC"
    body: dict[str, Any] = {"timestamp": event.timestamp, "webhookEvent": event.kind,
                            "matchedWebhookIds": [webhook_id]}
    if isinstance(event.entity, Comment):
        body["comment"] = comment_json(event.entity, site, base_url, tz, api=2)
        full = issue_v2(event.issue, site, base_url, tz)["fields"]
        body["issue"] = {"id": event.issue.id, "self": f"{base_url}/rest/api/2/issue/{event.issue.id}",
                         "key": event.issue.key,
                         "fields": {k: full.get(k) for k in ("summary", "issuetype", "project", "assignee",
                                                             "priority", "status")}}
    else:
        body["worklog"] = worklog_json(event.entity, site, base_url, tz, api=2)
    return body


def project_payload(event: ProjectEvent, site: Site, base_url: str,
                    webhook_id: int = 1) -> dict[str, Any]:
    """The body Jira sends for a project change (``project_updated``): the project as it is now.

    Shaped like the recorded ``project_created`` body (tests/payloads/project_created.json):
    a numeric ``id``, ``self`` under ``/rest/api/2/``, ``projectLead``, ``assigneeType``; the
    webhook carries no former key, so a consumer follows renames by the project id.
    """
    lead = site.users.get(event.actor)
    project = event.after
    return {"timestamp": event.timestamp, "webhookEvent": event.kind,
            "project": {"self": f"{base_url}/rest/api/2/project/{project.id}", "id": int(project.id),
                        "key": project.key, "name": project.name,
                        "projectLead": user_json(lead, base_url, api=2),
                        "assigneeType": "UNASSIGNED"},
            "matchedWebhookIds": [webhook_id]}


def non_issue_payload(kind: str, site: Site, base_url: str, rng: random.Random,
                      now_ms: int | None = None, webhook_id: int = 1) -> dict[str, Any]:
    """A webhook that is not an issue change, for receivers to ignore. ``kind``: NON_ISSUE_KINDS."""
    now = site.now_ms() if now_ms is None else now_ms
    users = [u for u in site.users.values() if u.active] or list(site.users.values())
    author = rng.choice(users) if users else None
    author_json = user_json(author, base_url, api=2)
    tz = author.time_zone if author else "UTC"
    live = site.current()
    issue = rng.choice(live) if live else None
    cid = str(rng.randrange(10000, 99999))
    stamp = format_time(now, tz)
    if kind in ("comment_created", "comment_created_no_issue"):
        body: dict[str, Any] = {
            "timestamp": now, "webhookEvent": "comment_created",
            "comment": {"self": f"{base_url}/rest/api/2/issue/{issue.id if issue else 0}/comment/{cid}",
                        "id": cid, "author": author_json, "body": "Looks good to me 👍",
                        "updateAuthor": author_json, "created": stamp, "updated": stamp,
                        "jsdPublic": True},
        }
        if kind == "comment_created" and issue is not None:
            project = site.projects[issue.project]
            body["issue"] = {"id": issue.id, "self": f"{base_url}/rest/api/2/issue/{issue.id}",
                             "key": issue.key,
                             "fields": {"summary": issue.summary,
                                        "project": {"id": project.id, "key": project.key,
                                                    "name": project.name}}}
    elif kind == "worklog_updated":
        body = {"timestamp": now, "webhookEvent": "worklog_updated",
                "worklog": {"self": f"{base_url}/rest/api/2/issue/{issue.id if issue else 0}/worklog/{cid}",
                            "author": author_json, "updateAuthor": author_json,
                            "comment": "pairing", "created": stamp, "updated": stamp,
                            "started": stamp, "timeSpent": "1h", "timeSpentSeconds": 3600,
                            "id": cid, "issueId": issue.id if issue else "0"}}
    elif kind == "project_created":
        key = f"NEW{rng.randrange(100, 999)}"
        body = {"timestamp": now, "webhookEvent": "project_created",
                "project": {"self": f"{base_url}/rest/api/2/project/{cid}", "id": int(cid),
                            "key": key, "name": f"New project {key}", "projectLead": author_json,
                            "assigneeType": "UNASSIGNED"}}
    elif kind == "jira:version_released":
        body = {"timestamp": now, "webhookEvent": "jira:version_released",
                "version": {"self": f"{base_url}/rest/api/2/version/{cid}", "id": cid,
                            "name": f"v{rng.randrange(1, 9)}.{rng.randrange(0, 20)}",
                            "archived": False, "released": True,
                            "projectId": int(next(iter(site.projects.values())).id) if site.projects else 0}}
    else:
        raise ValueError(f"unknown non-issue kind {kind!r}; choose from {NON_ISSUE_KINDS}")
    body["matchedWebhookIds"] = [webhook_id]
    return body


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    secret: str | None = field(compare=False)
    identifier: str = field(compare=False)
    event: str = field(compare=False)
    retry: int = field(default=0, compare=False)


class WebhookPusher:
    """Delivers Jira-style webhooks to ``url`` from a small pool of background threads.

    Args:
        url: the receiver, e.g. ``http://127.0.0.1:8000/webhooks/jira``.
        secret: a secret, several (one registered webhook each), or None (unsigned).
        site: the site whose mutations to push (subscribed at once unless ``attach=False``);
            also needed to render payloads.
        base_url: prefix of the ``self`` links in payloads (the simulated site's URL).
        duplicate_rate: probability that a delivery is sent twice (same identifier).
        shuffle: hold each delivery a random 0..``shuffle_window`` seconds, so they go out of order.
        max_retries: retries after the first attempt (Jira: a handful, within ~30 minutes).
        backoff_base, backoff_max: retry ``n`` waits ``min(max, base * 2**n)`` seconds ±30 %.
        timeout: per-attempt socket timeout, seconds.
        workers: delivery threads.
        non_issue_rate: probability that each issue event is followed by a random non-issue one.
        verify_tls: verify the receiver's certificate on https URLs.
        seed: seeds the dice (duplicates, shuffling, jitter, non-issue events).

    Counters (:attr:`counters`): ``queued``, ``sent`` (2xx), ``attempts``, ``retried``, ``failed``
    (given up), ``duplicates``, ``by_status`` (HTTP status, or ``"error"`` for a refused
    connection / timeout / reset). :attr:`log` keeps ``(identifier, retry, status)`` per attempt.
    """

    def __init__(self, url: str, secret: str | Sequence[str] | None = None, *,
                 site: Site | None = None, base_url: str = "https://sim.atlassian.net",
                 attach: bool = True, duplicate_rate: float = 0.0, shuffle: bool = False,
                 shuffle_window: float = 1.0, max_retries: int = 5, backoff_base: float = 1.0,
                 backoff_max: float = 30.0, timeout: float = 5.0, workers: int = 4,
                 non_issue_rate: float = 0.0, verify_tls: bool = True, seed: int = 0,
                 flow: str = "Primary") -> None:
        self.url = url
        self.secrets: list[str | None] = (
            [secret] if secret is None or isinstance(secret, str) else list(secret) or [None])
        self.site = site
        self.base_url = base_url
        self.duplicate_rate = duplicate_rate
        self.shuffle = shuffle
        self.shuffle_window = shuffle_window
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.non_issue_rate = non_issue_rate
        self.flow = flow
        self._ssl = ssl.create_default_context() if verify_tls else ssl._create_unverified_context()
        self._rng = random.Random(seed)
        self._cond = threading.Condition()
        self._heap: list[_Delivery] = []
        self._seq = itertools.count()
        self._outstanding = 0
        self._stopping = False
        self._counters: collections.Counter[str] = collections.Counter()
        self._by_status: collections.Counter[Any] = collections.Counter()
        self.log: collections.deque[tuple[str, int, Any]] = collections.deque(maxlen=10000)
        self._threads = [threading.Thread(target=self._work, name=f"webhook-pusher-{i}",
                                          daemon=True) for i in range(max(1, workers))]
        for t in self._threads:
            t.start()
        if site is not None and attach:
            site.subscribe(self.push_event)

    # --- building requests --------------------------------------------------------------

    def prepare(self, payload: dict[str, Any] | bytes, *, secret: str | None = None,
                identifier: str | None = None, retry: int = 0) -> PreparedRequest:
        """The signed request for ``payload`` (a dict, or exact body bytes), without sending it.

        ``secret`` defaults to the first configured one.
        """
        body = payload if isinstance(payload, bytes) else _dumps(payload)
        return PreparedRequest(self.url, body, self._headers(
            body, self.secrets[0] if secret is None else secret,
            identifier or str(uuid.uuid4()), retry))

    def _headers(self, body: bytes, secret: str | None, identifier: str, retry: int) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Atlassian Webhook HTTP Client",
            "X-Atlassian-Webhook-Identifier": identifier,
            "X-Atlassian-Webhook-Retry": str(retry),
            "X-Atlassian-Webhook-Flow": self.flow,
        }
        if secret:
            headers["X-Hub-Signature"] = sign(body, secret)
        return headers

    # --- queueing -----------------------------------------------------------------------

    def push_event(self, event: ChangeEvent | ProjectEvent | ActivityEvent) -> None:
        """Queues the webhooks of one site mutation (site listener): ``jira:issue_*`` for an
        issue change, ``project_updated`` for a project key rename, ``comment_*``/``worklog_*``."""
        if self.site is None:
            raise RuntimeError("WebhookPusher needs a site to render issue events")
        if isinstance(event, ActivityEvent):
            for n, secret in enumerate(self.secrets, start=1):
                self._enqueue(activity_payload(event, self.site, self.base_url, webhook_id=n), secret)
            return
        for n, secret in enumerate(self.secrets, start=1):
            if isinstance(event, ProjectEvent):
                self._enqueue(project_payload(event, self.site, self.base_url, webhook_id=n), secret)
            else:
                self._enqueue(issue_payload(event, self.site, self.base_url, webhook_id=n), secret)
        if isinstance(event, ProjectEvent):
            return
        if self.non_issue_rate and self._dice() < self.non_issue_rate:
            self.push_non_issue()

    def push_non_issue(self, kind: str | None = None) -> None:
        """Queues one non-issue event (random kind unless given), to every webhook."""
        if self.site is None:
            raise RuntimeError("WebhookPusher needs a site to render events")
        with self._cond:
            kind = kind or self._rng.choice(NON_ISSUE_KINDS)
            seed = self._rng.getrandbits(32)
        for n, secret in enumerate(self.secrets, start=1):
            payload = non_issue_payload(kind, self.site, self.base_url, random.Random(seed),
                                        webhook_id=n)
            self._enqueue(payload, secret)

    def push_payload(self, payload: dict[str, Any] | bytes, *, secret: str | None = None) -> str:
        """Queues an arbitrary body (signed with ``secret`` or the first one); returns its identifier."""
        body = payload if isinstance(payload, bytes) else _dumps(payload)
        return self._enqueue_body(body, self.secrets[0] if secret is None else secret, "custom")

    def _enqueue(self, payload: dict[str, Any], secret: str | None) -> str:
        return self._enqueue_body(_dumps(payload), secret, str(payload.get("webhookEvent")))

    def _enqueue_body(self, body: bytes, secret: str | None, event: str) -> str:
        identifier = str(uuid.uuid4())
        now = time.monotonic()
        with self._cond:
            if self._stopping:
                raise RuntimeError("WebhookPusher is stopped")
            copies = 2 if self.duplicate_rate and self._rng.random() < self.duplicate_rate else 1
            for copy in range(copies):
                delay = self._rng.uniform(0, self.shuffle_window) if self.shuffle else 0.0
                if copy:
                    delay += self._rng.uniform(0.0, max(self.shuffle_window, 0.05))
                    self._counters["duplicates"] += 1
                heapq.heappush(self._heap, _Delivery(now + delay, next(self._seq), self.url, body,
                                                     secret, identifier, event))
                self._outstanding += 1
                self._counters["queued"] += 1
            self._cond.notify_all()
        return identifier

    def _dice(self) -> float:
        with self._cond:
            return self._rng.random()

    # --- delivering ---------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping and not self._heap:
                        return
                    now = time.monotonic()
                    if self._heap and self._heap[0].due <= now:
                        item = heapq.heappop(self._heap)
                        break
                    if self._stopping:
                        # Stopping: give up what is still waiting for its time.
                        self._give_up_all()
                        return
                    self._cond.wait(None if not self._heap else self._heap[0].due - now)
            self._attempt(item)

    def _give_up_all(self) -> None:
        # Caller holds the condition.
        while self._heap:
            heapq.heappop(self._heap)
            self._counters["failed"] += 1
            self._outstanding -= 1
        self._cond.notify_all()

    def _attempt(self, d: _Delivery) -> None:
        status: Any
        try:
            status = self._post(d)
        except (OSError, http.client.HTTPException) as exc:
            status = "error"
            log.debug("webhook delivery failed id=%s retry=%s error=%s", d.identifier, d.retry, exc)
        retryable = status == "error" or status in RETRYABLE_STATUSES or (
            isinstance(status, int) and status >= 500)
        ok = isinstance(status, int) and 200 <= status < 300
        with self._cond:
            self._counters["attempts"] += 1
            self._by_status[status] += 1
            self.log.append((d.identifier, d.retry, status))
            if ok:
                self._counters["sent"] += 1
            elif retryable and d.retry < self.max_retries and not self._stopping:
                wait = min(self.backoff_max, self.backoff_base * 2 ** d.retry)
                wait *= self._rng.uniform(0.7, 1.3)
                d.retry += 1
                d.due = time.monotonic() + wait
                d.seq = next(self._seq)
                heapq.heappush(self._heap, d)
                self._counters["retried"] += 1
                self._cond.notify_all()
                return
            else:
                self._counters["failed"] += 1
                log.info("webhook delivery gave up id=%s status=%s retries=%s",
                         d.identifier, status, d.retry)
            self._outstanding -= 1
            self._cond.notify_all()

    def _post(self, d: _Delivery) -> int:
        parts = urlsplit(d.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname or "", parts.port or 443,
                                               timeout=self.timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80,
                                              timeout=self.timeout)
        try:
            conn.request("POST", path, body=d.body,
                         headers=self._headers(d.body, d.secret, d.identifier, d.retry))
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    # --- control ------------------------------------------------------------------------

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Waits until everything queued was delivered or given up; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._outstanding > 0:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def stop(self, flush_timeout: float | None = 0.0) -> None:
        """Stops the workers, after waiting up to ``flush_timeout`` s for queued deliveries."""
        if flush_timeout:
            self.flush(flush_timeout)
        if self.site is not None:
            self.site.unsubscribe(self.push_event)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=max(self.timeout, 1.0) + 1.0)

    def __enter__(self) -> "WebhookPusher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pending(self) -> int:
        """Deliveries queued or in flight."""
        with self._cond:
            return self._outstanding

    @property
    def counters(self) -> dict[str, Any]:
        """A snapshot: queued, sent, attempts, retried, failed, duplicates, by_status, pending."""
        with self._cond:
            out: dict[str, Any] = {k: self._counters.get(k, 0) for k in
                                   ("queued", "sent", "attempts", "retried", "failed", "duplicates")}
            out["by_status"] = dict(self._by_status)
            out["pending"] = self._outstanding
            return out


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
