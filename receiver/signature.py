"""The webhook signature check: a pure function that fails closed.

Jira Cloud signs admin webhooks that have a secret with ``X-Hub-Signature: sha256=<hex>``, the
HMAC-SHA256 of the raw body (docs/jira.md, "Webhooks"; Atlassian: "Securing admin webhooks").
It is checked on the raw bytes, before anything parses them.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Sequence


class SignatureError(ValueError):
    """The delivery's signature is missing, malformed or does not match."""


def sign(body: bytes, secret: str) -> str:
    """The header value Jira sends for ``body`` signed with ``secret``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, *, header: str | None, secrets: Sequence[str]) -> None:
    """Raise SignatureError unless ``header`` is a valid signature of ``body`` by one of ``secrets``.

    Several secrets are accepted during a rotation. Every secret is compared, in constant time,
    whatever the outcome of the others.
    """
    if not secrets:
        raise SignatureError("no webhook secret is configured")
    if not header:
        raise SignatureError("missing X-Hub-Signature header")
    method, _, digest = header.strip().partition("=")
    if method.lower() != "sha256" or len(digest) != 64:
        raise SignatureError("malformed X-Hub-Signature header (expected sha256=<64 hex digits>)")
    try:
        given = bytes.fromhex(digest)
    except ValueError:
        raise SignatureError("malformed X-Hub-Signature header (expected sha256=<64 hex digits>)") from None
    matched = False
    for secret in secrets:
        expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise SignatureError("signature does not match the body")
