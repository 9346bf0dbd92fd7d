"""An Optuna database storage that outlives dropped connections, up to a bound on the outage.

Optuna's ``RDBStorage`` pings pooled connections only on MySQL: on PostgreSQL a connection that a
server restart, a failover or a firewall closed fails the next storage call of the trial, of its
heartbeat thread or of the worker. :class:`ReconnectingStorage` wraps an ``RDBStorage`` opened with
``pool_pre_ping``: a call that fails because its connection dropped is tried again (each call is
one transaction, rolled back when its connection died), with backoff, until the database has been
unreachable for ``give_up_after`` seconds; then :class:`StorageUnavailable` ends the worker. It
also records why a trial whose heartbeats stopped is failed (``fail_reason``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Container, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import optuna
import sqlalchemy.exc
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat  # the heartbeat interface; not re-exported
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from fmnist_tuning.errors import StudyError, first_line
from fmnist_tuning.faults import raise_if_interrupted
from fmnist_tuning.keys import FAIL_REASON, WORKER

if TYPE_CHECKING:
    from optuna.study._frozen import FrozenStudy  # not re-exported; only for the signature

log = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_DELAY, MAX_DELAY = 0.5, 8.0  # seconds between tries: doubling from the first to the cap


class StorageUnavailable(StudyError):
    """The database stayed unreachable longer than the bound; finished trials are stored."""


# A server that answers a connection with these refuses it for good: a wrong URL, user or password.
REJECTIONS = ("password authentication failed", "does not exist", "no pg_hba.conf entry")


def raise_storage_unavailable(err: BaseException) -> None:
    """Raises the :class:`StorageUnavailable` that ``err`` hides, if it hides one.

    When both the tell at the end of a trial and the read after it fail, Optuna 5.0's
    ``_run_trial`` raises an ``UnboundLocalError`` from its ``finally`` block, with ours as its
    context: the worker must still end with our one line, not a traceback.
    """
    for seen in _chain(err):
        if isinstance(seen, StorageUnavailable):
            raise seen from None


def dropped_connection(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it: Optuna wraps SQLAlchemy errors) is a lost connection."""
    if any(words in str(err.__cause__ or err) for words in REJECTIONS):
        return False
    return any(
        isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))
        or (isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated)
        for seen in _chain(err)
    )


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and what caused it, outwards in: Optuna and SQLAlchemy wrap the driver's errors."""
    seen: BaseException | None = err
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


class Outage:
    """Tries calls again while the database is unreachable, until it has been for too long.

    Shared by every thread of a process that uses one storage: the outage clock starts at the
    first failure of any call and stops at the next success.

    Args:
        name: The storage as messages show it (its URL, password masked).
        give_up_after: Seconds of continuous outage after which calls raise
            :class:`StorageUnavailable`.
    """

    def __init__(self, name: str, give_up_after: float) -> None:
        self.name = name
        self.give_up_after = give_up_after
        self._lock = threading.Lock()
        self._down_since: float | None = None

    def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``method(*args, **kwargs)``, tried again with backoff while its connection drops.

        Raises:
            StorageUnavailable: The database stayed away for ``give_up_after`` seconds.
        """
        delay, start = FIRST_DELAY, time.monotonic()
        while True:
            try:
                result = method(*args, **kwargs)
            except Exception as err:
                if not dropped_connection(err):
                    raise
                # The longer of the outage (any thread) and this call's own wait: a heartbeat
                # that gets through does not let a call that keeps failing retry forever.
                down = max(self.failed(err), time.monotonic() - start)
                if down >= self.give_up_after:
                    raise StorageUnavailable(
                        f"storage {self.name} unreachable for {down:.0f} s (--storage-timeout "
                        f"{self.give_up_after:g}); the finished trials are stored: rerun the same "
                        "command once the database is back"
                    ) from None
                if threading.current_thread() is threading.main_thread():
                    raise_if_interrupted()  # nothing can be recorded now: stop as asked
                time.sleep(min(delay, self.give_up_after - down))
                delay = min(2 * delay, MAX_DELAY)
                continue
            self.succeeded()
            return result

    def failed(self, err: Exception) -> float:
        """Seconds the database has been unreachable (this failure starts the clock if first)."""
        now = time.monotonic()
        with self._lock:
            if self._down_since is None:
                self._down_since = now
                log.warning(
                    "storage %s: connection lost (%s); retrying for up to %g s",
                    self.name,
                    first_line(err.__cause__ or err, 160),
                    self.give_up_after,
                )
            return now - self._down_since

    def succeeded(self) -> None:
        """Ends the outage, if there was one."""
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is not None:
                seconds = time.monotonic() - self._down_since
                log.warning("storage %s: reconnected after %.1f s", self.name, seconds)
                self._down_since = None


class ReconnectingStorage(BaseStorage, BaseHeartbeat):
    """Delegates to ``inner``; each call is tried again while its database is unreachable.

    Args:
        inner: The storage every call goes to.
        outage: Retries the calls and bounds the outage.
    """

    def __init__(self, inner: optuna.storages.RDBStorage, outage: Outage) -> None:
        self.inner = inner
        self._call = outage.call
        self._outage = outage
        # (study id, trial number) → time.monotonic() when this process first saw the trial
        # RUNNING and not taken up.
        self._unclaimed: dict[tuple[int, int], float] = {}

    # BaseStorage: every call goes to the database.
    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        return self._call(self.inner.create_new_study, directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self._call(self.inner.delete_study, study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call(self.inner.set_study_user_attr, study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call(self.inner.set_study_system_attr, study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._call(self.inner.get_study_id_from_name, study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._call(self.inner.get_study_name_from_id, study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._call(self.inner.get_study_directions, study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call(self.inner.get_study_user_attrs, study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call(self.inner.get_study_system_attrs, study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._call(self.inner.get_all_studies)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._call(self.inner.create_new_trial, study_id, template_trial)

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        self._call(
            self.inner.set_trial_param, trial_id, param_name, param_value_internal, distribution
        )

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._call(
            self.inner.get_trial_id_from_study_id_trial_number, study_id, trial_number
        )

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._call(self.inner.get_trial_param, trial_id, param_name)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        """Also when a try's reply was lost after the database committed it: then the next try
        finds the trial finished already, in the state asked for, and that counts as done."""
        tried = False

        def attempt() -> bool:
            nonlocal tried
            try:
                return self.inner.set_trial_state_values(trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if tried and self.inner.get_trial(trial_id).state == state:
                    return True
                raise
            finally:
                tried = True

        return self._call(attempt)

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        self._call(self.inner.set_trial_intermediate_value, trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call(self.inner.set_trial_user_attr, trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call(self.inner.set_trial_system_attr, trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._call(self.inner.get_trial, trial_id)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        return self._call(self.inner.get_all_trials, study_id, deepcopy, states)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._call(self.inner.get_best_trial, study_id)

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._call(self.inner.get_trial_user_attrs, trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._call(self.inner.get_trial_system_attrs, trial_id)

    def remove_session(self) -> None:
        self.inner.remove_session()

    # BaseHeartbeat
    def record_heartbeat(self, trial_id: int) -> None:
        """One try: a missed beat is harmless, and Optuna's heartbeat thread dies on an error."""
        try:
            self.inner.record_heartbeat(trial_id)
        except Exception as err:
            if not dropped_connection(err):
                raise
            self._outage.failed(err)  # the main thread's next call retries, and gives up in time
        else:
            self._outage.succeeded()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """The running trials whose heartbeats stopped, and those no worker ever took up.

        The second kind is what a retried write can leave when the database committed a try whose
        reply was lost (a trial created, or taken from the queue, twice): RUNNING without a
        heartbeat, it would never fail. A worker takes a trial up by recording itself as its
        ``worker`` before its claim is freed. A trial without one fails once this process has
        seen it so for a grace period plus a minute, timed by this process's own monotonic clock:
        a start time that another host wrote, by its clock and in its time zone, is never
        compared with this host's. Each records why it is about to fail.
        """
        heartbeats = set(self._call(self.inner._get_stale_trial_ids, study_id))
        grace = self.inner.grace_period or 0
        running = self._call(self.inner.get_all_trials, study_id, False, (TrialState.RUNNING,))
        now, unclaimed, orphans = time.monotonic(), {}, set()
        for trial in running:
            if WORKER in trial.user_attrs:
                continue
            seen = (study_id, trial.number)
            unclaimed[seen] = since = self._unclaimed.get(seen, now)
            if now - since > grace + 60:
                get_id = self.inner.get_trial_id_from_study_id_trial_number
                orphans.add(self._call(get_id, study_id, trial.number))
        # Forget this study's trials taken up (or finished) meanwhile; keep other studies'.
        kept = {k: v for k, v in self._unclaimed.items() if k[0] != study_id}
        self._unclaimed = kept | unclaimed
        silent = (
            f"no heartbeat from its worker for {grace} s (killed, or cut off from the database)"
        )
        orphan = (
            f"no worker took it up in {grace + 60} s (a write retried after its reply was lost)"
        )
        for trial_id in sorted(heartbeats | orphans):
            reason = silent if trial_id in heartbeats else orphan
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                self._call(self.inner.set_trial_user_attr, trial_id, FAIL_REASON, reason)
        return sorted(heartbeats | orphans)

    def get_heartbeat_interval(self) -> int | None:
        return self.inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.inner.get_heartbeat_stale_trial_callback()
