"""Create or resume the study, run it, and turn its best trial into ``best.json``."""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from fmnist_tuning.config import RunConfig
from fmnist_tuning.objective import CHECKPOINT_DIR, Objective, evaluate_test, trial_name
from fmnist_tuning.search_space import GRID, suggest_config

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
DIRECTION = optuna.study.StudyDirection.MAXIMIZE
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class StudyError(ValueError):
    """The storage or the stored study cannot be used as asked; the message says how to fix it."""


def redact(url: str) -> str:
    """The storage URL with any password masked, safe for logs and reports."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (e.g. a journal file path): nothing to hide
        return url


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (Bayesian), random, or the small documented grid, all seeded."""
    if name == "tpe":
        # multivariate TPE models the joint distribution (e.g. optimizer x learning rate); group
        # splits the conditional space (n_units_l2 exists only with 3 layers); constant_liar keeps
        # parallel workers from sampling the same point.
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=8, multivariate=True, group=True, constant_liar=True
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(GRID, seed=seed)
    raise StudyError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """Median pruning after a warm-up, or none.

    Without the warm-up the median of epoch-0 accuracies prunes nearly every trial at its first
    epoch, before slow starters (small learning rates, SGD) show what they can do.
    """
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise StudyError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Connects to an Optuna RDB storage, turning connection failures into one clear error."""
    try:
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 60}  # wait for other writers, do not fail
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StudyError(
            f"cannot open storage {redact(url)} ({reason[:200]}); check the URL, that the server "
            "is running and reachable, and that its driver is installed"
        ) from None


def load_or_create(run: RunConfig) -> optuna.Study:
    """Creates the study, or resumes it when it already exists in the storage."""
    if run.storage is None:
        run.output_dir.mkdir(parents=True, exist_ok=True)  # the default SQLite file lives there
    storage = open_storage(run.storage_url)
    return optuna.create_study(
        storage=storage,
        study_name=run.study_name,
        direction=DIRECTION,
        sampler=make_sampler(run.sampler, run.seed),
        pruner=make_pruner(run.pruner),
        load_if_exists=True,
    )


def _describe(trial: FrozenTrial) -> str:
    params = " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    return (
        f"trial {trial.number} {trial.state.name} val_acc={value} "
        f"epochs={trial.user_attrs.get('epochs', 0)} {seconds:.1f}s {params}"
    )


def log_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """One concise line per finished trial, plus the best so far."""
    try:
        best = f"best={study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = "best=-"
    log.info("%s | %s", _describe(trial), best)


class Patience:
    """Stops the study once ``patience`` finished trials in a row brought no new best value."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        finished = sorted(
            study.get_trials(deepcopy=False, states=FINISHED),
            key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number),
        )
        best, since = -math.inf, 0
        for t in finished:
            if t.state == TrialState.COMPLETE and t.value is not None and t.value > best:
                best, since = t.value, 0
            else:
                since += 1
        if since >= self.patience:
            log.info("no new best value in %d finished trials: stopping (--patience)", since)
            study.stop()


def optimize(study: optuna.Study, run: RunConfig) -> None:
    """Runs trials until ``n_trials`` finished trials exist in the study, the timeout, or patience."""
    callbacks: list[Any] = [
        log_trial,
        lambda study, _: prune_checkpoints(study, run.output_dir / CHECKPOINT_DIR),
    ]
    if run.patience:
        callbacks.append(Patience(run.patience))
    n_trials = None
    if run.n_trials is not None:
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        n_trials = max(run.n_trials - done, 0)
        if done:
            log.info("resuming study %r: %d finished trials already", run.study_name, done)
    if n_trials != 0:
        study.optimize(
            Objective(run),
            n_trials=n_trials,
            timeout=run.timeout,
            callbacks=callbacks,
            gc_after_trial=True,
        )


def finalize(study: optuna.Study, run: RunConfig) -> dict[str, Any] | None:
    """Evaluates the best trial once on the test set and writes ``best.json``.

    Returns:
        The ``best.json`` content, or ``None`` when the study has no complete trial yet.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = study.best_trial
    config = suggest_config(optuna.trial.FixedTrial(best.params))
    checkpoint = Path(best.user_attrs.get("checkpoint", ""))
    cached = study.user_attrs.get("test_acc", {})
    if cached.get("trial") == best.number:
        test_acc = float(cached["test_acc"])  # this trial was already evaluated: never twice
    else:
        if not checkpoint.is_file():
            raise StudyError(
                f"the best trial's checkpoint {checkpoint} is missing; run the study again from "
                "the machine and output dir that trained it"
            )
        test_acc = evaluate_test(checkpoint, config, run)
        study.set_user_attr("test_acc", {"trial": best.number, "test_acc": test_acc})
    prune_checkpoints(study, run.output_dir / CHECKPOINT_DIR)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    result = {
        "study_name": study.study_name,
        "storage": redact(run.storage_url),
        "trial": best.number,
        "params": best.params,
        "config": config.flat(),
        "val_acc": best.value,
        "test_acc": test_acc,
        "epochs": best.user_attrs.get("epochs"),
        "checkpoint": str(checkpoint),
        "trials": {s.name.lower(): states.count(s) for s in TrialState if states.count(s)},
    }
    path = run.output_dir / "best.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return result


def prune_checkpoints(study: optuna.Study, folder: Path) -> None:
    """Deletes the checkpoints of finished trials other than the best; running ones may still win."""
    try:
        best = study.best_trial.number
    except ValueError:
        best = -1
    for trial in study.get_trials(deepcopy=False):
        if trial.state.is_finished() and trial.number != best:
            (folder / f"{trial_name(trial.number)}.ckpt").unlink(missing_ok=True)
