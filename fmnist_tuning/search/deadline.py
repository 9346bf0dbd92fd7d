"""The whole job's clock: what the final model will cost, and when the search must stop for it.

``--timeout T`` bounds the whole job: search, final model, test pass and report. The final stage's
cost is predicted from what the study measured: the best trial's seconds per epoch
(``train_seconds / epochs``, with a :data:`MARGIN`) times the epochs of its final stage (a validation run of the final
schedule on the 55k/5k split, then the retrain on all 60k images, whose epochs cost 60k/55k as
much). The search keeps for it the time ``--final-epochs`` of the best trial so far would take, but
at most :data:`FINAL_SHARE` of the timeout, plus :data:`REPORT_SECONDS` for the test pass and
report; it stops starting trials (and cuts a running one) when the rest is used up. The final
schedule is then as long as the time left allows, up to ``--final-epochs``. Until a trial
completes, only the report's time is kept: the first trials measure what the final stage costs.

Every process and machine of a study computes this from the same stored trials and its own start,
so the machine that makes the final model and the ones that wait for it all stop searching in time.

Without a timeout the final stage stays in proportion to the search: its schedule is at most half
the epochs the search trained in all (the validation run and the retrain then cost about what the
search did), and at most ``--final-epochs``.

Times are wall-clock (``time.time``): a deadline is shared by a job's worker processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from fmnist_tuning.config import RunConfig
from fmnist_tuning.keys import EPOCHS, TRAIN_SECONDS
from fmnist_tuning.search import front

# Kept for the test pass, best.json and the report after the final training (measured on 2
# cores: about 5 s in all; the rest is margin for a slower disk or a busier machine).
REPORT_SECONDS = 15.0
# The final stage's share of --timeout at most (less when --final-epochs of the best trial need
# less): the split of the time between search and final training. On validation, a longer final
# schedule of the starting configuration beat what the search found in its half (docs/benchmarks.md).
FINAL_SHARE = 0.75
# A final epoch may take longer than the trial's measured ones (on 2 cores, quiet: 1.00-1.17x):
# the predictions use it, so that the retrain fits after the validation run. A miss costs the
# retrain (the validation run's weights are shipped), too much margin only idle seconds.
MARGIN = 1.25
TRAIN_IMAGES = 60_000  # the official training set: the retrain's epoch
PROPORTION = 2  # without a timeout: the final schedule is at most 1/PROPORTION of search epochs
RULE = (
    "the search keeps for the final stage the predicted time of --final-epochs for the best trial "
    "(its seconds per epoch x the schedule, validated then retrained), at most {share:.0%} of "
    "--timeout, plus {report:g} s for the test pass and report; the final schedule is as long as "
    "the time left allows, up to --final-epochs"
)
PROPORTIONAL_RULE = (
    "no timeout: the final schedule is at most half the epochs the search trained "
    "(and at most --final-epochs)"
)


def now() -> float:
    """The wall clock, in seconds (one place, so tests can move time)."""
    return time.time()


def job_deadline(run: RunConfig) -> float | None:
    """When the whole job must be done (``--timeout`` after its start); None without a timeout."""
    if run.timeout is None:
        return None
    return (run.started_at if run.started_at is not None else now()) + run.timeout


def seconds_per_epoch(trial: FrozenTrial) -> float | None:
    """The trial's measured training time per epoch (validation included); None before any."""
    epochs, seconds = trial.user_attrs.get(EPOCHS), trial.user_attrs.get(TRAIN_SECONDS)
    return seconds / epochs if epochs and seconds else None


def final_seconds_per_epoch(trial: FrozenTrial) -> float | None:
    """What one epoch of the trial's final training is predicted to take (with :data:`MARGIN`)."""
    per_epoch = seconds_per_epoch(trial)
    return None if per_epoch is None else MARGIN * per_epoch


def retrain_factor(run: RunConfig) -> float:
    """How much one epoch on all training images costs relative to one on the training split."""
    return TRAIN_IMAGES / max(TRAIN_IMAGES - run.val_size, 1)


def final_seconds(per_epoch: float, schedule_epochs: int, run: RunConfig) -> float:
    """The predicted seconds of a final stage: a ``schedule_epochs`` validation run (when longer
    than the trials' schedule) and a retrain of that many epochs on all training images (none
    with ``--no-retrain``)."""
    if not run.retrain:  # the final model is the trial's own checkpoint: nothing trains
        return 0.0
    validation = schedule_epochs if schedule_epochs > run.max_epochs else 0
    return per_epoch * (validation + schedule_epochs * retrain_factor(run))


def _best(study: optuna.Study) -> FrozenTrial | None:
    """The best finished trial so far (the one the final stage would be made of), if any."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    try:
        return front.best_trial(study)
    except ValueError:  # no feasible trial yet
        return None


def search_deadline(study: optuna.Study, run: RunConfig) -> float | None:
    """When this process's search must stop for ``--timeout``: the job's deadline less the final
    stage the best trial so far needs (at most :data:`FINAL_SHARE` of it) and the report's time;
    None without a timeout. (``--search-timeout`` is the trial loop's, as Optuna's.)

    Before any trial completed, the final stage's cost is unknown: only the report's time is
    kept, so that the first trials (of every process) can complete and measure it.
    """
    if (end := job_deadline(run)) is None or run.timeout is None:
        return None
    best = _best(study) if run.test else None
    per_epoch = final_seconds_per_epoch(best) if best is not None else None
    if per_epoch is None:  # no trial has measured the cost yet: the first ones run on
        return end - REPORT_SECONDS
    final = min(FINAL_SHARE * run.timeout, final_seconds(per_epoch, run.final_epochs, run))
    return end - REPORT_SECONDS - final


@dataclass(frozen=True)
class FinalPlan:
    """How long the best trial's final stage trains, and when it must stop."""

    schedule_epochs: int  # the longer schedule to validate; 0: the trial's own stands
    retrain: bool  # whether a retrain on all training images is asked for
    stop_at: float | None  # when final training must end (the job's deadline less the report's)
    rule: str  # how the schedule's length was chosen


def plan_final(study: optuna.Study, best: FrozenTrial, run: RunConfig) -> FinalPlan:
    """The final stage of ``best`` that the time left (or, without a timeout, the search) allows.

    With a timeout: the longest schedule up to ``--final-epochs`` whose validation run and
    retrain fit before the deadline; when no longer schedule fits, the trial's own schedule.
    Whether the retrain fits is decided when it would start, on the seconds measured by then
    (:func:`fmnist_tuning.final.once.train_final`).
    """
    per_epoch = final_seconds_per_epoch(best)
    end = job_deadline(run)
    if not run.retrain:  # the trial's own checkpoint: no schedule to plan
        return FinalPlan(0, False, None if end is None else end - REPORT_SECONDS, "")
    if end is None:
        trained = sum(
            int(t.user_attrs.get(EPOCHS) or 0)
            for t in study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
            )
        )
        epochs = min(run.final_epochs, trained // PROPORTION)
        return FinalPlan(epochs if epochs > run.max_epochs else 0, True, None, PROPORTIONAL_RULE)
    stop_at = end - REPORT_SECONDS
    left = stop_at - now()
    rule = RULE.format(share=FINAL_SHARE, report=REPORT_SECONDS)
    if per_epoch is None:  # nothing measured (a front's trial from an old version): no long run
        return FinalPlan(0, run.retrain, stop_at, rule)
    # A longer schedule costs its validation run and its retrain: per_epoch * (1 + factor) each.
    fits = max(0, int(left // (per_epoch * (1 + retrain_factor(run)))))
    epochs = min(run.final_epochs, fits)
    return FinalPlan(epochs if epochs > run.max_epochs else 0, run.retrain, stop_at, rule)
