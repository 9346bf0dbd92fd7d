"""Ends a study: the best trial's final model (made once), the clean-up, and ``best.json``.

``best.json`` and the report read the final model's result from the study, where
:mod:`fmnist_tuning.final.once` stored it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from fmnist_tuning.cluster import artifacts
from fmnist_tuning.cluster.storage import redact
from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import StudyError
from fmnist_tuning.files import write_atomic
from fmnist_tuning.final.once import final_model
from fmnist_tuning.final.results import count_test_passes
from fmnist_tuning.final.retrain import best_epoch, local_model, trial_checkpoint
from fmnist_tuning.keys import (
    BEST_JSON,
    CHECKPOINT,
    CHECKPOINT_ARTIFACT,
    EPOCHS,
    LATENCY_MS,
    PARAMS,
)
from fmnist_tuning.search import front
from fmnist_tuning.search.cleanup import Cleanup
from fmnist_tuning.search.space import suggest_config
from fmnist_tuning.search.states import feasible


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
        final = final_model(study, best, run, store)
        model = local_model(final, run, store)
    else:  # no final model: best.json points at the trial's own checkpoint, wherever it is
        final = {"retrained": False, "schedule_epochs": run.max_epochs}
        final["model_artifact"] = best.user_attrs.get(CHECKPOINT_ARTIFACT)
        try:
            model = trial_checkpoint(best, run, store)
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
        "time_split": final.get("time"),  # the job's time: search and final stage, and the rule
        "checkpoint": str(model),  # the model test_acc is measured on, on this machine
        "model_artifact": final.get("model_artifact"),  # the same file in the artifact store
        "artifact_store": artifacts.store_location(run),
        "trial_checkpoint": best.user_attrs.get(CHECKPOINT),  # the trial's own best-epoch weights
        "retrained_on_full_train": final["retrained"],
        "trials": {s.name.lower(): states.count(s) for s in TrialState if states.count(s)},
    }
    write_atomic(run.output_dir / BEST_JSON, json.dumps(result, indent=2) + "\n")
    return result
