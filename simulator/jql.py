"""A subset of JQL, evaluated the way Jira Cloud evaluates it.

Supported (field names and keywords case-insensitive)::

    project = KEY | project = "Name" | project = 10000 | project in (A, B) | project != / not in
    key = DEMO-1 | issuekey / id / issue (aliases of one clause, taking keys or ids)
        = != in (...) not in (...) > >= < <=   (key ranges stay inside the key's project)
    updated / updatedDate / created / createdDate   = != > >= < <= in (...)
    AND, OR, NOT, parentheses
    ORDER BY updated|created|key|issuekey|id|project [ASC|DESC], ...

Date values, as Atlassian's "JQL fields: Created/Updated" documents them (docs/jira.md, "Search
and reads"):

* ``"yyyy/MM/dd HH:mm"``, ``"yyyy-MM-dd HH:mm"``, ``"yyyy/MM/dd"``, ``"yyyy-MM-dd"``: read in the
  **requesting user's profile time zone** (``timeZone`` of ``GET /rest/api/3/myself``), at minute
  precision. A connector that renders its UTC cursor as a wall-clock string therefore misses
  changes whenever the user sits west of UTC (and re-reads hours of them east of UTC).
* a bare integer: epoch milliseconds (exact).
* a period relative to now: ``-5m``, ``-2h``, ``-1d``, ``-1w``, ``"-4w 2d"`` (m = minutes),
  counted from the start of the current minute.

A query without any restriction is refused by search/jql with "Unbounded JQL queries are not
allowed here" (Atlassian's CHANGE-2046 migration notes); any clause counts as a restriction, as
on the real site (``created >= -30d`` alone is accepted). Anything else gets a 400 with a message
in the shape Jira uses. Parsing is pure and cached; :func:`compile_query` binds a parsed query to
a site, a time zone and "now".
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

from .model import IssueVersion, Site
from .render import zone

__all__ = ["JqlError", "Query", "Compiled", "parse", "compile_query", "parse_date", "UNBOUNDED"]

UNBOUNDED = "Unbounded JQL queries are not allowed here. Please add a search restriction to your query."


class JqlError(ValueError):
    """The query cannot be run; ``str(error)`` is the message Jira would put in errorMessages."""


# --- tokens ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<op>!=|>=|<=|!~|=|>|<|~)
  | (?P<punct>[(),])
  | (?P<word>[^\s"'(),=!<>~]+)
  | (?P<bad>.)
""",
    re.VERBOSE,
)

_KEYWORDS = {"and", "or", "not", "in", "order", "by", "asc", "desc", "is", "empty", "null", "was", "changed"}


@dataclass(frozen=True)
class _Tok:
    kind: str  # str | op | punct | word | kw | eof
    text: str
    pos: int

    @property
    def low(self) -> str:
        return self.text.lower()


def _tokenize(jql: str) -> list[_Tok]:
    out: list[_Tok] = []
    for m in _TOKEN.finditer(jql):
        kind = m.lastgroup or "bad"
        text = m.group()
        if kind == "ws":
            continue
        if kind == "bad":
            raise JqlError(
                f"Error in the JQL Query: The character '{text}' is a reserved JQL "
                f"character. You must enclose it in a string or use the escape "
                f"'\\u{ord(text):04x}' instead. {_where(jql, m.start())}"
            )
        if kind == "str":
            body = text[1:-1]
            text = re.sub(r"\\(.)", r"\1", body)
        elif kind == "word" and text.lower() in _KEYWORDS:
            kind = "kw"
        out.append(_Tok(kind, text, m.start()))
    out.append(_Tok("eof", "", len(jql)))
    return out


def _where(jql: str, pos: int) -> str:
    line = jql.count("\n", 0, pos) + 1
    col = pos - (jql.rfind("\n", 0, pos) + 1) + 1
    return f"(line {line}, character {col})"


# --- syntax tree ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Value:
    text: str
    quoted: bool


@dataclass(frozen=True)
class _Clause:
    field: str  # canonical: project | issuekey | updated | created
    name: str  # as written
    op: str  # = != > >= < <= in "not in"
    values: tuple[_Value, ...]


@dataclass(frozen=True)
class _Bool:
    op: str  # and | or | not
    items: tuple[Any, ...]


@dataclass(frozen=True)
class Query:
    """A parsed query: ``where`` tree (or None) and ``order`` [(field, descending)]."""

    where: Any
    order: tuple[tuple[str, bool], ...]
    text: str

    @property
    def bounded(self) -> bool:
        return self.where is not None


_FIELDS = {
    "project": "project",
    "key": "issuekey",
    "issuekey": "issuekey",
    "id": "issuekey",
    "issue": "issuekey",
    "updated": "updated",
    "updateddate": "updated",
    "created": "created",
    "createddate": "created",
}
_ORDER_FIELDS = {
    "updated": "updated",
    "updateddate": "updated",
    "created": "created",
    "createddate": "created",
    "key": "key",
    "issuekey": "key",
    "id": "id",
    "project": "project",
}
_OPS = {
    "project": ("=", "!=", "in", "not in"),
    "issuekey": ("=", "!=", "in", "not in", ">", ">=", "<", "<="),
    "updated": ("=", "!=", ">", ">=", "<", "<=", "in", "not in"),
    "created": ("=", "!=", ">", ">=", "<", "<=", "in", "not in"),
}


class _Parser:
    def __init__(self, jql: str) -> None:
        self.jql = jql
        self.toks = _tokenize(jql)
        self.i = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def at_kw(self, *words: str) -> bool:
        return self.tok.kind == "kw" and self.tok.low in words

    def fail(self, expecting: str) -> JqlError:
        tok = self.tok
        got = "the end of the query" if tok.kind == "eof" else f"'{tok.text}'"
        return JqlError(f"Error in the JQL Query: Expecting {expecting} but got {got}. {_where(self.jql, tok.pos)}")

    def query(self) -> Query:
        where = None
        if self.tok.kind != "eof" and not self.at_kw("order"):
            where = self.or_expr()
        order: list[tuple[str, bool]] = []
        if self.at_kw("order"):
            self.take()
            if not self.at_kw("by"):
                raise self.fail("'by'")
            self.take()
            while True:
                tok = self.tok
                if tok.kind not in ("word", "str", "kw") or tok.low in ("asc", "desc"):
                    raise self.fail("a field name")
                self.take()
                canon = _ORDER_FIELDS.get(tok.low)
                if canon is None:
                    raise JqlError(f"Not able to sort using field '{tok.text}'.")
                desc = False
                if self.at_kw("asc", "desc"):
                    desc = self.take().low == "desc"
                order.append((canon, desc))
                if self.tok.kind == "punct" and self.tok.text == ",":
                    self.take()
                    continue
                break
        if self.tok.kind != "eof":
            raise self.fail("either 'OR' or 'AND'" if not order else "',' or the end of the query")
        return Query(where, tuple(order), self.jql)

    def or_expr(self) -> Any:
        items = [self.and_expr()]
        while self.at_kw("or"):
            self.take()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else _Bool("or", tuple(items))

    def and_expr(self) -> Any:
        items = [self.not_expr()]
        while self.at_kw("and"):
            self.take()
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else _Bool("and", tuple(items))

    def not_expr(self) -> Any:
        if self.at_kw("not"):
            self.take()
            return _Bool("not", (self.not_expr(),))
        if self.tok.kind == "punct" and self.tok.text == "(":
            self.take()
            inner = self.or_expr()
            if not (self.tok.kind == "punct" and self.tok.text == ")"):
                raise self.fail("')'")
            self.take()
            return inner
        return self.clause()

    def clause(self) -> _Clause:
        tok = self.tok
        if tok.kind not in ("word", "str"):
            raise self.fail("a field name")
        self.take()
        canon = _FIELDS.get(tok.low)
        if canon is None:
            raise JqlError(f"Field '{tok.text}' does not exist or you do not have permission to view it.")
        op_tok = self.tok
        if op_tok.kind == "op":
            op = self.take().text
        elif self.at_kw("in"):
            self.take()
            op = "in"
        elif self.at_kw("not"):
            self.take()
            if not self.at_kw("in"):
                raise self.fail("'in'")
            self.take()
            op = "not in"
        elif self.at_kw("is", "was", "changed"):
            raise JqlError(
                f"The operator '{op_tok.text.upper()}' is not supported by the simulator for the field '{tok.text}'."
            )
        else:
            raise self.fail("an operator")
        if op not in _OPS[canon]:
            raise JqlError(f"The operator '{op}' is not supported by the '{tok.text}' field.")
        if op in ("in", "not in"):
            if not (self.tok.kind == "punct" and self.tok.text == "("):
                raise self.fail("'('")
            self.take()
            values = [self.value()]
            while self.tok.kind == "punct" and self.tok.text == ",":
                self.take()
                values.append(self.value())
            if not (self.tok.kind == "punct" and self.tok.text == ")"):
                raise self.fail("')'")
            self.take()
        else:
            values = [self.value()]
        return _Clause(canon, tok.text, op, tuple(values))

    def value(self) -> _Value:
        tok = self.tok
        if tok.kind == "str":
            self.take()
            return _Value(tok.text, True)
        if tok.kind == "word":
            self.take()
            return _Value(tok.text, False)
        if tok.kind == "punct" and tok.text == "(":
            raise JqlError(
                f"Error in the JQL Query: Functions are not supported by the simulator. {_where(self.jql, tok.pos)}"
            )
        raise self.fail("either a value, 'EMPTY' or a function")


@lru_cache(maxsize=512)
def parse(jql: str) -> Query:
    """Parses JQL (cached). Raises :class:`JqlError` with a Jira-shaped message."""
    return _Parser(jql).query()


# --- dates ----------------------------------------------------------------------------------

_DATE = re.compile(r"^(\d{4})([-/])(\d{1,2})\2(\d{1,2})(?:\s+(\d{1,2}):(\d{2}))?$")
_PERIOD = re.compile(r"^([-+])?\s*((?:\d+\s*[wdhmWDHM]\s*)+)$")
_PERIOD_PART = re.compile(r"(\d+)\s*([wdhmWDHM])")
_UNIT_MS = {"w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000}


def parse_date(text: str, *, tz: str, now_ms: int, field: str = "updated") -> int:
    """A JQL date value as epoch ms, reading wall-clock formats in ``tz``.

    Raises :class:`JqlError` for a value Jira would refuse.
    """
    s = text.strip()
    if s.isdigit():
        return int(s)
    m = _PERIOD.match(s)
    if m:
        total = sum(int(n) * _UNIT_MS[u.lower()] for n, u in _PERIOD_PART.findall(m.group(2)))
        # Minute precision, like every JQL date: "now" is the start of the current minute.
        this_minute = now_ms - now_ms % 60_000
        return this_minute - total if m.group(1) == "-" else this_minute + total
    m = _DATE.match(s)
    if m:
        year, _sep, month, day, hour, minute = m.groups()
        try:
            moment = _dt.datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), tzinfo=zone(tz))
        except ValueError:
            pass
        else:
            return int(moment.timestamp()) * 1000
    raise JqlError(
        f"Date value '{text}' for field '{field}' is invalid. Valid formats include: "
        f"'yyyy/MM/dd HH:mm', 'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', or a "
        f"period format e.g. '-5d', '4w 2d'."
    )


# --- binding to a site ----------------------------------------------------------------------

Predicate = Callable[[IssueVersion], bool]
SortKey = Callable[[IssueVersion], tuple[int, ...]]

_CMP: dict[str, Callable[[int, int], bool]] = {
    "=": int.__eq__,
    "!=": int.__ne__,
    ">": int.__gt__,
    ">=": int.__ge__,
    "<": int.__lt__,
    "<=": int.__le__,
}


@dataclass(frozen=True)
class Compiled:
    """A query bound to a site, time zone and instant.

    ``predicate(version)`` says whether an issue matches; ``sort_key(version)`` is a tuple of ints
    that orders the results (ending with the id, so it is unique); ``cache_key`` identifies the
    resolved query (dates already turned into instants).
    """

    predicate: Predicate
    sort_key: SortKey
    cache_key: tuple[Any, ...]
    bounded: bool


def compile_query(query: Query, *, site: Site, tz: str, now_ms: int) -> Compiled:
    """Resolves projects, keys and dates of ``query``. Raises :class:`JqlError`."""
    if query.where is None:
        predicate: Predicate = _always
        resolved: Any = None
    else:
        predicate, resolved = _compile(query.where, site, tz, now_ms)
    order = query.order or (("key", True),)
    ranks = {key: i for i, key in enumerate(sorted(site.projects))}
    ranks.update({former: ranks[current] for former, current in site.project_keys().items()})
    sort_key = _sort_key(order, ranks)
    return Compiled(predicate, sort_key, (resolved, order, tuple(sorted(ranks))), query.bounded)


def _always(_v: IssueVersion) -> bool:
    return True


def _compile(node: Any, site: Site, tz: str, now_ms: int) -> tuple[Predicate, Any]:
    if isinstance(node, _Bool):
        parts = [_compile(item, site, tz, now_ms) for item in node.items]
        preds = [p for p, _ in parts]
        key = (node.op, tuple(k for _, k in parts))
        if node.op == "not":
            inner = preds[0]
            return (lambda v: not inner(v)), key
        if node.op == "and":
            if len(preds) == 2:
                a, b = preds
                return (lambda v: a(v) and b(v)), key
            return (lambda v: all(p(v) for p in preds)), key
        return (lambda v: any(p(v) for p in preds)), key
    clause: _Clause = node
    if clause.field == "project":
        return _project_clause(clause, site)
    if clause.field == "issuekey":
        return _key_clause(clause, site)
    return _date_clause(clause, tz, now_ms)


def _project_clause(c: _Clause, site: Site) -> tuple[Predicate, Any]:
    # A renamed project answers to its former keys too, and a version indexed before the rename
    # still carries a former key: match every key the project ever had.
    every_key = site.project_keys()
    keys: set[str] = set()
    for value in c.values:
        project = site.find_project(value.text)
        if project is None:
            project = next((p for p in site.projects.values() if value.text.lower() == p.name.lower()), None)
        if project is None:
            raise JqlError(f"The value '{value.text}' does not exist for the field '{c.name}'.")
        keys.update(k for k, current in every_key.items() if current == project.key)
    frozen = frozenset(keys)
    if c.op in ("=", "in"):
        if len(frozen) == 1:
            (only,) = frozen
            return (lambda v: v.project == only), ("project", "in", frozen)
        return (lambda v: v.project in frozen), ("project", "in", frozen)
    return (lambda v: v.project not in frozen), ("project", "not in", frozen)


_KEY = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)-(\d+)$")


def _key_clause(c: _Clause, site: Site) -> tuple[Predicate, Any]:
    if c.op in ("=", "!=", "in", "not in"):
        ids: set[str] = set()
        for value in c.values:
            text = value.text.strip()
            if not text.isdigit() and not _KEY.match(text):
                raise JqlError(f"The issue key '{text}' for field '{c.name}' is invalid.")
            issue_id = site.resolve(text)
            if issue_id is None:
                if text.isdigit():
                    continue  # an id that never existed matches nothing
                raise JqlError(f"An issue with key '{text}' does not exist for field '{c.name}'.")
            ids.add(issue_id)
        frozen = frozenset(ids)
        if c.op in ("=", "in"):
            return (lambda v: v.id in frozen), ("issuekey", "in", frozen)
        return (lambda v: v.id not in frozen), ("issuekey", "not in", frozen)
    # Ranges: `key > DEMO-10` stays within DEMO; `id > 10010` compares ids.
    text = c.values[0].text.strip()
    cmp = _CMP[c.op]
    if text.isdigit():
        bound = int(text)
        return (lambda v: cmp(int(v.id), bound)), ("issuekey", c.op, bound)
    m = _KEY.match(text)
    if not m:
        raise JqlError(f"The issue key '{text}' for field '{c.name}' is invalid.")
    found = site.find_project(m.group(1))
    if found is None:
        raise JqlError(f"The issue key '{text}' for field '{c.name}' is invalid.")
    num = int(m.group(2))
    keys = frozenset(k for k, current in site.project_keys().items() if current == found.key)
    return (lambda v: v.project in keys and cmp(v.num, num)), ("issuekey", c.op, keys, num)


def _date_clause(c: _Clause, tz: str, now_ms: int) -> tuple[Predicate, Any]:
    attr = c.field
    instants = [parse_date(v.text, tz=tz, now_ms=now_ms, field=c.name) for v in c.values]
    if c.op in ("in", "not in"):
        wanted = frozenset(instants)
        if c.op == "in":
            return (lambda v: getattr(v, attr) in wanted), (attr, "in", wanted)
        return (lambda v: getattr(v, attr) not in wanted), (attr, "not in", wanted)
    bound = instants[0]
    cmp = _CMP[c.op]
    if attr == "updated":
        return (lambda v: cmp(v.updated, bound)), (attr, c.op, bound)
    return (lambda v: cmp(v.created, bound)), (attr, c.op, bound)


def _sort_key(order: Sequence[tuple[str, bool]], ranks: dict[str, int]) -> SortKey:
    getters: list[Callable[[IssueVersion], int]] = []
    has_id = False
    for name, desc in order:
        sign = -1 if desc else 1
        if name in ("updated", "created"):
            getters.append(_attr_getter(name, sign))
        elif name == "id":
            has_id = True
            getters.append(_signed(lambda v: int(v.id), sign))
        elif name == "project":
            getters.append(_signed(lambda v: ranks.get(v.project, -1), sign))
        else:  # key: project (by key) then number, as Jira sorts keys
            getters.append(_signed(lambda v: ranks.get(v.project, -1), sign))
            getters.append(_signed(lambda v: v.num, sign))
    if not has_id:
        getters.append(lambda v: int(v.id))
    # Unrolled for the usual lengths: this runs once per matching issue per uncached search.
    if len(getters) == 2:
        g1, g2 = getters
        return lambda v: (g1(v), g2(v))
    if len(getters) == 3:
        g1, g2, g3 = getters
        return lambda v: (g1(v), g2(v), g3(v))
    return lambda v: tuple([g(v) for g in getters])


def _signed(getter: Callable[[IssueVersion], int], sign: int) -> Callable[[IssueVersion], int]:
    """``getter`` times ``sign`` (-1 sorts descending)."""
    return lambda version: sign * getter(version)


def _attr_getter(name: str, sign: int) -> Callable[[IssueVersion], int]:
    if name == "updated":
        return (lambda v: v.updated) if sign > 0 else (lambda v: -v.updated)
    return (lambda v: v.created) if sign > 0 else (lambda v: -v.created)
