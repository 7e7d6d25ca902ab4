"""The import rule of docs/contract.md ("Layout"), read from the source with ``ast``.

What this enforces, for every import statement in the product's packages, at module level or
inside a function (a local import is still an import):
1. ``mirror`` imports none of ``receiver``, ``workers``, ``backfill``, ``jira_mirror_cli``.
2. ``workers`` and ``backfill`` import neither ``receiver`` nor ``jira_mirror_cli``; no product
   package imports ``jira_mirror_cli`` (the CLI sits on top) or ``tests``/``benchmarks``/``simulator``.
3. ``receiver`` never writes issue rows: from ``mirror.store`` (the one write path) it uses only
   the read-only names in ``STORE_READS``, and it calls no write method (``insert*``, ``update``,
   ``delete*``, ``replace*``, ``create``, ``save``) on a model imported from ``mirror.models``.
4. ``receiver`` enqueues only through ``workers``: it imports no queue class from ``rq``
   (``rq.Queue``, ``rq.queue``) and calls no ``enqueue*`` method except on a module it imported
   from ``workers``, on the tracking service (``backfill.projects``, which enqueues through
   workers) or on ``self`` (a receiver method, whose own calls are checked);
   from ``backfill`` it imports only that service.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mirror", "receiver", "workers", "backfill", "jira_mirror_cli")
STORE_READS = frozenset({"Scope", "tracked_keys", "find_project", "out_of_scope"})
WRITE_METHODS = (
    "insert",
    "insert_many",
    "insert_from",
    "update",
    "delete",
    "delete_by_id",
    "delete_instance",
    "replace",
    "replace_many",
    "create",
    "save",
    "get_or_create",
)


@dataclass
class Imported:
    where: str  # path:line
    module: str  # the module imported from (absolute)
    names: tuple[str, ...]  # the names taken from it ("" for `import module`)
    aliases: dict[str, str]  # local name -> imported name


def _imports(path: Path) -> list[Imported]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.parent.name}/{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append(Imported(where, alias.name, ("",), {alias.asname or alias.name.split(".")[0]: alias.name}))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(
                Imported(
                    where,
                    node.module,
                    tuple(a.name for a in node.names),
                    {a.asname or a.name: a.name for a in node.names},
                )
            )
    return out


def _files(package: str, root: Path = ROOT) -> list[Path]:
    return sorted((root / package).rglob("*.py"))


def _top(module: str) -> str:
    return module.split(".")[0]


def _all_imported(package: str, root: Path = ROOT) -> list[tuple[Imported, str]]:
    """(import, full target) for each name imported: ``from a import b`` targets ``a.b`` (a
    module or a name in ``a``), ``import a.b`` targets ``a.b``."""
    out = []
    for path in _files(package, root):
        for imp in _imports(path):
            for name in imp.names:
                out.append((imp, f"{imp.module}.{name}" if name else imp.module))
    return out


def mirror_violations(root: Path = ROOT) -> list[str]:
    return [
        f"{imp.where} {target}"
        for imp, target in _all_imported("mirror", root)
        if _top(target) in ("receiver", "workers", "backfill", "jira_mirror_cli")
    ]


def test_mirror_imports_none_of_the_packages_above_it():
    assert not mirror_violations()


def test_no_product_package_imports_the_cli_or_development_code():
    bad = []
    for package in ("mirror", "receiver", "workers", "backfill"):
        for imp, target in _all_imported(package):
            forbidden = {"jira_mirror_cli", "tests", "benchmarks", "simulator"}
            if package in ("workers", "backfill"):
                forbidden.add("receiver")
            if _top(target) in forbidden:
                bad.append(f"{imp.where} {target}")
    assert not bad, bad


def receiver_write_violations(root: Path = ROOT) -> list[str]:
    bad = []
    for path in _files("receiver", root):
        tree = ast.parse(path.read_text())
        imports = _imports(path)
        store_aliases = {
            local
            for imp in imports
            for local, name in imp.aliases.items()
            if (imp.module, name) in (("mirror", "store"), ("mirror.store", ""))
        }
        models = {local for imp in imports if imp.module == "mirror.models" for local in imp.aliases}
        for imp in imports:
            if imp.module == "mirror.store":
                bad += [f"{imp.where} mirror.store.{name}" for name in imp.names if name not in STORE_READS]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id in store_aliases and node.attr not in STORE_READS:
                    bad.append(f"{path.name}:{node.lineno} store.{node.attr}")
                if node.value.id in models and node.attr in WRITE_METHODS:
                    bad.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    return bad


def test_receiver_reads_through_mirror_store_and_never_writes_rows():
    assert not receiver_write_violations()


def receiver_enqueue_violations(root: Path = ROOT) -> list[str]:
    bad = []
    for path in _files("receiver", root):
        imports = _imports(path)
        through = {
            local
            for imp in imports
            for local, name in imp.aliases.items()
            if _top(imp.module) == "workers"
            or imp.module == "backfill.projects"
            or (imp.module, name) in (("workers", "queues"), ("backfill", "projects"))
        }
        for imp in imports:
            targets = [f"{imp.module}.{n}" if n else imp.module for n in imp.names]
            bad += [f"{imp.where} {t}" for t in targets if t in ("rq.Queue", "rq.queue", "rq.queue.Queue")]
            if _top(imp.module) == "backfill" and imp.module != "backfill.projects" and imp.names != ("projects",):
                bad.append(f"{imp.where} {imp.module}")
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr.startswith("enqueue")
            ):
                owner = node.func.value
                # self.enqueue(...): a method of the receiver's own; the call inside it is checked too.
                if not (isinstance(owner, ast.Name) and owner.id in through | {"self"}):
                    bad.append(f"{path.name}:{node.lineno} .{node.func.attr}(...)")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("enqueue"):
                if node.func.id not in through:
                    bad.append(f"{path.name}:{node.lineno} {node.func.id}(...)")
    return bad


def test_receiver_enqueues_only_through_workers():
    assert not receiver_enqueue_violations()


def test_the_checks_find_each_kind_of_violation(tmp_path):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "bad.py").write_text("def f():\n    from workers import queues\n")
    (tmp_path / "receiver").mkdir()
    (tmp_path / "receiver" / "bad.py").write_text(
        "from mirror import store\nfrom mirror.models import Issue\nfrom rq import Queue\nfrom backfill import jobs\n"
        "def f(q):\n    store.upsert_issues([])\n    Issue.insert_many([]).execute()\n    q.enqueue('x')\n"
    )
    assert mirror_violations(tmp_path) == ["mirror/bad.py:2 workers.queues"]
    assert sorted(receiver_write_violations(tmp_path)) == ["bad.py:6 store.upsert_issues", "bad.py:7 Issue.insert_many"]
    assert sorted(receiver_enqueue_violations(tmp_path)) == [
        "bad.py:8 .enqueue(...)",
        "receiver/bad.py:3 rq.Queue",
        "receiver/bad.py:4 backfill",
    ]
