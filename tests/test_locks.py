"""Locks across processes and machines: one holder at a time, free again once it lets go (or
dies); what every machine reads and writes of a study is written holding its claim."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from fmnist_tuning.cluster.locks import DatabaseLock, FileLock, Lock, study_lock
from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import StudyError
from fmnist_tuning.keys import RUN_SETTINGS, WORKER, WORKER_SLOTS
from fmnist_tuning.search import loop, study
from tests.processes import pg_url_or_skip, wait_for


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


HOLD = """
import sys, time
from pathlib import Path
from fmnist_tuning.cluster.locks import FileLock
lock = FileLock(Path(sys.argv[1]))
assert lock.try_acquire()
Path(sys.argv[2]).touch()
time.sleep(60)
"""


def test_a_file_lock_whose_holder_is_killed_is_free_again(tmp_path: Path) -> None:
    path, held = tmp_path / "held.lock", tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(held)])
    try:
        wait_for(held.exists, 60, "the other process to take the lock")
        assert not FileLock(path).try_acquire()
    finally:
        holder.kill()
        holder.wait()
    free = FileLock(path)
    assert free.try_acquire()
    free.release()


def test_run_settings_worker_slots_and_the_start_are_written_holding_the_claim(
    run_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = FileLock(run_config.output_dir / "claim.lock")
    monkeypatch.setattr(study, "claim_lock", lambda run, name: claim)
    writes: list[tuple[str, bool]] = []
    set_attr, enqueue = optuna.Study.set_user_attr, optuna.Study.enqueue_trial

    def watched_attr(self: optuna.Study, key: str, value: Any) -> None:
        writes.append((key, claim.held()))
        set_attr(self, key, value)

    def watched_enqueue(self: optuna.Study, *args: Any, **kwargs: Any) -> None:
        writes.append(("the start", claim.held()))
        enqueue(self, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "set_user_attr", watched_attr)
    monkeypatch.setattr(optuna.Study, "enqueue_trial", watched_enqueue)
    run = dataclasses.replace(run_config, warm_start=True)
    assert study.reserve_worker_slots(study.load_or_create(run), run, 2) == 0
    assert {key for key, _ in writes} == {RUN_SETTINGS, WORKER_SLOTS, "the start"}
    assert all(held for _, held in writes)
    assert not claim.held()  # and let go afterwards


def test_a_trial_names_its_worker_before_its_claims_are_freed(
    run_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = dataclasses.replace(run_config, n_trials=1, max_epochs=1)
    the_study = study.load_or_create(run)
    study_wide = FileLock(run.output_dir / "study-claim.lock")
    monkeypatch.setattr(loop, "claim_lock", lambda run, name: study_wide)
    local: list[FileLock] = []

    class Local(FileLock):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            local.append(self)

    monkeypatch.setattr(loop, "FileLock", Local)
    held_when_named: list[bool] = []
    set_attr = optuna.Trial.set_user_attr

    def watched(self: optuna.Trial, key: str, value: Any) -> None:
        if key == WORKER:
            held_when_named.append(study_wide.held() and local[0].held())
        set_attr(self, key, value)

    monkeypatch.setattr(optuna.Trial, "set_user_attr", watched)
    loop.optimize(the_study, run)
    assert held_when_named == [True]
    assert not study_wide.held() and not local[0].held()
