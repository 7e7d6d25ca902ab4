"""The database binding: a peewee proxy bound late from ``DATABASE_URL``.

SQLite is the embedded default (WAL, a busy timeout, so that the web process, workers and
the CLI can share one file); PostgreSQL is the production database.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import urlparse

import orjson
import peewee as pw
from playhouse.db_url import connect as connect_url

database = pw.DatabaseProxy()

# A JSONField declares the type "JSON"; each engine gets its own column type.
# A UTCDateTimeField declares "TIMESTAMPTZ": time-zone aware on PostgreSQL (schema version 7),
# SQLite's usual DATETIME text (naive UTC, ISO-8601) there.
FIELD_TYPES = {
    "sqlite": {"JSON": "TEXT", "TIMESTAMPTZ": "DATETIME"},
    "postgres": {"JSON": "JSONB", "TIMESTAMPTZ": "TIMESTAMPTZ"},
}
# Every PostgreSQL session reads and writes timestamps in UTC: a naive UTC value sent to a
# timestamptz column is then the instant it means, whatever the server's TimeZone setting.
POSTGRES_OPTIONS = "-c timezone=UTC"

SQLITE_PRAGMAS = (
    ("journal_mode", "wal"),
    ("busy_timeout", 15000),  # ms: a writer waits for another instead of failing at once
    ("synchronous", "normal"),  # safe with WAL; a commit does not fsync the main file
    ("foreign_keys", 1),
)


class DatabaseURLError(ValueError):
    """DATABASE_URL names an engine or a place this mirror cannot use."""


def open_database(url: str) -> pw.Database:
    """A peewee Database for ``url`` (not yet connected)."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise DatabaseURLError("DATABASE_URL: a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")
        if path != ":memory:":
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise DatabaseURLError(f"DATABASE_URL: the folder of the SQLite file does not exist: {folder}")
        return pw.SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, field_types=FIELD_TYPES["sqlite"], timeout=15)
    if scheme in ("postgres", "postgresql"):
        return connect_url(url, field_types=FIELD_TYPES["postgres"], options=POSTGRES_OPTIONS)
    raise DatabaseURLError(f"DATABASE_URL: unsupported scheme {scheme!r} (sqlite, postgres, postgresql)")


def tuples(query: Any) -> Iterator[tuple[Any, ...]]:
    """The rows of a peewee query as tuples: ``query.tuples()``, typed as what it yields (peewee's
    own annotations say model instances)."""
    return iter(query.tuples())


def chunked(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size`` (the last may be shorter): the batches of a statement or a
    request that takes at most ``size`` values."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def one_of(field: pw.Field, values: Sequence[Any]) -> pw.Expression:
    """``field IN (values)``. On PostgreSQL ``field = ANY(%s)`` with the values as one array
    parameter: peewee renders an IN list as a node per value, a sizeable share of a sync's CPU
    for its lists of hundreds of ids."""
    values = list(values)
    if values and is_postgres():
        return field == pw.fn.ANY(pw.Value([field.db_value(v) for v in values], converter=False, unpack=False))
    return field.in_(values)


def is_postgres() -> bool:
    """Whether the bound database is PostgreSQL (schema and history writes differ by engine)."""
    return isinstance(database.obj, pw.PostgresqlDatabase)


def init_database(url: str) -> pw.Database:
    """Bind the proxy to ``url`` and return the real database."""
    db = open_database(url)
    database.initialize(db)
    return db


class BulkInsert:
    """A multi-row ``INSERT … VALUES (…), (…) [ON CONFLICT …]``, rendered by peewee once and
    then bound for any number of rows.

    peewee renders every value of every row as a node of its query tree: for a sync's tens of
    thousands of rows that was most of the process's CPU, more than reading and mapping them.
    Here peewee renders the statement for one row and for two (per engine and column set); the
    text for n rows is the same with n value groups, which the two renderings prove before the
    template is used (otherwise peewee renders every batch, as before). Values are converted
    with each column's ``db_value`` and missing ones take the column's default, as peewee does.

    ``finish`` completes the query (``on_conflict``, ``returning``); rows are dicts keyed by
    field name, holding plain values (no peewee expressions).
    """

    def __init__(self, model: type[pw.Model], finish: Callable[[pw.ModelInsert], pw.Insert] = lambda q: q):
        self.model = model
        self.finish = finish
        self._templates: dict[tuple[Any, ...], _Template | None] = {}

    def query(self, rows: Sequence[Mapping[str, Any]]) -> pw.Insert:
        """The statement as peewee renders it (the reference the template is checked against)."""
        return self.finish(self.model.insert_many(list(rows)))

    def execute(self, rows: Sequence[Mapping[str, Any]]) -> Any:
        """Run the statement for ``rows`` (at least one); returns the cursor."""
        if not rows:
            raise ValueError("BulkInsert.execute: no rows")
        columns = self._columns(rows[0])
        db = database.obj
        key = (type(db), getattr(db, "param", None), tuple(f.name for f in columns))
        template = self._templates.get(key, _UNSET)
        if template is _UNSET:
            template = self._templates[key] = self._render(rows[0], columns)
        if template is None:
            return database.execute(self.query(rows))
        if template.json_sql is not None and isinstance(db, pw.PostgresqlDatabase):
            payload = template.payload(rows)
            if payload is not None:
                return database.execute_sql(template.json_sql, [payload, *template.tail])
        sql, params = template.bind(rows)
        return database.execute_sql(sql, params)

    def _columns(self, row: Mapping[str, Any]) -> list[pw.Field]:
        fields = self.model._meta.fields
        named = {fields[name] for name in row}  # KeyError for a name that is no field, as in peewee
        defaults = self.model._meta.defaults
        return [f for f in self.model._meta.sorted_fields if f in named or f in defaults]

    def _render(self, sample: Mapping[str, Any], columns: list[pw.Field]) -> "_Template | None":
        one, one_params = self.query([sample]).sql()
        two, two_params = self.query([sample, sample]).sql()
        param = database.obj.param
        n = len(columns)
        group = "(" + ", ".join([param] * n) + ")"
        start = one.find(" VALUES (")
        if start < 0:
            return None
        start += len(" VALUES ")
        prefix, suffix = one[:start], one[start + len(group) :]
        tail = list(one_params[n:])
        if one[start : start + len(group)] != group or two != prefix + group + ", " + group + suffix:
            return None
        if list(two_params[2 * n :]) != tail or len(one_params) != n + len(tail):
            return None
        return _Template(prefix, group, suffix, tail, columns, self.model._meta.defaults, self.model._meta.table_name)


class _Template:
    def __init__(
        self,
        prefix: str,
        group: str,
        suffix: str,
        tail: list[Any],
        columns: list[pw.Field],
        defaults: Mapping[pw.Field, Any],
        table: str,
    ):
        self.prefix, self.group, self.suffix, self.tail = prefix, group, suffix, tail
        self.columns = [(f.name, f.db_value, _kept(f), f in defaults, defaults.get(f), f.null) for f in columns]
        self.names = frozenset(f.name for f in columns)
        self.json_sql = _json_statement(prefix, suffix, columns, table)

    def payload(self, rows: Sequence[Mapping[str, Any]]) -> str | None:
        """PostgreSQL: the rows as one JSON array, the parameter of :attr:`json_sql`; None when
        JSON cannot carry them as the columns' own conversions would (a value orjson refuses, a
        NUL character): then :meth:`bind`."""
        names = self.names
        if not all(row.keys() >= names for row in rows):
            rows = [self._complete(row) for row in rows]
        try:
            text = orjson.dumps(rows)
        except TypeError:
            return None
        return None if b"\\u0000" in text else text.decode()

    def _complete(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        if row.keys() >= self.names:
            return row
        full = dict(row)
        for name, _convert, _kept_type, has_default, default, null in self.columns:
            if name not in full:
                full[name] = _missing(name, has_default, default, null)
        return full

    def bind(self, rows: Sequence[Mapping[str, Any]]) -> tuple[str, list[Any]]:
        params: list[Any] = []
        append = params.append
        for row in rows:
            for name, convert, kept, has_default, default, null in self.columns:
                try:
                    value = row[name]
                except KeyError:
                    value = _missing(name, has_default, default, null)
                append(value if value is None or value.__class__ is kept else convert(value))
        return self.prefix + ", ".join([self.group] * len(rows)) + self.suffix, params + self.tail


def _missing(name: str, has_default: bool, default: Any, null: bool) -> Any:
    """The value of a column a row omits, as peewee takes it: its default, else NULL where the
    column allows it; ValueError otherwise."""
    if has_default:
        return default() if callable(default) else default
    if null:
        return None
    raise ValueError(f"Missing value for {name}.")


def _json_statement(prefix: str, suffix: str, columns: list[pw.Field], table: str) -> str | None:
    """The same statement reading its rows from one JSON array (``jsonb_populate_recordset``):
    PostgreSQL converts the values (timestamps, JSONB, numbers) from the JSON text, where
    :meth:`_Template.bind` converts each in Python and psycopg2 quotes each, which was most of a
    sync's write CPU. Only for plain columns whose name is the field's and for the types whose
    JSON form PostgreSQL reads as ``db_value`` would write them; else None.

    The text is cast to ``jsonb`` once and the rows read from that: a JSONB column (an issue's
    ``fields``, most of a row) takes its value as parsed. ``json_populate_recordset`` parsed the
    text twice and each JSONB value a third time: the upserts of 5,000 issues took 1.22 s of the
    server's CPU against 1.04 s (means of six runs side by side)."""
    plain = (pw.CharField, pw.TextField, pw.IntegerField, pw.BigIntegerField, pw.DoubleField, pw.BooleanField)
    for field in columns:
        readable = isinstance(field, (*plain, pw.DateTimeField, pw.DateField)) or field.field_type == "JSON"
        if not readable or field.column_name != field.name:
            return None
    if not prefix.endswith(" VALUES "):
        return None
    quoted = ", ".join(f'"{field.column_name}"' for field in columns)
    head = prefix[: -len(" VALUES ")]
    if not head.endswith(f"({quoted})"):
        return None
    return f'{head} SELECT {quoted} FROM jsonb_populate_recordset(NULL::"{table}", %s::jsonb) AS "rows"{suffix}'


def _kept(field: pw.Field) -> type | None:
    """The type whose values the field's ``db_value`` hands back unchanged (no call needed):
    ``str`` for peewee's own text fields, ``int`` for its integer fields, ``float`` for its
    floating ones; None when every value goes through ``db_value``."""
    kind = type(field)
    if kind.db_value is not pw.Field.db_value:
        return None
    if kind in (pw.CharField, pw.TextField, pw.FixedCharField):
        return str
    if kind in (pw.IntegerField, pw.BigIntegerField, pw.SmallIntegerField):
        return int
    if kind in (pw.DoubleField, pw.FloatField):
        return float
    return None


_UNSET: Any = object()


def analyze(*columns: pw.Field) -> None:
    """PostgreSQL only: refresh the planner's statistics of these columns, after a bulk load.

    Until autovacuum gets to a table just filled, the planner believes it nearly empty and may
    pick an index on ``site`` alone for ``site = … AND issue_id IN (…)``: every such statement of
    a sync's end then reads the whole site (PostgreSQL's advice for bulk loads: "Run ANALYZE
    Afterwards"). Only the named columns are sampled: an issue's ``fields`` would cost more."""
    if not is_postgres():
        return
    by_table: dict[str, list[str]] = {}
    for column in columns:
        by_table.setdefault(column.model._meta.table_name, []).append(column.column_name)
    for table, names in by_table.items():
        database.execute_sql(f'ANALYZE "{table}" ({", ".join(f"{n}" for n in names)})')


def asynchronous_commit() -> None:
    """PostgreSQL: this session's commits return before their WAL reaches the disk (``SET
    synchronous_commit = off``), for a sync's writer connections, whose reads wait for them.
    PostgreSQL's documentation: a crash of the server may lose the last transactions reported
    committed (at most about three times ``wal_writer_delay``), never part of one nor out of order,
    and the database stays consistent. A sync records its run and cursor afterwards on a connection
    that waits (the default), and that commit's flush carries every earlier one: a cursor never
    survives the rows it stands for. Elsewhere nothing changes."""
    if is_postgres():
        database.execute_sql("SET synchronous_commit = off")


def prefer_fast_compression() -> None:
    """PostgreSQL 14+ built with lz4: this session compresses the large values it writes (an
    issue's ``fields``) with lz4 rather than pglz, for a fraction of the server's CPU. Values
    keep whichever method wrote them and read the same; elsewhere nothing changes."""
    if not is_postgres():
        return
    try:
        database.execute_sql("SET default_toast_compression = 'lz4'")
    except pw.DatabaseError:  # before PostgreSQL 14, or built without lz4: pglz, as before
        pass
