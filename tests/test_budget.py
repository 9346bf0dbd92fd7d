"""Deployment budgets: constraints mark the trials over budget, which stop before (or soon after)
they train; the best trial is the best one within the budget; a study keeps its budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fmnist_tuning import final
from fmnist_tuning.cli import main
from fmnist_tuning.config import RunConfig
from fmnist_tuning.keys import EPOCHS, LATENCY_MS, PARAMS, TENSORBOARD_DIR, trial_name
from fmnist_tuning.loop import optimize
from fmnist_tuning.search_space import DEFAULT_PARAMS
from fmnist_tuning.study import load_or_create
from tests.processes import tune_args

SMALL = {
    "n_layers": 1,
    "n_units_l0": 32,
    "dropout": 0.0,
    "batch_norm": False,
    "optimizer": "adam",
    "lr_adam": 3e-3,
    "weight_decay": 1e-6,
    "batch_size": 128,
}  # fmt: skip  (784*32 + 32 + 32*10 + 10 = 25,450 parameters)


def _study(run: RunConfig, *trials: dict[str, Any]) -> optuna.Study:
    """A study of these enqueued trials, run."""
    study = load_or_create(run)
    for params in trials:
        study.enqueue_trial(params)
    optimize(study, dataclasses.replace(run, n_trials=len(trials)))
    return study


@pytest.mark.integration
def test_a_parameter_budget_stops_bigger_nets_before_they_train(run_config: RunConfig) -> None:
    run = dataclasses.replace(run_config, max_params=50_000)
    study = _study(run, DEFAULT_PARAMS, SMALL)  # 1.47M parameters, then 25k
    big, small = study.trials
    assert big.state == TrialState.PRUNED and big.user_attrs[EPOCHS] == 0  # never trained
    assert big.user_attrs[PARAMS] > run.max_params and big.constraints[PARAMS] > 0  # TPE sees it
    assert not (run.output_dir / TENSORBOARD_DIR / trial_name(big.number)).exists()
    assert small.state == TrialState.COMPLETE and small.user_attrs[PARAMS] <= run.max_params
    assert small.constraints[PARAMS] <= 0

    result = final.finalize(study, run)
    assert result is not None and result["trial"] == small.number
    assert result["budget"] == {"max_params": 50_000, "max_latency_ms": None}
    assert result["feasible"] and result["n_params"] == small.user_attrs[PARAMS]


@pytest.mark.integration
@pytest.mark.parametrize("limit_ms, fits", [(1e-6, False), (1e3, True)])
def test_a_latency_budget_is_measured_after_the_first_epoch(
    run_config: RunConfig, limit_ms: float, fits: bool
) -> None:
    run = dataclasses.replace(run_config, max_latency_ms=limit_ms, max_epochs=3)
    (trial,) = _study(run, SMALL).trials
    assert trial.user_attrs[LATENCY_MS] > 0
    assert (trial.constraints[LATENCY_MS] <= 0) == fits
    if fits:
        assert trial.state == TrialState.COMPLETE and trial.user_attrs[EPOCHS] == 3
    else:
        assert trial.state == TrialState.PRUNED and trial.user_attrs[EPOCHS] == 1
    events = EventAccumulator(str(run.output_dir / TENSORBOARD_DIR / trial_name(trial.number)))
    events.Reload()
    logged = events.Scalars(LATENCY_MS)[-1].value  # after the HParams entry's placeholder
    assert logged == pytest.approx(trial.user_attrs[LATENCY_MS])


@pytest.mark.parametrize(
    "flags",
    [
        ["--max-params", "0"],
        ["--max-params", "-100"],
        ["--max-params", "small"],
        ["--max-latency-ms", "0"],
        ["--max-latency-ms", "-1.5"],
        ["--max-latency-ms", "fast"],
        ["--max-latency-ms", "nan"],
    ],
)
def test_bad_budgets_exit_2_with_one_line(
    flags: list[str], fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(tune_args(fake_data_dir, tmp_path / "out", *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fmnist-tune: error:"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "before, after",
    [
        ({"max_params": 50_000}, ["--max-params", "60000"]),
        ({"max_params": 50_000}, []),
        ({}, ["--max-latency-ms", "0.5"]),
    ],
)
def test_a_study_is_resumed_only_with_its_own_budget(
    before: dict[str, Any],
    after: list[str],
    run_config: RunConfig,
    fake_data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = dataclasses.replace(run_config, **before)
    load_or_create(run)  # the study records its budget
    args = tune_args(fake_data_dir, run.output_dir, "--max-epochs", str(run.max_epochs), *after)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "budget" in err[0], err
    assert not load_or_create(run).trials  # nothing ran
