"""Several worker processes on one study: the total is exact, storages hold, killed workers' trials
are retried. Real processes, real signals, a real PostgreSQL server (skipped without one, except
under CI)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from fmnist_tuning import load_result
from fmnist_tuning.cli import main
from tests.conftest import synthetic_split
from tests.processes import (
    FINISHED,
    Tune,
    pg_study,
    started,
    tune_args,
    wait_for,
)

pytestmark = pytest.mark.integration


def _assert_exact_total(storage: str, study_name: str, total: int, log: str) -> None:
    study = optuna.load_study(study_name=study_name, storage=storage)
    states = [t.state for t in study.trials]
    assert sum(s in FINISHED for s in states) == total, states
    assert TrialState.RUNNING not in states and TrialState.FAIL not in states, states
    assert "database is locked" not in log and "Traceback" not in log
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) >= 2, f"the trials ran in {workers}, not in several processes"
    assert study.user_attrs["worker_slots"] == 4  # four sampler seeds: seed + 0 … seed + 3


# The parent runs in this process (its imports are paid already); its 4 workers are processes.


def test_four_workers_on_sqlite_run_exactly_the_total(
    fake_data_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(tune_args(fake_data_dir, out, "--workers", "4", "--n-trials", "20")) == 0
    _assert_exact_total(f"sqlite:///{out / 'study.db'}", "fmnist-mlp", 20, capfd.readouterr().err)
    assert (out / "best.json").is_file()


def test_four_workers_on_postgresql_run_exactly_the_total(
    fake_data_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pg_study() as (url, name):
        args = tune_args(fake_data_dir, tmp_path / "out", "--workers", "4", "--n-trials", "20")
        assert main([*args, "--storage", url, "--study-name", name]) == 0
        _assert_exact_total(url, name, 20, capfd.readouterr().err)


def test_sigkilled_worker_trial_is_failed_and_retried_on_resume(
    fake_data_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    storage = f"sqlite:///{out / 'study.db'}"
    # Trials of 15 epochs (no early stop, no pruning) so that the kill lands inside one.
    args = tune_args(fake_data_dir, out, "--n-trials", "3", "--pruner", "none")
    args += ["--max-epochs", "15", "--early-stopping", "15"]
    args += ["--heartbeat-interval", "1", "--grace-period", "2"]
    with Tune(args, tmp_path / "killed.log") as worker:  # --workers 1: it is the worker
        wait_for(
            lambda: (t := started(storage, "fmnist-mlp", min_epochs=2)) and t.number > 0,
            240,
            "trial 1 in its third epoch",
        )
        os.kill(worker.proc.pid, signal.SIGKILL)
        assert worker.wait() == -signal.SIGKILL
    before = optuna.load_study(study_name="fmnist-mlp", storage=storage).trials
    (zombie,) = [t for t in before if t.state == TrialState.RUNNING]  # nobody told the storage
    complete_before = {t.number: t for t in before if t.state == TrialState.COMPLETE}
    assert complete_before

    assert main(args) == 0  # resume: the restarted worker fails the zombie and retries it
    trials = optuna.load_study(study_name="fmnist-mlp", storage=storage).trials
    assert trials[zombie.number].state == TrialState.FAIL
    retries = [
        t
        for t in trials
        if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == zombie.number
    ]
    assert len(retries) == 1 and retries[0].state in FINISHED
    assert retries[0].params == zombie.params
    for number, trial in complete_before.items():  # every earlier COMPLETE trial is intact
        assert trials[number].state == TrialState.COMPLETE
        assert trials[number].value == trial.value
        assert trials[number].datetime_complete == trial.datetime_complete
    assert sum(t.state in FINISHED for t in trials) == 3
    assert not any(t.state == TrialState.RUNNING for t in trials)
    assert "Traceback" not in (tmp_path / "killed.log").read_text() + capfd.readouterr().err


def test_two_machines_without_a_shared_disk_finalize_to_the_same_best_json(
    fake_data_dir: Path, tmp_path: Path
) -> None:
    """Two output dirs (two machines' disks), one PostgreSQL study, one artifact store."""
    store = tmp_path / "bucket"
    with pg_study() as (url, name):

        def run(out: Path, total: int, *extra: str) -> dict[str, object]:
            args = tune_args(fake_data_dir, out, "--n-trials", str(total), "--no-warm-start")
            args += ["--storage", url, "--study-name", name, "--artifact-store", str(store)]
            assert main([*args, *extra]) == 0
            return json.loads((out / "best.json").read_text())

        run(tmp_path / "a", 2)  # machine a runs the first half of the trials
        from_b = run(tmp_path / "b", 4)  # b the second half, then finalizes all four
        from_a = run(tmp_path / "a", 4)  # a finalizes again: nothing left to train, b's model
        # A third machine asks for another final model: it gets b's, from the store, unscored.
        from_c = run(tmp_path / "c", 4, "--no-retrain")
        trials = optuna.load_study(study_name=name, storage=url).trials
        result = load_result(
            tmp_path / "a", storage=url, study_name=name, artifact_store=str(store)
        )
        labels = result.predict(synthetic_split(50, seed=2)[0])
    local = ("checkpoint", "trial_checkpoint")  # each machine's own copy of the files
    shared = [
        {k: v for k, v in best.items() if k not in local} for best in (from_a, from_b, from_c)
    ]
    assert shared[0] == shared[1] == shared[2]  # test_passes too: c scored nothing
    for best, out in ((from_a, "a"), (from_b, "b"), (from_c, "c")):
        assert Path(str(best["checkpoint"])).is_file()
        assert Path(str(best["checkpoint"])).is_relative_to(tmp_path / out)
    assert not any(Path(t.user_attrs["checkpoint"]).is_relative_to(tmp_path / "c") for t in trials)
    best = max(t.value for t in trials if t.value is not None)
    for t in trials:  # the beaten trials' copies are gone from the store, the best ones' stay
        kept = (store / t.user_attrs["checkpoint_artifact"]).is_file()
        assert kept == (t.value == best), t.number
    assert result.checkpoint is not None and result.checkpoint.is_relative_to(tmp_path / "a")
    assert labels.shape == (50,)
