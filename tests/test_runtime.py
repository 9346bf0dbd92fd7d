"""The entry points' process set-up: Triton (a GPU compiler) stays out of a process with no GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fmnist_tuning.runtime import KEEP_TRITON
from tests.conftest import N_TRAIN

pytestmark = pytest.mark.integration

# Runs fmnist-tune's entry point with a validation split as large as the tiny data set: it sets the
# process up, imports Lightning (and through torchmetrics torchvision and torch._dynamo), decodes
# the data, then exits 2 on the split. Reports what was imported.
PROBE = """
import json, sys
from fmnist_tuning import cli
argv = ["--data-dir", sys.argv[1], "--output-dir", sys.argv[2], "--val-size", sys.argv[3]]
code = cli.main(argv)
print(json.dumps({
    "exit": code,
    "lightning": "lightning.pytorch" in sys.modules,
    "triton": sys.modules.get("triton") is not None,
}))
"""


def probe(data_dir: Path, tmp_path: Path, **env: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(data_dir), str(tmp_path / "out"), str(N_TRAIN)],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **env},  # no GPU, even on a GPU machine
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    others = [line for line in proc.stderr.splitlines() if not line.startswith("fmnist-tune:")]
    result["quiet"] = "triton" not in "".join(others).lower()  # no warning about a missing Triton
    return result


needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed here"
)


@needs_triton
def test_cli_without_a_gpu_imports_lightning_but_not_triton(
    fake_data_dir: Path, tmp_path: Path
) -> None:
    assert probe(fake_data_dir, tmp_path) == {
        "exit": 2,
        "lightning": True,
        "triton": False,
        "quiet": True,
    }


@needs_triton
def test_keep_triton_restores_torchs_own_imports(fake_data_dir: Path, tmp_path: Path) -> None:
    # Also shows that Lightning's import chain does bring Triton in, so the test above is not vacuous.
    expected = {"exit": 2, "lightning": True, "triton": True, "quiet": True}
    assert probe(fake_data_dir, tmp_path, **{KEEP_TRITON: "1"}) == expected
