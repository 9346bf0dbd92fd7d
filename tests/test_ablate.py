"""benchmarks/ablate.py: each variant changes its piece of the recipe, and only while it runs."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from types import ModuleType

import optuna
import pytest

from fmnist_tuning.search import objective
from fmnist_tuning.search.space import DEFAULT_PARAMS, suggest_config
from fmnist_tuning.training.recipe import TrialConfig
from tests.conftest import VAL_SIZE, load_script


@pytest.fixture(scope="module")
def ablate() -> ModuleType:
    return load_script("ablate")


def _default_trial() -> TrialConfig:
    return suggest_config(optuna.trial.FixedTrial(DEFAULT_PARAMS))


@pytest.mark.parametrize(
    ("variant", "field", "value"),
    [("no_flip", "flip", False), ("no_smoothing", "label_smoothing", 0.0),
     ("no_onecycle", "scheduler", "none")],
)  # fmt: skip
def test_a_variant_changes_one_piece_of_every_suggested_trial(
    ablate: ModuleType, variant: str, field: str, value: object
) -> None:
    before = _default_trial()
    with ablate.recipe(variant):
        changed = _default_trial()
    assert getattr(changed, field) == value != getattr(before, field)
    assert dataclasses.replace(changed, **{field: getattr(before, field)}) == before
    assert _default_trial() == before  # restored afterwards


def test_a_lever_of_the_final_recipe_is_set_on_what_the_objective_trains(
    ablate: ModuleType,
) -> None:
    def trained() -> TrialConfig:
        return objective.suggest_config(optuna.trial.FixedTrial(DEFAULT_PARAMS))

    with ablate.recipe("shift_2"):
        assert trained() == dataclasses.replace(_default_trial(), shift=2)
    assert trained().shift == 0  # restored afterwards


def test_base_is_the_recipe_every_study_trains(ablate: ModuleType) -> None:
    with ablate.recipe("base"):
        assert _default_trial() == TrialConfig()


@pytest.mark.integration
def test_script_writes_one_row_per_variant_and_seed(
    ablate: ModuleType, train_only_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ablate.csv"
    args = ["--data-dir", str(train_only_data_dir), "--variants", "base", "no_flip", "--seeds", "0", "1",
            "--max-epochs", "2", "--val-size", str(VAL_SIZE), "--output", str(out)]  # fmt: skip
    assert ablate.main(args) == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], r["seed"]) for r in rows] == [
        ("base", "0"), ("no_flip", "0"), ("base", "1"), ("no_flip", "1")
    ]  # fmt: skip
    for r in rows:
        assert 1 <= int(r["best_epoch"]) <= 2
        assert 0.0 <= float(r["last_val_acc"]) <= float(r["best_val_acc"]) <= 1.0


def test_missing_data_is_one_line_and_exit_2(
    ablate: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ablate.main(["--data-dir", str(tmp_path), "--output", str(tmp_path / "a.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Fashion-MNIST files" in err
    assert not (tmp_path / "a.csv").exists()
