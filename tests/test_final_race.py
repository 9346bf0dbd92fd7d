"""Machines that finish a study together make its final model once: the real command, twice at
the same time, on one PostgreSQL study with one artifact store; and a holder killed mid-retrain."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import optuna
import pytest

from fmnist_tuning.keys import FINAL_MODEL
from tests.conftest import write_fake_fmnist
from tests.processes import Tune, pg_study, tune_args, wait_for

pytestmark = pytest.mark.integration

RETRAIN = "retraining trial"  # final/once.py's log line when it starts the retrain
SCORE = "on the official test set (once)"  # and when it scores the final model
WAITING = "is making its final model: waiting"  # and while another process holds the lock
LOCAL = ("checkpoint", "trial_checkpoint")  # each machine's own copy of the files


def _machines(data: Path, tmp_path: Path, url: str, name: str, *extra: str) -> list[Tune]:
    """Machines a and b: the same command, each with its own output dir, started together."""
    machines = []
    for m in "ab":
        args = tune_args(data, tmp_path / m, "--storage", url, "--study-name", name, *extra)
        args += ["--artifact-store", str(tmp_path / "bucket")]
        machines.append(Tune(args, tmp_path / f"{m}.log"))
    return machines


def _pause_the_retrainer(machines: list[Tune]) -> tuple[Tune, Tune]:
    """Stops (SIGSTOP) the machine that starts the retrain, so that it holds the lock mid-retrain
    however fast the retrain is, and waits for the other to wait for that lock.

    Returns:
        (the paused machine, the other one).
    """
    wait_for(lambda: any(RETRAIN in m.stderr for m in machines), 240, "a retrain")
    holder, other = machines if RETRAIN in machines[0].stderr else machines[::-1]
    os.kill(holder.proc.pid, signal.SIGSTOP)
    wait_for(lambda: WAITING in other.stderr, 60, "the other machine waiting for the lock")
    return holder, other


def _final_models(url: str, name: str) -> list[dict[str, object]]:
    attrs = optuna.load_study(study_name=name, storage=url).user_attrs
    return [value for key, value in attrs.items() if key.startswith(FINAL_MODEL)]


def _best(tmp_path: Path, machine: str) -> dict[str, object]:
    best = json.loads((tmp_path / machine / "best.json").read_text())
    return {k: v for k, v in best.items() if k not in LOCAL}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12,000 images: a trial of the (wide) starting configuration, and its retrain, take seconds."""
    return write_fake_fmnist(tmp_path_factory.mktemp("data"), n_train=12_000)


def test_two_machines_finishing_together_train_and_score_the_final_model_once(
    data: Path, tmp_path: Path
) -> None:
    # One trial: one machine trains it, the other waits for it, and both finish together.
    with pg_study() as (url, name):
        machines = _machines(data, tmp_path, url, name, "--n-trials", "1")
        holder, _ = _pause_the_retrainer(machines)  # they meet at the lock, however fast it is
        os.kill(holder.proc.pid, signal.SIGCONT)
        codes = [m.wait() for m in machines]
        logs = [m.stderr for m in machines]
        finals = _final_models(url, name)
        trials = optuna.load_study(study_name=name, storage=url).trials
    assert codes == [0, 0], logs
    assert len(trials) == 1, logs  # --n-trials is the study's total, across machines too
    assert sum(log.count(WAITING) for log in logs) == 1, logs
    assert sum(log.count(RETRAIN) for log in logs) == 1, logs
    assert sum(log.count(SCORE) for log in logs) == 1, logs
    assert len(finals) == 1
    assert _best(tmp_path, "a") == _best(tmp_path, "b")
    assert _best(tmp_path, "a")["test_acc"] == finals[0]["test_acc"]


def test_a_finalizer_killed_mid_retrain_is_taken_over_by_the_other_machine(
    data: Path, tmp_path: Path
) -> None:
    with pg_study() as (url, name):
        machines = _machines(data, tmp_path, url, name, "--n-trials", "1", "--max-epochs", "2")
        killed, other = _pause_the_retrainer(machines)
        assert RETRAIN not in other.stderr  # it waits while the holder trains
        os.kill(killed.proc.pid, signal.SIGKILL)
        assert killed.wait() == -signal.SIGKILL
        assert other.wait() == 0, other.stderr
        finals = _final_models(url, name)
    assert SCORE not in killed.stderr  # killed before its test pass
    assert other.stderr.count(RETRAIN) == 1 and other.stderr.count(SCORE) == 1
    assert len(finals) == 1
    best = json.loads((other.log.parent / other.log.stem / "best.json").read_text())
    assert best["test_acc"] == finals[0]["test_acc"]
