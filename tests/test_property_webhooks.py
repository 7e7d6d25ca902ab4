"""Property-based tests of ``POST /webhooks/jira`` (hypothesis), against real Redis and the real
database: whatever the body, the headers and the content type,

* the answer is a 2xx or a 4xx, never a 5xx (Redis is up);
* a 4xx, or a 200 "ignored", leaves the queue and the database as they were;
* a 202 means the delivery was valid: its job runs to success in a real RQ worker and writes
  the issue's row. Nothing the worker cannot write is ever accepted (it would retry for 17
  minutes, then sit in the failed registry).

Bodies are arbitrary bytes, arbitrary JSON, and valid Jira deliveries with one part replaced
by arbitrary JSON (the schema's edges: types, timestamps, ids, keys, NaN, huge numbers, lone
surrogates, NUL, deep nesting). Example counts stay moderate so the file runs in well under a
minute; ``HYPOTHESIS_PROFILE=thorough`` runs ten times as many.
"""

import json
import os

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from rq.registry import FailedJobRegistry

from mirror.models import Issue
from receiver.signature import sign
from tests import factories
from tests.conftest import SECRET
from workers.queues import ISSUES, queue

URL = "/webhooks/jira"
SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 1
COMMON = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies -----------------------------------------------------------------------------------

# Text with the troublemakers in it: NUL and other controls, lone surrogates, astral characters.
TEXT = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=30) | st.sampled_from(
    [
        "",
        "\x00",
        "\ud800",
        "\udfff",
        "a\ud83d",
        "😀",
        "<script>alert(1)</script>",
        "'; DROP TABLE jira_issue;--",
        "2024-12-29T08:41:23.904+0530",
        "2024-02-30T08:41:23.904+0530",
        "2024-12-29",
        "DEMO-1",
        "demo-1",
        "DEMO",
        "10001",
        "-1",
        "9" * 20,
        " ",
        "s" * 300,
        "\x00" * 40,
    ]
)
NUMBERS = (
    st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, -1, 2**53, 2**53 + 1, 2**63, 10**40, -0.0, 1e308])
)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12
)

# The places of a valid delivery that the schema or the worker look at.
PATHS = [
    ("timestamp",),
    ("webhookEvent",),
    ("issue",),
    ("issue", "id"),
    ("issue", "key"),
    ("issue", "fields"),
    ("issue", "fields", "updated"),
    ("issue", "fields", "created"),
    ("issue", "fields", "resolutiondate"),
    ("issue", "fields", "project"),
    ("issue", "fields", "project", "key"),
    ("issue", "fields", "summary"),
    ("issue", "fields", "status"),
    ("issue", "fields", "status", "name"),
    ("issue", "fields", "status", "statusCategory"),
    ("issue", "fields", "issuetype"),
    ("issue", "fields", "priority"),
    ("issue", "fields", "assignee"),
    ("issue", "fields", "assignee", "accountId"),
    ("issue", "fields", "reporter"),
    ("issue", "fields", "labels"),
    ("issue", "fields", "customfield_10010"),
    ("issue", "fields", "description"),
    ("changelog",),
    ("changelog", "items"),
    ("user",),
    ("issue_event_type_name",),
]
EVENTS = st.sampled_from(
    ["jira:issue_created", "jira:issue_updated", "jira:issue_deleted", "comment_created", "jira:issue_updated "]
)


@st.composite
def mutated_deliveries(draw):
    """A valid delivery with up to three places replaced by arbitrary JSON, or removed."""
    issue_id = draw(st.integers(10001, 10050))
    body = factories.delivery(
        draw(EVENTS), factories.issue(str(issue_id), f"DEMO-{issue_id - 10000}"), timestamp=draw(st.integers(0, 2**41))
    )
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(PATHS))
        node = body
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if draw(st.booleans()) and path[-1] in node:
            del node[path[-1]]
        else:
            node[path[-1]] = draw(JSON)
    if draw(st.booleans()):  # an unknown custom field of any shape
        fields = (body.get("issue") or {}).get("fields") if isinstance(body.get("issue"), dict) else None
        if isinstance(fields, dict):
            fields[f"customfield_{draw(st.integers(20000, 20100))}"] = draw(JSON)
    return body


def encode(value, ensure_ascii):
    try:
        return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return b"{"


BODIES = (
    st.binary(max_size=300)
    | st.builds(encode, JSON, st.booleans())
    | st.builds(encode, mutated_deliveries(), st.booleans())
    | st.builds(
        lambda depth: b'{"timestamp":1,"webhookEvent":"x","a":' + b"[" * depth + b"]" * depth + b"}",
        st.integers(900, 3000),
    )
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=UTF-8",
        "APPLICATION/JSON",
        "application/json;charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
        None,
        "application/json-patch+json",
        "application/vnd.api+json",
    ]
)
SIGNATURES = st.sampled_from(["valid", "valid", "valid", "wrong", "missing", "malformed", "upper"])
# What an HTTP header can carry (no CR/LF or other controls): latin-1 text.
IDENTIFIERS = (
    st.none()
    | st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=40)
    | st.sampled_from(["same-id", "x" * 300, "../../etc", "é"])
)


def headers_for(body: bytes, content_type, signature: str, identifier) -> dict[str, str]:
    headers: dict[str, str] = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if signature in ("valid", "upper"):
        value = sign(body, SECRET)
        headers["X-Hub-Signature"] = value.upper().replace("SHA256=", "sha256=") if signature == "upper" else value
    elif signature == "wrong":
        headers["X-Hub-Signature"] = sign(body, "another-secret")
    elif signature == "malformed":
        headers["X-Hub-Signature"] = "sha1=" + "0" * 40
    if identifier is not None:
        headers["X-Atlassian-Webhook-Identifier"] = identifier
    return headers


# --- the properties ---------------------------------------------------------------------------------


class Mirror:
    """The queue, the failed registry and the table, before and after one request."""

    def __init__(self, redis_conn, settings):
        self.redis, self.settings = redis_conn, settings
        self.q = queue(ISSUES, redis_conn)
        self.failed = FailedJobRegistry(queue=self.q)

    def state(self):
        return self.q.count, self.failed.count, Issue.select().count(), _rows_digest()

    def run_jobs(self):
        from workers.worker import build_worker

        build_worker(self.settings, (ISSUES,), connection=self.redis).work(
            burst=True, with_scheduler=False, logging_level="ERROR"
        )


def _rows_digest():
    return sorted(
        (r.issue_id, r.updated, r.event_ts, r.deleted_at is None)
        for r in Issue.select(Issue.issue_id, Issue.updated, Issue.event_ts, Issue.deleted_at)
    )


def check(client, mirror, body: bytes, headers: dict[str, str]) -> int:
    before = mirror.state()
    response = client.post(URL, data=body, headers=headers)
    status = response.status_code
    assert status < 500, (status, response.get_data()[:300], body[:300])
    assert status in (200, 202, 400, 401, 413, 415), status
    if status != 202:
        assert mirror.state() == before, (status, body[:300])
        return status
    assert response.get_json() == {"enqueued": 1}
    issue_id = str(json.loads(body)["issue"]["id"])
    mirror.run_jobs()
    queued, failed, _, _ = mirror.state()
    assert (queued, failed) == (0, before[1]), f"an accepted delivery's job failed: {body[:300]!r}"
    assert Issue.get_or_none(Issue.issue_id == issue_id) is not None
    return status


@hsettings(max_examples=250 * SCALE, **COMMON)
@given(body=BODIES, content_type=CONTENT_TYPES, signature=SIGNATURES, identifier=IDENTIFIERS)
def test_any_request_gets_2xx_or_4xx_and_only_valid_deliveries_change_anything(
    client, redis_conn, settings, db, body, content_type, signature, identifier
):
    mirror = Mirror(redis_conn, settings)
    status = check(client, mirror, body, headers_for(body, content_type, signature, identifier))
    if signature in ("wrong", "missing", "malformed") and status != 415:
        assert status == 401


@hsettings(max_examples=300 * SCALE, **COMMON)
@given(delivery=mutated_deliveries(), ensure_ascii=st.booleans())
def test_a_signed_delivery_is_accepted_only_if_its_job_can_write_it(
    client, redis_conn, settings, db, delivery, ensure_ascii
):
    mirror = Mirror(redis_conn, settings)
    body = encode(delivery, ensure_ascii)
    check(client, mirror, body, headers_for(body, "application/json", "valid", None))


@hsettings(max_examples=60 * SCALE, **COMMON)
@given(delivery=mutated_deliveries(), replays=st.integers(2, 4))
def test_a_replayed_delivery_changes_nothing_after_the_first(client, redis_conn, settings, db, delivery, replays):
    """The same identifier again: 200 duplicate; another identifier, same body: no row changes."""
    mirror = Mirror(redis_conn, settings)
    body = encode(delivery, False)
    headers = headers_for(body, "application/json", "valid", None)
    headers["X-Atlassian-Webhook-Identifier"] = f"replay-{hash(body)}"
    first = check(client, mirror, body, headers)
    after_first = mirror.state()
    for n in range(replays):
        again = client.post(URL, data=body, headers=headers)
        assert again.status_code == (200 if first in (200, 202) else first)
        if first == 202:
            assert again.get_json() == {"ignored": "duplicate"}
        other = dict(headers, **{"X-Atlassian-Webhook-Identifier": f"other-{n}-{hash(body)}"})
        client.post(URL, data=body, headers=other)
        mirror.run_jobs()
        assert mirror.state()[2:] == after_first[2:]  # the same rows, the same versions


def test_the_edges_hypothesis_found_are_refused_with_400(client, redis_conn, db):
    """NaN/Infinity and numbers beyond a double are not JSON (RFC 8259); half a surrogate pair
    is not text: PostgreSQL refuses the one, every database driver the other. Refused up front."""
    good = factories.delivery(the_issue=factories.issue())
    for label, raw in {
        "NaN": json.dumps(good).replace('"customfield_10010": null', '"customfield_10010": NaN'),
        "Infinity": json.dumps(good).replace('"customfield_10010": null', '"customfield_10010": -Infinity'),
        "1e400": json.dumps(good).replace('"customfield_10010": null', '"customfield_10010": 1e400'),
        "lone high surrogate": json.dumps(good).replace('Login fails', 'Login \\ud83d fails'),
        "lone low surrogate in a key": json.dumps(good).replace('"customfield_10010"', '"\\udc00"'),
    }.items():
        body = raw.encode()
        response = client.post(URL, data=body, headers=headers_for(body, "application/json", "valid", label))
        assert response.status_code == 400, (label, response.get_json())
        assert "not valid JSON" in response.get_json()["error"], label
    assert queue(ISSUES, redis_conn).count == 0
    pair = json.dumps(good).replace("Login fails", "Login \\ud83d\\ude80 fails").encode()  # a whole pair: fine
    headers = headers_for(pair, "application/json", "valid", "pair")
    assert client.post(URL, data=pair, headers=headers).status_code == 202


# --- the two JSON readers agree ---------------------------------------------------------------------


def _reading(parse, body):
    from receiver.errors import ApiError

    try:
        return "ok", parse(body)
    except ApiError as exc:
        return "refused", exc.status


@given(
    st.builds(encode, JSON, st.booleans())
    | st.builds(encode, mutated_deliveries(), st.booleans())
    | st.binary(max_size=200)
)
@hsettings(max_examples=300 * SCALE, **COMMON)
def test_orjson_and_the_json_module_read_every_body_alike(body):
    """The endpoint reads most bodies with orjson and the others with the json module
    (receiver.webhooks._parse): both give the same value, or both refuse, for any body. Values
    compared as JSON text so that NaN cannot differ from itself; nothing is refused by one and
    taken by the other."""
    from receiver import webhooks

    fast, exact = _reading(webhooks._parse, body), _reading(webhooks._parse_exactly, body)
    if body.startswith(b"\xef\xbb\xbf"):
        exact = _reading(webhooks._parse_exactly, body[3:])
    assert fast[0] == exact[0], (body[:200], fast, exact)
    if fast[0] == "ok":
        assert json.dumps(fast[1], sort_keys=True) == json.dumps(exact[1], sort_keys=True)


def test_integers_beyond_64_bits_stay_exact_and_nesting_is_bounded(client, redis_conn, db, drain):
    """orjson would read 10**30 as a float: such a body takes the json module, so the job and the
    row keep the integer exactly. 512 levels of nesting are accepted and written; deeper is
    refused (400), whichever reader would see it, so the worker never meets JSON it cannot read."""
    from receiver.webhooks import MAX_DEPTH

    def deliver(n, value):
        issue = factories.issue(str(10100 + n), f"DEMO-{100 + n}")
        issue["fields"]["customfield_20001"] = value
        raw, headers = factories.signed(factories.delivery(the_issue=issue), SECRET, delivery_id=f"big-{n}")
        return client.post(URL, data=raw, headers=headers)

    nested = 0
    for _ in range(MAX_DEPTH - 3):  # the field is the 4th level (the delivery, issue, fields, the field)
        nested = [nested]
    assert deliver(0, {"exact": 10**30, "negative": -(2**64) - 1}).status_code == 202
    assert deliver(1, nested).status_code == 202
    too_deep = [nested]
    response = deliver(2, too_deep)
    assert response.status_code == 400 and "too deeply nested" in response.get_json()["error"]
    many = [{"n": n} for n in range(2 * MAX_DEPTH)]  # shallow, but too many brackets for the fast path
    assert deliver(3, many).status_code == 202
    drain()
    rows = {row.key: row.fields for row in Issue.select()}
    assert rows["DEMO-100"]["customfield_20001"] == {"exact": 10**30, "negative": -(2**64) - 1}
    assert rows["DEMO-101"]["customfield_20001"] == nested
    assert rows["DEMO-103"]["customfield_20001"] == many
    assert "DEMO-102" not in rows
