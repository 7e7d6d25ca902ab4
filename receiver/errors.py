"""All error mapping in one place: every error leaves as JSON ``{"error": ...}``."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered with ``status`` and a JSON body."""

    def __init__(self, status: int, message: str, *, details: object = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        """The JSON answer: ``{"error": message}``, with ``details`` when there are any."""
        body: dict[str, object] = {"error": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return jsonify(exc.body()), exc.status, exc.headers

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return jsonify({"error": exc.description or exc.name}), exc.code or 500

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error type=%s", type(exc).__name__)
        return jsonify({"error": "internal error"}), 500
