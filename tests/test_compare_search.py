"""benchmarks/compare_search.py: the best value by each minute, and the time to a threshold."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from types import ModuleType

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import VAL_SIZE, load_script

START = dt.datetime(2026, 12, 1, 12, 0, 0)


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    return load_script("compare_search")


def _study(rows: list[tuple[TrialState, float | None, float, float]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for state, value, start_s, end_s in rows:
        trial = optuna.trial.create_trial(
            state=state,
            value=value,
            intermediate_values={0: 0.99} if state == TrialState.PRUNED else {},
        )
        trial.datetime_start = START + dt.timedelta(seconds=start_s)
        trial.datetime_complete = START + dt.timedelta(seconds=end_s)
        study.add_trial(trial)
    return study


def test_a_trial_counts_from_the_minute_it_finished_and_pruned_ones_never(
    compare: ModuleType,
) -> None:
    study = _study(
        [
            (TrialState.COMPLETE, 0.80, 0, 70),  # finished in minute 2
            (TrialState.PRUNED, None, 70, 80),  # its 0.99 is an intermediate value, not a result
            (TrialState.COMPLETE, 0.85, 80, 170),  # minute 3
            (TrialState.COMPLETE, 0.82, 170, 200),  # minute 4, not better
            (TrialState.COMPLETE, 0.90, 200, 400),  # past the 4-minute budget
        ]
    )
    assert compare.best_by_minute(study, 4) == [None, 0.80, 0.85, 0.85]


def test_the_time_to_a_threshold_is_when_a_finished_trial_first_reached_it(
    compare: ModuleType,
) -> None:
    study = _study(
        [
            (TrialState.COMPLETE, 0.89, 0, 30),
            (TrialState.PRUNED, None, 30, 40),  # 0.99 at a low rung: not a result
            (TrialState.COMPLETE, 0.905, 40, 95),
            (TrialState.COMPLETE, 0.91, 95, 100),
        ]
    )
    assert compare.seconds_to(study, 0.90) == 95
    assert compare.seconds_to(study, 0.91) == 100
    assert compare.seconds_to(study, 0.95) is None


def test_medians_over_seeds_rank_a_missing_value_on_the_right_side(compare: ModuleType) -> None:
    # a best value not found yet is the lowest; a threshold never reached is the latest
    assert compare.median([None, 0.8, 0.9], missing_is_high=False) == 0.8
    assert compare.median([None, None, 0.9], missing_is_high=False) is None
    assert compare.median([None, 30.0, 90.0], missing_is_high=True) == 90.0
    assert compare.median([None, None, 10.0], missing_is_high=True) is None
    assert compare.median([20.0, 40.0], missing_is_high=True) == 30.0
    rows = compare.summarize({"default": [[None, 0.8], [0.7, 0.9], [0.6, 0.7]]})
    assert [
        (r["minute"], r["seeds_with_a_result"], r["median"], r["min"], r["max"]) for r in rows
    ] == [
        (1, 2, 0.6, 0.6, 0.7),
        (2, 3, 0.8, 0.7, 0.9),
    ]


@pytest.mark.integration
def test_the_script_runs_the_real_command_per_setup_without_the_test_files(
    compare: ModuleType, train_only_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    args = ["--data-dir", str(train_only_data_dir), "--seeds", "0", "--timeout", "60",
            "--n-trials", "2", "--max-epochs", "2", "--val-size", str(VAL_SIZE), "--jobs", "2",
            "--output-dir", str(out)]  # fmt: skip
    assert compare.main(args) == 0
    with (out / "studies.csv").open() as f:
        studies = list(csv.DictReader(f))
    assert [(s["setup"], int(s["trials"])) for s in studies] == [("default", 2), ("tpe-median", 2)]
    for setup in ("default", "tpe-median"):
        best = json.loads((out / f"{setup}-seed0" / "best.json").read_text())
        assert best["test_acc"] is None and best["test_set"] == "not scored (--no-test)"
