"""``benchmarks/measures.py`` runs on tiny data and prints its table (no figure is asserted here).

That each measure is in effect where a study runs is tested beside the code it speeds up: fused
optimizers in test_model.py, Triton kept out in test_runtime.py, the NVML check, gc.freeze and
malloc_trim in test_training.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import VAL_SIZE
from tests.processes import ROOT

pytestmark = pytest.mark.integration


def test_quick_measures_print_every_measure_and_write_their_json(
    train_only_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "measures.json"
    args = ["--data-dir", str(train_only_data_dir), "--val-size", str(VAL_SIZE), "--quick"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "measures.py"), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("fused optimizers", "gc.freeze", "Triton kept out", "malloc_trim"):
        assert f"| {name} |" in proc.stdout, name
    if "| no NVML lookup |" not in proc.stdout:  # measured only where no GPU is visible
        import torch

        assert torch.cuda.is_available()
    results = json.loads(out.read_text())
    assert {"fused", "gc_freeze", "triton", "malloc_trim"} <= results.keys()
    assert all(results[k]["on"] >= 0 for k in ("fused", "gc_freeze", "triton"))
