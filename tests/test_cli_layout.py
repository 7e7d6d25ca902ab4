"""The CLI package's shape: one explicit list of subcommands, and no module importing the package back."""

import ast
import subprocess
import sys
from pathlib import Path

import jira_mirror_cli
from jira_mirror_cli import COMMANDS, main

PACKAGE = Path(jira_mirror_cli.__file__).parent
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem not in ("__init__", "__main__"))


def test_every_subcommand_is_registered_once_from_the_one_list():
    names = [command.name for command in COMMANDS]
    assert len(names) == len(set(names))
    assert set(main.commands) == set(names)
    # docs/contract.md's commands (and the development ones) are all there.
    assert {
        "db",
        "projects",
        "backfill",
        "status",
        "issues",
        "changelog",
        "comments",
        "worklogs",
        "failed",
        "worker",
        "schedule",
    } <= set(names)


def test_no_command_module_imports_the_package_itself():
    """A command module may import ``jira_mirror_cli.common`` (or another submodule), never the package's
    own names (``from jira_mirror_cli import main``): that import is what made the package and its
    modules import each other."""
    for name in MODULES:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "jira_mirror_cli":
                raise AssertionError(f"jira_mirror_cli/{name}.py imports from the package: line {node.lineno}")
            if isinstance(node, ast.Import):
                assert "jira_mirror_cli" not in [alias.name for alias in node.names], name


def test_each_cli_module_imports_alone():
    # One fresh interpreter per module (a cycle shows only in the first import), started side by side.
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", f"import jira_mirror_cli.{name}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in MODULES
    }
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"jira_mirror_cli.{name}: {stderr[-2000:]}"
