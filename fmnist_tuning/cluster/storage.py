"""Open an Optuna storage (SQL database or journal file) and show its URL without the password."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url

from fmnist_tuning.cluster.reconnect import Outage, ReconnectingStorage
from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import StudyError, first_line

JOURNAL_PREFIX = "journal:"  # journal:PATH, an Optuna JournalFileBackend log on a shared disk
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
MAX_RETRY = 3  # times the trial of a killed worker is queued again


def redact(url: str) -> str:
    """The storage URL with any password masked, safe for logs and reports."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (e.g. a journal file path): nothing to hide
        return url


def journal_path(url: str) -> Path | None:
    """The log file of a ``journal:PATH`` (or ``journal://PATH``) storage; None for SQL URLs."""
    if not url.startswith(JOURNAL_PREFIX):
        return None
    rest = url[len(JOURNAL_PREFIX) :]
    return Path(rest[2:] if rest.startswith("//") else rest)


def engine_options(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options for the database at ``url``: patient with SQLite's other
    writers, quick to notice a database server that went away."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}  # wait for other writers, do not fail
    options: dict[str, Any] = {"pool_pre_ping": True}  # replace pooled connections it closed
    if url.startswith("postgresql"):
        # A host that goes silent (a partition, a dead server) drops the connection in about
        # 30 s instead of hanging a call for TCP's 15 minutes; then it is retried.
        options["connect_args"] = {
            "connect_timeout": 10,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": 30_000,  # ms of unacknowledged data
        }
    return options


def open_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    give_up_after: float = RunConfig.storage_timeout,
) -> optuna.storages.BaseStorage:
    """Opens an Optuna storage, turning every failure into one clear error.

    Args:
        url: An SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg://…``, …) or
            ``journal:PATH`` for a journal file on a filesystem all workers share.
        heartbeat_interval: Seconds between heartbeats of a running trial (SQL storages only);
            None disables heartbeats.
        grace_period: Seconds without a heartbeat after which a running trial is FAIL and queued
            again; None means three heartbeats.
        give_up_after: For a database server: seconds it may stay unreachable while its
            connections are replaced and the calls tried again (:mod:`fmnist_tuning.cluster.reconnect`).

    Raises:
        StudyError: The storage cannot be opened (nothing listens at the server's address, the
            server stayed unreachable ``give_up_after`` seconds, the URL or database is wrong).
    """
    _refuse_foreign_sqlite(url)
    journal = journal_path(url)
    try:
        if journal is not None:
            if not journal.parent.is_dir():
                raise FileNotFoundError(f"no folder {journal.parent}")
            if journal.is_dir() or not journal.name:
                raise IsADirectoryError(f"{journal} is a folder; name a file, e.g. study.log")
            return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
        kwargs = engine_options(url)
        server = not url.startswith("sqlite")
        heartbeat: dict[str, Any] = {}
        if heartbeat_interval is not None:
            heartbeat = {
                "heartbeat_interval": heartbeat_interval,
                "grace_period": grace_period or 3 * heartbeat_interval,
                "heartbeat_stale_trial_callback": (
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
                ),
            }
        if not server:
            return _create(url, kwargs, heartbeat)
        _probe(url)
        outage = Outage(redact(url), give_up_after)
        return ReconnectingStorage(outage.call(_create, url, kwargs, heartbeat), outage)
    except StudyError:
        raise
    except Exception as err:
        reason = first_line(err)
        if "compatible with the table schema" in reason:  # Optuna's words, with their fix
            raise StudyError(f"storage {redact(url)}: {reason}") from None
        raise StudyError(
            f"cannot open storage {redact(url)} ({reason[:200]}); check the URL (an SQLAlchemy "
            "URL such as postgresql+psycopg://user@host/db, or journal:PATH), that the server "
            "is running and reachable, and that its driver is installed"
        ) from None


def _create(
    url: str, engine_kwargs: dict[str, Any], heartbeat: dict[str, Any]
) -> optuna.storages.RDBStorage:
    """``RDBStorage(url)``; another process creating the tables at the same time is no error."""
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except sqlalchemy.exc.DatabaseError as err:
            # Another process (a worker, another machine) created the tables just now.
            duplicate = isinstance(err, sqlalchemy.exc.IntegrityError)
            if attempt == 2 or not (duplicate or "already exists" in str(err)):
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def _probe(url: str) -> None:
    """Fails at once when nothing listens at the server's address: most likely a wrong URL.

    (A server that answers and then drops the connection is waited for, as during a run.)
    """
    parsed = make_url(url)
    port = parsed.port or DEFAULT_PORTS.get(parsed.get_backend_name())
    if parsed.host and port:
        with socket.create_connection((parsed.host, port), timeout=10):
            pass


def _refuse_foreign_sqlite(url: str) -> None:
    """Refuses an SQLite file that holds another tool's tables: Optuna would add its own to it."""
    path = Path(url.removeprefix("sqlite:///"))
    if path == Path(url) or not path.is_file() or path.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {
                row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
    except sqlite3.DatabaseError:
        return  # not an SQLite database at all: opening it reports that, in one line
    if tables and not tables & {"studies", "version_info"}:
        raise StudyError(
            f"{path} is not an Optuna database (it holds the tables {', '.join(sorted(tables))}); "
            "name another --output-dir or --storage"
        )


def load_existing(url: str, study_name: str | None) -> optuna.Study:
    """Loads a study that must already exist (for reports and other readers; never creates one).

    ``study_name`` None: the storage's only study, or else the default name's.

    Raises:
        StudyError: The storage cannot be opened, or holds no study of that name.
    """
    path = url.removeprefix("sqlite:///")
    if path != url and not Path(path).is_file():  # opening it would create an empty database
        raise StudyError(f"no study database at {path}; check --storage")
    storage = open_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if study_name is None:
        study_name = names[0] if len(names) == 1 else RunConfig.study_name
    if study_name not in names:
        raise StudyError(
            f"no study {study_name!r} in {redact(url)} (it holds: {', '.join(names) or 'none'}); "
            "pass --study-name"
        )
    return optuna.load_study(study_name=study_name, storage=storage)
