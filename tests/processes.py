"""Helpers for the tests that run ``scripts/tune.py`` as real processes, and the PostgreSQL ones."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

import optuna
import pytest
from optuna.trial import TrialState

from fmnist_tuning.cluster.storage import redact
from tests.conftest import VAL_SIZE

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("FMNIST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def tune_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    """The flags every process test uses: tiny data, 1 epoch, the trial's own final schedule, CPU."""
    return [
        "--data-dir", str(data_dir), "--output-dir", str(out), "--max-epochs", "1",
        "--val-size", str(VAL_SIZE), "--accelerator", "cpu", "--final-epochs", "1", *extra,
    ]  # fmt: skip


class Tune:
    """``scripts/tune.py`` running in its own process; stderr goes to a file (no pipe to fill)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._err: IO[bytes] = open(log, "ab")  # noqa: SIM115 (closed in wait())
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "tune.py"), *args],
            stdout=self._err,
            stderr=self._err,
            cwd=log.parent,
        )

    def __enter__(self) -> Tune:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:  # the test failed before the process ended: no leftovers
            self.proc.kill()
            self.proc.wait()
        self._err.close()

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._err.close()

    @property
    def stderr(self) -> str:
        return self.log.read_text()


def run_tune(args: list[str], log: Path, timeout: float = 240) -> tuple[int, str]:
    """Runs ``scripts/tune.py`` to its end: (exit code, stderr and stdout)."""
    tune = Tune(args, log)
    return tune.wait(timeout), tune.stderr


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Polls ``condition`` every 0.2 s until it is true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


_STORAGES: dict[str, optuna.storages.BaseStorage] = {}  # one connection pool per URL for polling


def running_trials(storage: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's RUNNING trials (none while the study does not exist yet)."""
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///") :]).is_file():
        return []  # not created yet (and load_study must not create it)
    try:
        if storage not in _STORAGES:
            # skip_table_creation: creating them would race with the process under test
            _STORAGES[storage] = optuna.storages.RDBStorage(storage, skip_table_creation=True)
        study = optuna.load_study(study_name=study_name, storage=_STORAGES[storage])
    except Exception:  # not created yet, or its tables are being created right now
        _STORAGES.pop(storage, None)
        return []
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def started(storage: str, study_name: str, min_epochs: int = 0) -> optuna.trial.FrozenTrial | None:
    """A RUNNING trial that reported at least ``min_epochs`` epochs and names its worker."""
    for trial in running_trials(storage, study_name):
        if "worker" in trial.user_attrs and len(trial.intermediate_values) >= min_epochs:
            return trial
    return None


def pg_url_or_skip() -> str:
    """The test server's URL; skips without one, but fails under CI (``CI`` set)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:
        reason = f"PostgreSQL at {redact(PG_URL)} unreachable ({str(err).splitlines()[0]})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests", pytrace=False)
        pytest.skip(f"{reason}; set FMNIST_TEST_PG_URL or start the server")
    return PG_URL


@contextmanager
def pg_study() -> Iterator[tuple[str, str]]:
    """(URL, a fresh study name) on the test server; the study is deleted afterwards."""
    url = pg_url_or_skip()
    name = f"pytest-{uuid.uuid4().hex[:12]}"
    try:
        yield url, name
    finally:
        with suppress(KeyError):
            optuna.delete_study(study_name=name, storage=url)
