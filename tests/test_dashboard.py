"""The live view: optuna-dashboard (the ``dashboard`` extra) serves a study ``fmnist-tune`` made."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "optuna_dashboard", reason='optuna-dashboard not installed: pip install -e ".[dashboard]"'
)

import fmnist_tuning
from tests.conftest import VAL_SIZE

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _dashboard_command() -> list[str]:
    script = Path(sys.executable).with_name("optuna-dashboard")
    if script.is_file():
        return [str(script)]
    found = shutil.which("optuna-dashboard")
    if found is None:
        pytest.skip("the optuna-dashboard command is not on PATH")
    return [found]


def test_dashboard_lists_the_study_and_its_trials(fake_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = fmnist_tuning.tune(
        data_dir=fake_data_dir, output_dir=out, study_name="dash-test", n_trials=2,
        max_epochs=2, val_size=VAL_SIZE, accelerator="cpu", test=False,
    )  # fmt: skip
    study = result.study
    storage = f"sqlite:///{out / 'study.db'}"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*_dashboard_command(), storage, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        summaries: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"optuna-dashboard exited early: {server.communicate()[0][-2000:]}")
            try:
                summaries = _get(f"{base}/api/studies")["study_summaries"]
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        assert [s["study_name"] for s in summaries] == ["dash-test"]
        detail = _get(f"{base}/api/studies/{summaries[0]['study_id']}")
        shown = detail["trials"]
        assert [t["number"] for t in shown] == [t.number for t in study.trials]
        assert [t["state"] for t in shown] == [t.state.name.capitalize() for t in study.trials]
        assert detail["best_trials"][0]["number"] == study.best_trial.number
        assert detail["has_intermediate_values"] is True
        for ours, theirs in zip(study.trials, shown, strict=True):  # what the project records
            assert {p["name"] for p in theirs["params"]} == set(ours.params)
            assert {a["key"] for a in theirs["user_attrs"]} >= {"epochs", "worker", "val_curve"}
            assert len(theirs["intermediate_values"]) == len(ours.intermediate_values)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
