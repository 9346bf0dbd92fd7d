"""Training through Lightning, and pruning through Optuna, on tiny synthetic data."""

from __future__ import annotations

import dataclasses
import gc
import weakref
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from optuna.trial import TrialState

from fmnist_tuning import runtime
from fmnist_tuning.config import RunConfig
from fmnist_tuning.final.schedule import best_epoch
from fmnist_tuning.keys import VAL_ACC, VAL_CURVE
from fmnist_tuning.search import loop, objective, progress, states
from fmnist_tuning.search.loop import optimize
from fmnist_tuning.search.sampling import make_pruner
from fmnist_tuning.search.space import DEFAULT_PARAMS
from fmnist_tuning.search.study import load_or_create
from fmnist_tuning.training import trainer
from fmnist_tuning.training.model import OPTIMIZERS
from fmnist_tuning.training.recipe import TrialConfig
from fmnist_tuning.training.trainer import build_datamodule, build_module, build_trainer
from tests.conftest import FakeClock


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_fast_dev_run_trains_the_datamodule_and_module_pair_with_each_optimizer(
    run_config: RunConfig, optimizer: str
) -> None:
    config = TrialConfig(hidden_sizes=(32, 16), batch_norm=True, dropout=0.1, optimizer=optimizer)
    module = build_module(config)
    weights = [p for p in module.parameters() if p.dim() == 2]  # (a bias before BN gets no grad)
    before = [w.detach().clone() for w in weights]
    fit = build_trainer(run_config, fast_dev_run=True)
    fit.fit(module, datamodule=build_datamodule(config, run_config))
    assert fit.state.finished and fit.global_step == 1
    assert VAL_ACC in fit.callback_metrics
    assert all(not torch.equal(b, w.detach()) for b, w in zip(before, weights, strict=True))


def test_a_few_epochs_learn_the_synthetic_classes(run_config: RunConfig) -> None:
    config = TrialConfig(hidden_sizes=(64,), optimizer="adam", lr=3e-3, batch_size=32)
    run = dataclasses.replace(run_config, max_epochs=3)
    fit = build_trainer(run)
    fit.fit(build_module(config), datamodule=build_datamodule(config, run))
    assert float(fit.callback_metrics[VAL_ACC]) > 0.5  # chance is 0.1


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
    run = dataclasses.replace(
        run_config, n_trials=7, max_epochs=5, early_stopping=5, pruner="median"
    )
    study = _enqueued_study(run, bad=2)
    states = [t.state for t in study.trials]
    assert states[:5] == [TrialState.COMPLETE] * 5
    assert states[5:] == [TrialState.PRUNED] * 2
    # pruned after the warm-up (epochs 0-1 are never pruned), before the last epoch
    assert all(3 <= t.user_attrs["epochs"] < 5 for t in study.trials[5:])


def _after_rivals(
    run: RunConfig, params: dict[str, Any], rung_value: float, second: float | None = None
) -> optuna.trial.FrozenTrial:
    """Runs one trial after three finished rivals scored ``rung_value`` at the first rung (and
    ``second`` at the second, after epoch 4)."""
    study = load_or_create(run)
    rungs = {"completed_rung_0": rung_value}
    if second is not None:
        rungs["completed_rung_1"] = second
    for _ in range(3):
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.PRUNED,
                intermediate_values=dict.fromkeys(range(4), rung_value),
                system_attrs=rungs,
            )
        )
    study.enqueue_trial(params)
    optimize(study, run)
    return study.trials[-1]


def test_successive_halving_stops_a_trial_at_its_first_rung_when_rivals_did_better(
    run_config: RunConfig,
) -> None:
    run = dataclasses.replace(run_config, n_trials=4, max_epochs=5, early_stopping=5, pruner="asha")
    trial = _after_rivals(run, BAD, rung_value=0.9)  # BAD is near chance after two epochs
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["epochs"] == 2  # the first rung: after the second epoch
    assert states.rungs(trial) == 1
    assert "rung=1" in progress.describe(trial)


def test_successive_halving_lets_the_best_at_a_rung_train_on_to_the_full_budget(
    run_config: RunConfig,
) -> None:
    run = dataclasses.replace(run_config, n_trials=4, max_epochs=5, early_stopping=5, pruner="asha")
    trial = _after_rivals(run, GOOD, rung_value=0.0)  # the top third at the rung: promoted
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["epochs"] == 5  # through the second rung (after epoch 4) to the end
    assert states.rungs(trial) == 2


def test_successive_halving_never_prunes_a_trial_at_its_last_epoch(run_config: RunConfig) -> None:
    # the second rung falls on the last of 4 epochs; rivals did better there
    run = dataclasses.replace(run_config, n_trials=4, max_epochs=4, early_stopping=5, pruner="asha")
    trial = _after_rivals(run, GOOD, rung_value=0.0, second=1.0)
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["epochs"] == 4


def test_pruner_none_lets_every_trial_finish(run_config: RunConfig, tmp_path: Path) -> None:
    run = dataclasses.replace(run_config, n_trials=6, max_epochs=4, early_stopping=5, pruner="none")
    study = _enqueued_study(run, bad=1)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len(study.trials[-1].intermediate_values) == 4  # still reported: curves for the plots


def test_no_trainer_outlives_its_trial(run_config: RunConfig) -> None:
    """The study frees each trial: no Trainer survives it."""
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
        callbacks=[live_trainers],
    )
    assert len(seen) == 2 and all(t.state == TrialState.COMPLETE for t in study.trials)


def test_the_trial_loop_hands_each_trials_freed_heap_back(
    run_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims: list[int] = []
    monkeypatch.setattr(runtime, "_MALLOC_TRIM", trims.append)
    run = dataclasses.replace(run_config, max_epochs=1, n_trials=3, warm_start=False)
    optimize(load_or_create(run), run)
    assert trims == [0, 0, 0]


def _count_nvml_lookups(monkeypatch: pytest.MonkeyPatch, steps: int) -> int:
    """How often ``steps`` Adam steps look for NVIDIA's driver library (libnvidia-ml)."""
    lookups = [0]
    nvml = torch.cuda._device_count_nvml

    def counting() -> int:
        lookups[0] += 1
        return nvml()

    monkeypatch.setattr(torch.cuda, "_device_count_nvml", counting)
    weights = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.Adam([weights])
    for _ in range(steps):
        weights.sum().backward()
        optimizer.step()
    return lookups[0]


def test_a_set_up_process_without_a_gpu_stops_looking_for_the_driver_every_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if torch.cuda.is_available():
        pytest.skip("with a GPU the CUDA check is cached after CUDA starts")
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # as importing Lightning sets it
    assert _count_nvml_lookups(monkeypatch, 5) >= 5  # without the set-up: once a step or more
    runtime.skip_nvml_checks()
    assert _count_nvml_lookups(monkeypatch, 5) == 0
    assert not torch.cuda.is_available()


def test_the_trial_loop_spares_long_lived_objects_yet_frees_each_trial(
    run_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During the loop imports, data and study are frozen out of collection; trials are not."""
    gc.unfreeze()  # whatever else this test process froze
    frozen: list[int] = []
    trainers: list[weakref.ref[pl.Trainer]] = []
    build = trainer.build_trainer

    def spy(*args: Any, **kwargs: Any) -> pl.Trainer:
        built = build(*args, **kwargs)
        frozen.append(gc.get_freeze_count())
        trainers.append(weakref.ref(built))
        return built

    monkeypatch.setattr(objective, "build_trainer", spy)
    run = dataclasses.replace(run_config, n_trials=2, max_epochs=1)
    optimize(load_or_create(run), run)
    assert len(frozen) == 2 and min(frozen) > 10_000  # torch, Lightning, Optuna: not walked
    assert not any(ref() for ref in trainers)  # each trial's Trainer was still collected
    assert gc.get_freeze_count() == 0  # and the loop undid its freeze


def test_hyperband_scores_its_first_rung_after_the_second_epoch() -> None:
    study = optuna.create_study(direction="maximize", pruner=make_pruner("hyperband", 9))
    pruned_at = []
    for i in range(60):
        trial = study.ask()
        for step in range(9):  # epoch indices, as the pruning callback reports them
            trial.report(1 - i / 100, step)  # each trial worse than every one before it
            if trial.should_prune():
                pruned_at.append(step)
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            study.tell(trial, 1 - i / 100)
    assert min(pruned_at) == 1  # after epoch 2 (step 1): never after the first epoch alone


def test_the_search_timeout_starts_no_trial_after_it_as_optunas_timeout(
    run_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()  # the trial loop's clock: 10 s pass in every trial
    monkeypatch.setattr(loop, "time", clock)
    run = dataclasses.replace(run_config, n_trials=50, max_epochs=1, search_timeout=25)

    class TenSeconds(objective.Objective):
        def __call__(self, trial: optuna.Trial) -> Any:
            clock.now += 10
            return super().__call__(trial)

    study = load_or_create(run)
    optimize(study, run, objective=TenSeconds(run))
    assert len(study.trials) == 3  # started at 0, 10 and 20 s; at 30 s the deadline had passed


def test_early_stopping_ends_a_trial_its_patience_after_its_best_epoch(
    run_config: RunConfig,
) -> None:
    run = dataclasses.replace(run_config, n_trials=1, max_epochs=8, early_stopping=1, pruner="none")
    study = load_or_create(run)
    study.enqueue_trial(DEFAULT_PARAMS)
    optimize(study, run)
    (trial,) = study.trials
    curve = trial.user_attrs[VAL_CURVE]
    assert trial.state == TrialState.COMPLETE and len(curve) < run.max_epochs
    assert len(curve) == best_epoch(curve) + run.early_stopping  # no gain in the last epoch
