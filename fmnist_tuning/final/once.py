"""The best trial's final model, made and scored once per study, across machines.

The official test set is scored here and nowhere else. A best trial gets one final model (its
configuration retrained on all 60,000 training images; with ``--no-retrain`` the trial's own
checkpoint; when no retrain fits in ``--timeout``, the best epoch of the schedule chosen on
validation: the validation run's or the trial's own), made and scored once, across machines too
(under the study's lock, :mod:`fmnist_tuning.cluster.locks`). A later run whose final-model
settings differ (``--final-epochs``, ``--no-retrain``, ``--timeout``) reuses that model and its
score, and says so: the test set
never helps choose between settings. Only a new best trial gets a new final model. The result,
with everything the report shows (confusion matrix, per-class accuracy, the most confident
mistakes), is stored in the study (:mod:`fmnist_tuning.final.results`), with a record of every
test pass.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from fmnist_tuning.cluster import artifacts, locks
from fmnist_tuning.config import RunConfig
from fmnist_tuning.final import schedule
from fmnist_tuning.final.results import (
    made_for,
    model_key,
    record_test_pass,
    set_current,
    store_model,
)
from fmnist_tuning.final.retrain import best_epoch, final_path, retrain_full, trial_checkpoint
from fmnist_tuning.final.scoring import score_on_test
from fmnist_tuning.keys import CHECKPOINT_ARTIFACT
from fmnist_tuning.search import deadline
from fmnist_tuning.search.loop import worker_id
from fmnist_tuning.search.space import suggest_config

log = logging.getLogger(__name__)


Made = tuple[str, dict[str, Any]]  # a stored final model: its key and its result

# The retrain's epochs against those just measured: a tight margin, as the retrain stops at the
# deadline anyway (and the weights chosen on validation are shipped then).
RETRAIN_MARGIN = 1.05
WAITING = "another process of this study is making its final model: waiting"
LOST = "the final model's lock was lost (its database connection dropped): waiting to take it again"


def final_model(
    study: optuna.Study, best: FrozenTrial, run: RunConfig, store: Any
) -> dict[str, Any]:
    """The stored result of the best trial's final model; trains and scores it the first time.

    Once per best trial, across machines: the model is made under the study's ``final`` lock (see
    :func:`fmnist_tuning.cluster.locks.study_lock`), and whoever takes the lock reads the stored results
    again first, so a machine that waited for another uses that machine's model. A holder that
    dies frees the lock and the next machine in line makes the model. (A holder whose database
    connection drops during its test pass loses the lock; another machine may then score a model
    too, but only the first result stored counts, and both passes are counted.) A run with other
    final-model settings than the ones the stored model was made with reuses it, and says so.
    Either way it becomes the study's current final model.
    """
    made = made_for(study, best.number)
    if made is None:
        with locks.holding(locks.run_lock(run, study.study_name, "final"), WAITING) as lock:
            # Made while this process waited? Else this process makes it.
            made = made_for(study, best.number) or _make_and_score(study, best, run, store, lock)
    made_key, result = made
    if result.get("settings") != _settings(run):
        log.info(
            "trial %d's final model was made and scored already (%s): reusing it and its test "
            "score; this run's final-model settings apply to a new best trial only",
            best.number,
            made_key,
        )
    set_current(study, made_key)
    return result


def _settings(run: RunConfig) -> dict[str, Any]:
    """The settings a final model is made with (a run with others reuses it, and says so)."""
    return {"retrain": run.retrain, "final_epochs": run.final_epochs, "timeout": run.timeout}


def _made_meanwhile(study: optuna.Study, trial: int, lock: locks.Lock) -> Made | None:
    """Takes ``lock`` again if its connection dropped; then another machine's model, if any."""
    if lock.held():
        return None
    locks.hold(lock, LOST)
    return made_for(study, trial)


def _make_and_score(
    study: optuna.Study, best: FrozenTrial, run: RunConfig, store: Any, lock: locks.Lock
) -> Made:
    """Makes the final model, scores it on the test set and stores the result, holding ``lock``.

    A model made here is written beside its place and moved there only once its result is
    stored: the file at :func:`final_path` is always a scored model.
    """
    begun = deadline.now()
    plan = deadline.plan_final(study, best, run)
    made = train_final(best, run, store, plan)
    trained = deadline.now()
    try:
        if (other := _made_meanwhile(study, best.number, lock)) is not None:
            return other  # another process made and scored it meanwhile: never score twice
        # Named by the longest schedule validated (retrained), or the validation run it is
        # from (not retrained; 0: the trial's own checkpoint).
        if made.retrained:
            longest = plan.schedule_epochs
        else:
            longest = made.schedule_epochs if made.place is not None else 0
        key = model_key(best.number, made.retrained, longest)
        uploaded = artifacts.upload(store, made.model, study) if made.place is not None else None
        log.info("scoring trial %d's final model on the official test set (once)", best.number)
        record_test_pass(study, key, worker_id())  # counted before the test set is read
        scores = score_on_test(made.model, run)
        if (other := _made_meanwhile(study, best.number, lock)) is not None:
            if uploaded is not None:  # the lock was lost during the test pass: the first
                artifacts.remove(store, uploaded)  # result stored counts, with its own file
            return other
        shipped = made.place or made.model
        result = {
            "trial": best.number,
            "retrained": made.retrained,
            "model": str(shipped.resolve()),
            "model_file": shipped.name,  # in <output-dir>/checkpoints on any machine
            "model_artifact": uploaded or best.user_attrs.get(CHECKPOINT_ARTIFACT),
            "epochs": made.epochs,  # the checkpoint's epoch, or the epochs the retrain trains
            "schedule_epochs": made.schedule_epochs,  # of a one-cycle schedule this long
            "schedule_choice": made.choice,  # the schedules scored on validation, the one chosen
            "settings": _settings(run),
            "time": {  # how the job's time was split: the rule, and what each stage took
                "timeout": run.timeout,
                "rule": plan.rule,
                "search_seconds": None  # from the job's start to its final stage
                if run.started_at is None
                else round(begun - run.started_at, 1),
                "final_seconds": round(trained - begun, 1),  # the final training
                "planned_schedule_epochs": plan.schedule_epochs,
                "note": made.note,
            },
            **scores,
            "scored_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        store_model(study, key, result)
        if made.place is not None:
            made.model.replace(made.place)
        return key, result
    finally:
        made.discard()


@dataclass
class FinalModel:
    """A final model trained here (or the trial's own checkpoint), before its test pass."""

    model: Path  # the file to score
    place: Path | None  # where it goes once scored (None: it stays where it is, a trial's own)
    retrained: bool  # trained on all training images
    epochs: int
    schedule_epochs: int
    choice: dict[str, Any] | None = None  # the schedules scored on validation
    note: str = ""  # why it is not what the settings asked for (the deadline)

    def discard(self) -> None:
        """Deletes the file made here unless it was moved into its place (a trial's own stays)."""
        if self.place is not None:
            self.model.unlink(missing_ok=True)


def train_final(
    best: FrozenTrial, run: RunConfig, store: Any, plan: deadline.FinalPlan
) -> FinalModel:
    """Trains the final model ``plan`` allows: the validated schedule, then the retrain on all
    60k images if it fits in the time left; else the best-epoch weights chosen on validation.

    Reads nothing of the test set (``benchmarks/deadline.py`` runs it to compare settings).
    Call :meth:`FinalModel.discard` when done with it.
    """

    def own() -> FinalModel:  # the trial's own best-epoch weights (fetched only when needed)
        return FinalModel(
            trial_checkpoint(best, run, store), None, False, best_epoch(best), run.max_epochs
        )

    if not run.retrain:
        return own()
    place = final_path(run.output_dir, best.number, plan.schedule_epochs)
    try:
        return _train_here(best, run, plan, own, place)
    except BaseException:  # an interrupt or a failure: no scratch file outlives this process
        for path in _scratch(place):
            path.unlink(missing_ok=True)
        raise


def _scratch(place: Path) -> tuple[Path, Path]:
    """This process's files beside ``place``: the validation run's weights, the retrain's."""
    pid = os.getpid()
    return place.with_name(f".{place.stem}.{pid}.validated.ckpt"), place.with_name(
        f".{place.name}.{pid}.part"
    )


def _train_here(
    best: FrozenTrial,
    run: RunConfig,
    plan: deadline.FinalPlan,
    own: Callable[[], FinalModel],
    place: Path,
) -> FinalModel:
    """:func:`train_final`'s training: the validation run, then the retrain if it fits."""
    validated, part = _scratch(place)
    config = suggest_config(optuna.trial.FixedTrial(best.params), run.small_widths)
    keep = validated if plan.stop_at is not None else None
    choice = schedule.choose(best, config, run, plan.schedule_epochs, plan.stop_at, keep)
    chosen = choice["candidates"][choice["chosen"]]
    epochs, schedule_epochs = chosen["epochs"], chosen["schedule_epochs"]
    # Measured: by the validation run, else by the trial (its own schedule is retrained).
    measured = chosen.get("seconds")
    per_epoch = measured / len(chosen["curve"]) if measured else deadline.seconds_per_epoch(best)
    left = None if plan.stop_at is None else plan.stop_at - deadline.now()
    cost = None
    if per_epoch is not None:
        cost = RETRAIN_MARGIN * per_epoch * epochs * deadline.retrain_factor(run)
    if left is not None and (cost is None or cost > left):
        note = f"no time left to retrain on all training images ({left or 0:.0f} s left)"
        return _validated(own, choice, validated, place, note)
    log.info(
        "retraining trial %d's configuration on all training images: %d epochs of a "
        "%d-epoch schedule",
        best.number,
        epochs,
        schedule_epochs,
    )
    seed = run.seed + best.number
    if retrain_full(config, run, epochs, part, seed, schedule_epochs, plan.stop_at):
        validated.unlink(missing_ok=True)  # (kept in case the retrain could not finish)
        return FinalModel(part, place, True, epochs, schedule_epochs, choice)
    note = "the retrain on all training images was stopped at the deadline"
    return _validated(own, choice, validated, place, note)


def _validated(
    own: Callable[[], FinalModel], choice: dict[str, Any], validated: Path, place: Path, note: str
) -> FinalModel:
    """The best-epoch weights of the schedule chosen on validation: the validation run's, or the
    trial's own."""
    log.warning("%s: the final model is the weights chosen on validation", note)
    chosen = choice["candidates"][choice["chosen"]]
    if choice["chosen"] == 0 or not validated.is_file():
        if choice["chosen"]:  # (its run saved no weights: the trial's own are shipped)
            choice, note = {**choice, "chosen": 0}, f"{note}; the validation run kept no weights"
        validated.unlink(missing_ok=True)
        return dataclasses.replace(own(), choice=choice, note=note)
    kept = place.with_name(f"{place.stem}_validation_run.ckpt")
    return FinalModel(
        validated, kept, False, chosen["epochs"], chosen["schedule_epochs"], choice, note
    )
