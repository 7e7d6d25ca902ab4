"""The receiver's two baselines, served by the same gunicorn settings (``gunicorn.conf.py``).

* ``flask_app()``: a minimal Flask app whose one view reads the body and answers 202;
* ``wsgi_app``: a bare WSGI callable doing the same.

Both answer the same small JSON body as the receiver's 202 (``{"enqueued": 1}``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from flask import Flask, request

ANSWER = b'{"enqueued":1}\n'


def flask_app() -> Flask:
    app = Flask(__name__)

    @app.post("/webhooks/jira")
    def receive():
        request.get_data(cache=False)
        return ANSWER, 202, {"Content-Type": "application/json"}

    @app.get("/healthz")
    def healthz():
        return "ok"

    return app


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("202 Accepted", [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))])
    return [ANSWER]
