"""The Python API: tune() runs the CLI's study, TuneResult serves its model, errors are typed."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import urllib.error
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import pytest
import torch
import torchvision
from lightning.pytorch.callbacks import Callback
from optuna.trial import TrialState

import fmnist_tuning
from fmnist_tuning import errors
from fmnist_tuning.cli import main
from fmnist_tuning.config import RunConfig
from fmnist_tuning.search import objective
from fmnist_tuning.training import raw
from tests.conftest import N_TRAIN, VAL_SIZE


def _settings(data_dir: Path, out: Path, **extra: Any) -> dict[str, Any]:
    return {
        "data_dir": data_dir,
        "output_dir": out,
        "max_epochs": 2,
        "val_size": VAL_SIZE,
        "accelerator": "cpu",
        **extra,
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, fake_data_dir: Path) -> Any:
    out = tmp_path_factory.mktemp("api") / "out"
    return fmnist_tuning.tune(**_settings(fake_data_dir, out, n_trials=2, warm_start=False))


@pytest.mark.integration
def test_tune_returns_the_study_its_best_trial_and_the_stored_test_score(finished: Any) -> None:
    study = finished.study
    assert finished.best_params == study.best_params
    assert finished.trial == study.best_trial.number
    assert finished.val_acc == study.best_value
    assert finished.best_config.batch_size == study.best_params["batch_size"]
    best_json = json.loads((finished.output_dir / "best.json").read_text())
    assert (finished.test_acc, list(finished.test_acc_ci95)) == (
        best_json["test_acc"],
        best_json["test_acc_ci95"],
    )
    assert finished.checkpoint == Path(best_json["checkpoint"])
    assert set(finished.figures()) >= {"optimization_history", "intermediate_values"}


@pytest.mark.integration
def test_predict_agrees_with_the_stored_test_accuracy(finished: Any) -> None:
    test_x, labels = raw.load_test(finished.config.data_dir)
    for images in (test_x, test_x.reshape(-1, 784), test_x.float() / 255):
        predicted = finished.predict(images)
        assert predicted.shape == labels.shape
        assert (predicted == labels).float().mean().item() == pytest.approx(finished.test_acc)
    # A model saved by an earlier version, without its normalisation: the study's data supply it.
    saved = torch.load(finished.checkpoint, weights_only=True)
    del saved["FashionMNISTDataModule"]
    older = finished.output_dir / "older.ckpt"
    torch.save(saved, older)
    assert torch.equal(dataclasses.replace(finished, checkpoint=older).predict(test_x), predicted)
    assert isinstance(finished.load_model(), torch.nn.Module)
    assert not finished.load_model().training
    with pytest.raises(ValueError, match="N x 28 x 28"):
        finished.predict(torch.zeros(3, 27, 27, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        finished.predict(torch.full((2, 784), float("nan")))
    assert finished.predict(torch.zeros(0, 28, 28, dtype=torch.uint8)).shape == (0,)


@pytest.mark.integration
def test_load_result_reopens_the_study_by_folder_or_by_storage(
    finished: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # by storage, its folder is ./runs/<study>
    by_folder = fmnist_tuning.load_result(finished.output_dir)
    by_storage = fmnist_tuning.load_result(
        storage=f"sqlite:///{finished.output_dir / 'study.db'}", study_name="fmnist-mlp"
    )
    for again in (by_folder, by_storage):
        assert again.best_params == finished.best_params
        assert again.test_acc == finished.test_acc
        assert again.config.data_dir.resolve() == finished.config.data_dir.resolve()


def test_load_result_without_a_name_opens_the_storages_only_study_and_its_folder(
    finished: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    source = f"sqlite:///{finished.output_dir / 'study.db'}"
    optuna.copy_study(
        from_study_name="fmnist-mlp", from_storage=source, to_storage=other, to_study_name="other"
    )
    again = fmnist_tuning.load_result(storage=other)
    assert again.study.study_name == "other" and again.output_dir == Path("runs") / "other"
    assert again.best_params == finished.best_params and again.test_acc == finished.test_acc


def _cli_message(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line.removeprefix("fmnist-tune: error: ")


@pytest.mark.parametrize(
    ("flags", "settings", "error"),
    [
        (["--n-trials", "0"], {"n_trials": 0}, errors.SettingsError),
        (["--sampler", "bayes"], {"sampler": "bayes"}, errors.SettingsError),
        (["--workers", "0"], {"workers": 0}, errors.SettingsError),
        (["--seed", "-1"], {"seed": -1}, errors.SettingsError),
        (["--timeout", "0"], {"timeout": 0.0}, errors.SettingsError),
        (
            ["--heartbeat-interval", "10", "--grace-period", "5"],
            {"heartbeat_interval": 10, "grace_period": 5},
            errors.SettingsError,
        ),
        (["--val-size", str(N_TRAIN)], {"val_size": N_TRAIN}, errors.DataError),
        (
            ["--storage", "postgresql+psycopg://user:s3cret@127.0.0.1:1/nowhere"],
            {"storage": "postgresql+psycopg://user:s3cret@127.0.0.1:1/nowhere"},
            errors.StudyError,
        ),
    ],
)
def test_bad_settings_raise_the_typed_error_with_the_clis_message(
    flags: list[str],
    settings: dict[str, Any],
    error: type[Exception],
    fake_data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    cli_flags = ["--data-dir", str(fake_data_dir), "--output-dir", str(out), *flags]
    if "--val-size" not in flags:
        cli_flags += ["--val-size", str(VAL_SIZE)]
    message = _cli_message(cli_flags, capsys)
    with pytest.raises(error) as raised:
        fmnist_tuning.tune(
            data_dir=fake_data_dir, output_dir=out, **{"val_size": VAL_SIZE, **settings}
        )
    assert str(raised.value) == message
    assert isinstance(raised.value, errors.TuningError) and not out.exists()


def test_missing_data_and_an_output_dir_that_is_a_file_raise_the_clis_message(
    fake_data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def offline(*args: Any, **kwargs: Any) -> None:  # as torchvision fails without a network
        raise urllib.error.URLError("no network")

    # The real download, with a torchvision that fails on purpose (the guard refuses any other).
    monkeypatch.setattr(raw, "download", raw.download.__wrapped__)  # type: ignore[attr-defined]
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    for data_dir, out, error in (
        (empty, tmp_path / "out", errors.DataError),
        (fake_data_dir, taken, errors.SettingsError),
    ):
        message = _cli_message(["--data-dir", str(data_dir), "--output-dir", str(out)], capsys)
        with pytest.raises(error, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
            fmnist_tuning.tune(data_dir=data_dir, output_dir=out)
        assert ("the download failed (URLError)" if data_dir == empty else "is a file") in message
    assert taken.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("settings", "named"),
    [({"timeout": "60"}, "timeout"), ({"progress": "trial"}, "progress"),
     ({"retrain": 0}, "retrain"), ({"max_epochs": 2.5}, "max_epochs")],
)  # fmt: skip
def test_a_value_of_the_wrong_type_is_a_settings_error(
    settings: dict[str, Any], named: str
) -> None:
    with pytest.raises(errors.SettingsError, match=f"^{named}"):
        fmnist_tuning.tune(**settings)


def test_an_unknown_setting_is_named() -> None:
    with pytest.raises(errors.SettingsError, match="unknown setting 'n_trails'"):
        fmnist_tuning.tune(n_trails=3)
    assert "n_trials" in {f for f in RunConfig.__dataclass_fields__}


@pytest.mark.integration
def test_an_interrupt_leaves_no_running_trial_and_returns_control(
    fake_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class InterruptTrialOne(Callback):  # a real SIGINT, as "interrupt the kernel" sends it
        def on_train_batch_start(self, trainer: pl.Trainer, *_: object) -> None:
            if (
                trainer.global_step == 1
                and trainer.logger
                and "0001" in str(trainer.logger.version)
            ):
                os.kill(os.getpid(), signal.SIGINT)

    build_trainer = objective.build_trainer

    def with_interrupt(run: RunConfig, callbacks: list[Callback], *args: Any, **kw: Any) -> Any:
        return build_trainer(run, [*callbacks, InterruptTrialOne()], *args, **kw)

    monkeypatch.setattr(objective, "build_trainer", with_interrupt)
    settings = _settings(fake_data_dir, tmp_path / "out", n_trials=3, warm_start=False)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup or a backgrounded CI job
    with pytest.raises(KeyboardInterrupt):
        fmnist_tuning.tune(**settings)
    study = optuna.load_study(
        study_name="fmnist-mlp", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}"
    )
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]
    assert signal.getsignal(signal.SIGINT) == before  # the caller's handler given back

    monkeypatch.setattr(objective, "build_trainer", build_trainer)
    result = fmnist_tuning.tune(**settings)  # the same call resumes the study
    assert result.test_acc is not None
    assert sum(t.state == TrialState.COMPLETE for t in result.study.trials) >= 2


@pytest.mark.integration
def test_resuming_a_stored_study_on_another_split_raises_the_clis_message(
    finished: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(finished.config.data_dir, finished.output_dir, n_trials=2, seed=1)
    flags = ["--data-dir", str(settings["data_dir"]), "--output-dir", str(finished.output_dir)]
    flags += ["--max-epochs", "2", "--val-size", str(VAL_SIZE), "--accelerator", "cpu"]
    message = _cli_message([*flags, "--n-trials", "2", "--seed", "1"], capsys)
    with pytest.raises(errors.StudyError) as raised:
        fmnist_tuning.tune(**settings)
    assert str(raised.value) == message and "seed" in message
    assert len(finished.study.trials) == 2  # nothing ran
