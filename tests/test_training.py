"""Training through Lightning, and pruning through Optuna, on tiny synthetic data."""

from __future__ import annotations

import dataclasses
import gc
import os
import weakref
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from optuna.trial import TrialState

from fmnist_tuning import objective
from fmnist_tuning.config import RunConfig
from fmnist_tuning.model import VAL_ACC
from fmnist_tuning.objective import build_datamodule, build_module, build_trainer
from fmnist_tuning.search_space import TrialConfig
from fmnist_tuning.study import load_or_create, optimize


def test_fast_dev_run_fits_on_cpu(run_config: RunConfig) -> None:
    config = TrialConfig(hidden_sizes=(32, 16), batch_norm=True, dropout=0.1)
    trainer = build_trainer(run_config, fast_dev_run=True)
    trainer.fit(build_module(config, run_config), datamodule=build_datamodule(config, run_config))
    assert trainer.state.finished
    assert VAL_ACC in trainer.callback_metrics


def test_a_few_epochs_learn_the_synthetic_classes(run_config: RunConfig) -> None:
    config = TrialConfig(hidden_sizes=(64,), lr=3e-3, batch_size=32)
    run = dataclasses.replace(run_config, max_epochs=3)
    trainer = build_trainer(run)
    trainer.fit(build_module(config, run), datamodule=build_datamodule(config, run))
    assert float(trainer.callback_metrics[VAL_ACC]) > 0.5  # chance is 0.1


GOOD = {
    "n_layers": 1,
    "n_units_l0": 128,
    "dropout": 0.0,
    "batch_norm": True,
    "optimizer": "adam",
    "lr_adam": 1e-2,
    "weight_decay": 1e-6,
    "batch_size": 128,
}
# RMSprop at its smallest rate on 2 steps per epoch: stays near chance for several epochs.
BAD = {**GOOD, "optimizer": "rmsprop", "batch_size": 512, "batch_norm": False}
del BAD["lr_adam"]
BAD["lr_rmsprop"] = 1e-5


def _enqueued_study(run: RunConfig, bad: int) -> optuna.Study:
    study = load_or_create(run)
    for _ in range(5):
        study.enqueue_trial(GOOD)
    for _ in range(bad):
        study.enqueue_trial(BAD)
    optimize(study, run)
    return study


def test_median_pruning_stops_clearly_worse_trials(run_config: RunConfig) -> None:
    run = dataclasses.replace(run_config, n_trials=7, max_epochs=5, early_stopping=5)
    study = _enqueued_study(run, bad=2)
    states = [t.state for t in study.trials]
    assert states[:5] == [TrialState.COMPLETE] * 5
    assert states[5:] == [TrialState.PRUNED] * 2
    # pruned after the warm-up (epochs 0-1 are never pruned), before the last epoch
    assert all(3 <= t.user_attrs["epochs"] < 5 for t in study.trials[5:])


def test_pruner_none_lets_every_trial_finish(run_config: RunConfig, tmp_path: Path) -> None:
    run = dataclasses.replace(run_config, n_trials=6, max_epochs=4, early_stopping=5, pruner="none")
    study = _enqueued_study(run, bad=1)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len(study.trials[-1].intermediate_values) == 4  # still reported: curves for the plots


def test_no_trainer_outlives_its_trial(
    run_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study frees each trial: no Trainer survives it, and the heap is trimmed once per trial."""
    trims: list[int] = []
    monkeypatch.setattr(objective, "_MALLOC_TRIM", trims.append)
    seen: list[int] = []

    class LongLived(Callback):  # long-lived: Lightning binds the module's log methods onto it
        def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            seen.append(1)

    def live_trainers(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        alive = [o for o in gc.get_objects() if isinstance(o, pl.Trainer)]
        assert not alive, f"trial {trial.number} left {len(alive)} Trainer(s) alive"

    run = dataclasses.replace(run_config, max_epochs=1)
    study = load_or_create(dataclasses.replace(run, warm_start=False))
    study.optimize(
        objective.Objective(run, extra_callbacks=[LongLived()]),
        n_trials=2,
        gc_after_trial=True,
        callbacks=[objective.release_memory, live_trainers],
    )
    assert len(seen) == 2 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert trims == [0, 0]


def test_the_study_runner_releases_memory_after_every_trial(
    run_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims: list[int] = []
    monkeypatch.setattr(objective, "_MALLOC_TRIM", trims.append)
    run = dataclasses.replace(run_config, max_epochs=1, n_trials=3, warm_start=False)
    optimize(load_or_create(run), run)
    assert trims == [0, 0, 0]


class _BatchCounter(Callback):
    def __init__(self) -> None:
        self.train_batches = 0
        self.val_epochs = 0

    def on_train_batch_end(self, *args: Any) -> None:
        self.train_batches += 1

    def on_validation_epoch_end(self, *args: Any) -> None:
        self.val_epochs += 1


def test_the_trainer_skips_only_the_batch_hooks_a_callback_inherits(run_config: RunConfig) -> None:
    counter = _BatchCounter()
    config = TrialConfig(hidden_sizes=(16,))
    trainer = build_trainer(run_config, [counter], max_epochs=2, limit_train_batches=3)
    # Inherited per-batch no-ops are no longer callable, so Lightning passes them by ...
    assert counter.on_validation_batch_end is None
    assert counter.on_before_backward is None
    trainer.fit(build_module(config, run_config), datamodule=build_datamodule(config, run_config))
    # ... while the hooks the callback defines still run, per batch and per epoch.
    assert counter.train_batches == 6
    assert counter.val_epochs == 2
    assert trainer.state.finished


def test_cpu_only_trainer_stops_looking_for_the_nvidia_driver_every_step(
    run_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    if torch.cuda.is_available():
        pytest.skip("with a GPU the CUDA check is cached and stays NVML-based")
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # as importing Lightning sets it
    objective.build_trainer(run_config)
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "0"
    assert not torch.cuda.is_available()


def test_the_trial_loop_spares_long_lived_objects_yet_frees_each_trial(
    run_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During the loop imports, data and study are frozen out of collection; trials are not."""
    gc.unfreeze()  # whatever else this test process froze
    frozen: list[int] = []
    trainers: list[weakref.ref[pl.Trainer]] = []
    build = objective.build_trainer

    def spy(*args: Any, **kwargs: Any) -> pl.Trainer:
        trainer = build(*args, **kwargs)
        frozen.append(gc.get_freeze_count())
        trainers.append(weakref.ref(trainer))
        return trainer

    monkeypatch.setattr(objective, "build_trainer", spy)
    run = dataclasses.replace(run_config, n_trials=2, max_epochs=1)
    optimize(load_or_create(run), run)
    assert len(frozen) == 2 and min(frozen) > 10_000  # torch, Lightning, Optuna: not walked
    assert not any(ref() for ref in trainers)  # each trial's Trainer was still collected
    assert gc.get_freeze_count() == 0  # and the loop undid its freeze
