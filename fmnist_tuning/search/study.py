"""Create or resume the study under its claim lock, and number its workers."""

from __future__ import annotations

import optuna

from fmnist_tuning.cluster import locks
from fmnist_tuning.cluster.storage import open_storage
from fmnist_tuning.config import RunConfig
from fmnist_tuning.keys import WORKER_SLOTS
from fmnist_tuning.search import budget, front, space
from fmnist_tuning.search.binding import check_settings
from fmnist_tuning.search.sampling import make_pruner, make_sampler
from fmnist_tuning.search.states import count_states, finished


def load_or_create(run: RunConfig, slot: int = 0) -> optuna.Study:
    """Creates the study, or resumes it when it already exists in the storage.

    Args:
        run: The study-wide settings.
        slot: This worker's number (see :func:`reserve_worker_slots`); seeds its sampler.

    Raises:
        StudyError: The storage cannot be opened, or holds a study of this name with another
            direction, search space, validation split (``--seed``, ``--val-size``) or schedule
            (``--max-epochs``).
    """
    if run.storage is None:
        run.output_dir.mkdir(parents=True, exist_ok=True)  # the default SQLite file lives there
    storage = open_storage(
        run.storage_url, run.heartbeat_interval, run.grace_period, run.storage_timeout
    )
    study = optuna.create_study(
        storage=storage,
        study_name=run.study_name,
        directions=front.directions(run),
        sampler=make_sampler(run.sampler, run.seed + slot),
        pruner=make_pruner("none" if front.is_front(run) else run.pruner, run.max_epochs),
        load_if_exists=True,
    )
    # Under the study's claim lock, as every machine reads, checks and writes these: the first
    # machine records the settings and queues the start, the others find them.
    start = run.warm_start and run.sampler != "grid" and budget.start_fits(run)
    with locks.holding(claim_lock(run, study.study_name), None, poll=0.2):
        check_settings(study, run)
        if start and not study.trials:
            study.enqueue_trial(space.DEFAULT_PARAMS)
    return study


def claim_lock(run: RunConfig, study_name: str) -> locks.Lock:
    """The study's lock, every machine's: for claiming a trial, recording the run settings,
    queueing the start and numbering workers."""
    return locks.run_lock(run, study_name, "claim")


def reserve_worker_slots(study: optuna.Study, run: RunConfig, n: int) -> int:
    """Numbers ``n`` new workers of the study; returns the first number.

    Worker ``k`` seeds its sampler with ``seed + k``: the workers of one run, of a resumed run and
    of other machines draw different trials, yet a run is reproducible from its seed. Read and
    written under the study's :func:`claim_lock`, so machines that start together never share a
    number.
    """
    with locks.holding(claim_lock(run, study.study_name), None, poll=0.2):
        first = int(study.user_attrs.get(WORKER_SLOTS, 0))
        study.set_user_attr(WORKER_SLOTS, first + n)
    return first


def reached_total(study: optuna.Study, run: RunConfig) -> bool:
    """Whether the study holds its ``n_trials`` finished trials."""
    return run.n_trials is not None and finished(count_states(study)) >= run.n_trials
