"""``benchmarks/benchmark.py`` runs on tiny data and prints its table (no timing is asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import VAL_SIZE
from tests.processes import ROOT

pytestmark = pytest.mark.integration

JSON_KEYS = {
    "epoch_s": {"dataloader", "dataloader_workers", "project", "raw"},
    "pruning": {"epochs_median", "epochs_none", "best_median", "best_none"},
    "memory": {"command", "growth_5_50_mb"},
}


def test_quick_benchmark_prints_its_table_and_writes_the_json_contract(
    fake_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    args = ["--data-dir", str(fake_data_dir), "--quick", "--repeats", "1", "--memory-trials", "1"]
    args += ["--val-size", str(VAL_SIZE), "--accelerator", "cpu", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "benchmark.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("speed-up (a)/(b)", "overhead (b)/(c)", "per-trial overhead", "peak RSS of"):
        assert f"| {row}" in proc.stdout
    result = json.loads(out.read_text())
    for key, inner in JSON_KEYS.items():
        assert inner <= set(result[key]), key
    for key in ("speedup_vs_dataloader", "overhead_vs_raw", "trial_overhead_s"):
        assert 0 < result[key]["min"] <= result[key]["median"] <= result[key]["max"]
    prune = result["pruning"]
    assert prune["pruned_none"] == 0 < prune["pruned_median"]  # the same study, pruned or not
    assert prune["epochs_none"] > prune["epochs_median"] > 0
    assert result["memory"]["command"]["peak"] > 100  # a whole fmnist-tune process, in MB


def test_benchmark_with_a_missing_data_dir_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "benchmark.py"), "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
