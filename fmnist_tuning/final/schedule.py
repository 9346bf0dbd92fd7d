"""The final model's training budget, chosen on the validation split before the retrain on 60k.

A trial trains at most ``--max-epochs`` epochs (the search's budget: short, so that many trials
fit). The winner may do better with a longer one-cycle schedule. Before its final training, its
configuration trains once more on the same 55k/5k split, from the trial's seed, with a schedule of
``--final-epochs`` epochs, and its validation accuracy is recorded after every epoch. The final
model then takes whichever schedule scored higher on validation: that longer one, stopped after
its best epoch, or the trial's own (its schedule, stopped after its best epoch). A tie keeps the
trial's own: the shorter one. The test set plays no part in the choice.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from optuna.trial import FrozenTrial

from fmnist_tuning.config import RunConfig
from fmnist_tuning.keys import VAL_CURVE
from fmnist_tuning.training.callbacks import ValHistory
from fmnist_tuning.training.recipe import TrialConfig
from fmnist_tuning.training.trainer import build_datamodule, build_module, build_trainer

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


def candidate(schedule_epochs: int, curve: list[float]) -> dict[str, Any]:
    """One schedule as scored on validation: its length, best epoch, best value and curve."""
    epochs = best_epoch(curve)
    return {
        "schedule_epochs": schedule_epochs,
        "epochs": epochs,
        "val_acc": curve[epochs - 1] if curve else None,
        "curve": [round(v, 6) for v in curve],
    }


def validation_curve(
    config: TrialConfig, run: RunConfig, schedule_epochs: int, seed: int
) -> list[float]:
    """Trains ``config`` on the training split with a ``schedule_epochs``-epoch schedule.

    Returns its validation accuracy after every epoch (no early stopping: one-cycle schedules
    usually peak near their end).
    """
    pl.seed_everything(seed, verbose=False)
    history = ValHistory()
    trainer = build_trainer(run, callbacks=[history], max_epochs=schedule_epochs)
    trainer.fit(build_module(config), datamodule=build_datamodule(config, run))
    return history.values


def choose(best: FrozenTrial, config: TrialConfig, run: RunConfig) -> dict[str, Any]:
    """The final model's schedule for the study's best trial, chosen on validation.

    Returns:
        ``{"rule", "candidates", "chosen"}``: every schedule scored (the trial's own first), and
        the index of the one the final model uses.
    """
    own = candidate(run.max_epochs, trial_curve(best))
    candidates = [own]
    if longer := longer_schedule(run):
        log.info(
            "validating a %d-epoch schedule for trial %d on the validation split (its own: %d "
            "epochs, val_acc %.4f)",
            longer,
            best.number,
            run.max_epochs,
            own["val_acc"],
        )
        curve = validation_curve(config, run, longer, seed=run.seed + best.number)
        candidates.append(candidate(longer, curve))
    chosen = max(range(len(candidates)), key=lambda i: (candidates[i]["val_acc"] or 0.0, -i))
    log.info(
        "final schedule: %d epochs of %d (val_acc %.4f)",
        candidates[chosen]["epochs"],
        candidates[chosen]["schedule_epochs"],
        candidates[chosen]["val_acc"],
    )
    return {"rule": RULE, "candidates": candidates, "chosen": chosen}
