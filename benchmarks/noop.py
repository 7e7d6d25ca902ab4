"""The no-op job of the queue ceiling: RQ's own cost of moving one job, and nothing else."""

from typing import Any


def noop(**kwargs: Any) -> None:
    return None
