"""The live view: optuna-dashboard (the ``dashboard`` extra) serves a study made here."""

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

import optuna
import pytest

pytest.importorskip(
    "optuna_dashboard", reason='optuna-dashboard not installed: pip install -e ".[dashboard]"'
)

from fmnist_tuning.search_space import suggest_config

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


def _make_study(storage: str) -> optuna.Study:
    def objective(trial: optuna.Trial) -> float:
        config = suggest_config(trial)
        for epoch in range(2):
            trial.report(0.7 + 0.05 * epoch, epoch)
        return 0.8 + config.dropout / 10

    study = optuna.create_study(
        storage=storage, study_name="dash-test", direction="maximize", load_if_exists=False
    )
    study.optimize(objective, n_trials=3)
    return study


def test_dashboard_lists_the_study_and_its_trials(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = _make_study(storage)
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
        assert [t["number"] for t in detail["trials"]] == [0, 1, 2]
        assert [t["state"] for t in detail["trials"]] == ["Complete"] * 3
        assert detail["best_trials"][0]["number"] == study.best_trial.number
        assert detail["has_intermediate_values"] is True
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
