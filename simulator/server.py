"""An HTTP server that answers like Jira Cloud's REST API v3, over a :class:`~simulator.model.Site`.

Endpoints and the Atlassian behaviour each imitates (docs/jira.md; Atlassian's REST v3 OpenAPI
description):

``GET|POST /rest/api/3/search/jql``
    Enhanced search (CHANGE-2046). Token paging: ``nextPageToken`` on every page but the last,
    ``isLast``, no ``total``; ``on_search_page`` is called before each page is sent. GET reads
    the query string, POST only the JSON body (unknown body properties are refused, as measured
    on real sites). ``reconcileIssues`` (up to 50 ids) are
    matched and shown in their current state despite the lag. ``fields`` defaults to ``id``; ``*all``,
    ``*navigable``, ``-field`` work. ``maxResults`` defaults to 50, must lie in 1..5000 (else
    400), and is silently clamped to 100 unless only ``id``/``key`` are asked for. The JQL is the
    subset of :mod:`simulator.jql`, with dates read in the user's time zone; an unrestricted query
    is refused. Results come from the search index, which lags ``index_lag_seconds`` behind.
    A token names its query: an altered, foreign or expired token answers 400 "The provided
    nextPageToken is invalid or has expired.".
``POST /rest/api/3/search/approximate-count``
    ``{"jql"}`` -> ``{"count"}``, from the (lagging) index.
``GET|POST /rest/api/{2,3}/search``
    Removed: ``410 Gone`` with Atlassian's migration message.
``POST /rest/api/3/issue/bulkfetch``
    Up to 100 ids or keys (former keys too), current state (no lag), in ascending id order.
    Unknown and deleted issues are in neither ``issues`` nor ``issueErrors``; ``issueErrors``
    lists only injected retriable failures (:meth:`JiraServer.fail_issues`, ``issue_error_rate``).
``GET /rest/api/3/issue/{idOrKey}``
    Current state; a moved issue's old key still resolves; 404 when deleted or unknown.
``GET /rest/api/3/users/search``
    A bare list, ``maxResults`` default 50, at most 1000; 409 above ``slow_user_search_above``.
``GET /rest/api/3/project/{idOrKey}``
    A project by id or key (case-sensitive, as the spec says), former keys too; 404 otherwise.
``GET /rest/api/3/myself``, ``serverInfo``, ``project/search``, ``field``
    As documented; ``myself.timeZone`` is the ``time_zone`` knob; ``field`` lists the site's
    story-point and sprint fields with the ids the site's seed chose.
``POST /rest/api/3/changelog/bulkfetch``
    Change histories of up to 1000 issues (optionally of up to 10 field ids), oldest first, then
    by issue id, ``maxResults`` (default 1000) a page, chained by ``nextPageToken``.
``GET /rest/api/3/issue/{idOrKey}/comment`` and ``/worklog``
    Offset pages (``startAt``/``maxResults``/``total``); an issue's ``fields.comment`` and
    ``fields.worklog`` (``*all`` or named) embed only the first ``EMBEDDED_PAGE``.
``GET /rest/api/3/worklog/updated|deleted?since=``, ``POST worklog/list``, ``POST comment/list``
    Site-wide changed/deleted worklog ids (1000 a page, ``nextPage``/``lastPage``/``until``,
    nothing of the last minute), and reads of up to 1000 worklogs or comments by id.

Answers as Jira Cloud's edge sends them (recorded response headers: ``Content-Encoding: gzip``,
``Vary: Accept-Encoding``, ``Transfer-Encoding: chunked``; a public connector's documentation,
swimlane/techpubs-knowledgecenter, ``docs/Connectors/t_atlassian_jira-main/Actions/get_user.md``):
a JSON answer to a request whose ``Accept-Encoding`` names gzip is gzip-compressed and chunked;
otherwise, and for the edge's HTML error pages, it is sent whole with a ``Content-Length``.

Failure modes, each a knob that can be changed while the server runs: per-request latency,
random 429s carrying ``Retry-After`` / ``X-RateLimit-Reset`` / ``RateLimit-Reason``
(docs/jira.md, "Rate limits and auth"), bursts of
500/502/503 (some with ``Retry-After``), expired page tokens, short pages and a connection reset
in the middle of a response. Auth: Basic ``email:api_token`` and/or Bearer ``oauth_token``;
otherwise 401 JSON. OAuth-style paths ``/ex/jira/{cloudId}/rest/...`` are served too.
"""

from __future__ import annotations

import base64
import bisect
import collections
import datetime as _dt
import gzip
import hashlib
import hmac
import json
import logging
import math
import os
import random
import socket
import ssl
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from operator import itemgetter
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from .jql import UNBOUNDED, Compiled, JqlError, compile_query, parse
from .model import IssueVersion, Site
from .render import (
    FieldSelection,
    comment_json,
    field_definitions,
    format_time,
    history_json,
    issue_types_json,
    issue_v3,
    project_json,
    user_json,
    worklog_json,
    zone,
)

__all__ = ["JiraServer", "ROUTES"]

log = logging.getLogger(__name__)

#: Route names used as keys of :attr:`JiraServer.stats` (and of the ``route`` filter of faults).
ROUTES = (
    "search/jql",
    "search/approximate-count",
    "search",
    "issue/bulkfetch",
    "issue",
    "myself",
    "serverInfo",
    "project/search",
    "project",
    "users/search",
    "field",
    "changelog/bulkfetch",
    "issue/comment",
    "issue/worklog",
    "worklog/updated",
    "worklog/deleted",
    "worklog/list",
    "comment/list",
    "tenant_info",
    "unknown",
)

INVALID_TOKEN = "The provided nextPageToken is invalid or has expired."
GONE = (
    "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. "
    "A full migration guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046"
)
NOT_FOUND_ISSUE = "Issue does not exist or you do not have permission to see it."
UNAUTHORIZED = "Client must be authenticated to access this resource."
MAX_RESULTS_RANGE = "The maxResults parameter must be between 1 and 5,000."
USERS_SEARCH_TIMEOUT = (
    "The request took longer than 10 seconds and was interrupted. Try again with a smaller maxResults."
)
# No recorded issueErrors entry is public; the spec only says the list is for "a retriable error
# or payload constraint". The wording is ours, made to read as a transient failure.
RETRIABLE_ISSUE_ERROR = "The issue could not be retrieved in time. Try again later."
BAD_PAYLOAD = "Invalid request payload. Refer to the REST API documentation and try again."

# The properties of the spec's request beans (additionalProperties: false): anything else is a
# 400. failFast is a query parameter of GET search/jql only, not in SearchAndReconcileRequestBean.
_SEARCH_BODY_KEYS = {
    "jql",
    "nextPageToken",
    "maxResults",
    "fields",
    "expand",
    "properties",
    "fieldsByKeys",
    "reconcileIssues",
}
_COUNT_BODY_KEYS = {"jql"}  # JQLCountRequestBean
_BULKFETCH_BODY_KEYS = {"issueIdsOrKeys", "fields", "expand", "properties", "fieldsByKeys"}
_CHANGELOG_BODY_KEYS = {"issueIdsOrKeys", "fieldIds", "maxResults", "nextPageToken"}  # BulkChangelogRequestBean
_IDS_BODY_KEYS = {"ids"}  # WorklogIdsRequestBean, IssueCommentListRequestBean
# worklog/updated and worklog/deleted: "does not return worklogs updated during the minute
# preceding the request"; 1000 a page.
WORKLOG_FEED_DELAY_MS = 60_000
WORKLOG_FEED_PAGE = 1000


class _ApiError(Exception):
    def __init__(self, status: int, *messages: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, messages)
        self.status = status
        self.messages = list(messages)
        self.headers = headers or {}


@dataclass
class _Fault:
    kind: str  # status | reset
    route: str | None
    status: int = 503
    retry_after: float | None = None


@dataclass
class _Response:
    status: int
    payload: Any
    headers: dict[str, str]
    content_type: str = "application/json;charset=UTF-8"
    raw: bytes | None = None


class JiraServer:
    """A Jira Cloud REST v3 simulator over a :class:`Site`, served on a background thread.

    Args:
        site: the state to serve; a generated ``DEMO`` site of 100 issues when omitted.
        host, port: bind address; port 0 picks a free port (read it back from :attr:`url`).
        email, api_token: accepted Basic credentials (``Authorization: Basic base64(email:token)``).
        oauth_token: accepted Bearer token. With no credentials configured at all, no auth is asked.
        time_zone: IANA zone of the authenticated user: ``myself.timeZone``, the zone JQL date
            literals are read in, and the offset timestamps are rendered with.
        index_lag_seconds: how far search and approximate-count lag behind the site.
        rate_429: probability that any request is answered 429.
        retry_after: seconds announced in ``Retry-After`` of those 429s.
        latency_ms: delay added to every request.
        ssl_context: serve HTTPS with this server-side context.
        seed: seeds the fault dice (429s, short pages).
        page_token_mode: ``"keyset"`` (a token resumes after the last sort key it saw: an issue
            updated while paging ``ORDER BY updated`` shows up again later, nothing is skipped) or
            ``"offset"`` (a token is a position: such an update shifts the rest by one and an issue
            is skipped). The spec calls the token only a "continuation token" and says nothing of
            how it behaves when the order shifts under it; keyset stays the default, and a test
            of shifting page boundaries (a walk that must not skip) uses ``"offset"``, the worse
            case, with :attr:`on_search_page` to change the site between pages.
        page_token_ttl_seconds: tokens older than this are refused as expired (None: never). The
            default is the spec's: "This token will expire in 7 days"
            (SearchAndReconcileResults.nextPageToken).
        short_page_rate: probability that a search page holds fewer issues than asked (with a
            ``nextPageToken`` all the same).
        issue_error_rate: probability that an issue a bulkfetch found is listed in ``issueErrors``
            instead of ``issues`` (a retriable failure, see :meth:`fail_issues`); seeded dice.
        slow_user_search_above: a ``users/search`` request asking for more than this many users
            (``maxResults``, default 50) answers 409 as Jira does when the request takes longer
            than 10 s; ``None`` (the default): never.
        base_url: the ``baseUrl`` / ``self`` prefix; the served URL by default.
        cloud_id: the cloud id (``/_edge/tenant_info``, ``/ex/jira/{cloudId}`` paths).
        gzip_level: the zlib level of gzip-compressed answers (0: never compress). The level
            changes nothing a client sees but the size; 1 by default, because the simulator's
            CPU is shared with the clients it serves on one machine, as Jira's edge's is not.

    Every knob is a plain attribute that may be changed while the server runs. Counters:
    :attr:`stats` (requests per route), :attr:`status_counts`, :attr:`request_log`.
    """

    def __init__(
        self,
        site: Site | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        email: str | None = "sim@example.com",
        api_token: str | None = "sim-token",
        oauth_token: str | None = None,
        time_zone: str = "America/Los_Angeles",
        index_lag_seconds: float = 0.0,
        rate_429: float = 0.0,
        retry_after: float = 1,
        latency_ms: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
        seed: int = 0,
        page_token_mode: str = "keyset",
        page_token_ttl_seconds: float | None = 7 * 86400,
        short_page_rate: float = 0.0,
        issue_error_rate: float = 0.0,
        slow_user_search_above: int | None = None,
        base_url: str | None = None,
        cloud_id: str | None = None,
        gzip_level: int = 1,
    ) -> None:
        self.site = site if site is not None else Site.generate({"DEMO": 100}, seed=seed)
        self.host = host
        self.port = port
        self.email = email
        self.api_token = api_token
        self.oauth_token = oauth_token
        self.time_zone = time_zone
        self.index_lag_seconds = index_lag_seconds
        self.rate_429 = rate_429
        self.retry_after = retry_after
        self.latency_ms = latency_ms
        self.ssl_context = ssl_context
        self.page_token_mode = page_token_mode
        self.page_token_ttl_seconds = page_token_ttl_seconds
        self.short_page_rate = short_page_rate
        self.issue_error_rate = issue_error_rate
        self.slow_user_search_above = slow_user_search_above
        self.gzip_level = gzip_level
        #: Called as ``on_search_page(page_index)`` after a ``search/jql`` page has been computed
        #: and before it is sent (``page_index`` counts the pages of one query from 0): a test
        #: changes the site there to shift the pages that follow.
        self.on_search_page: Callable[[int], None] | None = None
        self.cloud_id = cloud_id or str(uuid.UUID(int=random.Random(seed).getrandbits(128)))
        self._base_url = base_url
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._faults: collections.deque[_Fault] = collections.deque()
        self._expire_tokens = 0
        self._short_pages = 0
        self._failing: dict[str, int] = {}
        self._stats: collections.Counter[str] = collections.Counter()
        self._status_counts: collections.Counter[int] = collections.Counter()
        self.request_log: collections.deque[tuple[str, str, int]] = collections.deque(maxlen=10000)
        self._token_key = os.urandom(16)
        self._cache: collections.OrderedDict[Any, tuple[list[Any], list[IssueVersion]]] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> "JiraServer":
        """Binds and serves on a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.sim = self
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name=f"jira-sim:{self.port}", daemon=True
        )
        self._thread.start()
        log.info("jira simulator listening url=%s", self.url)
        return self

    def stop(self) -> None:
        """Stops serving: closes the listening socket and every open keep-alive connection."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "JiraServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http(s)://127.0.0.1:<port>``, the site's base URL."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self._base_url or self.url

    @property
    def auth(self) -> tuple[str, str] | None:
        """``(email, api_token)`` for ``requests``' ``auth=``, if Basic auth is configured."""
        if self.email and self.api_token:
            return (self.email, self.api_token)
        return None

    # --- knobs --------------------------------------------------------------------------

    @property
    def time_zone(self) -> str:
        return self._time_zone

    @time_zone.setter
    def time_zone(self, name: str) -> None:
        zone(name)  # raises ZoneInfoNotFoundError for a bad name
        self._time_zone = name

    def fail_next(
        self, n: int = 1, status: int = 503, retry_after: float | None = None, *, route: str | None = None
    ) -> None:
        """Answers the next ``n`` requests (of ``route`` only, if given) with ``status``.

        500 and 503 carry a JSON body, 502 and 504 an HTML one (they come from Atlassian's edge,
        not from Jira); ``retry_after`` adds a ``Retry-After`` header.
        """
        with self._lock:
            self._faults.extend(_Fault("status", route, status, retry_after) for _ in range(n))

    def reset_next(self, n: int = 1, *, route: str | None = None) -> None:
        """Drops the connection of the next ``n`` requests halfway through the response body."""
        with self._lock:
            self._faults.extend(_Fault("reset", route) for _ in range(n))

    def expire_next_page_token(self, n: int = 1) -> None:
        """The next ``n`` search requests that carry a ``nextPageToken`` get 400 (token expired)."""
        with self._lock:
            self._expire_tokens += n

    def short_next_pages(self, n: int = 1) -> None:
        """The next ``n`` search pages hold about half the issues asked for, and still a token."""
        with self._lock:
            self._short_pages += n

    def fail_issues(self, ids: Iterable[str], times: int = 1) -> None:
        """Answers these issues (ids or keys) in ``issueErrors`` of the next ``times`` bulkfetches.

        Each listed issue is left out of ``issues`` and listed in ``issueErrors`` (an ``IssueError``
        of ``id`` and ``errorMessage``) by the next ``times`` ``issue/bulkfetch`` requests that ask
        for it, by id, key or former key; ``times=-1``: every one, until :meth:`clear_faults`. This
        is the one way (with :attr:`issue_error_rate`) an issue reaches ``issueErrors``: the spec
        lists there only issues Jira "can't return ... due to a retriable error or payload
        constraint" (BulkIssueResults.issueErrors). Raises ValueError for ``times`` 0 or < -1.
        """
        if times == 0 or times < -1:
            raise ValueError("times must be positive, or -1 for always")
        with self._lock:
            for ref in ids:
                self._failing[self._failure_key(str(ref))] = times

    def clear_faults(self) -> None:
        """Forgets pending injected faults, :meth:`fail_issues` included (not the rate knobs)."""
        with self._lock:
            self._faults.clear()
            self._expire_tokens = 0
            self._short_pages = 0
            self._failing.clear()

    # --- counters -----------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Requests received per route name (see :data:`ROUTES`), plus ``"total"``."""
        with self._lock:
            out = dict(self._stats)
        out["total"] = sum(out.values())
        return out

    @property
    def status_counts(self) -> dict[int, int]:
        """Responses sent per HTTP status."""
        with self._lock:
            return dict(self._status_counts)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()
            self._status_counts.clear()
            self.request_log.clear()

    def _record(self, method: str, route: str, status: int) -> None:
        with self._lock:
            self._status_counts[status] += 1
            self.request_log.append((method, route, status))

    # --- request pipeline ---------------------------------------------------------------

    def _route(self, method: str, path: str) -> tuple[str, Callable[..., _Response] | None, tuple[str, ...]]:
        if path.startswith("/ex/jira/"):
            parts = path.split("/", 4)
            path = "/" + parts[4] if len(parts) > 4 else "/"
        path = path.rstrip("/") or "/"
        # REST v2 serves the same resources (connectors such as singer's tap-jira still call it);
        # the answers here are rendered v3-style (ADF descriptions), which only a content check
        # would notice. The offset-paged /rest/api/2/search is removed like the v3 one.
        for prefix in ("/rest/api/3/", "/rest/api/2/", "/rest/api/latest/"):
            if path.startswith(prefix):
                rest = path[len(prefix) :]
                break
        else:
            if path in ("/rest/api/2/search",):
                return "search", self._search_gone, ("GET", "POST")
            if path == "/_edge/tenant_info":
                return "tenant_info", self._tenant_info, ("GET",)
            return "unknown", None, ()
        table: dict[str, tuple[str, Callable[..., _Response], tuple[str, ...]]] = {
            "search/jql": ("search/jql", self._search_jql, ("GET", "POST")),
            "search/approximate-count": ("search/approximate-count", self._approximate_count, ("POST",)),
            "search": ("search", self._search_gone, ("GET", "POST")),
            "issue/bulkfetch": ("issue/bulkfetch", self._bulkfetch, ("POST",)),
            "myself": ("myself", self._myself, ("GET",)),
            "serverInfo": ("serverInfo", self._server_info, ("GET",)),
            "project/search": ("project/search", self._project_search, ("GET",)),
            "users/search": ("users/search", self._users_search, ("GET",)),
            "field": ("field", self._fields, ("GET",)),
            "changelog/bulkfetch": ("changelog/bulkfetch", self._changelog_bulkfetch, ("POST",)),
            "worklog/updated": ("worklog/updated", self._worklog_feed, ("GET",)),
            "worklog/deleted": ("worklog/deleted", self._worklog_feed, ("GET",)),
            "worklog/list": ("worklog/list", self._worklog_list, ("POST",)),
            "comment/list": ("comment/list", self._comment_list, ("POST",)),
        }
        if rest in table:
            return table[rest]
        if rest.startswith("issue/") and rest.count("/") == 2 and rest.endswith(("/comment", "/worklog")):
            kind = rest.rsplit("/", 1)[1]
            return f"issue/{kind}", (self._issue_comments if kind == "comment" else self._issue_worklogs), ("GET",)
        if rest.startswith("issue/") and rest.count("/") == 1:
            return "issue", self._get_issue, ("GET",)
        if rest.startswith("project/") and rest.count("/") == 1:
            return "project", self._get_project, ("GET",)
        return "unknown", None, ()

    def _handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[str, _Response | _Fault]:
        url = urlsplit(raw_path)
        route, handler, methods = self._route(method, url.path)
        with self._lock:
            self._stats[route] += 1
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000.0)
        fault = self._take_fault(route)
        if fault is not None:
            if fault.kind == "reset":
                return route, fault
            return route, self._fault_response(fault)
        if self.rate_429 and self._roll(self.rate_429):
            return route, self._too_many()
        if handler is None:
            return route, _error(
                404, f"No resource found for {method} {url.path}" if route == "unknown" else "Not found"
            )
        if method not in methods:
            resp = _error(405, f"Method {method} is not allowed for this resource.")
            resp.headers["Allow"] = ", ".join(methods)
            return route, resp
        if route not in ("serverInfo", "tenant_info") and not self._authorized(headers):
            resp = _error(401, UNAUTHORIZED)
            resp.headers.update(
                {"WWW-Authenticate": 'Basic realm="protected-area"', "X-Seraph-LoginReason": "AUTHENTICATED_FAILED"}
            )
            return route, resp
        query = parse_qs(url.query, keep_blank_values=True)
        try:
            return route, handler(method=method, path=url.path, query=query, headers=headers, body=body)
        except _ApiError as exc:
            resp = _error(exc.status, *exc.messages)
            resp.headers.update(exc.headers)
            return route, resp
        except JqlError as exc:
            return route, _error(400, str(exc))

    def _take_fault(self, route: str) -> _Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.route is None or fault.route == route:
                    del self._faults[i]
                    return fault
        return None

    def _roll(self, probability: float) -> bool:
        with self._lock:
            return self._rng.random() < probability

    def _fault_response(self, fault: _Fault) -> _Response:
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(max(0, math.ceil(fault.retry_after)))
        phrase = {
            500: "Internal server error",
            502: "Bad Gateway",
            503: "Service Unavailable",
            504: "Gateway Timeout",
        }.get(fault.status, "Error")
        if fault.status in (502, 504):
            html = f"<html><body><h1>{fault.status} {phrase}</h1></body></html>".encode()
            return _Response(fault.status, None, headers, "text/html;charset=UTF-8", raw=html)
        resp = _error(fault.status, phrase)
        resp.headers.update(headers)
        return resp

    def _too_many(self) -> _Response:
        wait = max(0, math.ceil(self.retry_after))
        reset = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=wait)
        resp = _error(429, "Rate limit exceeded.")
        resp.headers.update(
            {
                "Retry-After": str(wait),
                "X-RateLimit-Limit": "100",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": reset.strftime("%Y-%m-%dT%H:%MZ"),
                "X-RateLimit-NearLimit": "true",
                "RateLimit-Reason": "jira-burst-based",
            }
        )
        return resp

    def _authorized(self, headers: Any) -> bool:
        basic_ok = bool(self.email and self.api_token)
        if not basic_ok and not self.oauth_token:
            return True
        value = headers.get("Authorization") or ""
        scheme, _, cred = value.partition(" ")
        if scheme.lower() == "basic" and basic_ok:
            try:
                decoded = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return False
            email, _, token = decoded.partition(":")
            return hmac.compare_digest(email.lower(), str(self.email).lower()) and hmac.compare_digest(
                token, str(self.api_token)
            )
        if scheme.lower() == "bearer" and self.oauth_token:
            return hmac.compare_digest(cred.strip(), self.oauth_token)
        return False

    # --- helpers ------------------------------------------------------------------------

    def _json_body(self, headers: Any, body: bytes) -> dict[str, Any]:
        ctype = (headers.get("Content-Type") or "").lower()
        if "json" not in ctype:
            raise _ApiError(415, f"Content-Type '{ctype or 'null'}' is not supported.")
        try:
            data = json.loads(body.decode("utf-8") or "null")
        except (UnicodeDecodeError, ValueError):
            raise _ApiError(400, "There was an error parsing JSON. Check that your request body is valid.")
        if not isinstance(data, dict):
            raise _ApiError(400, BAD_PAYLOAD)
        return data

    def _now(self) -> int:
        return self.site.now_ms()

    def _result(self, compiled: Compiled, at_ms: int | None) -> tuple[list[Any], list[IssueVersion]]:
        """The sorted matches of a query in the index as of ``at_ms``, cached per index state."""
        with self._cache_lock:
            hit = self._cache.get((compiled.cache_key, self.site.view_seq(at_ms)))
            if hit is not None:
                return hit
        seq, visible = self.site.snapshot(at_ms)
        pred, sort_key = compiled.predicate, compiled.sort_key
        pairs = [(sort_key(v), v) for v in visible if pred(v)]
        pairs.sort(key=itemgetter(0))
        result = ([p[0] for p in pairs], [p[1] for p in pairs])
        with self._cache_lock:
            self._cache[(compiled.cache_key, seq)] = result
            while len(self._cache) > 16:
                self._cache.popitem(last=False)
        return result

    def _reconciled(
        self, compiled: Compiled, result: tuple[list[Any], list[IssueVersion]], reconcile: list[str]
    ) -> tuple[list[Any], list[IssueVersion]]:
        """``reconcileIssues``: these ids are matched and shown as they are now, lag or not."""
        wanted = set(reconcile)
        keep = [(k, v) for k, v in zip(*result) if v.id not in wanted]
        for issue_id in wanted:
            current = self.site.get(issue_id)
            if current is not None and compiled.predicate(current):
                keep.append((compiled.sort_key(current), current))
        keep.sort(key=itemgetter(0))
        return [k for k, _ in keep], [v for _, v in keep]

    def _index_time(self) -> tuple[int, int | None]:
        now = self._now()
        lag = self.index_lag_seconds
        return now, (now - int(lag * 1000)) if lag and lag > 0 else None

    def _token(self, qhash: str, offset: int, after: tuple[int, ...] | None, page: int) -> str:
        """A signed token for the page after ``offset`` / sort key ``after``; ``page`` is its index."""
        raw = json.dumps(
            {
                "q": qhash,
                "o": offset,
                "a": list(after) if after else None,
                "p": page,
                "t": self._now(),
                "n": self._rng.getrandbits(24),
            },
            separators=(",", ":"),
        ).encode()
        sig = hmac.new(self._token_key, raw, hashlib.sha256).digest()[:10]
        return base64.urlsafe_b64encode(raw + sig).decode().rstrip("=")

    def _read_token(self, token: str, qhash: str) -> dict[str, Any]:
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            raw, sig = blob[:-10], blob[-10:]
            good = hmac.new(self._token_key, raw, hashlib.sha256).digest()[:10]
            if len(blob) <= 10 or not hmac.compare_digest(sig, good):
                raise ValueError("bad signature")
            data = json.loads(raw)
        except (ValueError, TypeError):
            raise _ApiError(400, INVALID_TOKEN)
        if data.get("q") != qhash:
            raise _ApiError(400, INVALID_TOKEN)
        ttl = self.page_token_ttl_seconds
        if ttl is not None and self._now() - int(data.get("t", 0)) > ttl * 1000:
            raise _ApiError(400, INVALID_TOKEN)
        return data

    # --- endpoints ----------------------------------------------------------------------

    def _search_gone(self, **_: Any) -> _Response:
        return _error(410, GONE)

    def _search_params(
        self, method: str, query: dict[str, list[str]], headers: Any, body: bytes
    ) -> tuple[Any, Any, Any, Any, list[str]]:
        if method == "GET":
            jql = query.get("jql", [None])[-1]
            token = query.get("nextPageToken", [None])[-1]
            max_results: Any = query.get("maxResults", [None])[-1]
            if max_results is not None and not max_results.strip():
                max_results = None
            fields = ",".join(query["fields"]) if "fields" in query else None
            if max_results is not None:
                try:
                    max_results = int(max_results.strip())
                except ValueError:
                    raise _ApiError(400, f"Failed to convert 'maxResults' with value: '{max_results}'")
            reconcile = [x for value in query.get("reconcileIssues", []) for x in value.split(",") if x]
            return jql, token or None, max_results, fields, reconcile
        data = self._json_body(headers, body)
        if set(data) - _SEARCH_BODY_KEYS:
            raise _ApiError(400, BAD_PAYLOAD)
        jql = data.get("jql")
        token = data.get("nextPageToken")
        if isinstance(jql, (list, dict)) or isinstance(token, (list, dict)):
            raise _ApiError(400, BAD_PAYLOAD)
        max_results = data.get("maxResults", None) if "maxResults" in data else None
        if "maxResults" in data:
            value = data["maxResults"]
            numeral = isinstance(value, str) and value.strip().lstrip("-").isdigit()
            if isinstance(value, bool) or (isinstance(value, str) and not numeral):
                raise _ApiError(400, BAD_PAYLOAD)
            max_results = 0 if value is None else int(float(value))
        fields = data.get("fields")
        reconcile = data.get("reconcileIssues") or []
        if not isinstance(reconcile, list):
            raise _ApiError(400, BAD_PAYLOAD)
        return (
            (None if jql is None else str(jql)),
            (None if token is None else str(token)),
            max_results,
            fields,
            [str(x) for x in reconcile],
        )

    def _search_jql(
        self, *, method: str, query: dict[str, list[str]], headers: Any, body: bytes, **_: Any
    ) -> _Response:
        jql, token, max_results, fields, reconcile = self._search_params(method, query, headers, body)
        if len(reconcile) > 50:
            raise _ApiError(400, "The maximum number of issues to reconcile is 50.")
        qhash = hashlib.sha256((jql or "").encode()).hexdigest()[:12]
        state: dict[str, Any] | None = None
        if token is not None:
            with self._lock:
                expire = self._expire_tokens > 0
                if expire:
                    self._expire_tokens -= 1
            if expire:
                raise _ApiError(400, INVALID_TOKEN)
            state = self._read_token(token, qhash)
        if max_results is not None and not 1 <= max_results <= 5000:
            raise _ApiError(400, MAX_RESULTS_RANGE)
        if not jql or not jql.strip():
            raise _ApiError(400, UNBOUNDED)
        parsed = parse(jql)
        if not parsed.bounded:
            raise _ApiError(400, UNBOUNDED)
        selection = FieldSelection(fields, default="id")
        cap = 5000 if selection.ids_only else 100
        size = min(max_results or 50, cap)
        now, at = self._index_time()
        compiled = compile_query(parsed, site=self.site, tz=self.time_zone, now_ms=now)
        keys, versions = self._result(compiled, at)
        if reconcile and at is not None:
            keys, versions = self._reconciled(compiled, (keys, versions), reconcile)
        if state is None:
            start = 0
        elif self.page_token_mode == "offset" or not state.get("a"):
            start = int(state.get("o", 0))
        else:
            start = bisect.bisect_right(keys, tuple(state["a"]))
        with self._lock:
            short = self._short_pages > 0
            if short:
                self._short_pages -= 1
        if not short and self.short_page_rate:
            short = self._roll(self.short_page_rate)
        if short and size > 1:
            size = max(1, size // 2)
        page = versions[start : start + size]
        end = start + len(page)
        out: dict[str, Any] = {
            "issues": [issue_v3(v, self.site, self.base_url, self.time_zone, selection) for v in page]
        }
        # expand: a comma-separated string, in the query (GET) or the body (POST) alike.
        if method == "GET":
            raw_expand = query.get("expand", [])
        else:
            raw_expand = [str(self._json_body(headers, body).get("expand") or "")]
        expand = {x.strip() for value in raw_expand for x in value.split(",")}
        _expand(out["issues"], expand, all_fields="*all" in str(fields), base_url=self.base_url)
        page_index = int(state.get("p", 1)) if state is not None else 0
        if end < len(versions):
            out["nextPageToken"] = self._token(qhash, end, keys[end - 1] if page else None, page_index + 1)
            out["isLast"] = False
        else:
            out["isLast"] = True
        hook = self.on_search_page
        if hook is not None:
            hook(page_index)
        return _Response(200, out, {})

    def _approximate_count(self, *, headers: Any, body: bytes, **_: Any) -> _Response:
        data = self._json_body(headers, body)
        if set(data) - _COUNT_BODY_KEYS:
            raise _ApiError(400, BAD_PAYLOAD)
        jql = data.get("jql")
        if not isinstance(jql, str) or not jql.strip():
            raise _ApiError(400, UNBOUNDED)
        parsed = parse(jql)
        if not parsed.bounded:
            raise _ApiError(400, UNBOUNDED)
        now, at = self._index_time()
        compiled = compile_query(parsed, site=self.site, tz=self.time_zone, now_ms=now)
        _keys, versions = self._result(compiled, at)
        return _Response(200, {"count": len(versions)}, {})

    def _bulkfetch(self, *, headers: Any, body: bytes, **_: Any) -> _Response:
        # Spec (POST /rest/api/3/issue/bulkfetch, BulkIssueResults): "Issues will be returned in
        # ascending id order"; an id or key that does not match gets "a case-insensitive search
        # and check for moved issues"; issues "which aren't found or that the user doesn't have
        # permission to view" are in neither list; issueErrors holds only issues Jira "can't
        # return ... due to a retriable error or payload constraint" (here: the fault knobs).
        data = self._json_body(headers, body)
        if set(data) - _BULKFETCH_BODY_KEYS:
            raise _ApiError(400, BAD_PAYLOAD)
        refs = data.get("issueIdsOrKeys")
        if not isinstance(refs, list) or not refs:
            raise _ApiError(400, "issueIdsOrKeys must not be empty.")
        if len(refs) > 100:
            raise _ApiError(400, "The number of issues requested exceeds the limit of 100.")
        selection = FieldSelection(data.get("fields"), default="*navigable")
        found: dict[str, IssueVersion] = {}
        for ref in refs:
            version = self.site.get(str(ref))
            if version is not None:
                found.setdefault(version.id, version)
        issues: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for issue_id in sorted(found, key=int):
            if self._issue_fails(issue_id):
                errors.append({"id": issue_id, "errorMessage": RETRIABLE_ISSUE_ERROR})
                continue
            issues.append(issue_v3(found[issue_id], self.site, self.base_url, self.time_zone, selection))
        return _Response(200, {"issues": issues, "issueErrors": errors}, {})

    def _failure_key(self, ref: str) -> str:
        """The key of :attr:`_failing` for an issue reference: its id when the site knows it."""
        return self.site.resolve(ref) or ref.strip().upper()

    def _issue_fails(self, issue_id: str) -> bool:
        """Whether this bulkfetch lists the issue in ``issueErrors`` (consumes one fail_issues use)."""
        with self._lock:
            left = self._failing.get(issue_id)
            if left is not None:
                if left > 0:
                    if left == 1:
                        del self._failing[issue_id]
                    else:
                        self._failing[issue_id] = left - 1
                return True
        return bool(self.issue_error_rate) and self._roll(self.issue_error_rate)

    def _get_issue(self, *, path: str, query: dict[str, list[str]], **_: Any) -> _Response:
        ref = path.rstrip("/").rsplit("/", 1)[1]
        version = self.site.get(ref)
        if version is None:
            raise _ApiError(404, NOT_FOUND_ISSUE)
        fields = ",".join(query["fields"]) if "fields" in query else None
        selection = FieldSelection(fields, default="*all")
        return _Response(200, issue_v3(version, self.site, self.base_url, self.time_zone, selection), {})

    def _myself(self, **_: Any) -> _Response:
        me = self.site.me
        account = me.account_id if me else "712020:00000000-0000-4000-8000-000000000000"
        base = self.base_url
        return _Response(
            200,
            {
                "self": f"{base}/rest/api/3/user?accountId={account}",
                "accountId": account,
                "accountType": "atlassian",
                "emailAddress": self.email or (me.email if me else None),
                "displayName": me.display_name if me else "Simulator Bot",
                "active": True,
                "timeZone": self.time_zone,
                "locale": "en_US",
                "groups": {"size": 2, "items": []},
                "applicationRoles": {"size": 1, "items": []},
                "expand": "groups,applicationRoles",
            },
            {},
        )

    def _server_info(self, **_: Any) -> _Response:
        # The properties of the spec's ServerInformation (additionalProperties: false).
        return _Response(
            200,
            {
                "baseUrl": self.base_url,
                "displayUrl": self.base_url,
                "version": "1001.0.0-SNAPSHOT",
                "versionNumbers": [1001, 0, 0],
                "deploymentType": "Cloud",
                "buildNumber": 100285,
                "buildDate": "2025-01-01T00:00:00.000+0000",
                "serverTime": format_time(self._now(), self.time_zone),
                "scmInfo": "simulator",
                "serverTitle": "Jira",
                "serverTimeZone": "Etc/UTC",
            },
            {},
        )

    def _tenant_info(self, **_: Any) -> _Response:
        return _Response(200, {"cloudId": self.cloud_id}, {})

    def _project_search(self, *, query: dict[str, list[str]], **_: Any) -> _Response:
        start = _int_param(query, "startAt", 0, minimum=0)
        limit = min(_int_param(query, "maxResults", 50, minimum=0), 100)
        keys = {k.upper() for value in query.get("keys", []) for k in value.split(",") if k}
        keys |= {i.strip() for value in query.get("id", []) for i in value.split(",") if i.strip()}
        text = (query.get("query", [""])[-1] or "").lower()
        projects = sorted(self.site.projects.values(), key=lambda p: p.key)
        if keys:
            projects = [p for p in projects if p.key in keys or p.id in keys]
        if text:
            projects = [p for p in projects if text in p.key.lower() or text in p.name.lower()]
        page = projects[start : start + limit]
        is_last = start + len(page) >= len(projects)
        base = f"{self.base_url}/rest/api/3/project/search"
        out: dict[str, Any] = {"self": f"{base}?startAt={start}&maxResults={limit}"}
        if not is_last:
            out["nextPage"] = f"{base}?startAt={start + limit}&maxResults={limit}"
        out.update(
            {
                "maxResults": limit,
                "startAt": start,
                "total": len(projects),
                "isLast": is_last,
                "values": [project_json(p, self.base_url, full=True) for p in page],
            }
        )
        return _Response(200, out, {})

    def _get_project(self, *, path: str, **_: Any) -> _Response:
        # Spec (GET /rest/api/3/project/{projectIdOrKey}): "The project ID or project key (case
        # sensitive)"; 404 "if the project is not found or the user does not have permission to
        # view it". A former key of a renamed project still resolves (answered with the new key).
        ref = unquote(path.rstrip("/").rsplit("/", 1)[1])
        project = self.site.find_project(ref)
        if project is None or (not ref.isdigit() and ref != ref.upper()):
            kind = "id" if ref.isdigit() else "key"
            raise _ApiError(404, f"No project could be found with {kind} '{ref}'.")
        out = project_json(project, self.base_url, full=True)
        lead = self.site.me or next(iter(self.site.users.values()), None)
        out.update(
            {
                "description": "",
                "lead": user_json(lead, self.base_url),
                "components": [],
                "issueTypes": issue_types_json(self.base_url),
                "assigneeType": "UNASSIGNED",
                "versions": [],
                "roles": {},
            }
        )
        return _Response(200, out, {})

    def _users_search(self, *, query: dict[str, list[str]], **_: Any) -> _Response:
        # Spec (GET /rest/api/3/users/search): startAt default 0, maxResults default 50 "limited
        # to 1000"; 409 "if the request takes longer than 10 seconds or is interrupted", which
        # the slow_user_search_above knob stands for (the spec gives no body; Jira's error
        # bodies are ErrorCollections).
        start = _int_param(query, "startAt", 0, minimum=0)
        asked = _int_param(query, "maxResults", 50, minimum=0)
        slow = self.slow_user_search_above
        if slow is not None and asked > slow:
            raise _ApiError(409, USERS_SEARCH_TIMEOUT)
        limit = min(asked, 1000)
        users = list(self.site.users.values())[start : start + limit]
        return _Response(200, [user_json(u, self.base_url) for u in users], {})

    def _fields(self, **_: Any) -> _Response:
        return _Response(200, field_definitions(self.site), {})

    # --- history and activity ------------------------------------------------------------

    def _changelog_bulkfetch(self, *, headers: Any, body: bytes, **_: Any) -> _Response:
        # Spec (POST /rest/api/3/changelog/bulkfetch, BulkChangelogRequestBean/ResponseBean): up
        # to 1000 issues, up to 10 field ids, maxResults 1..10000 (default 1000) change histories
        # a page; "sorted by changelog date and issue IDs, starting from the oldest changelog and
        # smallest issue ID"; nextPageToken absent on the last page. Unknown issues are skipped.
        data = self._json_body(headers, body)
        if set(data) - _CHANGELOG_BODY_KEYS:
            raise _ApiError(400, BAD_PAYLOAD)
        refs = data.get("issueIdsOrKeys")
        if not isinstance(refs, list) or not refs:
            raise _ApiError(400, "issueIdsOrKeys must not be empty.")
        if len(refs) > 1000:
            raise _ApiError(400, "The number of issues requested exceeds the limit of 1000.")
        field_ids = data.get("fieldIds") or []
        if not isinstance(field_ids, list) or len(field_ids) > 10:
            raise _ApiError(400, "fieldIds must be a list of at most 10 field IDs.")
        size = data.get("maxResults", 1000)
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 10000:
            raise _ApiError(400, "maxResults must be between 1 and 10000.")
        ids = sorted({i for i in (self.site.resolve(str(r)) for r in refs) if i is not None}, key=int)
        wanted = set(field_ids)
        entries = []
        for ref in ids:
            for h in self.site.changelog(ref):
                if wanted and not any(i.get("fieldId") in wanted for i in h.items):
                    continue
                entries.append((h.created, int(ref), h))
        entries.sort(key=lambda e: (e[0], e[1], int(e[2].id)))
        qhash = hashlib.sha256(json.dumps([ids, sorted(wanted)]).encode()).hexdigest()[:16]
        offset = 0
        if data.get("nextPageToken") is not None:
            offset = int(self._read_token(str(data["nextPageToken"]), qhash).get("o", 0))
        page = entries[offset : offset + size]
        grouped: dict[int, list[dict[str, Any]]] = {}
        order: list[int] = []
        for _created, owner, h in page:
            if owner not in grouped:
                grouped[owner] = []
                order.append(owner)
            history = history_json(h, self.site, self.base_url, self.time_zone)
            if wanted:
                history["items"] = [i for i in history["items"] if i.get("fieldId") in wanted]
            grouped[owner].append(history)
        answer: dict[str, Any] = {
            "issueChangeLogs": [{"issueId": str(i), "changeHistories": grouped[i]} for i in order]
        }
        if offset + size < len(entries):
            answer["nextPageToken"] = self._token(qhash, offset + size, None, 0)
        return _Response(200, answer, {})

    def _issue_of_path(self, path: str) -> IssueVersion:
        ref = path.rstrip("/").rsplit("/", 2)[1]
        version = self.site.get(ref)
        if version is None:
            raise _ApiError(404, NOT_FOUND_ISSUE)
        return version

    def _issue_comments(self, *, path: str, query: dict[str, list[str]], **_: Any) -> _Response:
        # Spec (GET /rest/api/3/issue/{issueIdOrKey}/comment, PageOfComments): startAt, maxResults
        # (default 100; Jira caps it at 100), orderBy created/-created/+created (else 400).
        version = self._issue_of_path(path)
        start = _int_param(query, "startAt", 0, minimum=0)
        size = min(_int_param(query, "maxResults", 100, minimum=0), 100)
        order = query.get("orderBy", ["created"])[-1]
        if order not in ("created", "-created", "+created"):
            raise _ApiError(400, "orderBy must be one of created, -created, +created.")
        comments = self.site.comments(version.id)
        if order == "-created":
            comments.reverse()
        page = comments[start : start + size]
        return _Response(
            200,
            {
                "startAt": start,
                "maxResults": size,
                "total": len(comments),
                "comments": [comment_json(c, self.site, self.base_url, self.time_zone) for c in page],
            },
            {},
        )

    def _issue_worklogs(self, *, path: str, query: dict[str, list[str]], **_: Any) -> _Response:
        # Spec (GET /rest/api/3/issue/{issueIdOrKey}/worklog, PageOfWorklogs): startAt,
        # maxResults (default 5000), ordered by created time; startedAfter/startedBefore filter.
        version = self._issue_of_path(path)
        start = _int_param(query, "startAt", 0, minimum=0)
        size = min(_int_param(query, "maxResults", 5000, minimum=0), 5000)
        after = _int_param(query, "startedAfter", -(2**62), minimum=-(2**62))
        before = _int_param(query, "startedBefore", 2**62, minimum=-(2**62))
        worklogs = [w for w in self.site.worklogs(version.id) if after <= w.started < before]
        page = worklogs[start : start + size]
        return _Response(
            200,
            {
                "startAt": start,
                "maxResults": size,
                "total": len(worklogs),
                "worklogs": [worklog_json(w, self.site, self.base_url, self.time_zone) for w in page],
            },
            {},
        )

    def _worklog_feed(self, *, path: str, query: dict[str, list[str]], **_: Any) -> _Response:
        # Spec (GET /rest/api/3/worklog/updated|deleted, ChangedWorklogs): worklogs changed after
        # `since` (epoch ms, default 0), oldest first, 1000 a page; `until` is the youngest on
        # the page, `nextPage` the URL of the next one, `lastPage` true on the last; nothing of
        # the minute preceding the request.
        deleted = path.rstrip("/").endswith("deleted")
        since = _int_param(query, "since", 0, minimum=0)
        changes = self.site.worklog_changes(since, self.site.now_ms() - WORKLOG_FEED_DELAY_MS, deleted=deleted)
        page = changes[:WORKLOG_FEED_PAGE]
        until = page[-1][0] if page else since
        kind = "deleted" if deleted else "updated"
        base = f"{self.base_url}/rest/api/3/worklog/{kind}"
        answer: dict[str, Any] = {
            "values": [{"worklogId": wid, "updatedTime": when, "properties": []} for when, wid in page],
            "since": since,
            "until": until,
            "self": f"{base}?since={since}",
            "lastPage": len(changes) <= WORKLOG_FEED_PAGE,
        }
        if not answer["lastPage"]:
            answer["nextPage"] = f"{base}?since={until}"
        return _Response(200, answer, {})

    def _ids_body(self, headers: Any, body: bytes) -> list[str]:
        data = self._json_body(headers, body)
        if set(data) - _IDS_BODY_KEYS:
            raise _ApiError(400, BAD_PAYLOAD)
        ids = data.get("ids")
        if not isinstance(ids, list) or not ids or len(ids) > 1000:
            raise _ApiError(400, "ids must hold between 1 and 1000 IDs.")
        if any(isinstance(i, bool) or not isinstance(i, (int, str)) or not str(i).isdigit() for i in ids):
            raise _ApiError(400, BAD_PAYLOAD)
        return list(dict.fromkeys(str(i) for i in ids))

    def _worklog_list(self, *, headers: Any, body: bytes, **_: Any) -> _Response:
        # Spec (POST /rest/api/3/worklog/list): a bare list of Worklog, at most 1000 ids; ids
        # not found (deleted) are left out.
        found = [w for w in (self.site.worklog(i) for i in self._ids_body(headers, body)) if w is not None]
        return _Response(200, [worklog_json(w, self.site, self.base_url, self.time_zone) for w in found], {})

    def _comment_list(self, *, headers: Any, body: bytes, **_: Any) -> _Response:
        # Spec (POST /rest/api/3/comment/list, PageBeanComment): one page of the comments found.
        found = [c for c in (self.site.comment(i) for i in self._ids_body(headers, body)) if c is not None]
        return _Response(
            200,
            {
                "isLast": True,
                "maxResults": 1000,
                "startAt": 0,
                "total": len(found),
                "values": [comment_json(c, self.site, self.base_url, self.time_zone) for c in found],
            },
            {},
        )


def _expand(issues: list[dict[str, Any]], expand: set[str], *, all_fields: bool, base_url: str) -> None:
    """What ``expand=changelog,transitions`` adds to search results: the issue's change
    histories and transitions (not rendered here, so empty: read them with changelog/bulkfetch)."""
    for issue in issues:
        if "changelog" in expand:
            issue["changelog"] = {"startAt": 0, "maxResults": 0, "total": 0, "histories": []}
        if "transitions" in expand:
            issue["transitions"] = []
        # `*all` brings `comment` and `worklog` through the field selection (render._fields).


def _int_param(query: dict[str, list[str]], name: str, default: int, *, minimum: int) -> int:
    raw = query.get(name, [""])[-1].strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _ApiError(400, f"Failed to convert '{name}' with value: '{raw}'")
    if value < minimum:
        raise _ApiError(400, f"'{name}' must not be less than {minimum}.")
    return value


def _error(status: int, *messages: str) -> _Response:
    return _Response(status, {"errorMessages": list(messages), "errors": {}}, {})


# --- HTTP plumbing --------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sim: JiraServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open: set[Any] = set()
        self._open_lock = threading.Lock()

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        try:
            ctx = self.sim.ssl_context
            if ctx is None:
                super().finish_request(request, client_address)
                return
            try:
                tls = ctx.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
            with self._open_lock:  # the raw socket is detached now: track its TLS wrapper
                self._open.discard(request)
                self._open.add(tls)
            try:
                super().finish_request(tls, client_address)
            finally:
                with self._open_lock:
                    self._open.discard(tls)
                try:
                    tls.close()
                except OSError:
                    pass
        finally:
            with self._open_lock:
                self._open.discard(request)

    def close_connections(self) -> None:
        """Shuts every open connection, so keep-alive clients are not served after stop()."""
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("jira simulator: error serving %s", client_address, exc_info=True)


def _accepts_gzip(header: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value names gzip (or ``*``) without ``q=0``."""
    for part in (header or "").split(","):
        name, _, params = part.partition(";")
        if name.strip().lower() in ("gzip", "x-gzip", "*"):
            quality = 1.0
            for param in params.split(";"):
                key, _, value = param.partition("=")
                if key.strip().lower() == "q":
                    try:
                        quality = float(value)
                    except ValueError:
                        quality = 0.0
            return quality > 0
    return False


_CHUNK = 16 * 1024


def _chunked(data: bytes) -> bytes:
    """``data`` in HTTP/1.1 chunks of at most 16 KiB, then the last, empty chunk."""
    parts = [b"%x\r\n%s\r\n" % (len(data[i : i + _CHUNK]), data[i : i + _CHUNK]) for i in range(0, len(data), _CHUNK)]
    return b"".join(parts) + b"0\r\n\r\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes; with Nagle on, keep-alive clients wait ~40 ms per request
    # for a delayed ACK.
    disable_nagle_algorithm = True
    server_version = "AtlassianEdge"
    sys_version = ""
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("jira simulator: " + format, *args)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        sim = self.server.sim
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        try:
            route, outcome = sim._handle(method, self.path, self.headers, body)
        except Exception:  # a bug in the simulator: answer like Jira's 500, keep serving
            log.exception("jira simulator: unhandled error path=%s", self.path)
            route, outcome = "unknown", _error(500, "Internal server error")
        if isinstance(outcome, _Fault):
            sim._record(method, route, 0)
            self._reset()
            return
        sim._record(method, route, outcome.status)
        self._write(outcome)

    def _encode(self, resp: _Response) -> bytes:
        if resp.raw is not None:
            return resp.raw
        try:
            # orjson: the same compact UTF-8 text, ten times faster (a bulkfetch answer is half a
            # megabyte); the json module for what orjson refuses (keys that are not strings, integers
            # beyond 64 bits).
            return orjson.dumps(resp.payload)
        except TypeError:
            return json.dumps(resp.payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _write(self, resp: _Response, *, cut: bool = False) -> None:
        body = self._encode(resp)
        level = self.server.sim.gzip_level
        compress = bool(level) and resp.raw is None and body and _accepts_gzip(self.headers.get("Accept-Encoding"))
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        if compress:
            self.send_header("Vary", "Accept-Encoding")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Transfer-Encoding", "chunked")
            body = _chunked(gzip.compress(body, compresslevel=level))
        else:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("X-AREQUESTID", uuid.uuid4().hex[:12])
        self.send_header("Cache-Control", "no-cache, no-store, no-transform")
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if cut else body)

    def _reset(self) -> None:
        """Sends the headers and half the body of a normal-looking answer, then a TCP reset."""
        page = {
            "issues": [{"id": str(10000 + i), "key": f"X-{i}"} for i in range(200)],
            "nextPageToken": "x",
            "isLast": False,
        }
        self._write(_Response(200, page, {}), cut=True)
        try:
            self.wfile.flush()
            time.sleep(0.05)  # let the half body leave before the RST discards the send buffer
            raw = self.connection
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.close()
        except OSError:
            pass
        self.close_connection = True
