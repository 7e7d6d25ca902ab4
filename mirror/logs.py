"""Structured logs on stdout: one line per event, ``key=value`` (default) or JSON (``LOG_FORMAT=json``).

Every process (web, worker, CLI) installs the same formatter through :func:`configure`
(gunicorn through ``logconfig_dict`` in ``gunicorn.conf.py``). A line is::

    ts=2025-05-01T08:00:00.123Z level=info logger=receiver.webhooks msg="delivery accepted …" delivery=… duration_ms=3

After ``ts``, ``level``, ``logger`` and ``msg`` come the fields bound to the current request or job
(:func:`bound`: ``delivery``, ``job``, ``queue``, ``project``…) and the ``extra=`` fields of the call.
In JSON the ``key=value`` pairs of a message (``"sync done project=%s seen=%d"``) become fields of
their own (whole numbers as numbers), and ``msg`` keeps the words before them, so that a log
search can filter on ``project`` or ``seen`` whatever wrote the line.

RQ's own lines (five or so per job: dequeued, started, "Job OK", result kept…) are logged at
warning and above only, unless ``LOG_LEVEL=DEBUG`` (:func:`rq_level`): the worker's one
``job finished`` line says what they said. A job that failed on a client error Jira answered
(a 4xx: permissions, a missing project) is an expected failure, logged as one line without a
traceback (:func:`expected_error`).

What is never logged: secrets, tokens, ``Authorization`` headers, issue bodies and summaries. The
call sites are written so (ids, keys, outcomes, durations only); as a safety net the values given
to :func:`redact` are masked in every line, and peewee's query log (its parameters are issue
bodies) stays off whatever the level.
"""

from __future__ import annotations

import base64
import contextvars
import datetime as dt
import json
import logging
import os
import re
import sys
import threading
from contextlib import contextmanager
from typing import IO, Any, Iterator

from mirror.issues import utc_iso

__all__ = [
    "JsonFormatter",
    "KeyValueFormatter",
    "bind",
    "bound",
    "configure",
    "formatter_from_env",
    "gunicorn_logconfig",
    "redact",
    "redact_settings",
    "unbind",
    "unconfigure",
]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {"message", "asctime"}
# ``extra=`` fields never printed: RQ logs a failed job's arguments (an issue's whole JSON) so.
_UNSAFE_EXTRAS = frozenset({"arguments", "kwargs"})
_NOT_EXTRAS = _STANDARD | _UNSAFE_EXTRAS
# Loggers whose debug output carries data the mirror must not log (peewee: SQL parameters).
_QUIET = {"peewee": logging.INFO}
MASK = "[redacted]"
MIN_SECRET_LENGTH = 6  # shorter values would mask ordinary words

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("jira_mirror_log_context", default={})
_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()


def redact(*values: str | None) -> None:
    """Mask these values wherever they would appear in a log line (secrets, tokens)."""
    global _secrets
    with _secrets_lock:
        fresh = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH}
        # Longest first, so that a secret containing another is masked whole.
        _secrets = tuple(sorted(set(_secrets) | fresh, key=len, reverse=True))


def redact_settings(settings: Any) -> None:
    """:func:`redact` every secret a ``Settings`` holds (webhook secrets, admin and Jira tokens)."""
    values = list(getattr(settings, "jira_webhook_secrets", ()) or ())
    for name in ("admin_token", "jira_api_token", "jira_oauth_token"):
        values.append(getattr(settings, name, None))
    email, token = getattr(settings, "jira_email", None), getattr(settings, "jira_api_token", None)
    if email and token:  # the Basic credential as it travels
        values.append(base64.b64encode(f"{email}:{token}".encode()).decode("ascii"))
    redact(*values)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every line logged inside the block (this thread or task only)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> contextvars.Token[dict[str, Any]]:
    """Like :func:`bound`, for hooks that open and close in different functions; undo with :func:`unbind`."""
    return _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


def unbind(token: contextvars.Token[dict[str, Any]]) -> None:
    _context.reset(token)


_second: tuple[int, str] = (-1, "")  # the last second a line was logged in, as utc_iso wrote it


def _timestamp(record: logging.LogRecord) -> str:
    """``utc_iso`` of the record's time, to the millisecond; the second's text is kept from the
    line before (a line costs a busy process's hot path, the delivery's answer, some 20 µs)."""
    global _second
    whole = int(record.created)
    second = _second
    if second[0] != whole:
        second = _second = (whole, utc_iso(dt.datetime.fromtimestamp(whole, dt.timezone.utc), timespec="seconds")[:-1])
    return f"{second[1]}.{int(record.msecs):03d}Z"


# A ``key=`` inside a message: a lower-case name after a space (or at the start).
_PAIR = re.compile(r"(?:^|(?<=\s))([a-z_][a-z0-9_]*)=")
_INTEGER = re.compile(r"-?\d{1,18}")
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})


def split_pairs(message: str) -> tuple[str, dict[str, Any]]:
    """``"sync done project=DEMO seen=5"`` -> ``("sync done", {"project": "DEMO", "seen": 5})``: the
    words before the first ``key=``, and each pair (a value runs to the next `` key=``)."""
    matches = list(_PAIR.finditer(message))
    if not matches:
        return message, {}
    pairs: dict[str, Any] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(message)
        value = message[match.end() : end].strip()
        key = match.group(1)
        if key in _RESERVED or key in pairs:
            continue
        pairs[key] = int(value) if _INTEGER.fullmatch(value) else value
    text = message[: matches[0].start()].strip()
    return (text or message), pairs


def _fields(formatter: logging.Formatter, record: logging.LogRecord, *, pairs: bool = False) -> dict[str, Any]:
    message = record.getMessage()
    found: dict[str, Any] = {}
    if pairs:
        message, found = split_pairs(message)
    fields: dict[str, Any] = {
        "ts": _timestamp(record),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": message,
        **found,
    }
    for key, value in _context.get().items():
        fields.setdefault(key, value)
    for key, value in vars(record).items():
        if key not in _NOT_EXTRAS and value is not None and key[0] != "_":
            fields.setdefault(key, value)
    if record.exc_info:
        fields["exc"] = formatter.formatException(record.exc_info)
    if record.stack_info:
        fields["stack"] = record.stack_info
    # Masked before any escaping, so that a secret is found however the line quotes it.
    for key, value in fields.items():
        if isinstance(value, str):
            if _secrets:
                fields[key] = _scrub(value)
        elif not isinstance(value, (bool, int, float)):
            fields[key] = _scrub(json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":")))
    return fields


def _scrub(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


_NEEDS_QUOTES = re.compile(r'[ "=\\]')  # and what is not printable (newlines, tabs: isprintable)
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _kv_value(value: Any) -> str:
    if type(value) is str and value and value.isprintable() and not _NEEDS_QUOTES.search(value):
        return value  # most values: ids, keys, names, outcomes
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "nan"
    else:
        text = str(value)
    if text and text.isprintable() and not _NEEDS_QUOTES.search(text):
        return text
    escaped = text.translate(_ESCAPES)
    if escaped.isprintable():
        return '"' + escaped + '"'
    return '"' + "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped) + '"'


class KeyValueFormatter(logging.Formatter):
    """``ts=… level=… logger=… msg="…" key=value…`` on one line (newlines escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_kv_value(value)}" for key, value in _fields(self, record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the same keys as :class:`KeyValueFormatter`."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(self, record, pairs=True), default=str, ensure_ascii=False, separators=(",", ":"))


def formatter_from_env(fmt: str | None = None) -> logging.Formatter:
    """The formatter ``LOG_FORMAT`` asks for: ``json``, else key=value (also a dictConfig factory).

    Records then skip what neither formatter prints (the logging HOWTO's "Optimization": the
    caller's file and line, thread, process and multiprocessing names): about a sixth of a log
    line's cost, on the web process's hot path."""
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # the HOWTO's own switch for the caller's frame
    fmt = (fmt if fmt is not None else os.environ.get("LOG_FORMAT", "")).strip().lower()
    return JsonFormatter() if fmt == "json" else KeyValueFormatter()


def level_from_env(level: str | int | None = None) -> int:
    """``LOG_LEVEL`` (default INFO) as a logging level; an unknown name is INFO."""
    if isinstance(level, int):
        return level
    name = (level if level is not None else os.environ.get("LOG_LEVEL", "INFO")).strip().upper()
    value = logging.getLevelName(name)
    return value if isinstance(value, int) else logging.INFO


def rq_level() -> str:
    """The level for RQ's own loggers (``Worker.work(logging_level=…)``): warning, or debug when
    the process logs at debug (see the module docstring)."""
    return "DEBUG" if logging.getLogger().getEffectiveLevel() <= logging.DEBUG else "WARNING"


def expected_error(exc: BaseException | None) -> str | None:
    """A one-line description of ``exc`` when it is an expected failure (it, or an exception it
    came from, carries a 4xx ``status``: Jira refused the request for a reason a traceback does
    not explain better), else None."""
    seen = 0
    cause = exc
    while cause is not None and seen < 10:
        status = getattr(cause, "status", None)
        if isinstance(status, int) and 400 <= status < 500:
            text = (str(exc) or type(exc).__name__).strip().splitlines()
            return f"{type(exc).__name__}: {text[0] if text else ''}"
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return None


def quiet_noisy_loggers() -> None:
    for name, floor in _QUIET.items():
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < floor:
            logger.setLevel(floor)


class StandardStreamHandler(logging.StreamHandler):
    """Writes to ``sys.stdout`` or ``sys.stderr`` as they are when a record is emitted, not when
    the handler was made (so a replaced stream, as in click's test runner, is never written
    after it is closed)."""

    def __init__(self, name: str = "stdout"):
        self._stream_name = name
        super().__init__()

    @property
    def stream(self) -> IO[str]:
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass  # always the current sys stream


def configure(level: str | int | None = None, *, fmt: str | None = None, stream: IO[str] | None = None) -> None:
    """Send every log record through the structured formatter to stdout (or ``stream``).

    ``level`` and ``fmt`` default to ``LOG_LEVEL`` (INFO) and ``LOG_FORMAT`` (``kv``; ``json``).
    Calling it again replaces the handler it installed (other handlers, e.g. a test's capture,
    are left alone).
    """
    if stream is None or stream is sys.stdout:
        handler: logging.Handler = StandardStreamHandler("stdout")
    elif stream is sys.stderr:
        handler = StandardStreamHandler("stderr")
    else:
        handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter_from_env(fmt))
    handler._jira_mirror = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_jira_mirror", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_from_env(level))
    quiet_noisy_loggers()


def unconfigure() -> None:
    """Remove the handler :func:`configure` installed (tests that ran a command in-process)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_jira_mirror", False):
            root.removeHandler(old)


def gunicorn_logconfig(level: str | int | None = None) -> dict[str, Any]:
    """``logconfig_dict`` for gunicorn: its error and access logs and the app's logs, all on
    stdout through the structured formatter."""
    name = logging.getLevelName(level_from_env(level))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structured": {"()": "mirror.logs.formatter_from_env"}},
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "formatter": "structured", "stream": "ext://sys.stdout"},
        },
        "root": {"level": name, "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": name, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
            "peewee": {"level": max(level_from_env(level), logging.INFO), "handlers": [], "propagate": True},
        },
    }
