"""The final model's training budget, chosen on the validation split before the retrain on 60k.

A trial trains at most ``--max-epochs`` epochs (the search's budget: short, so that many trials
fit). The winner may do better with a longer one-cycle schedule. Before its final training, its
configuration trains once more on the same 55k/5k split, from the trial's seed, with a schedule of
``--final-epochs`` epochs, and its validation accuracy is recorded after every epoch. The final
model then takes whichever schedule scored higher on validation: that longer one, stopped after
its best epoch, or the trial's own (its schedule, stopped after its best epoch). A tie keeps the
trial's own: the shorter one. The test set plays no part in the choice.

Under ``--timeout`` the longer schedule is as long as the time left allows
(:func:`fmnist_tuning.search.deadline.plan_final`), and its run stops before an epoch that would
end after the deadline; its best-epoch weights are kept, so that the final model can be that
run's when no retrain fits in the time left.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from optuna.trial import FrozenTrial

from fmnist_tuning.config import RunConfig
from fmnist_tuning.keys import VAL_CURVE
from fmnist_tuning.search import deadline
from fmnist_tuning.training.callbacks import StopBefore, ValHistory
from fmnist_tuning.training.recipe import TrialConfig
from fmnist_tuning.training.trainer import (
    best_epoch_checkpoint,
    build_datamodule,
    build_module,
    build_trainer,
)

log = logging.getLogger(__name__)

RULE = (
    "the schedule with the higher best validation accuracy on the study's split (a tie keeps the "
    "trial's own), stopped after its best epoch"
)


def longer_schedule(run: RunConfig) -> int:
    """The longer schedule tried for the final model: ``--final-epochs``, or 0 when it is not
    longer than the trials' ``--max-epochs`` (the trial's own schedule stands unvalidated)."""
    return run.final_epochs if run.final_epochs > run.max_epochs else 0


def trial_curve(trial: FrozenTrial) -> list[float]:
    """The trial's validation accuracy after each epoch (what it reported, in order; a front's
    trials report nothing, and their curve is the one they recorded)."""
    reported = [trial.intermediate_values[step] for step in sorted(trial.intermediate_values)]
    return reported or list(trial.user_attrs.get(VAL_CURVE, []))


def best_epoch(curve: list[float]) -> int:
    """The epoch (from 1) of the curve's best value; the first of equal bests, 0 for no curve.

    The first, as checkpointing and early stopping count only a strict gain.
    """
    return 1 + max(range(len(curve)), key=lambda i: (curve[i], -i)) if curve else 0


def candidate(
    schedule_epochs: int, curve: list[float], seconds: float | None = None
) -> dict[str, Any]:
    """One schedule as scored on validation: its length, best epoch, best value and curve (and
    the seconds its run took, for a run made here)."""
    epochs = best_epoch(curve)
    scored: dict[str, Any] = {
        "schedule_epochs": schedule_epochs,
        "epochs": epochs,
        "val_acc": curve[epochs - 1] if curve else None,
        "curve": [round(v, 6) for v in curve],
    }
    if seconds is not None:
        scored["seconds"] = round(seconds, 1)
    return scored


def validation_curve(
    config: TrialConfig,
    run: RunConfig,
    schedule_epochs: int,
    seed: int,
    stop_at: float | None = None,
    checkpoint: Path | None = None,
) -> list[float]:
    """Trains ``config`` on the training split with a ``schedule_epochs``-epoch schedule.

    Args:
        stop_at: Stop before an epoch that would end after this wall-clock time.
        checkpoint: Where to keep the weights of its best epoch on validation (none if None).

    Returns:
        Its validation accuracy after every epoch (no early stopping: one-cycle schedules
        usually peak near their end).
    """
    pl.seed_everything(seed, verbose=False)
    history = ValHistory()
    callbacks: list[Callback] = [history]
    if stop_at is not None:
        callbacks.append(StopBefore(stop_at, deadline.now))
    if checkpoint is not None:
        callbacks.append(best_epoch_checkpoint(checkpoint))
    trainer = build_trainer(run, callbacks=callbacks, max_epochs=schedule_epochs)
    trainer.fit(build_module(config), datamodule=build_datamodule(config, run))
    return history.values


def choose(
    best: FrozenTrial,
    config: TrialConfig,
    run: RunConfig,
    longer: int | None = None,
    stop_at: float | None = None,
    checkpoint: Path | None = None,
) -> dict[str, Any]:
    """The final model's schedule for the study's best trial, chosen on validation.

    Args:
        longer: The longer schedule to try (0: none); by default :func:`longer_schedule`.
        stop_at: Its run stops before an epoch that would end after this wall-clock time.
        checkpoint: Where its run keeps its best-epoch weights (none if None).

    Returns:
        ``{"rule", "candidates", "chosen"}``: every schedule scored (the trial's own first), and
        the index of the one the final model uses.
    """
    own = candidate(run.max_epochs, trial_curve(best))
    candidates = [own]
    longer = longer_schedule(run) if longer is None else longer
    if longer:
        log.info(
            "validating a %d-epoch schedule for trial %d on the validation split (its own: %d "
            "epochs, val_acc %.4f)",
            longer,
            best.number,
            run.max_epochs,
            own["val_acc"],
        )
        start = deadline.now()
        curve = validation_curve(config, run, longer, run.seed + best.number, stop_at, checkpoint)
        candidates.append(candidate(longer, curve, deadline.now() - start))
    chosen = max(range(len(candidates)), key=lambda i: (candidates[i]["val_acc"] or 0.0, -i))
    log.info(
        "final schedule: %d epochs of %d (val_acc %.4f)",
        candidates[chosen]["epochs"],
        candidates[chosen]["schedule_epochs"],
        candidates[chosen]["val_acc"],
    )
    return {"rule": RULE, "candidates": candidates, "chosen": chosen}
