"""The ``jira-mirror`` command line (docs/contract.md, "CLI").

The commands live in one module per subject (``core``, ``backfill``, ``status``, ``ops``), as plain
click commands; they import only ``jira_mirror_cli.common``, never this package's ``main``, so no
module imports the package back. ``COMMANDS`` below is the one list of the subcommands.
"""

from __future__ import annotations

import click

from jira_mirror_cli import backfill, core, ops, status

# Every subcommand of `jira-mirror`, registered here and nowhere else.
COMMANDS: tuple[click.Command, ...] = (
    core.db,
    core.projects,
    core.worker,
    backfill.backfill,
    backfill.schedule,
    backfill.simulate,
    status.status,
    ops.issues,
    ops.changelog,
    ops.comments,
    ops.worklogs,
    ops.failed,
    ops.users_group,
    ops.members,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """jira-mirror: a SQL mirror of Jira Cloud issues."""


for _command in COMMANDS:
    main.add_command(_command)
