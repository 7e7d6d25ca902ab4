"""The web process: Jira webhooks in, jobs out, plus health and ops pages."""

from __future__ import annotations

import logging

from flask import Flask

from mirror import logs
from mirror.db import init_database
from mirror.redis_connection import log_connection, redis_for
from mirror.settings import MIN_ADMIN_TOKEN_LENGTH, Settings, SettingsError
from receiver import admin, auth, errors, health, status, webhooks
from receiver import metrics as metrics_page
from receiver.capacity import RedisCapacity
from receiver.projects import TrackedProjects
from workers.queues import ISSUES, queue

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app from ``settings`` (default: the environment)."""
    settings = settings or Settings.from_env()
    if settings.admin_token is not None and len(settings.admin_token) < MIN_ADMIN_TOKEN_LENGTH:
        raise SettingsError(f"ADMIN_TOKEN must have at least {MIN_ADMIN_TOKEN_LENGTH} characters")
    app = Flask(__name__)
    # Werkzeug refuses a larger body with 413 before the view reads it.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["settings"] = settings
    logs.redact_settings(settings)  # a safety net: no secret value is ever printed in a log line
    init_database(settings.database_url)
    # Short socket timeouts: a Redis that does not answer becomes a quick 503, and Jira redelivers.
    redis = redis_for(settings, socket_timeout=2, socket_connect_timeout=1)
    log_connection(settings)
    app.extensions["redis"] = redis
    app.extensions["issues_queue"] = queue(ISSUES, redis)
    app.extensions["capacity"] = RedisCapacity(redis)
    app.extensions["tracked"] = TrackedProjects(settings.site)
    errors.register(app)
    app.register_blueprint(health.bp)
    metrics_page.init_app(app)  # GET /metrics
    auth.init_app(app, settings.admin_token)  # session cookie; key derived from ADMIN_TOKEN
    app.register_blueprint(status.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(webhooks.bp)  # the Flask adapter; the WSGI one below serves the path first
    # POST /webhooks/jira, the hot path, is served ahead of Flask (receiver.webhooks).
    app.wsgi_app = webhooks.WebhookEndpoint(app.wsgi_app, app.extensions)  # type: ignore[method-assign]
    return app
