"""The writer thread of a sync (backfill.writer): writes in order, on a connection of its own,
at most ``in_flight`` queued, and a failed write raises in the caller."""

import threading

import pytest

from backfill.writer import Writer
from mirror.db import database


def test_writes_run_in_order_on_one_thread_of_their_own(db):
    done: list[tuple[int, str, bool]] = []
    writer = Writer("test-writer", in_flight=2)
    for n in range(10):
        writer.submit(lambda n=n: done.append((n, threading.current_thread().name, database.is_closed())))
    writer.wait()
    writer.close()
    assert [n for n, _, _ in done] == list(range(10))
    assert {name for _, name, _ in done} != {threading.current_thread().name}
    assert len({name for _, name, _ in done}) == 1
    assert not any(closed for _, _, closed in done)  # each ran on the writer's open connection


def test_a_failed_write_raises_in_the_caller_and_the_writer_still_closes(db):
    writer = Writer("test-writer")

    def fail() -> None:
        raise RuntimeError("the database said no")

    with pytest.raises(RuntimeError, match="said no"):  # at the submit when it failed already, else at the wait
        writer.submit(fail)
        writer.wait()
    writer.close()


def test_a_writers_commits_do_not_wait_for_the_disk_on_postgresql(db):
    """``db.asynchronous_commit`` on the writer's own connection only (PostgreSQL); the caller's
    connection keeps the default."""
    from mirror.db import is_postgres

    seen: list[str] = []
    writer = Writer("test-writer")
    writer.submit(
        lambda: (
            seen.append(database.execute_sql("SHOW synchronous_commit").fetchone()[0])
            if is_postgres()
            else seen.append("sqlite")
        )
    )
    writer.wait()
    writer.close()
    if is_postgres():
        assert seen == ["off"]
        assert database.execute_sql("SHOW synchronous_commit").fetchone()[0] == "on"
    else:
        assert seen == ["sqlite"]
