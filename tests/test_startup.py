"""fmnist-tune keeps Triton (a GPU compiler) out of a process that has no CUDA device."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from fmnist_tuning.startup import KEEP_TRITON

# Runs the CLI's entry point as far as --help (which imports Lightning, and through torchmetrics
# torchvision and torch._dynamo), then reports what was imported.
PROBE = """
import json, sys
from fmnist_tuning import cli
try:
    cli.main(["--help"])
except SystemExit:
    pass
print(json.dumps({
    "lightning": "lightning.pytorch" in sys.modules,
    "triton": sys.modules.get("triton") is not None,
}))
"""


def probe(**env: str) -> dict[str, bool]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **env},  # no GPU, even on a GPU machine
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, bool] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["quiet"] = "triton" not in proc.stderr.lower()  # no warning about the missing Triton
    return result


needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed here"
)


@needs_triton
def test_cli_without_a_gpu_imports_lightning_but_not_triton() -> None:
    assert probe() == {"lightning": True, "triton": False, "quiet": True}


@needs_triton
def test_keep_triton_restores_torchs_own_imports() -> None:
    # Also shows that Lightning's import chain does bring Triton in, so the test above is not vacuous.
    assert probe(**{KEEP_TRITON: "1"}) == {"lightning": True, "triton": True, "quiet": True}
