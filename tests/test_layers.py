"""The package's layers hold (pyproject.toml's import-linter contracts), and a broken one fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration  # runs lint-imports in a subprocess

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package in ``tree`` (found first on the path, before the installed one)."""
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}  # the tree first; the tests' network guard kept
    return subprocess.run(
        [str(LINT_IMPORTS)], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "fmnist_tuning", tmp_path / "fmnist_tuning")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_package_keeps_its_contracts() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("training/model.py", "from fmnist_tuning.final import results", "Layers"),
        ("cluster/locks.py", "from fmnist_tuning.training import data", "Layers"),
        ("search/space.py", "from fmnist_tuning.report import page", "Layers"),
        ("training/data.py", "import optuna", "knows nothing of Optuna"),
        ("keys.py", "import harness", "nothing of the measurement scripts"),
    ],
)
def test_a_broken_contract_fails(tmp_path: Path, module: str, line: str, contract: str) -> None:
    tree = copy_of_the_package(tmp_path)
    with (tree / "fmnist_tuning" / module).open("a") as f:
        f.write(f"\n{line}  # noqa\n")
    done = lint_imports(tree)
    assert done.returncode != 0, done.stdout
    broken = [row for row in done.stdout.splitlines() if row.endswith(" BROKEN")]
    assert any(contract in row for row in broken), done.stdout
