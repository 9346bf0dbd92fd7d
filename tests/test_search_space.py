"""Trial → TrialConfig, through optuna.trial.FixedTrial."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator

import optuna
import pytest

from fmnist_tuning.search.space import DEFAULT_PARAMS, GRID, suggest_config
from fmnist_tuning.training.recipe import TrialConfig

PARAMS = {
    "n_layers": 2,
    "n_units_l0": 512,
    "n_units_l1": 128,
    "dropout": 0.25,
    "batch_norm": True,
    "optimizer": "sgd",
    "lr_sgd": 0.05,
    "weight_decay": 1e-4,
    "batch_size": 256,
}


def test_fixed_trial_maps_to_expected_config() -> None:
    config = suggest_config(optuna.trial.FixedTrial(PARAMS))
    assert config == TrialConfig(
        hidden_sizes=(512, 128),
        dropout=0.25,
        batch_norm=True,
        optimizer="sgd",
        lr=0.05,
        weight_decay=1e-4,
        batch_size=256,
        label_smoothing=0.1,  # fixed choices, documented in the module
        scheduler="onecycle",
        flip=True,
    )


def test_each_optimizer_has_its_own_learning_rate() -> None:
    params = {**PARAMS, "optimizer": "adam", "lr_adam": 3e-3}
    del params["lr_sgd"]
    assert suggest_config(optuna.trial.FixedTrial(params)).lr == 3e-3
    with pytest.raises(ValueError):  # the SGD rate is not a valid Adam rate parameter
        suggest_config(optuna.trial.FixedTrial({**PARAMS, "optimizer": "adam"}))


def test_layer_count_decides_how_many_widths_are_used() -> None:
    config = suggest_config(optuna.trial.FixedTrial({**PARAMS, "n_layers": 1}))
    assert config.hidden_sizes == (512,)


@pytest.fixture(autouse=True)
def _out_of_range_is_an_error() -> Iterator[None]:
    """Optuna only warns for fixed values outside a distribution: make that fail the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        yield


def test_every_grid_point_lies_inside_the_search_space() -> None:
    keys = list(GRID)
    points = [dict(zip(keys, values, strict=True)) for values in itertools.product(*GRID.values())]
    assert len(points) == 16
    configs = {suggest_config(optuna.trial.FixedTrial(p)) for p in points}
    assert len(configs) == 16  # no grid point duplicates another


def test_default_params_are_a_point_of_the_search_space() -> None:
    config = suggest_config(optuna.trial.FixedTrial(DEFAULT_PARAMS))
    assert config.hidden_sizes == (1024, 640) and config.optimizer == "adamw"
    study = optuna.create_study()
    study.enqueue_trial(DEFAULT_PARAMS)
    trial = study.ask()
    assert suggest_config(trial) == config  # enqueued values are inside every range


def test_the_default_config_is_what_a_new_studys_first_trial_trains() -> None:
    assert TrialConfig() == suggest_config(optuna.trial.FixedTrial(DEFAULT_PARAMS))


def test_model_kwargs_match_the_module_signature() -> None:
    from fmnist_tuning.training.model import FashionMNISTClassifier

    module = FashionMNISTClassifier(**TrialConfig().model_kwargs())
    assert module.hparams["hidden_sizes"] == [1024, 640]
