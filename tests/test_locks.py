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
    _one_holder_at_a_time(DatabaseLock(url, "test lock", 5), DatabaseLock(url, "test lock", 5))
    other = DatabaseLock(url, "another lock", 5)  # another name: another lock
    with_first = DatabaseLock(url, "test lock", 5)
    assert with_first.try_acquire() and other.try_acquire()
    with_first.release()
    other.release()


def test_each_storage_gets_a_lock_that_all_its_users_share(tmp_path: Path) -> None:
    def lock(url: str, study: str = "s") -> Lock:
        return study_lock(url, study, "final", tmp_path / "o", give_up_after=1)

    sqlite = lock(f"sqlite:///{tmp_path / 'db' / 'study.db'}?timeout=5")
    assert isinstance(sqlite, FileLock) and sqlite.path.parent == tmp_path / "db"
    journal = lock(f"journal:{tmp_path / 'j' / 'study.log'}")
    assert isinstance(journal, FileLock) and journal.path.parent == tmp_path / "j"
    memory = lock("sqlite:///:memory:")
    assert isinstance(memory, FileLock) and memory.path.parent == tmp_path / "o"
    assert isinstance(lock("postgresql+psycopg://u@h/db"), DatabaseLock)
    odd = lock(f"sqlite:///{tmp_path / 'study.db'}", study="team/exp:1 " + "x" * 300)
    assert isinstance(odd, FileLock) and odd.try_acquire()  # any study name is a valid file name
    odd.release()


def test_an_unreachable_database_is_waited_for_then_one_error_naming_it() -> None:
    url = "postgresql+psycopg://postgres:secret@127.0.0.1:1/test"
    assert not DatabaseLock(url, "x", give_up_after=60).try_acquire()  # a blip: keep waiting
    lock = DatabaseLock(url, "x", give_up_after=0)
    with pytest.raises(StudyError, match=r"127\.0\.0\.1:1/test") as err:
        lock.try_acquire()
    assert "secret" not in str(err.value) and "\n" not in str(err.value)
