"""benchmarks/compare_samplers.py: grid, random and TPE on one box of the search space, same budget."""

from __future__ import annotations

import csv
from pathlib import Path
from types import ModuleType

import optuna
import pytest

from fmnist_tuning.search.sampling import make_sampler
from fmnist_tuning.search.space import GRID, suggest_config
from tests.conftest import VAL_SIZE, load_script


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    return load_script("compare_samplers")


@pytest.mark.parametrize("sampler", ["random", "tpe", "grid"])
def test_every_sampler_stays_inside_the_box_spanned_by_the_grid(
    compare: ModuleType, sampler: str
) -> None:
    study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, 0))
    study.optimize(lambda t: float(suggest_config(compare.BoxTrial(t, GRID)).dropout), n_trials=12)
    for trial in study.trials:
        for name, value in trial.params.items():
            if isinstance(value, str | bool):
                assert value in GRID[name], (name, value)
            else:
                assert min(GRID[name]) <= value <= max(GRID[name]), (name, value)
    distinct = {t.params["dropout"] for t in study.trials}
    # the grid only ever tries the box's corners; random and TPE explore inside it
    assert distinct <= set(GRID["dropout"]) if sampler == "grid" else len(distinct) > 2


def test_best_so_far_never_decreases(compare: ModuleType) -> None:
    study = optuna.create_study(direction="maximize")
    for value in (0.5, 0.7, 0.6, 0.9, 0.8):
        study.add_trial(optuna.trial.create_trial(value=value))
    assert compare.best_so_far(study) == [0.5, 0.7, 0.7, 0.9, 0.9]


@pytest.mark.integration
def test_script_writes_plot_and_tables_for_all_three_samplers(
    compare: ModuleType, train_only_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    args = [
        "--data-dir", str(train_only_data_dir), "--n-trials", "2", "--seeds", "2",
        "--max-epochs", "1", "--val-size", str(VAL_SIZE), "--accelerator", "cpu",
        "--output-dir", str(out),
    ]  # fmt: skip
    assert compare.main(args) == 0
    assert (out / "best_so_far.png").read_bytes()[:4] == b"\x89PNG"
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["sampler"] for r in rows] == ["grid", "random", "tpe"]
    assert all(r["seeds"] == "2" and float(r["seconds_per_study"]) > 0 for r in rows)
    assert all(0.0 <= float(r["best_min"]) <= float(r["best_max"]) <= 1.0 for r in rows)
    with (out / "trials.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3 * 2 * 2
    table = (out / "results.md").read_text()
    assert table.count("\n| ") == 1 + 3 and "wall time" in table
