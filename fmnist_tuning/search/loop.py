"""The trial loop every worker runs: claim a trial, train it, record it, until the study is done.

Several processes, on this machine or others, may run :func:`optimize` on one study at once: the
study-wide ``n_trials`` is claimed trial by trial, heartbeats mark the trials of killed workers
FAIL and queue them again, and a signal ends the running trial as FAIL instead of leaving it
RUNNING.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Iterator

import optuna
from optuna.trial import TrialState

from fmnist_tuning.cluster.locks import FileLock, Lock, holding
from fmnist_tuning.cluster.reconnect import raise_storage_unavailable
from fmnist_tuning.cluster.storage import MAX_RETRY, journal_path
from fmnist_tuning.config import RunConfig
from fmnist_tuning.faults import Interrupted, NonFiniteLoss, defer_interrupts, raise_if_interrupted
from fmnist_tuning.keys import CLAIM_LOCK, EPOCHS, WORKER
from fmnist_tuning.runtime import release_memory, spare_long_lived_objects
from fmnist_tuning.search import deadline
from fmnist_tuning.search.cleanup import Cleanup
from fmnist_tuning.search.front import accuracy
from fmnist_tuning.search.objective import Objective
from fmnist_tuning.search.progress import log_trial
from fmnist_tuning.search.states import FINISHED, count_states, feasible, finished
from fmnist_tuning.search.study import claim_lock

log = logging.getLogger(__name__)


def worker_id() -> str:
    """``host:pid`` of this process, recorded on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def trials_since_best(study: optuna.Study) -> int:
    """Finished trials, in the order they finished, since the last new best value."""
    done = sorted(
        study.get_trials(deepcopy=False, states=FINISHED),
        key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number),
    )
    best, since = -math.inf, 0
    for t in done:
        if not feasible(t) and not t.user_attrs.get(EPOCHS):
            continue  # over the budget before training: it cost nothing
        value = accuracy(t)
        if t.state == TrialState.COMPLETE and value is not None and value > best:
            best, since = value, 0
        else:
            since += 1
    return since


class _Runner:
    """What Optuna calls per trial: marks the trial with this worker, frees the claims, trains."""

    def __init__(self, objective: Objective, claims: tuple[FileLock, Lock]) -> None:
        self.objective = objective
        self.claims = claims

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        # The trial is RUNNING in the storage now, and once it names its worker no other machine
        # takes it for one that nobody took up: then the others may count it.
        trial.set_user_attr(WORKER, worker_id())
        for claim in reversed(self.claims):
            claim.release()
        return self.objective(trial)


@contextlib.contextmanager
def _claimed(claims: tuple[FileLock, Lock]) -> Iterator[None]:
    """Holds this folder's claim, then the study's (every machine's); frees both on the way out."""
    local, study_wide = claims
    with local, holding(study_wide, None, poll=0.2):
        yield


def _fail_own_running_trials(study: optuna.Study) -> None:
    """After an interrupt: no trial of this process may stay RUNNING (best effort)."""
    me = worker_id()
    with contextlib.suppress(Exception):  # the storage may be unusable after a hard interrupt
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get(WORKER) == me:
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)


def _fail_dead_local_trials(study: optuna.Study) -> None:
    """Fails and queues again the RUNNING trials of this machine's processes that are gone.

    For storages without heartbeats (journal files); other machines' dead trials stay RUNNING.
    """
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(trial.user_attrs.get(WORKER, ""))
        name, _, pid = owner.rpartition(":")
        if name != host or not pid.isdigit() or sys.platform == "win32":
            continue  # (Windows: os.kill with signal 0 would end the process, not probe it)
        try:
            os.kill(int(pid), 0)
            continue  # alive (or, rarely, its number was reused: then it waits)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        log.warning("trial %d: its worker %s is gone; FAIL, queued again", trial.number, owner)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        retry(study, study.get_trials(deepcopy=False)[trial.number])


def _wait(seconds: float) -> None:
    """Sleeps, but wakes up for a signal."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        raise_if_interrupted()
        time.sleep(min(0.2, seconds))


def _stop_reason(study: optuna.Study, run: RunConfig, search_stop: float | None) -> str | None:
    """Why no further trial should start here (timeouts, patience, exhausted grid), if any."""
    if search_stop is not None and time.monotonic() >= search_stop:
        return "timeout"
    trials = study.get_trials(deepcopy=False)  # one read for both questions below
    done = any(t.state == TrialState.COMPLETE for t in trials)
    if done and (stop := deadline.search_deadline(study, run)) is not None:
        # (Until a trial completes, trials keep starting: the first measures the final's cost.)
        epochs = [deadline.seconds_per_epoch(t) for t in trials]
        shortest = min((e for e in epochs if e is not None), default=0.0)
        if deadline.now() + shortest >= stop:  # not even one epoch fits
            return "the rest of --timeout is kept for the final model and report: search stopped"
    if run.patience and (since := trials_since_best(study)) >= run.patience:
        return f"no new best value in {since} finished trials: stopping (--patience)"
    sampler = study.sampler
    if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study):
        return "every point of the grid has been tried: stopping"
    return None


def optimize(
    study: optuna.Study,
    run: RunConfig,
    parent_pid: int | None = None,
    objective: Objective | None = None,
) -> None:
    """Runs trials until the study holds ``n_trials`` finished ones, a timeout, or patience.

    ``--search-timeout`` counts from this call, as Optuna's ``timeout``; ``--timeout`` ends the
    search when the rest of the job's time is needed for the final model
    (:func:`fmnist_tuning.search.deadline.search_deadline`).

    Every worker process, here or on other machines, may run this on the same study. Before each
    trial it counts the finished and running trials of the whole study, taking turns with the
    other processes of its output dir (a file lock) and with every other machine (the study's
    lock, :func:`fmnist_tuning.search.study.claim_lock`), so ``n_trials`` is the study's exact total:
    Optuna's ``MaxTrialsCallback`` alone would let every other worker finish one trial more. A trial
    whose loss turns NaN fails and is replaced; a killed worker's trial turns FAIL after the grace
    period and is queued again; while others still run trials this worker waits, in case one
    fails and needs a replacement.

    Args:
        study: The study, with this worker's sampler.
        run: The study-wide settings.
        parent_pid: For a worker process: stop when the parent that started it is gone.
        objective: What trains a trial; by default ``Objective(run)`` (the benchmark passes one
            with timers).

    Raises:
        Interrupted: SIGINT or SIGTERM arrived (under :func:`fmnist_tuning.faults.catch_signals`);
            the running trial is FAIL in the storage by then.
    """
    done = finished(count_states(study))
    if done and parent_pid is None:
        log.info("resuming study %r: %d finished trials already", run.study_name, done)
    search_stop = None if run.search_timeout is None else time.monotonic() + run.search_timeout
    objective = objective or Objective(run)
    cleanup = Cleanup(run.output_dir, objective.store)
    callbacks = [
        lambda s, t: log_trial(s, t, n_trials=run.n_trials, search_stop=search_stop, run=run),
        lambda s, _: cleanup.prune(s),
        release_memory,
    ]
    claim = FileLock(run.output_dir / CLAIM_LOCK)  # this folder's processes take turns
    study_claim = claim_lock(run, study.study_name)  # and so do all the study's machines
    claims = (claim, study_claim)
    runner = _Runner(objective, claims)
    heartbeats = journal_path(run.storage_url) is None
    total = math.inf if run.n_trials is None else run.n_trials
    with defer_interrupts(), spare_long_lived_objects():
        try:
            while True:
                raise_if_interrupted()
                if (reason := _stop_reason(study, run, search_stop)) is not None:
                    if reason != "timeout":
                        log.info("%s", reason)
                    break
                if parent_pid is not None and os.getppid() != parent_pid:
                    log.warning("the process that started this worker is gone: stopping")
                    break
                with _claimed(claims):
                    if heartbeats:
                        optuna.storages.fail_stale_trials(study)  # killed workers' trials
                    else:
                        _fail_dead_local_trials(study)
                    states = count_states(study)
                    done, running = finished(states), states[TrialState.RUNNING]
                    if done + running < total:
                        try:
                            study.optimize(
                                runner,
                                n_trials=1,
                                catch=(NonFiniteLoss,),
                                callbacks=callbacks,
                                gc_after_trial=True,
                            )
                        except optuna.exceptions.UpdateFinishedTrialError:
                            log.warning("a trial here missed its heartbeats and was failed")
                        except Exception as err:
                            raise_storage_unavailable(err)
                            raise
                        continue
                if done >= total or not running or not heartbeats:
                    break
                _wait(1.0)  # the others' last trials may still fail and need a replacement
        except Interrupted:
            _fail_own_running_trials(study)
            raise
