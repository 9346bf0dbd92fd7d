"""benchmarks/compare_pruners.py: the best value found by each minute of a study's wall time."""

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
    return load_script("compare_pruners")


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


def test_summary_over_seeds_skips_seeds_without_a_result_yet(compare: ModuleType) -> None:
    rows = compare.summarize({"median": [[None, 0.8], [0.7, 0.9]]})
    assert [(r["minute"], r["seeds_with_a_result"], r["min"], r["max"]) for r in rows] == [
        (1, 1, 0.7, 0.7),
        (2, 2, 0.8, 0.9),
    ]
    assert rows[1]["mean"] == pytest.approx(0.85)


@pytest.mark.integration
def test_the_script_runs_the_real_command_per_pruner_without_the_test_files(
    compare: ModuleType, train_only_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    args = ["--data-dir", str(train_only_data_dir), "--seeds", "0", "--timeout", "60",
            "--n-trials", "2", "--max-epochs", "1", "--val-size", str(VAL_SIZE),
            "--output-dir", str(out)]  # fmt: skip
    assert compare.main(args) == 0
    with (out / "studies.csv").open() as f:
        studies = list(csv.DictReader(f))
    assert [(s["pruner"], int(s["complete"]) + int(s["pruned"])) for s in studies] == [
        ("median", 2),
        ("hyperband", 2),
    ]
    for pruner in ("median", "hyperband"):
        best = json.loads((out / f"{pruner}-seed0" / "best.json").read_text())
        assert best["test_acc"] is None and best["test_set"] == "not scored (--no-test)"
