"""``/healthz`` (the process lives) and ``/readyz`` (the database and Redis answer)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from mirror.db import database

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    failed: dict[str, str] = {}
    try:
        with database.connection_context():
            database.execute_sql("SELECT 1")
    except Exception as exc:
        failed["database"] = type(exc).__name__
    try:
        current_app.extensions["redis"].ping()
    except Exception as exc:
        failed["redis"] = type(exc).__name__
    if failed:
        return jsonify({"status": "unavailable", "failed": failed}), 503
    return jsonify({"status": "ready"})
