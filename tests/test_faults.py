"""Faults that must not break a study: signals, NaN losses, CUDA OOM, stored studies that do not fit,
bad storage URLs. Real processes and real signals."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from optuna.trial import TrialState

from fmnist_tuning.cli import main
from fmnist_tuning.cluster.reconnect import StorageUnavailable
from fmnist_tuning.config import RunConfig
from fmnist_tuning.final import retrain
from fmnist_tuning.keys import CHECKPOINT_DIR, RUN_SETTINGS
from fmnist_tuning.search import objective
from fmnist_tuning.search.binding import run_settings
from fmnist_tuning.search.loop import optimize
from fmnist_tuning.search.study import load_or_create
from tests.conftest import VAL_SIZE
from tests.processes import FINISHED, Tune, started, tune_args, wait_for

GOOD = {
    "n_layers": 1,
    "n_units_l0": 128,
    "dropout": 0.0,
    "batch_norm": False,
    "optimizer": "sgd",
    "lr_sgd": 0.05,
    "weight_decay": 1e-6,
    "batch_size": 128,
}
# Far outside the search space (Optuna warns, and runs it): plain SGD on raw logits overflows to
# inf, then NaN, within the first few steps.
DIVERGING = {**GOOD, "lr_sgd": 1e12}


@pytest.mark.integration
@pytest.mark.parametrize(("signum", "workers"), [(signal.SIGINT, "1"), (signal.SIGTERM, "2")])
def test_signal_mid_trial_fails_it_prints_the_summary_and_exits_128_plus_signal(
    signum: signal.Signals, workers: str, fake_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    storage = f"sqlite:///{out / 'study.db'}"
    args = tune_args(fake_data_dir, out, "--n-trials", "5", "--workers", workers)
    args += ["--max-epochs", "300", "--early-stopping", "300", "--pruner", "none"]
    with Tune(args, tmp_path / "tune.log") as tune:
        wait_for(lambda: started(storage, "fmnist-mlp", min_epochs=1), 240, "a trial in training")
        tune.proc.send_signal(signum)
        assert tune.wait(timeout=60) == 128 + signum, tune.stderr

    trials = optuna.load_study(study_name="fmnist-mlp", storage=storage).trials
    assert not any(t.state == TrialState.RUNNING for t in trials)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(
        t.user_attrs["fail_reason"] == f"interrupted by {signum.name}" for t in failed
    )
    for t in trials:  # the workers are gone too
        with pytest.raises(ProcessLookupError):
            os.kill(int(t.user_attrs["worker"].rsplit(":", 1)[1]), 0)
    err = tune.stderr
    assert f"interrupted by {signum.name}: study 'fmnist-mlp'" in err and "finished trials" in err
    assert "rerun the same command to resume" in err
    assert "Traceback" not in err and not (out / "best.json").exists()


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_the_final_retrain_exits_128_plus_signal_and_keeps_the_trials(
    signum: signal.Signals,
    fake_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    class SignalOnSecondBatch(Callback):  # a real signal, delivered inside Lightning's fit loop
        def on_train_batch_start(self, trainer: pl.Trainer, *_: object) -> None:
            if trainer.global_step == 1:
                os.kill(os.getpid(), signum)

    build_trainer = retrain.build_trainer

    def retrain_gets_a_signal(run: RunConfig, *args: Any, **kwargs: Any) -> pl.Trainer:
        if kwargs.get("limit_val_batches") == 0:  # retrain_full's Trainer
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), SignalOnSecondBatch()]
        return build_trainer(run, *args, **kwargs)

    monkeypatch.setattr(retrain, "build_trainer", retrain_gets_a_signal)
    out = tmp_path / "out"
    assert main(tune_args(fake_data_dir, out, "--n-trials", "1", "--no-warm-start")) == 128 + signum

    err = capsys.readouterr().err
    assert f"interrupted by {signum.name}: study 'fmnist-mlp'" in err, err
    assert "Traceback" not in err and not (out / "best.json").exists()
    storage = f"sqlite:///{out / 'study.db'}"
    (trial,) = optuna.load_study(study_name="fmnist-mlp", storage=storage).trials
    assert trial.state == TrialState.COMPLETE  # a rerun retrains and tests it


@pytest.mark.filterwarnings("ignore:Fixed parameter lr_sgd.*out of range")
def test_nan_loss_fails_the_trial_with_its_reason_and_the_study_goes_on(
    run_config: RunConfig,
) -> None:
    run = dataclasses.replace(run_config, n_trials=2, max_epochs=1)
    study = load_or_create(run)
    study.enqueue_trial(DIVERGING)
    study.enqueue_trial(GOOD)
    optimize(study, run)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "non-finite training loss" in trials[0].user_attrs["fail_reason"]
    assert not (run.output_dir / "checkpoints" / "trial_0000.ckpt").exists()


class RaiseAtTrainStart(Callback):
    """Raises ``error_type(*args)`` before the first batch: no checkpoint has been written yet."""

    def __init__(self, error_type: type[Exception], *args: str) -> None:
        self.error_type, self.args = error_type, args

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A new exception each time: one made at collection would keep, in its traceback, this
        # trial's Trainer alive for the rest of the session.
        raise self.error_type(*self.args)


@pytest.mark.parametrize(
    ("error_type", "reason"),
    [(optuna.TrialPruned, None), (torch.cuda.OutOfMemoryError, "out of memory")],
)
def test_a_trial_ended_before_its_first_checkpoint_is_pruned_cleanly(
    run_config: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    error_type: type[Exception], reason: str | None,
) -> None:  # fmt: skip
    # Once found on a GPU: the cleanup then tried to delete Path("") (the working directory).
    monkeypatch.chdir(tmp_path)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(GOOD)
    run = dataclasses.replace(run_config, max_epochs=1)
    raising = RaiseAtTrainStart(error_type, "CUDA out of memory (simulated)")
    study.optimize(objective.Objective(run, extra_callbacks=[raising]), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    if reason is None:
        assert "fail_reason" not in trial.user_attrs
    else:
        assert reason in trial.user_attrs["fail_reason"]
    assert not list((run.output_dir / CHECKPOINT_DIR).glob("*.ckpt"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to run out of memory")
def test_cuda_out_of_memory_prunes_the_trial_frees_memory_and_the_study_goes_on(
    run_config: RunConfig,
) -> None:
    run = dataclasses.replace(run_config, n_trials=1, max_epochs=1, accelerator="gpu")
    study = load_or_create(run)
    study.enqueue_trial(GOOD)
    warm = torch.randn(64, 64, device="cuda")
    (warm @ warm).sum().item()  # CUDA context and cuBLAS exist before the memory is gone
    filler, size = [], 1 << 30
    while size >= 1 << 16:  # take every free block the allocator can get
        try:
            filler.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
        except torch.cuda.OutOfMemoryError:
            size //= 2
    baseline = torch.cuda.memory_allocated()
    optimize(study, run)
    assert torch.cuda.memory_allocated() <= baseline + (1 << 20)  # the trial's tensors are gone
    del filler
    torch.cuda.empty_cache()
    optimize(study, dataclasses.replace(run, n_trials=2))
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE]
    assert "out of memory" in trials[0].user_attrs["fail_reason"]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fmnist-tune: error:"), err
    return err[0]


def test_stored_study_with_another_direction_exits_2_with_one_line(
    fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(storage=url, study_name="fmnist-mlp", direction="minimize")
    out = tmp_path / "out"
    assert main(tune_args(fake_data_dir, out, "--storage", url)) == 2
    assert "minimize" in _one_line_error(capsys)
    assert not out.exists()


def test_stored_study_with_another_search_space_exits_2_with_one_line(
    fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    study = optuna.create_study(storage=url, study_name="fmnist-mlp", direction="maximize")
    settings = run_settings(RunConfig(data_dir=fake_data_dir))
    study.set_user_attr(RUN_SETTINGS, {**settings, "search_space": "0123456789abcdef"})
    assert main(tune_args(fake_data_dir, tmp_path / "out", "--storage", url)) == 2
    assert "another search space" in _one_line_error(capsys)


@pytest.mark.parametrize(
    ("changed", "stored"),
    [
        (("--seed", "1"), "--seed 0"),
        (("--val-size", "50"), f"--val-size {VAL_SIZE}"),
        (("--max-epochs", "2"), "--max-epochs 1"),
        (("--early-stopping", "2"), "--early-stopping 4"),
    ],
)
def test_resuming_with_another_split_schedule_or_patience_exits_2_with_one_line(
    changed: tuple[str, str],
    stored: str,
    fake_data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"  # a study tune_args made, with one trial
    study = optuna.create_study(storage=url, study_name="fmnist-mlp", direction="maximize")
    run = RunConfig(data_dir=fake_data_dir, max_epochs=1, val_size=VAL_SIZE, final_epochs=1)
    study.set_user_attr(RUN_SETTINGS, run_settings(run))
    study.add_trial(optuna.trial.create_trial(value=0.5))
    assert main([*tune_args(fake_data_dir, tmp_path / "out", "--storage", url), *changed]) == 2
    line = _one_line_error(capsys)
    assert f"was tuned with {stored}, which its trials' values depend on" in line
    assert "resume it with that" in line
    assert len(study.trials) == 1  # nothing ran under the other flag


@pytest.mark.integration
def test_a_study_refuses_another_early_stopping_and_resumes_with_its_own(
    fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    first = tune_args(fake_data_dir, out, "--n-trials", "1", "--no-warm-start", "--no-retrain")
    assert main(first) == 0
    best_json = (out / "best.json").read_bytes()
    capsys.readouterr()
    assert main([*first, "--early-stopping", "2", "--n-trials", "2"]) == 2
    assert "--early-stopping 4" in _one_line_error(capsys)
    assert (out / "best.json").read_bytes() == best_json
    study = optuna.load_study(study_name="fmnist-mlp", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 1  # nothing ran
    assert main([*first, "--n-trials", "2"]) == 0  # the same flags resume it


def test_a_study_of_an_earlier_version_on_another_split_exits_2(
    fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    study = optuna.create_study(storage=url, study_name="fmnist-mlp", direction="maximize")
    study.set_user_attr("validation_split", {"seed": 1, "val_size": VAL_SIZE})
    assert main(tune_args(fake_data_dir, tmp_path / "out", "--storage", url)) == 2
    assert "--seed 1" in _one_line_error(capsys)


def test_stored_trials_from_another_search_space_exit_2(
    fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    study = optuna.create_study(storage=url, study_name="fmnist-mlp", direction="maximize")
    study.add_trial(
        optuna.create_trial(
            params={"dropout": 0.7},
            distributions={"dropout": optuna.distributions.FloatDistribution(0.0, 0.9)},
            value=0.5,
        )
    )
    assert main(tune_args(fake_data_dir, tmp_path / "out", "--storage", url)) == 2
    assert "dropout" in _one_line_error(capsys)


@pytest.mark.parametrize(
    "url",
    [
        "not-a-url",
        "nosuchdialect://host/db",
        "postgresql+psycopg://user:s3cret@127.0.0.1:1/nowhere",
        # A server that answers and refuses the database: at once, not after --storage-timeout.
        "postgresql+psycopg://postgres:s3cret@127.0.0.1:5432/no_such_database",
        "journal:/no/such/folder/study.log",
    ],
)
def test_bad_storage_url_exits_2_with_one_line(
    url: str, fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(tune_args(fake_data_dir, out, "--storage", url)) == 2
    line = _one_line_error(capsys)
    assert "cannot open storage" in line and "s3cret" not in line
    assert not out.exists()


@pytest.mark.parametrize("kind", ["not-a-database", "another-tools-database"])
def test_a_study_db_that_is_not_optunas_exits_2_with_one_line_and_is_left_as_it_was(
    kind: str, fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    db = out / "study.db"
    if kind == "not-a-database":
        db.write_bytes(b"\x00\x01 not sqlite " * 300)
    else:
        with contextlib.closing(sqlite3.connect(db)) as other:
            other.execute("CREATE TABLE invoices (id INTEGER)")
            other.commit()
    before = db.read_bytes()
    assert main(tune_args(fake_data_dir, out, "--n-trials", "1")) == 2
    line = _one_line_error(capsys)
    assert str(db) in line and ("invoices" in line or "not a database" in line)
    assert db.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["study.db"]


@pytest.mark.parametrize(
    ("revision", "fix"),
    [("v3.0.0.d", "optuna storage upgrade"), ("v99.0.0.a", "pip install -U optuna")],
)
def test_a_study_db_of_another_optuna_schema_exits_2_with_one_line_and_is_left_as_it_was(
    revision: str,
    fix: str,
    fake_data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    db = out / "study.db"
    optuna.create_study(storage=f"sqlite:///{db}", study_name="fmnist-mlp", direction="maximize")
    with contextlib.closing(sqlite3.connect(db)) as conn:  # an older or a newer Optuna's tables
        conn.execute("UPDATE alembic_version SET version_num = ?", (revision,))
        conn.commit()
    before = db.read_bytes()
    assert main(tune_args(fake_data_dir, out, "--n-trials", "1")) == 2
    line = _one_line_error(capsys)
    assert str(db) in line and "table schema" in line and fix in line, line
    assert db.read_bytes() == before


@pytest.mark.integration
def test_journal_storage_on_a_shared_file_runs_the_study(
    fake_data_dir: Path, tmp_path: Path
) -> None:
    journal = tmp_path / "shared" / "study.log"
    journal.parent.mkdir()
    args = tune_args(fake_data_dir, tmp_path / "out", "--n-trials", "2")
    assert main([*args, "--storage", f"journal:{journal}"]) == 0
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    trials = optuna.load_study(study_name="fmnist-mlp", storage=storage).trials
    assert sum(t.state in FINISHED for t in trials) == 2


def test_storage_lost_at_a_trials_last_write_ends_the_loop_with_storage_unavailable(
    run_config: RunConfig,
) -> None:
    """Optuna 5.0's trial runner hides this error behind an UnboundLocalError; the loop must not."""

    class LostAtTheTell(optuna.storages.InMemoryStorage):
        down = False

        def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None):  # type: ignore[no-untyped-def]
            if state.is_finished():
                self.down = True
            if self.down:
                raise StorageUnavailable("storage test unreachable for 4 s")
            return super().set_trial_state_values(trial_id, state, values)

        def get_trial(self, trial_id: int):  # type: ignore[no-untyped-def]
            if self.down:
                raise StorageUnavailable("storage test unreachable for 4 s")
            return super().get_trial(trial_id)

    study = optuna.create_study(storage=LostAtTheTell(), direction="maximize")
    study.enqueue_trial(GOOD)
    run_config.output_dir.mkdir(parents=True)
    with pytest.raises(StorageUnavailable, match="unreachable"):
        optimize(study, run_config)
