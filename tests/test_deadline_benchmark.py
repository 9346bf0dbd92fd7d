"""benchmarks/deadline.py: the default against no search at one deadline, on validation only."""

from __future__ import annotations

import csv
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import VAL_SIZE, load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("deadline")


@pytest.mark.integration
def test_each_variant_gets_a_row_within_its_deadline_without_the_test_set(
    bench: ModuleType, train_only_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "deadline.csv"
    args = ["--data-dir", str(train_only_data_dir), "--timeouts", "40", "--seeds", "0",
            "--variants", "default", "no_search", "--val-size", str(VAL_SIZE),
            "--output", str(out)]  # fmt: skip
    assert bench.main(args) == 0  # the data folder has no test files: none was read
    with out.open() as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"default", "no_search"}
    assert rows["no_search"]["trials"] == "1"
    for row in rows.values():
        assert 0.0 < float(row["final_val_acc"]) <= 1.0
        assert float(row["wall_s"]) <= 40  # the final stage fitted the deadline


def test_missing_data_is_one_line_and_exit_2(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(["--data-dir", str(tmp_path), "--output", str(tmp_path / "d.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Fashion-MNIST files" in err
    assert not (tmp_path / "d.csv").exists()
