"""The final model: the best configuration retrained, scored once on the test set, ``best.json``.

The official test set is scored here and nowhere else. A best trial gets one final model (its
configuration retrained on all 60,000 training images, or with ``--no-retrain`` the trial's own
checkpoint), made and scored once, across machines too (under the study's lock,
:mod:`fmnist_tuning.cluster.locks`). A later run whose final-model settings differ (``--final-epochs``,
``--no-retrain``) reuses that model and its score, and says so: the test set never helps choose
between settings. Only a new best trial gets a new final model. The result, with everything the
report shows (confusion matrix, per-class accuracy, the most confident mistakes), is stored in the
study (:mod:`fmnist_tuning.final.results`), with a record of every test pass; ``best.json`` and the
report read it from there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import torch
from lightning.pytorch.callbacks import Callback
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import binomtest

from fmnist_tuning.cluster import artifacts, locks
from fmnist_tuning.cluster.storage import redact
from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import StudyError
from fmnist_tuning.files import write_atomic
from fmnist_tuning.final import schedule
from fmnist_tuning.final.classifier import load_model
from fmnist_tuning.final.results import (
    count_test_passes,
    made_for,
    model_key,
    record_test_pass,
    set_current,
    store_model,
)
from fmnist_tuning.keys import (
    BEST_JSON,
    CHECKPOINT,
    CHECKPOINT_ARTIFACT,
    CHECKPOINT_DIR,
    EPOCHS,
    LATENCY_MS,
    PARAMS,
    WORKER,
    trial_name,
)
from fmnist_tuning.search import front
from fmnist_tuning.search.cleanup import Cleanup
from fmnist_tuning.search.loop import worker_id
from fmnist_tuning.search.objective import checkpoint_path
from fmnist_tuning.search.space import suggest_config
from fmnist_tuning.search.states import feasible
from fmnist_tuning.training.callbacks import StopAfterEpochs
from fmnist_tuning.training.raw import N_CLASSES, load_test
from fmnist_tuning.training.recipe import TrialConfig
from fmnist_tuning.training.trainer import build_datamodule, build_module, build_trainer

log = logging.getLogger(__name__)

N_CONFUSED = 24  # the most confident mistakes kept for the report


def final_path(output_dir: Path, trial: int, final_epochs: int = 0) -> Path:
    """Where the configuration of ``trial`` retrained on all 60k images is saved.

    The name carries the final model's result key (:func:`fmnist_tuning.final.results.model_key`): the
    trial, and the longest schedule validated for it (``_e40``; none when the trial's own
    schedule stood), so no final model's file is ever another's.
    """
    longest = f"_e{final_epochs}" if final_epochs else ""
    return output_dir / CHECKPOINT_DIR / f"final_{trial_name(trial)}{longest}.ckpt"


def best_epoch(trial: FrozenTrial) -> int:
    """The epoch (from 1) of the trial's best validation accuracy: where its checkpoint was saved."""
    return schedule.best_epoch(schedule.trial_curve(trial))


def retrain_full(
    config: TrialConfig, run: RunConfig, epochs: int, path: Path, seed: int, schedule_epochs: int
) -> Path:
    """Trains ``config`` afresh on all 60,000 training images; saves the weights at ``path``.

    The recipe validated on the 55k/5k split (:mod:`fmnist_tuning.final.schedule`): the one-cycle
    schedule of ``schedule_epochs`` epochs, stopped after ``epochs`` epochs (its best on
    validation), from the trial's seed. Only the data differ: the 5,000 validation images are
    trained on too (so the batches, and the draws that shuffle and flip them, differ as well).
    """
    pl.seed_everything(seed, verbose=False)
    module = build_module(config)
    datamodule = build_datamodule(config, run, full_train=True)
    stop: list[Callback] = [StopAfterEpochs(epochs)]
    trainer = build_trainer(run, callbacks=stop, limit_val_batches=0, max_epochs=schedule_epochs)
    trainer.fit(module, datamodule=datamodule)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path, weights_only=True)
    return path


def wilson_interval(correct: int, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of an accuracy of ``correct`` out of ``n`` images."""
    interval = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)


def score_on_test(model: Path, run: RunConfig) -> dict[str, Any]:
    """The one pass of a saved model over the official 10,000-image test set.

    The model is read as any user reads it (:func:`fmnist_tuning.final.classifier.load_model`), so the
    score is that of the file a user gets.

    Returns:
        ``test_acc``, its 95 % interval ``test_acc_ci95`` (Wilson: how far another draw of as
        many test images could move it), ``n_images``, ``confusion`` (rows = true class,
        columns = predicted), ``per_class`` accuracy, and ``confused``: the most confident
        mistakes as ``[index, true, predicted, probability]``, most confident first.
    """
    images, labels = load_test(run.data_dir)
    probs = load_model(model).probabilities(images)
    confidence, predicted = probs.max(dim=1)
    confusion = torch.bincount(labels * N_CLASSES + predicted, minlength=N_CLASSES**2)
    confusion = confusion.view(N_CLASSES, N_CLASSES)
    wrong = (predicted != labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True, stable=True)[:N_CONFUSED]].tolist()
    per_class = confusion.diag() / confusion.sum(dim=1).clamp(min=1)
    return {
        "test_acc": int(confusion.trace()) / len(labels),  # exact: k of n images
        "test_acc_ci95": list(wilson_interval(int(confusion.trace()), len(labels))),
        "n_images": len(labels),
        "confusion": confusion.tolist(),
        "per_class": per_class.tolist(),
        "confused": [[i, int(labels[i]), int(predicted[i]), float(confidence[i])] for i in worst],
    }


def _trial_checkpoint(trial: FrozenTrial, run: RunConfig, store: Any) -> Path:
    """The trial's best-epoch weights on this machine: its own file, or the artifact store's copy.

    Raises:
        StudyError: Neither is there.
    """
    checkpoint = Path(trial.user_attrs.get(CHECKPOINT, ""))
    if trial.user_attrs.get(CHECKPOINT) and checkpoint.is_file():
        return checkpoint
    if CHECKPOINT_ARTIFACT in trial.user_attrs:
        with contextlib.suppress(ArtifactNotFound):
            local = checkpoint_path(run.output_dir, trial.number)
            return artifacts.fetch(store, trial.user_attrs[CHECKPOINT_ARTIFACT], local)
    host = str(trial.user_attrs.get(WORKER, "")).rpartition(":")[0]
    where = f" (host {host})" if host and host != socket.gethostname() else ""
    raise StudyError(
        f"the best trial's checkpoint {checkpoint} is missing, and the artifact store "
        f"{artifacts.store_location(run)} has no copy; pass the --artifact-store the machines "
        f"share, or run the same command on the machine{where} and output dir that trained it"
    )


def local_model(final: dict[str, Any], run: RunConfig, store: Any | None = None) -> Path:
    """Where this machine has a final model's weights: in its output dir, else where recorded.

    Given the artifact store, a model missing from the output dir is copied from there first (it
    was made on another machine, or in another output dir). A result stored by an earlier version
    names no file of its own (two final models of one trial shared one name, the later one
    overwriting the earlier): its own stored copy is fetched under a name of its own.
    """
    name = final.get("model_file")
    if name is None:
        stem, artifact = Path(final["model"]).stem, final.get("model_artifact")
        name = f"{stem}_{artifact[:8]}.ckpt" if artifact and store is not None else f"{stem}.ckpt"
    here = run.output_dir / CHECKPOINT_DIR / name
    if not here.is_file() and store is not None and final.get("model_artifact"):
        with contextlib.suppress(ArtifactNotFound):
            artifacts.fetch(store, final["model_artifact"], here)
    return here if here.is_file() else Path(final["model"])


def _key(best: FrozenTrial, run: RunConfig) -> str:
    """The name of the final model this run would make of ``best`` (its stored result's key)."""
    return model_key(best.number, run.retrain, schedule.longer_schedule(run))


Made = tuple[str, dict[str, Any]]  # a stored final model: its key and its result

WAITING = "another process of this study is making its final model: waiting"
LOST = "the final model's lock was lost (its database connection dropped): waiting to take it again"


def _final_model(
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
        place, model = None, _trial_checkpoint(best, run, store)
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


def finalize(study: optuna.Study, run: RunConfig) -> dict[str, Any] | None:
    """Makes the best trial's final model (once), stores its test score, writes ``best.json``.

    With ``run.test`` false there is no final model and no test pass: ``best.json`` describes the
    best trial and its own checkpoint, and says the test set was not scored.

    Returns:
        The ``best.json`` content, or ``None`` when the study has no complete trial yet.

    Raises:
        StudyError: The best trial's checkpoint is neither on this machine nor in the artifact
            store.
    """
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = front.best_trial(study)  # the best feasible trial, or the one chosen from the front
    store = artifacts.open_store(run)
    if run.test:
        final = _final_model(study, best, run, store)
        model = local_model(final, run, store)
    else:  # no final model: best.json points at the trial's own checkpoint, wherever it is
        final = {"retrained": False, "schedule_epochs": run.max_epochs}
        final["model_artifact"] = best.user_attrs.get(CHECKPOINT_ARTIFACT)
        try:
            model = _trial_checkpoint(best, run, store)
        except StudyError:  # on another machine's disk only: nothing here needs it
            model = Path(best.user_attrs.get(CHECKPOINT, ""))
    # A front keeps every trial on it: a resumed study may choose another one of them.
    keep = None if front.is_front(run) else best.number
    Cleanup(run.output_dir, store).prune(study, keep=keep)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    result = {
        "study_name": study.study_name,
        "storage": redact(run.storage_url),
        "trial": best.number,
        "params": best.params,
        "config": suggest_config(optuna.trial.FixedTrial(best.params), run.small_widths).flat(),
        "val_acc": front.accuracy(best),
        "objectives": run.objectives,
        "chosen_by": front.choose(study)[1]
        if front.is_front(run)
        else "the best validation accuracy" + (" within the budget" if run.budgeted else ""),
        "pareto": front.pareto(study),  # a front's trials, most accurate first ([]: one objective)
        "budget": {"max_params": run.max_params, "max_latency_ms": run.max_latency_ms},
        "n_params": best.user_attrs.get(PARAMS),  # the network's size
        "latency_ms": best.user_attrs.get(LATENCY_MS),  # and CPU time per image, batch 1
        "feasible": feasible(best),  # within the budget (best_trial is the best feasible one)
        "test_set": "scored once" if run.test else "not scored (--no-test)",
        "test_passes": count_test_passes(study),  # the study's final models scored, ever
        "test_acc": final.get("test_acc"),
        "test_acc_ci95": final.get("test_acc_ci95"),
        "epochs": best.user_attrs.get(EPOCHS),
        "best_epoch": best_epoch(best),
        "final_epochs": final.get("epochs"),  # epochs the final model trained, of a schedule of
        "schedule_epochs": final["schedule_epochs"],  # this many, chosen on validation:
        "final_schedule": final.get("schedule_choice"),  # every schedule scored, and the rule
        "checkpoint": str(model),  # the model test_acc is measured on, on this machine
        "model_artifact": final.get("model_artifact"),  # the same file in the artifact store
        "artifact_store": artifacts.store_location(run),
        "trial_checkpoint": best.user_attrs.get(CHECKPOINT),  # the trial's own best-epoch weights
        "retrained_on_full_train": final["retrained"],
        "trials": {s.name.lower(): states.count(s) for s in TrialState if states.count(s)},
    }
    write_atomic(run.output_dir / BEST_JSON, json.dumps(result, indent=2) + "\n")
    return result
