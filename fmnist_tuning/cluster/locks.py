"""Locks that hold across processes and machines: a file lock, or the database server's own lock.

A lock ends with the process that holds it (the kernel drops a dead process's file locks; the
database server drops a closed connection's locks), so a holder that is killed never blocks the
others: the next one in line takes over.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import filelock
import sqlalchemy
from sqlalchemy.pool import NullPool

from fmnist_tuning.cluster.storage import engine_options, journal_path, redact
from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import StudyError, first_line
from fmnist_tuning.faults import raise_if_interrupted

log = logging.getLogger(__name__)


class Lock(Protocol):
    """What :func:`hold` needs of a lock."""

    def try_acquire(self) -> bool:
        """Takes the lock if it is free; True when this process holds it now."""

    def held(self) -> bool:
        """Whether this process still holds it (a database connection can drop meanwhile)."""

    def release(self) -> None:
        """Lets the next process take it (idempotent)."""


class FileLock:
    """A lock file for processes that share a disk (the ``filelock`` package: ``flock`` on Unix,
    ``msvcrt`` locking on Windows), as :class:`Lock` and as a blocking ``with`` block."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = filelock.FileLock(path)

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            return False
        return True

    def held(self) -> bool:
        return self._lock.is_locked

    def release(self) -> None:
        self._lock.release(force=True)  # whatever the package's count of nested takes

    def __enter__(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# Per server: the statement that tries to take a named lock (true when taken), the one that frees
# it. PostgreSQL's advisory locks take a 64-bit key, MySQL's a name of at most 64 characters.
_SERVER_LOCKS = {
    "postgresql": ("SELECT pg_try_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"),
    "mysql": ("SELECT GET_LOCK(:name, 0)", "SELECT RELEASE_LOCK(:name)"),
    "mariadb": ("SELECT GET_LOCK(:name, 0)", "SELECT RELEASE_LOCK(:name)"),
}
# PostgreSQL: a holder whose machine vanishes is dropped by the server within about 25 s (the
# server's own keepalive defaults would take hours).
_PG_KEEPALIVES = (
    "SET tcp_keepalives_idle = 10",
    "SET tcp_keepalives_interval = 5",
    "SET tcp_keepalives_count = 3",
)


class DatabaseLock:
    """A named lock of the database server (PostgreSQL advisory lock, MySQL ``GET_LOCK``).

    It is held by a connection of its own; the server frees it when that connection ends, whether
    by :meth:`release` or because the process died.
    """

    def __init__(self, url: str, name: str, give_up_after: float) -> None:
        self.url = url
        self.backend = sqlalchemy.engine.make_url(url).get_backend_name()
        self.give_up_after = give_up_after
        self._away_since: float | None = None  # when the database stopped answering
        digest = _digest(name)
        self._params = {
            "key": int.from_bytes(digest[:8], "big", signed=True),
            "name": f"fmnist-tuning-{digest.hex()[:40]}",
        }
        self._take, self._free = _SERVER_LOCKS[self.backend]
        self._connection: sqlalchemy.Connection | None = None

    def try_acquire(self) -> bool:
        """Takes the lock if it is free. An unreachable database counts as a lock not free yet,
        for ``give_up_after`` seconds.

        Raises:
            StudyError: The database stayed unreachable that long (the finished trials are safe
                in it: rerun the same command once it is back).
        """
        self.release()
        engine = sqlalchemy.create_engine(self.url, poolclass=NullPool, **engine_options(self.url))
        connection = None
        try:
            connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            if self.backend == "postgresql":
                for statement in _PG_KEEPALIVES:
                    connection.execute(sqlalchemy.text(statement))
            taken = bool(connection.execute(sqlalchemy.text(self._take), self._params).scalar())
        except BaseException as err:
            if connection is not None:
                with contextlib.suppress(sqlalchemy.exc.DBAPIError):
                    connection.close()
            if not isinstance(err, sqlalchemy.exc.DBAPIError):
                raise
            if self._away_since is None:
                self._away_since = time.monotonic()
                log.warning(
                    "%s is unreachable (%s): trying again", redact(self.url), first_line(err)
                )
            if time.monotonic() - self._away_since < self.give_up_after:
                return False
            raise StudyError(
                f"storage {redact(self.url)} unreachable for {self.give_up_after:g} s "
                f"(--storage-timeout): cannot take a lock of the study ({first_line(err, 200)}); "
                "rerun the same command once the database is back"
            ) from None
        self._away_since = None
        if taken:
            self._connection = connection
        else:
            connection.close()
        return taken

    def held(self) -> bool:
        if self._connection is None:
            return False
        try:
            self._connection.execute(sqlalchemy.text("SELECT 1"))
        except sqlalchemy.exc.DBAPIError:  # the connection dropped, and the lock with it
            self._close()
            return False
        return True

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(sqlalchemy.exc.DBAPIError):  # gone: so is the lock
                self._connection.execute(sqlalchemy.text(self._free), self._params)
            self._close()

    def _close(self) -> None:
        assert self._connection is not None
        with contextlib.suppress(sqlalchemy.exc.DBAPIError):
            self._connection.close()
        self._connection = None


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def study_lock(
    storage_url: str, study_name: str, purpose: str, fallback_dir: Path, give_up_after: float
) -> Lock:
    """A lock of one study that every process using ``storage_url`` sees, wherever it runs.

    A database server's own named lock (PostgreSQL, MySQL, MariaDB); for an SQLite file or a
    journal file, a lock file beside it (which the processes that share that file share too); else
    (another server, an in-memory database) one in ``fallback_dir``, which only the processes of
    that folder share. ``give_up_after``: seconds a database server may stay unreachable.
    """
    name = f"{purpose} of study {study_name}"
    journal = journal_path(storage_url)
    url = None if journal is not None else sqlalchemy.engine.make_url(storage_url)
    if url is not None and url.get_backend_name() in _SERVER_LOCKS:
        return DatabaseLock(storage_url, name, give_up_after)
    if journal is not None:
        beside = journal
    elif (
        url is not None
        and url.get_backend_name() == "sqlite"
        and url.database not in (None, "", ":memory:")
    ):
        beside = Path(url.database)
    else:
        if url is not None and url.get_backend_name() != "sqlite":
            log.warning(
                "%s has no lock this tool knows: the %s is locked per output folder only",
                url.get_backend_name(),
                purpose,
            )
        beside = fallback_dir / "study"
    # The study's name hashed: any name makes a valid file name.
    return FileLock(beside.with_name(f".{beside.name}.{_digest(name).hex()[:16]}.lock"))


def run_lock(run: RunConfig, study_name: str, purpose: str) -> Lock:
    """:func:`study_lock` as a run reaches its study: its storage, output folder, storage timeout."""
    return study_lock(run.storage_url, study_name, purpose, run.output_dir, run.storage_timeout)


@contextlib.contextmanager
def holding(lock: Lock, waiting: str | None, poll: float = 2.0) -> Iterator[Lock]:
    """:func:`hold` for a ``with`` block: the lock is freed on the way out, whatever happened."""
    try:
        hold(lock, waiting, poll)
        yield lock
    finally:
        lock.release()


def hold(lock: Lock, waiting: str | None, poll: float = 2.0) -> None:
    """Takes ``lock``, waiting as long as another process holds it; logs ``waiting`` (if any) once.

    Raises:
        fmnist_tuning.faults.Interrupted: A signal arrived while waiting.
        StudyError: The lock's database stayed unreachable too long.
    """
    said = False
    while not lock.try_acquire():
        if not said and waiting is not None:
            log.info("%s", waiting)
            said = True
        deadline = time.monotonic() + poll
        while time.monotonic() < deadline:
            raise_if_interrupted()
            time.sleep(0.1)
