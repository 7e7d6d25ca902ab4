"""The Jira Cloud REST v3 client: auth, retries with ``Retry-After``, search pages, bulk fetch.

Every method is a read (``POST`` search and bulkfetch included), so every call is safe to retry.
Errors form a flat hierarchy under :class:`JiraError`; messages carry the method and path of the
request, never the credentials.

The Jira facts behind the choices below (from Atlassian's REST v3 description and pages) are in
docs/jira.md: search and bulk fetch in "Search and reads", rate limiting, API-token and OAuth 2.0
(3LO) auth in "Rate limits and auth".
"""

from __future__ import annotations

import base64
import contextlib
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.util.retry import Retry

from mirror import metrics

log = logging.getLogger(__name__)

__all__ = [
    "JiraAuthError",
    "JiraBadRequestError",
    "JiraClient",
    "JiraConfigError",
    "JiraError",
    "JiraGoneError",
    "JiraNotFoundError",
    "JiraSettings",
    "JiraStats",
    "JiraUnavailableError",
    "format_jql_datetime",
]

JSONDict = dict[str, Any]
RequestHook = Callable[[str, int, float], None]

CLOUD_GATEWAY = "https://api.atlassian.com/ex/jira/{cloud_id}"
DEFAULT_USER_AGENT = "jira-mirror"
BULKFETCH_MAX = 100  # issue/bulkfetch: "up to 100 issues" for the general request shape
PROJECT_PAGE_SIZE = 100  # project/search: maxResults is capped at 100
CHANGELOG_BULK_MAX = 1000  # changelog/bulkfetch, worklog/list, comment/list: 1000 ids a request
CHANGELOG_PAGE = 10000  # changelog/bulkfetch: histories a page (spec: default 1000, at most 10000)
USER_PAGE_SIZE = 1000  # users/search: maxResults is capped at 1000
USER_PAGE_MIN = 10  # users/search pages are halved down to this while Jira answers 409 (too slow)

# Statuses retried with backoff. 429 is Jira's rate limit; 5xx are transient on Jira Cloud
# (Atlassian: "Some transient 5XX errors are accompanied by a Retry-After header"), except 501,
# which no retry will change.
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_TRANSPORT_ERRORS = (
    requests.ConnectionError,  # refused, reset, DNS, connect timeout
    requests.Timeout,  # read timeout
    requests.exceptions.ChunkedEncodingError,  # connection dropped mid-body
)


# --- errors -----------------------------------------------------------------------------------


class JiraError(Exception):
    """Base of every error raised by this module.

    ``method``, ``path`` and ``status`` describe the failed request when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.status = status


class JiraConfigError(JiraError):
    """No usable base URL or credentials; the message names what is missing."""


class JiraAuthError(JiraError):
    """401 (credentials refused) or 403 (credentials accepted, permission missing)."""


class JiraNotFoundError(JiraError):
    """404: the resource does not exist or the user may not see it (Jira does not say which)."""


class JiraGoneError(JiraError):
    """410: Atlassian removed the endpoint (e.g. ``/rest/api/3/search`` since 2025)."""


class JiraBadRequestError(JiraError):
    """400: Jira refused the request; ``jira_messages`` holds its ``errorMessages``/``errors``.

    Typical causes: invalid or unbounded JQL, an expired ``nextPageToken``, an unknown field.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
        jira_messages: Sequence[str] = (),
    ) -> None:
        super().__init__(message, method=method, path=path, status=status)
        self.jira_messages = list(jira_messages)


class JiraUnavailableError(JiraError):
    """Retries exhausted (``max_attempts`` or ``max_total_wait``).

    ``status`` is the last HTTP status (None when the last failure was a transport error) and
    ``cause`` a short description of the last failure.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
        cause: str = "",
        attempts: int = 0,
        waited: float = 0.0,
    ) -> None:
        super().__init__(message, method=method, path=path, status=status)
        self.cause = cause
        self.attempts = attempts
        self.waited = waited


# --- settings and stats -----------------------------------------------------------------------


class JiraSettings(Protocol):
    """What :meth:`JiraClient.from_settings` reads (``mirror.settings.Settings`` fits)."""

    @property
    def jira_base_url(self) -> str | None: ...

    @property
    def jira_email(self) -> str | None: ...

    @property
    def jira_api_token(self) -> str | None: ...

    @property
    def jira_oauth_token(self) -> str | None: ...

    @property
    def jira_cloud_id(self) -> str | None: ...


@dataclass
class JiraStats:
    """Counters of one client, safe to update from several threads.

    ``calls``: HTTP requests sent, retries included. ``retries``: requests sent again after a
    failure. ``rate_limited``: 429 answers received. ``errors``: calls that raised to the caller.
    ``last_success_at``: epoch seconds of the last 2xx. ``last_error``: text of the last error
    raised (never holds a secret).
    """

    calls: int = 0
    retries: int = 0
    rate_limited: int = 0
    errors: int = 0
    last_success_at: float | None = None
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of the counters, for status pages and metrics."""
        with self._lock:
            return {
                "calls": self.calls,
                "retries": self.retries,
                "rate_limited": self.rate_limited,
                "errors": self.errors,
                "last_success_at": self.last_success_at,
                "last_error": self.last_error,
            }

    def _add(self, *, calls: int = 0, retries: int = 0, rate_limited: int = 0) -> None:
        with self._lock:
            self.calls += calls
            self.retries += retries
            self.rate_limited += rate_limited

    def _success(self) -> None:
        with self._lock:
            self.last_success_at = time.time()

    def _error(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = str(exc)


class _HeaderAuth(AuthBase):
    """Sets a fixed ``Authorization`` header.

    Going through ``session.auth`` (rather than a default header) stops requests from replacing
    it with ``~/.netrc`` credentials, and requests drops it on a redirect to another host.
    The repr never shows the value.
    """

    def __init__(self, scheme: str, value: str) -> None:
        self.scheme = scheme
        self._header = f"{scheme} {value}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header
        return request

    def __repr__(self) -> str:
        return f"<_HeaderAuth scheme={self.scheme}>"


# --- the client -------------------------------------------------------------------------------


class JiraClient:
    """A Jira Cloud REST v3 client on one pooled ``requests.Session``; safe to share by threads.

    Auth: ``Basic email:api_token`` when both are given (API token against
    ``https://SITE.atlassian.net``), else ``Bearer oauth_token``. With ``oauth_token`` and
    ``cloud_id`` but no ``base_url``, requests go through the OAuth gateway
    ``https://api.atlassian.com/ex/jira/{cloud_id}``. Plain ``http://`` is accepted for simulators.

    Retries: 429 and 503 wait at least ``Retry-After``; other 5xx, timeouts and connection errors
    back off exponentially with ±30 % jitter (``backoff_base`` doubling up to ``backoff_cap``),
    bounded by ``max_attempts`` (requests in all) and ``max_total_wait`` (seconds slept in all).

    ``stats`` counts calls (see :class:`JiraStats`); ``on_request(path_template, status, seconds)``
    is called after every HTTP attempt, status 0 when no answer arrived (refused, timeout, reset).
    ``on_retry(attempt, max_attempts, wait, cause)`` is called before each wait (a CLI shows
    "retry k/n in N s"). ``fail_fast``: a refused connection raises at once instead of being
    retried (an interactive command against a closed port should not wait minutes).

    Raises :class:`JiraConfigError` when the base URL or credentials are missing or unusable.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        email: str | None = None,
        api_token: str | None = None,
        oauth_token: str | None = None,
        cloud_id: str | None = None,
        timeout: tuple[float, float] = (5.0, 30.0),
        max_attempts: int = 8,
        max_total_wait: float = 300.0,
        backoff_base: float = 5.0,
        backoff_cap: float = 30.0,
        pool_size: int = 16,
        sleep: Callable[[float], None] = time.sleep,
        user_agent: str = DEFAULT_USER_AGENT,
        on_request: RequestHook | None = None,
        on_retry: Callable[[int, int, float, str], None] | None = None,
        fail_fast: bool = False,
    ) -> None:
        base_url, email, api_token = _blank(base_url), _blank(email), _blank(api_token)
        oauth_token, cloud_id = _blank(oauth_token), _blank(cloud_id)
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if max_total_wait < 0 or backoff_base < 0 or backoff_cap < 0:
            raise ValueError("max_total_wait, backoff_base and backoff_cap must not be negative")
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")

        # Check everything first so that one message names all that is missing.
        problems: list[str] = []
        if not (email and api_token) and not oauth_token:
            if email or api_token:
                missing = "api_token (JIRA_API_TOKEN)" if email else "email (JIRA_EMAIL)"
                problems.append(f"credentials incomplete: {missing} is missing")
            else:
                problems.append(
                    "credentials missing: set email and api_token (JIRA_EMAIL, JIRA_API_TOKEN) "
                    "or oauth_token (JIRA_OAUTH_TOKEN)"
                )
        if base_url is None:
            if oauth_token and cloud_id:
                # OAuth 2.0 (3LO) tokens are accepted by the gateway only, not by SITE.atlassian.net.
                base_url = CLOUD_GATEWAY.format(cloud_id=quote(cloud_id, safe=""))
            elif cloud_id:
                problems.append(
                    "base URL missing: cloud_id (JIRA_CLOUD_ID) needs oauth_token (JIRA_OAUTH_TOKEN); "
                    "with an API token set base_url (JIRA_BASE_URL)"
                )
            else:
                problems.append(
                    "base URL missing: set base_url (JIRA_BASE_URL), "
                    "or cloud_id (JIRA_CLOUD_ID) with oauth_token (JIRA_OAUTH_TOKEN)"
                )
        if problems or base_url is None:
            raise JiraConfigError("Jira is not configured: " + "; ".join(problems))

        auth: _HeaderAuth
        if email and api_token:
            # API token: Basic base64(email:token) against https://SITE.atlassian.net.
            basic = base64.b64encode(f"{email}:{api_token}".encode()).decode("ascii")
            auth = _HeaderAuth("Basic", basic)
            self.auth_kind = "basic"
        else:
            auth = _HeaderAuth("Bearer", oauth_token or "")
            self.auth_kind = "bearer"
        self.base_url = _check_base_url(base_url)

        self.timeout = timeout
        self.max_attempts = max_attempts
        self.max_total_wait = max_total_wait
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.on_request = on_request
        self.on_retry = on_retry
        self.fail_fast = fail_fast
        self.stats = JiraStats()
        self._sleep = sleep
        self._tz: ZoneInfo | None = None
        self._tz_lock = threading.Lock()

        self._session = requests.Session()
        self._session.auth = auth
        self._session.headers.update({"Accept": "application/json", "User-Agent": user_agent})
        # Retries are ours (Retry-After, jitter, stats); urllib3 must not retry underneath.
        adapter = HTTPAdapter(
            pool_connections=pool_size,
            pool_maxsize=pool_size,
            max_retries=Retry(total=0, connect=0, read=0, redirect=False, status=0, raise_on_status=False),
        )
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)

    @classmethod
    def from_settings(cls, settings: JiraSettings, **kwargs: Any) -> "JiraClient":
        """Builds a client from ``jira_base_url``, ``jira_email``, ``jira_api_token``,
        ``jira_oauth_token`` and ``jira_cloud_id``; other keyword arguments go to the constructor.

        Raises :class:`JiraConfigError` naming what is missing when there is no usable base URL
        or credentials.
        """
        return cls(
            base_url=getattr(settings, "jira_base_url", None),
            email=getattr(settings, "jira_email", None),
            api_token=getattr(settings, "jira_api_token", None),
            oauth_token=getattr(settings, "jira_oauth_token", None),
            cloud_id=getattr(settings, "jira_cloud_id", None),
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"<JiraClient base_url={self.base_url} auth={self.auth_kind}>"

    def close(self) -> None:
        """Closes the pooled connections."""
        self._session.close()

    def __enter__(self) -> "JiraClient":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- search -------------------------------------------------------------------------------

    def search_page(
        self,
        jql: str,
        *,
        fields: Sequence[str] = ("id",),
        max_results: int = 50,
        next_page_token: str | None = None,
    ) -> JSONDict:
        """One page of ``POST /rest/api/3/search/jql``: ``{"issues", "nextPageToken"?, "isLast"}``.

        Raises :class:`JiraBadRequestError` for bad or unbounded JQL and expired page tokens,
        and the other :class:`JiraError` subclasses as any call does.
        """
        # search/jql pages by nextPageToken and gives no total; the JQL must be bounded; fields
        # default to "id" only. The offset-paged /rest/api/3/search answers 410 since 2025.
        if max_results < 1:
            raise ValueError("max_results must be at least 1")
        body: JSONDict = {"jql": jql, "fields": _str_list("fields", fields), "maxResults": max_results}
        if next_page_token:
            body["nextPageToken"] = next_page_token
        return self._json_dict("POST", "/rest/api/3/search/jql", json_body=body)

    def iter_search(
        self,
        jql: str,
        *,
        fields: Sequence[str] = ("id",),
        max_results: int = 50,
    ) -> Iterator[JSONDict]:
        """Yields every page of :meth:`search_page` until ``isLast`` or a page without a token.

        Raises what :meth:`search_page` raises, and :class:`JiraError` if Jira hands back the
        same page token twice (which would otherwise loop forever).
        """
        token: str | None = None
        while True:
            page = self.search_page(jql, fields=fields, max_results=max_results, next_page_token=token)
            yield page
            next_token = page.get("nextPageToken")
            if page.get("isLast") or not next_token:
                return
            if next_token == token:
                raise JiraError(
                    "POST /rest/api/3/search/jql: Jira repeated the same nextPageToken",
                    method="POST",
                    path="/rest/api/3/search/jql",
                )
            token = next_token

    def approximate_count(self, jql: str) -> int:
        """``POST /rest/api/3/search/approximate-count``: an estimate (search has no total).

        Raises :class:`JiraBadRequestError` for bad JQL, :class:`JiraError` if no count comes back.
        """
        path = "/rest/api/3/search/approximate-count"
        body = self._json_dict("POST", path, json_body={"jql": jql})
        count = body.get("count")
        if not isinstance(count, int):
            raise JiraError(f"POST {path}: answer has no count", method="POST", path=path)
        return count

    def bulkfetch(
        self,
        ids_or_keys: Sequence[str],
        *,
        fields: Sequence[str] | None = None,
        slots: threading.Semaphore | None = None,
    ) -> tuple[list[JSONDict], list[JSONDict]]:
        """``POST /rest/api/3/issue/bulkfetch``: current state of up to 100 issues.

        Returns ``(issues, issueErrors)``. Issues that do not exist or cannot be seen are simply
        absent from both lists (Atlassian's documented behaviour). Raises ``ValueError`` for more
        than 100 ids (the caller chunks) and the :class:`JiraError` subclasses as any call does.
        ``slots``: a semaphore held while the request is on the wire (sent, answered and the body
        read), neither while the answer is parsed nor while a retry waits: it bounds the requests
        in flight of several reading threads, not their work.
        """
        ids = _str_list("ids_or_keys", ids_or_keys)
        if len(ids) > BULKFETCH_MAX:
            raise ValueError(f"bulkfetch takes at most {BULKFETCH_MAX} ids or keys, got {len(ids)}")
        if not ids:
            return [], []
        body: JSONDict = {"issueIdsOrKeys": ids}
        if fields is not None:
            body["fields"] = _str_list("fields", fields)
        answer = self._json_dict("POST", "/rest/api/3/issue/bulkfetch", json_body=body, slots=slots)
        return list(answer.get("issues") or []), list(answer.get("issueErrors") or [])

    def get_issue(self, id_or_key: str, *, fields: Sequence[str] | None = None) -> JSONDict:
        """``GET /rest/api/3/issue/{idOrKey}``: one issue, current (unlike search, not indexed).

        Raises :class:`JiraNotFoundError` when it does not exist or cannot be seen.
        """
        params = None if fields is None else {"fields": ",".join(_str_list("fields", fields))}
        path = "/rest/api/3/issue/" + quote(str(id_or_key), safe="")
        return self._json_dict("GET", path, template="/rest/api/3/issue/{issueIdOrKey}", params=params)

    # --- history and activity ----------------------------------------------------------------

    def changelog_page(
        self, ids_or_keys: Sequence[str], *, next_page_token: str | None = None, max_results: int = CHANGELOG_PAGE
    ) -> JSONDict:
        """One page of ``POST /rest/api/3/changelog/bulkfetch``: the change histories of up to
        1000 issues, oldest first (``issueChangeLogs``, ``nextPageToken`` absent on the last).
        Raises ``ValueError`` for more than 1000 ids and the :class:`JiraError` subclasses."""
        ids = _str_list("ids_or_keys", ids_or_keys)
        if not ids or len(ids) > CHANGELOG_BULK_MAX:
            raise ValueError(f"changelog/bulkfetch takes 1 to {CHANGELOG_BULK_MAX} ids, got {len(ids)}")
        body: JSONDict = {"issueIdsOrKeys": ids, "maxResults": max_results}
        if next_page_token:
            body["nextPageToken"] = next_page_token
        return self._json_dict("POST", "/rest/api/3/changelog/bulkfetch", json_body=body)

    def iter_changelog_pages(self, ids_or_keys: Sequence[str]) -> Iterator[JSONDict]:
        """Every page of :meth:`changelog_page` for the ids. Raises :class:`JiraError` when Jira
        hands back the same token twice."""
        token: str | None = None
        while True:
            page = self.changelog_page(ids_or_keys, next_page_token=token)
            yield page
            next_token = page.get("nextPageToken")
            if not next_token:
                return
            if next_token == token:
                raise JiraError(
                    "POST /rest/api/3/changelog/bulkfetch: Jira repeated the same nextPageToken",
                    method="POST",
                    path="/rest/api/3/changelog/bulkfetch",
                )
            token = next_token

    def _offset_pages(self, path: str, template: str, key: str, size: int, start: int) -> list[JSONDict]:
        """Every item of an offset-paged list (``startAt``/``maxResults``/``total``) from ``start``."""
        items: list[JSONDict] = []
        while True:
            page = self._json_dict("GET", path, template=template, params={"startAt": start, "maxResults": size})
            got = list(page.get(key) or [])
            items.extend(got)
            start += len(got)
            total = page.get("total")
            if not got or not isinstance(total, int) or start >= total:
                return items

    def issue_comments(self, id_or_key: str, *, start_at: int = 0) -> list[JSONDict]:
        """Every comment of an issue from ``start_at`` (``GET issue/{id}/comment``, 100 a page).
        Raises :class:`JiraNotFoundError` when the issue does not exist or cannot be seen."""
        path = "/rest/api/3/issue/" + quote(str(id_or_key), safe="") + "/comment"
        return self._offset_pages(path, "/rest/api/3/issue/{issueIdOrKey}/comment", "comments", 100, start_at)

    def issue_worklogs(self, id_or_key: str, *, start_at: int = 0) -> list[JSONDict]:
        """Every worklog of an issue from ``start_at`` (``GET issue/{id}/worklog``, 5000 a page).
        Raises :class:`JiraNotFoundError` when the issue does not exist or cannot be seen."""
        path = "/rest/api/3/issue/" + quote(str(id_or_key), safe="") + "/worklog"
        return self._offset_pages(path, "/rest/api/3/issue/{issueIdOrKey}/worklog", "worklogs", 5000, start_at)

    def worklog_changes(self, since_ms: int, *, deleted: bool = False) -> tuple[list[JSONDict], int]:
        """``GET /rest/api/3/worklog/updated`` (or ``deleted``) since ``since_ms``, every page:
        returns the ``values`` (``worklogId``, ``updatedTime``) and the position to ask from next
        time (the last page's ``until``; Jira leaves out the last minute's changes)."""
        path = "/rest/api/3/worklog/" + ("deleted" if deleted else "updated")
        values: list[JSONDict] = []
        since = max(0, int(since_ms))
        while True:
            page = self._json_dict("GET", path, params={"since": since})
            got = list(page.get("values") or [])
            values.extend(got)
            until = page.get("until")
            moved = False
            if isinstance(until, int) and until > since:
                since, moved = until, True
            if page.get("lastPage", True) or not got or not moved:
                return values, since

    def worklog_list(self, ids: Sequence[str]) -> list[JSONDict]:
        """``POST /rest/api/3/worklog/list``: up to 1000 worklogs by id (deleted ones are left out)."""
        wanted = [int(i) for i in ids]
        if not wanted or len(wanted) > CHANGELOG_BULK_MAX:
            raise ValueError(f"worklog/list takes 1 to {CHANGELOG_BULK_MAX} ids, got {len(wanted)}")
        answer = self._request(
            "POST", "/rest/api/3/worklog/list", "/rest/api/3/worklog/list", json_body={"ids": wanted}
        )
        if not isinstance(answer, list):
            raise JiraError(
                "POST /rest/api/3/worklog/list: expected a JSON list", method="POST", path="/rest/api/3/worklog/list"
            )
        return answer

    def fields(self) -> list[JSONDict]:
        """``GET /rest/api/3/field``: every system and custom field of the site."""
        answer = self._request("GET", "/rest/api/3/field", "/rest/api/3/field")
        if not isinstance(answer, list):
            raise JiraError("GET /rest/api/3/field: expected a JSON list", method="GET", path="/rest/api/3/field")
        return answer

    def sleep(self, seconds: float) -> None:
        """Wait as the client waits between retries (interruptible in workers: a SIGTERM ends it)."""
        self._sleep(seconds)

    # --- site, user, projects ---------------------------------------------------------------------

    def get_project(self, id_or_key: str) -> JSONDict:
        """``GET /rest/api/3/project/{projectIdOrKey}``: ``id``, ``key`` (the current one: a
        renamed project's former keys keep resolving), ``name``.

        Raises :class:`JiraNotFoundError` when no such project exists or the user may not see it.
        """
        path = "/rest/api/3/project/" + quote(str(id_or_key), safe="")
        return self._json_dict("GET", path, template="/rest/api/3/project/{projectIdOrKey}")

    def myself(self) -> JSONDict:
        """``GET /rest/api/3/myself``: the authenticated user (``accountId``, ``timeZone``…)."""
        return self._json_dict("GET", "/rest/api/3/myself")

    def server_info(self) -> JSONDict:
        """``GET /rest/api/3/serverInfo``: ``baseUrl``, ``serverTime``, ``version``…"""
        return self._json_dict("GET", "/rest/api/3/serverInfo")

    def time_zone(self) -> ZoneInfo:
        """The zone Jira reads JQL date literals in: the user's profile ``timeZone``; cached.

        Falls back to UTC, with a warning, only when ``myself`` has no ``timeZone``. Raises
        :class:`JiraError` when the zone is unknown here (guessing would shift every cursor).
        """
        with self._tz_lock:
            if self._tz is not None:
                return self._tz
            name = self.myself().get("timeZone")
            if not name:
                log.warning("jira myself has no timeZone; reading JQL dates as UTC")
                self._tz = ZoneInfo("UTC")
                return self._tz
            try:
                self._tz = ZoneInfo(str(name))
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise JiraError(f"GET /rest/api/3/myself: unknown timeZone {name!r}") from exc
            return self._tz

    def iter_projects(self) -> Iterator[JSONDict]:
        """Every project visible to the user, from ``GET /rest/api/3/project/search``.

        Pages by ``startAt``/``maxResults`` (at most 100) until ``isLast``.
        """
        start = 0
        while True:
            page = self._json_dict(
                "GET",
                "/rest/api/3/project/search",
                params={"startAt": start, "maxResults": PROJECT_PAGE_SIZE},
            )
            values = list(page.get("values") or [])
            yield from values
            # isLast ends the walk; an empty page too, in case a proxy or old server omits it.
            if page.get("isLast", False) or not values:
                return
            start += len(values)

    def iter_users(self) -> Iterator[JSONDict]:
        """Every user (accounts of all types), from ``GET /rest/api/3/users/search``.

        The endpoint answers a bare list with no total or ``isLast``. Pages of 1000 are asked for
        and paging continues until an empty page: Jira may return fewer than ``maxResults`` on a
        page that is not the last (the user list is filtered and has been capped at 100 per page
        before, JRACLOUD-72003), so a short page alone does not prove the end. A 409 (the
        request took longer than 10 s) is asked again with half the page, down to
        ``USER_PAGE_MIN``; raises :class:`JiraError` when even that is too slow.
        """
        start, size = 0, USER_PAGE_SIZE
        path = "/rest/api/3/users/search"
        while True:
            try:
                page = self._request("GET", path, path, params={"startAt": start, "maxResults": size})
            except JiraError as exc:
                # 409: "the request took longer than 10 seconds" (docs/jira.md): a smaller page is faster.
                if exc.status != 409 or size <= USER_PAGE_MIN:
                    raise
                size = max(USER_PAGE_MIN, size // 2)
                log.info("jira users/search answered 409 (too slow): retrying with maxResults=%d", size)
                continue
            if not isinstance(page, list):
                raise JiraError(f"GET {path}: expected a JSON list", method="GET", path=path)
            yield from page
            if not page:
                return
            start += len(page)

    # --- the one request path --------------------------------------------------------------------

    def _json_dict(
        self,
        method: str,
        path: str,
        *,
        template: str | None = None,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        slots: threading.Semaphore | None = None,
    ) -> JSONDict:
        answer = self._request(method, path, template or path, params=params, json_body=json_body, slots=slots)
        if not isinstance(answer, dict):
            error = JiraError(f"{method} {path}: expected a JSON object", method=method, path=path)
            self.stats._error(error)
            raise error
        return answer

    def _request(
        self,
        method: str,
        path: str,
        template: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        slots: threading.Semaphore | None = None,
    ) -> Any:
        """Sends one call with retries; returns the parsed JSON body.

        Raises :class:`JiraUnavailableError` when retries are exhausted and the other
        :class:`JiraError` subclasses for final answers.
        """
        try:
            return self._send_with_retries(method, path, template, params, json_body, slots)
        except JiraError as exc:
            self.stats._error(exc)
            raise

    def _send_with_retries(
        self,
        method: str,
        path: str,
        template: str,
        params: Mapping[str, Any] | None,
        json_body: Any,
        slots: threading.Semaphore | None = None,
    ) -> Any:
        url = self.base_url + path
        on_the_wire = slots if slots is not None else contextlib.nullcontext()
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            retry_after: float | None = None
            reason = ""
            last_exc: BaseException | None = None
            started = time.monotonic()
            self.stats._add(calls=1)
            try:
                # stream=False: the body is read here, so a connection reset mid-body raises
                # ChunkedEncodingError/ConnectionError inside this try and is retried.
                with on_the_wire:
                    response = self._session.request(method, url, params=params, json=json_body, timeout=self.timeout)
            except _TRANSPORT_ERRORS as exc:
                self._report(template, 0, started)
                if isinstance(exc, requests.exceptions.SSLError):
                    # A certificate problem does not heal by retrying.
                    raise JiraError(f"{method} {path}: TLS error: {_short(exc)}", method=method, path=path) from exc
                cause = f"{type(exc).__name__}: {_transport_text(exc)}"
                last_exc = exc
                if self.fail_fast and _refused(exc):
                    raise self._unavailable(method, path, None, cause, attempt, waited, "connection refused", exc)
            except requests.RequestException as exc:
                self._report(template, 0, started)
                raise JiraError(
                    f"{method} {path}: {type(exc).__name__}: {_short(exc)}", method=method, path=path
                ) from exc
            else:
                status = response.status_code
                self._report(template, status, started)
                if 200 <= status < 300:
                    self.stats._success()
                    return _parse_json(method, path, response)
                if not _retryable(status):
                    raise _error_for(method, path, response)
                if status == 429:
                    self.stats._add(rate_limited=1)
                    reason = response.headers.get("RateLimit-Reason", "")
                if status in _RETRY_AFTER_STATUSES:
                    retry_after = _parse_retry_after(response.headers.get("Retry-After"))
                cause = f"HTTP {status}"

            if attempt >= self.max_attempts:
                raise self._unavailable(method, path, status, cause, attempt, waited, "attempts exhausted", last_exc)
            if retry_after is not None:
                # Atlassian: "You can retry the request after this delay, but not before." Jitter
                # only upwards, so threads told the same delay do not return in lockstep.
                wait = retry_after * random.uniform(1.0, 1.2)
            else:
                wait = self._backoff(attempt)
            if waited + wait > self.max_total_wait:
                raise self._unavailable(
                    method, path, status, cause, attempt, waited, f"next wait {wait:.1f}s over budget", last_exc
                )
            log.warning(
                "jira retry method=%s path=%s status=%s cause=%s reason=%s wait=%.1f attempt=%d",
                method,
                path,
                status if status is not None else "-",
                cause if status is None else "-",
                reason or "-",
                wait,
                attempt,
            )
            self.stats._add(retries=1)
            if self.on_retry is not None:
                self.on_retry(attempt, self.max_attempts - 1, wait, cause)
            self._sleep(wait)
            waited += wait

    def _backoff(self, attempt: int) -> float:
        """Atlassian's example: start ``backoff_base`` (5 s), double, cap ``backoff_cap`` (30 s),
        then a ±30 % jitter so parallel workers spread out."""
        nominal = min(self.backoff_cap, self.backoff_base * 2.0 ** min(attempt - 1, 32))
        return nominal * random.uniform(0.7, 1.3)

    def _unavailable(
        self,
        method: str,
        path: str,
        status: int | None,
        cause: str,
        attempts: int,
        waited: float,
        why: str,
        last_exc: BaseException | None,
    ) -> JiraUnavailableError:
        error = JiraUnavailableError(
            f"{method} {path}: Jira unavailable ({why}) after {attempts} attempt(s) "
            f"and {waited:.1f}s of waiting; last: {cause}",
            method=method,
            path=path,
            status=status,
            cause=cause,
            attempts=attempts,
            waited=waited,
        )
        if last_exc is not None:
            error.__cause__ = last_exc
        return error

    def _report(self, template: str, status: int, started: float) -> None:
        seconds = time.monotonic() - started
        log.debug("jira call path=%s status=%s seconds=%.3f", template, status, seconds)
        metrics.count_jira_response(status)  # jira_mirror_jira_api_responses_total{status_class}
        if self.on_request is None:
            return
        try:
            self.on_request(template, status, seconds)
        except Exception:  # a metrics hook must never break a Jira call
            log.warning("jira on_request hook failed path=%s", template, exc_info=True)


# --- helpers ----------------------------------------------------------------------------------


def issue_error_ids(errors: Sequence[JSONDict], asked: Sequence[str], found: set[str]) -> list[str]:
    """The asked ids or keys of a ``bulkfetch`` that ``issueErrors`` names (by id or key): alive,
    not returned *this time*; read them again, never take them as deleted. An ``issueErrors``
    naming none of the missing ones makes them all count as errored (unknown is not absent)."""
    named = {str(e.get("id")) for e in errors if isinstance(e, dict) and e.get("id") is not None}
    named |= {str(e.get("key")) for e in errors if isinstance(e, dict) and e.get("key") is not None}
    missing = [i for i in asked if i not in found]
    if errors and not named & set(missing):
        return missing
    return [i for i in missing if i in named]


def format_jql_datetime(dt: datetime, tz: ZoneInfo) -> str:
    """Renders an aware datetime as a quoted JQL literal ``"yyyy/MM/dd HH:mm"`` in ``tz``.

    ``tz`` must be the requesting user's profile zone (:meth:`JiraClient.time_zone`): JQL reads
    date literals in that zone, not UTC, and only to the minute, so the result is floored to
    the minute. Used as a lower bound (``updated >= …``) it therefore already reaches back up to
    59 s; callers must still subtract an overlap first (minute truncation, clock skew, search
    index lag) and rely on idempotent upserts. In the repeated hour after a DST fall-back the
    wall time is ambiguous and Jira may read it an hour later than meant: keep the overlap at
    least an hour there, or accept re-reading.

    Raises ``ValueError`` for a naive datetime.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("format_jql_datetime needs an aware datetime")
    local = dt.astimezone(tz)
    return '"' + local.strftime("%Y/%m/%d %H:%M") + '"'


def _blank(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise JiraConfigError("Jira base URL must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        # Never carry credentials in the URL: they would end up in logs and error messages.
        raise JiraConfigError("Jira base URL must not contain credentials; use email/api_token")
    if parts.query or parts.fragment:
        raise JiraConfigError("Jira base URL must not have a query or fragment")
    return base_url.rstrip("/")


def _str_list(name: str, values: Sequence[str]) -> list[str]:
    # A bare string is a Sequence[str] too; list("summary") would send single letters.
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of strings, not a single string")
    return [str(v) for v in values]


def _retryable(status: int) -> bool:
    return status == 429 or (500 <= status < 600 and status != 501)


def _parse_retry_after(raw: str | None) -> float | None:
    """``Retry-After`` as seconds: a number (what Jira sends) or an HTTP date (RFC 9110)."""
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _parse_json(method: str, path: str, response: requests.Response) -> Any:
    if not response.content:
        return {}
    try:
        # orjson: a bulkfetch answer of 100 issues with their comments is half a megabyte; the
        # json module (what response.json() uses) for what orjson refuses (another encoding,
        # NaN, integers beyond 64 bits).
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        pass
    try:
        return response.json()
    except ValueError as exc:
        raise JiraError(
            f"{method} {path}: answer is not JSON (HTTP {response.status_code})",
            method=method,
            path=path,
            status=response.status_code,
        ) from exc


def _jira_messages(response: requests.Response) -> list[str]:
    """Jira's ``ErrorCollection``: ``errorMessages`` (list) and ``errors`` (field -> text)."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return [text[:300]] if text else []
    messages: list[str] = []
    if isinstance(body, dict):
        for message in body.get("errorMessages") or []:
            messages.append(str(message))
        errors = body.get("errors")
        if isinstance(errors, dict):
            messages.extend(f"{key}: {value}" for key, value in errors.items())
        if not messages and body.get("message"):
            messages.append(str(body["message"]))
    return messages


def _error_for(method: str, path: str, response: requests.Response) -> JiraError:
    status = response.status_code
    messages = _jira_messages(response)
    detail = "; ".join(messages)
    suffix = f": {detail}" if detail else ""
    where = f"{method} {path}"
    if status == 400:
        return JiraBadRequestError(
            f"{where}: HTTP 400 bad request{suffix}",
            method=method,
            path=path,
            status=status,
            jira_messages=messages,
        )
    if status == 401:
        return JiraAuthError(
            f"{where}: HTTP 401 unauthorized: Jira refused the credentials; check JIRA_EMAIL and "
            f"JIRA_API_TOKEN (or JIRA_OAUTH_TOKEN, which expires after an hour){suffix}",
            method=method,
            path=path,
            status=status,
        )
    if status == 403:
        hint = "the credentials were accepted but lack a permission (Browse projects, or OAuth scopes)"
        if response.headers.get("X-Seraph-LoginReason", "").startswith("AUTHENTICATION_DENIED"):
            # Jira asks for a CAPTCHA after repeated failed logins; only a browser login clears it.
            hint = "Jira wants a CAPTCHA after failed logins: log in once in a browser"
        return JiraAuthError(f"{where}: HTTP 403 forbidden: {hint}{suffix}", method=method, path=path, status=status)
    if status == 404:
        return JiraNotFoundError(
            f"{where}: HTTP 404 not found (missing, or not visible to this user){suffix}",
            method=method,
            path=path,
            status=status,
        )
    if status == 410:
        return JiraGoneError(
            f"this endpoint was removed by Atlassian: {path} ({method}, HTTP 410){suffix}",
            method=method,
            path=path,
            status=status,
        )
    return JiraError(f"{where}: HTTP {status}{suffix}", method=method, path=path, status=status)


def _refused(exc: BaseException) -> bool:
    """Nothing listens at the address (ECONNREFUSED), as opposed to a slow or flaky network."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "Connection refused" in str(exc) or "[Errno 111]" in str(exc)


def _transport_text(exc: BaseException) -> str:
    """urllib3's many-line text reduced to its cause: ``Connection refused (127.0.0.1:8081)``."""
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    host = re.search(r"host='([^']*)', port=(\d+)", text)
    where = f" ({host.group(1)}:{host.group(2)})" if host else ""
    if match:
        return match.group(1).strip().rstrip(".") + where
    if "timed out" in text.lower():
        return "timed out" + where
    return _short(exc)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "…"
