"""Locks across processes and machines: one holder at a time, free again once it lets go."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmnist_tuning.errors import StudyError
from fmnist_tuning.locks import DatabaseLock, FileLock, Lock, study_lock
from tests.processes import pg_url_or_skip


def _one_holder_at_a_time(first: Lock, second: Lock) -> None:
    assert first.try_acquire() and first.held()
    assert not second.try_acquire() and not second.held()
    first.release()
    assert second.try_acquire()
    second.release()


def test_a_file_lock_has_one_holder_at_a_time(tmp_path: Path) -> None:
    _one_holder_at_a_time(FileLock(tmp_path / "x.lock"), FileLock(tmp_path / "x.lock"))


@pytest.mark.integration
def test_a_postgresql_advisory_lock_has_one_holder_at_a_time() -> None:
    url = pg_url_or_skip()
    _one_holder_at_a_time(DatabaseLock(url, "test lock"), DatabaseLock(url, "test lock"))
    other = DatabaseLock(url, "another lock")  # another name: another lock
    with_first = DatabaseLock(url, "test lock")
    assert with_first.try_acquire() and other.try_acquire()
    with_first.release()
    other.release()


def test_each_storage_gets_a_lock_that_all_its_users_share(tmp_path: Path) -> None:
    sqlite = study_lock(f"sqlite:///{tmp_path / 'db' / 'study.db'}", "s", "final", tmp_path / "o")
    assert isinstance(sqlite, FileLock) and sqlite.path.parent == tmp_path / "db"
    journal = study_lock(f"journal:{tmp_path / 'j' / 'study.log'}", "s", "final", tmp_path / "o")
    assert isinstance(journal, FileLock) and journal.path.parent == tmp_path / "j"
    memory = study_lock("sqlite:///:memory:", "s", "final", tmp_path / "o")
    assert isinstance(memory, FileLock) and memory.path.parent == tmp_path / "o"
    server = study_lock("postgresql+psycopg://u@h/db", "s", "final", tmp_path / "o")
    assert isinstance(server, DatabaseLock)


def test_an_unreachable_database_is_one_error_naming_it() -> None:
    lock = DatabaseLock("postgresql+psycopg://postgres:secret@127.0.0.1:1/test", "x")
    with pytest.raises(StudyError, match=r"127\.0\.0\.1:1/test") as err:
        lock.try_acquire()
    assert "secret" not in str(err.value) and "\n" not in str(err.value)
