"""Regenerates ``jira-platform-v3-subset.json`` from Atlassian's OpenAPI description.

Usage: ``python tests/jira_schemas/extract.py PATH/TO/jira-platform-v3.json``

Keeps, for the endpoints the mirror calls, the 200 response schema of each path and method, and
every component schema those (and the extra ROOTS) reach through ``$ref``, unchanged, so the
``$ref``s resolve inside the subset. ``example`` values are dropped (they are large and are not
schemas); descriptions stay, as they are the spec's word. The output is sorted, so a re-run on
the same spec gives the same bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("jira-platform-v3-subset.json")

#: (path, method) of every call the mirror and the simulator's contract test make.
ENDPOINTS = (
    ("/rest/api/3/search/jql", "get"),
    ("/rest/api/3/search/jql", "post"),
    ("/rest/api/3/search/approximate-count", "post"),
    ("/rest/api/3/issue/bulkfetch", "post"),
    ("/rest/api/3/issue/{issueIdOrKey}", "get"),
    ("/rest/api/3/users/search", "get"),
    ("/rest/api/3/project/search", "get"),
    ("/rest/api/3/project/{projectIdOrKey}", "get"),
    ("/rest/api/3/myself", "get"),
    ("/rest/api/3/serverInfo", "get"),
    ("/rest/api/3/field", "get"),
    ("/rest/api/3/changelog/bulkfetch", "post"),
    ("/rest/api/3/issue/{issueIdOrKey}/comment", "get"),
    ("/rest/api/3/issue/{issueIdOrKey}/worklog", "get"),
    ("/rest/api/3/worklog/updated", "get"),
    ("/rest/api/3/worklog/deleted", "get"),
    ("/rest/api/3/worklog/list", "post"),
    ("/rest/api/3/comment/list", "post"),
)

#: Schemas kept besides the responses': error bodies, and the beans the spec uses elsewhere for
#: the objects inside ``IssueBean.fields`` (which the spec itself leaves free-form).
ROOTS = ("ErrorCollection", "StatusDetails", "ProjectDetails", "UserDetails", "IssueTypeDetails",
         "Priority", "Resolution", "PageOfComments", "PageOfWorklogs", "Comment", "Worklog")


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value.rsplit("/", 1)[1])
            else:
                _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _strip_examples(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_examples(v) for k, v in node.items() if k != "example"}
    if isinstance(node, list):
        return [_strip_examples(v) for v in node]
    return node


def extract(spec: dict[str, Any]) -> dict[str, Any]:
    """The subset document: info, the responses of ENDPOINTS, and the schemas they need."""
    schemas = spec["components"]["schemas"]
    paths: dict[str, dict[str, Any]] = {}
    todo: set[str] = set(ROOTS)
    for path, method in ENDPOINTS:
        operation = spec["paths"][path][method]
        responses = {}
        for status, response in operation["responses"].items():
            kept: dict[str, Any] = {"description": response.get("description", "")}
            schema = (response.get("content") or {}).get("application/json", {}).get("schema")
            if schema is not None:
                kept["schema"] = schema
                _refs(schema, todo)
            responses[status] = kept
        paths.setdefault(path, {})[method] = {"responses": responses}
    kept_schemas: dict[str, Any] = {}
    while todo:
        name = todo.pop()
        if name in kept_schemas:
            continue
        kept_schemas[name] = _strip_examples(schemas[name])
        found: set[str] = set()
        _refs(schemas[name], found)
        todo |= found - set(kept_schemas)
    return {
        "openapi": spec["openapi"],
        "info": {"title": spec["info"]["title"], "version": spec["info"]["version"]},
        "paths": paths,
        "components": {"schemas": kept_schemas},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    OUT.write_text(json.dumps(extract(spec), indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    print(f"wrote {OUT.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
