"""The chaos soak: 4 workers on one PostgreSQL study, a random one SIGKILLed every few seconds and
replaced; no trial may be lost, duplicated or left RUNNING (benchmarks/chaos.py does the checks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import VAL_SIZE, load_script
from tests.processes import pg_url_or_skip

pytestmark = pytest.mark.integration


def test_random_sigkills_lose_no_trial(fake_data_dir: Path, tmp_path: Path) -> None:
    chaos = load_script("chaos")
    args = ["--storage", pg_url_or_skip(), "--data-dir", str(fake_data_dir)]
    args += ["--output-dir", str(tmp_path), "--val-size", str(VAL_SIZE), "--max-epochs", "1"]
    args += ["--trials", "40", "--workers", "4", "--kill-every", "4", "--timeout", "170"]
    code = chaos.main(args)
    figures = json.loads((tmp_path / "chaos.json").read_text())
    assert figures["problems"] == [] and code == 0, figures
    assert figures["finished"] == 40 and figures["kills"] >= 3, figures
    # Every killed trial is retried once, except one that was already its chain's last retry.
    expected = len(figures["killed_trials"]) - figures["retry_limit_reached"]
    assert figures["retries"] == expected, figures
