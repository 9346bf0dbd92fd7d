"""Deployment budgets: constraints mark the trials over budget, which stop before (or soon after)
they train; the best trial is the best one within the budget; a study keeps its budget."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fmnist_tuning.api import load_result
from fmnist_tuning.cli import main
from fmnist_tuning.config import RunConfig
from fmnist_tuning.final import finalize
from fmnist_tuning.keys import (
    EPOCHS,
    LATENCY_MS,
    PARAMS,
    RUN_SETTINGS,
    TENSORBOARD_DIR,
    trial_name,
)
from fmnist_tuning.search.budget import count_params
from fmnist_tuning.search.front import RULE_BUDGET, RULE_KNEE, choose
from fmnist_tuning.search.loop import optimize
from fmnist_tuning.search.space import BUDGET_UNITS_RANGE, DEFAULT_PARAMS
from fmnist_tuning.search.study import load_or_create
from fmnist_tuning.settings import SMALLEST_NET_PARAMS
from fmnist_tuning.training.recipe import TrialConfig
from fmnist_tuning.training.trainer import build_module
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

    result = finalize.finalize(study, run)
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
        ["--max-latency-ms", "inf"],
        ["--max-params", "12000"],  # below the smallest network there is
        ["--objectives", "accuracy,params", "--max-latency-ms", "1"],
        ["--objectives", "accuracy,latency", "--max-params", "100000"],
        ["--objectives", "speed"],
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
        ({"objectives": "accuracy,params"}, ["--objectives", "accuracy,latency"]),
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
    assert len(err) == 1 and ("budget" in err[0] or "--objectives" in err[0]), err
    assert not load_or_create(run).trials  # nothing ran


@pytest.mark.integration
@pytest.mark.parametrize("objectives", ["accuracy,params", "accuracy,latency"])
def test_a_front_study_writes_its_front_and_makes_the_chosen_trials_model(
    objectives: str, fake_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = tune_args(fake_data_dir, out, "--objectives", objectives, "--n-trials", "4")
    assert main([*args, "--max-epochs", "2", "--sampler", "random"]) == 0
    best = json.loads((out / "best.json").read_text())
    result = load_result(out)
    study = result.study
    assert len(study.directions) == 2 and best["objectives"] == objectives
    front_numbers = {t.number for t in study.best_trials}
    assert [row["trial"] for row in result.pareto] == [row["trial"] for row in best["pareto"]]
    assert {row["trial"] for row in result.pareto} == front_numbers
    assert best["trial"] in front_numbers and best["chosen_by"] == RULE_KNEE
    assert best["test_acc"] is not None  # the chosen trial's model, scored once
    assert all(t.state == TrialState.COMPLETE for t in study.trials)  # no pruning in a front
    assert (out / "plots" / "pareto_front.html").is_file()
    assert 'id="figure-pareto_front"' in (out / "report.html").read_text()


def _front_study(
    values: list[tuple[float, float]], settings: dict[str, Any], over: tuple[bool, ...] = ()
) -> optuna.Study:
    """An in-memory front study of trials with these (accuracy, cost) values, some over budget."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr(RUN_SETTINGS, settings)
    for i, (acc, cost) in enumerate(values):
        constraint = {"constraints:params": 1.0 if i < len(over) and over[i] else -1.0}
        study.add_trial(optuna.trial.create_trial(values=[acc, cost], system_attrs=constraint))
    return study


def test_the_knee_is_the_front_trial_nearest_the_ideal_point() -> None:
    # Scaled over the front (costs on a log scale): (0, 1), (0.25, 0.5), (1, 0) from the ideal.
    study = _front_study(
        [(0.90, 1e6), (0.89, 1e5), (0.86, 1e4), (0.85, 1e6)],
        {"objectives": "accuracy,params", "max_params": None},
    )
    trial, rule = choose(study)
    assert (trial.number, rule) == (1, RULE_KNEE)


def test_with_a_budget_the_most_accurate_front_trial_within_it_is_chosen() -> None:
    study = _front_study(
        [(0.90, 1e6), (0.89, 1e5), (0.86, 1e4)],
        {"objectives": "accuracy,params", "max_params": 200_000},
        over=(True, False, False),  # as Trial.set_constraint records it
    )
    trial, rule = choose(study)
    assert (trial.number, rule) == (1, RULE_BUDGET)


def test_the_smallest_network_the_settings_know_is_the_search_spaces() -> None:
    smallest = TrialConfig(hidden_sizes=(BUDGET_UNITS_RANGE[0],), batch_norm=False)
    assert count_params(build_module(smallest)) == SMALLEST_NET_PARAMS
