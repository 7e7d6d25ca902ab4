"""A Jira Cloud simulator: an independent fake of Jira Cloud's REST v3 API and webhooks.

Jira Cloud cannot be reached from CI, so the mirror is tested against this package. It imports
nothing from the mirror (``mirror``, ``receiver``, ``workers``, ``backfill``).

* :class:`Site` (:mod:`simulator.model`): projects, users, issues and their version history.
* :class:`JiraServer` (:mod:`simulator.server`): the REST API over HTTP(S), with index lag,
  rate limits, injected failures and the time-zone behaviour of JQL dates.
* :class:`WebhookPusher` (:mod:`simulator.webhooks`): signed, at-least-once, out-of-order
  ``jira:issue_*`` deliveries.
* :func:`run` / :func:`main` (:mod:`simulator.driver`): the live simulator (``python -m simulator``).
"""

from .driver import ChangeDriver, main, run
from .jql import JqlError
from .model import ChangeEvent, IssueNotFoundError, IssueVersion, Project, ProjectEvent, Site, SiteError, User
from .server import JiraServer
from .webhooks import PreparedRequest, WebhookPusher, sign

__all__ = [
    "ChangeDriver",
    "ChangeEvent",
    "IssueNotFoundError",
    "IssueVersion",
    "JiraServer",
    "JqlError",
    "PreparedRequest",
    "Project",
    "ProjectEvent",
    "Site",
    "SiteError",
    "User",
    "WebhookPusher",
    "main",
    "run",
    "sign",
]
