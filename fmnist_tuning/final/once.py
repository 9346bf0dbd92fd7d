"""The best trial's final model, made and scored once per study, across machines.

The official test set is scored here and nowhere else. A best trial gets one final model (its
configuration retrained on all 60,000 training images, or with ``--no-retrain`` the trial's own
checkpoint), made and scored once, across machines too (under the study's lock,
:mod:`fmnist_tuning.cluster.locks`). A later run whose final-model settings differ
(``--final-epochs``, ``--no-retrain``) reuses that model and its score, and says so: the test set
never helps choose between settings. Only a new best trial gets a new final model. The result,
with everything the report shows (confusion matrix, per-class accuracy, the most confident
mistakes), is stored in the study (:mod:`fmnist_tuning.final.results`), with a record of every
test pass.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
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
from fmnist_tuning.search.loop import worker_id
from fmnist_tuning.search.space import suggest_config

log = logging.getLogger(__name__)


def _key(best: FrozenTrial, run: RunConfig) -> str:
    """The name of the final model this run would make of ``best`` (its stored result's key)."""
    return model_key(best.number, run.retrain, schedule.longer_schedule(run))


Made = tuple[str, dict[str, Any]]  # a stored final model: its key and its result

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
    key = _key(best, run)
    made = made_for(study, best.number, key)
    if made is None:
        with locks.holding(locks.run_lock(run, study.study_name, "final"), WAITING) as lock:
            # Made while this process waited? Else this process makes it.
            made = made_for(study, best.number, key) or _make_and_score(
                study, best, run, store, lock
            )
    made_key, result = made
    if made_key != key:
        log.info(
            "trial %d's final model was made and scored already (%s): reusing it and its test "
            "score; this run's final-model settings apply to a new best trial only",
            best.number,
            made_key,
        )
    set_current(study, made_key)
    return result


def _made_meanwhile(study: optuna.Study, trial: int, key: str, lock: locks.Lock) -> Made | None:
    """Takes ``lock`` again if its connection dropped; then another machine's model, if any."""
    if lock.held():
        return None
    locks.hold(lock, LOST)
    return made_for(study, trial, key)


def _make_and_score(
    study: optuna.Study, best: FrozenTrial, run: RunConfig, store: Any, lock: locks.Lock
) -> Made:
    """Makes the final model, scores it on the test set and stores the result, holding ``lock``.

    A retrained model is written beside its place and moved there only once its result is
    stored: the file at :func:`final_path` is always a scored model.
    """
    key = _key(best, run)
    epochs, schedule_epochs, choice = best_epoch(best), run.max_epochs, None
    if run.retrain:
        place = final_path(run.output_dir, best.number, schedule.longer_schedule(run))
        model = place.with_name(f".{place.name}.{os.getpid()}.part")
    else:  # the trial's own checkpoint: the only case that needs it here
        place, model = None, trial_checkpoint(best, run, store)
    try:
        if place is not None:
            config = suggest_config(optuna.trial.FixedTrial(best.params), run.small_widths)
            choice = schedule.choose(best, config, run)  # on the validation split only
            chosen = choice["candidates"][choice["chosen"]]
            epochs, schedule_epochs = chosen["epochs"], chosen["schedule_epochs"]
            log.info(
                "retraining trial %d's configuration on all training images: %d epochs of a "
                "%d-epoch schedule",
                best.number,
                epochs,
                schedule_epochs,
            )
            retrain_full(config, run, epochs, model, run.seed + best.number, schedule_epochs)
        if (other := _made_meanwhile(study, best.number, key, lock)) is not None:
            return other  # another process made and scored it meanwhile: never score twice
        uploaded = artifacts.upload(store, model, study) if place is not None else None
        log.info("scoring trial %d's final model on the official test set (once)", best.number)
        record_test_pass(study, key, worker_id())  # counted before the test set is read
        scores = score_on_test(model, run)
        if (other := _made_meanwhile(study, best.number, key, lock)) is not None:
            if uploaded is not None:  # the lock was lost during the test pass: the first
                artifacts.remove(store, uploaded)  # result stored counts, with its own file
            return other
        result = {
            "trial": best.number,
            "retrained": run.retrain,
            "model": str((place or model).resolve()),
            "model_file": (place or model).name,  # in <output-dir>/checkpoints on any machine
            "model_artifact": uploaded or best.user_attrs.get(CHECKPOINT_ARTIFACT),
            "epochs": epochs,  # the checkpoint's epoch, or the epochs the retrain trains
            "schedule_epochs": schedule_epochs,  # of a one-cycle schedule this long
            "schedule_choice": choice,  # the schedules scored on validation, and the one chosen
            **scores,
            "scored_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        store_model(study, key, result)
        if place is not None:
            model.replace(place)
        return key, result
    finally:
        if place is not None:
            model.unlink(missing_ok=True)
