"""The final model: retrained by the trial's recipe, scored once on the test set, read by all."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import pytest
from lightning.pytorch.callbacks import Callback

import fmnist_tuning
from fmnist_tuning.cli import main
from fmnist_tuning.config import RunConfig
from fmnist_tuning.final import finalize, once, results, retrain, schedule, scoring
from fmnist_tuning.final.classifier import load_model
from fmnist_tuning.keys import FINAL_CURRENT, FINAL_MODEL, FINAL_MODELS, REPORT_HTML, TEST_PASS
from fmnist_tuning.report.page import TEST_PASSES_ROW
from fmnist_tuning.search.loop import optimize
from fmnist_tuning.search.space import DEFAULT_PARAMS
from fmnist_tuning.search.study import load_or_create
from fmnist_tuning.training.raw import load_test
from fmnist_tuning.training.recipe import TrialConfig
from tests.conftest import N_TEST, N_TRAIN, VAL_SIZE, load_script
from tests.processes import tune_args


def _trial(curve: list[float]) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(value=max(curve), intermediate_values=dict(enumerate(curve)))


def test_the_95_percent_interval_of_an_accuracy_on_10000_images() -> None:
    low, high = scoring.wilson_interval(9127, 10_000)
    assert (round(low, 4), round(high, 4)) == (0.9070, 0.9181)  # worked out by hand
    assert scoring.wilson_interval(100, 100)[1] == 1.0


def test_the_best_epoch_is_the_first_epoch_of_the_best_validation_accuracy() -> None:
    assert retrain.best_epoch(_trial([0.5, 0.8, 0.7, 0.8, 0.6])) == 2
    assert retrain.best_epoch(_trial([0.9])) == 1


class _Spy(Callback):
    """Records what the retrain's Trainer did."""

    def __init__(self, seen: dict[str, Any]) -> None:
        self.seen = seen
        self.seen["rows"] = []  # training images per epoch

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            self.seen["rows"].append(0)
        self.seen["rows"][-1] += len(batch[1])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        (config,) = trainer.lr_scheduler_configs
        self.seen.update(
            schedule_steps=config.scheduler.total_steps,  # type: ignore[attr-defined]
            batches=trainer.num_training_batches,
            epochs=trainer.current_epoch,
            max_epochs=trainer.max_epochs,
        )


def _spy_on_the_retrain(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What the retrain's Trainer did, filled in once ``final`` builds and runs it."""
    seen: dict[str, Any] = {}
    build = retrain.build_trainer

    def spying(*args: Any, **kwargs: Any) -> pl.Trainer:
        if kwargs.get("limit_val_batches") == 0:  # the retrain's Trainer
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), _Spy(seen)]
        return build(*args, **kwargs)

    monkeypatch.setattr(retrain, "build_trainer", spying)
    return seen


def _one_trial_study(run: RunConfig) -> optuna.Study:
    """A study of ``run.n_trials`` (usually one) small enqueued trials, run."""
    study = load_or_create(run)
    for _ in range(run.n_trials or 1):
        study.enqueue_trial(
            {"n_layers": 1, "n_units_l0": 128, "dropout": 0.0, "batch_norm": True,
             "optimizer": "adam", "lr_adam": 3e-3, "weight_decay": 1e-6, "batch_size": 128}
        )  # fmt: skip
    optimize(study, run)
    return study


def test_the_retrain_follows_the_trials_schedule_and_stops_at_its_best_epoch(
    run_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = dataclasses.replace(run_config, n_trials=1, max_epochs=5, early_stopping=1)
    study = _one_trial_study(run)
    seen = _spy_on_the_retrain(monkeypatch)
    result = finalize.finalize(study, run)
    assert result is not None
    best = retrain.best_epoch(study.best_trial)
    assert seen["epochs"] == best == result["final_epochs"]  # stopped where the trial peaked
    assert seen["max_epochs"] == run.max_epochs == result["schedule_epochs"]
    assert seen["schedule_steps"] == run.max_epochs * seen["batches"]  # the trial's schedule length
    assert seen["rows"] == [N_TRAIN] * best  # every training image, the validation ones too


def _final_attrs(storage: str) -> dict[str, Any]:
    """What the study records of its final models and test passes."""
    attrs = optuna.load_study(study_name="fmnist-mlp", storage=storage).user_attrs
    return {k: v for k, v in attrs.items() if k.startswith((FINAL_MODEL, FINAL_CURRENT, TEST_PASS))}


@pytest.mark.integration
def test_one_final_model_and_one_test_pass_per_best_trial_whatever_the_final_settings(
    fake_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    passes: list[Path] = []
    score = scoring.score_on_test

    def counting(model: Path, run: RunConfig) -> dict[str, Any]:
        passes.append(model)
        return score(model, run)

    monkeypatch.setattr(once, "score_on_test", counting)
    out = tmp_path / "out"
    storage = f"sqlite:///{out / 'study.db'}"
    args = tune_args(fake_data_dir, out, "--n-trials", "2", "--max-epochs", "2")
    assert main(args) == 0  # tune: the retrained final model is scored
    best_json = (out / "best.json").read_bytes()
    model = Path(json.loads(best_json)["checkpoint"])
    made = (model.read_bytes(), model.stat().st_mtime_ns)
    stored = _final_attrs(storage)
    capsys.readouterr()
    # Resumed with nothing left to run, with other final-model settings or another deadline, or
    # none: the model made first is reused, and nothing of it changes.
    for other in ([], ["--final-epochs", "3"], ["--no-retrain"], ["--timeout", "30"]):
        assert main([*args, *other]) == 0
        assert (out / "best.json").read_bytes() == best_json
        assert (model.read_bytes(), model.stat().st_mtime_ns) == made
        assert _final_attrs(storage) == stored
        reused = capsys.readouterr().err.count("final model was made and scored already")
        assert reused == (1 if other else 0)
    report_script = load_script("report")
    assert report_script.main(["--storage", storage, "--output-dir", str(out)]) == 0
    assert len(passes) == 1
    assert main([*args, "--no-test"]) == 0  # nothing of the test set, not even the stored score
    assert len(passes) == 1
    unscored = json.loads((out / "best.json").read_text())
    assert unscored["test_acc"] is None and unscored["test_set"] == "not scored (--no-test)"
    assert "test accuracy 0." not in (out / REPORT_HTML).read_text()
    assert main(args) == 0

    best = json.loads((out / "best.json").read_text())
    assert best["test_passes"] == 1
    scored = retrain.final_path(out, best["trial"])  # the file scored, moved into place once stored
    assert best["retrained_on_full_train"] and best["checkpoint"] == str(scored.resolve())
    assert scored.is_file() and not passes[0].exists()
    (result,) = [v for k, v in _final_attrs(storage).items() if k.startswith(FINAL_MODEL)]
    assert result["test_acc"] == best["test_acc"] and result["model"] == best["checkpoint"]
    correct = round(best["test_acc"] * N_TEST)
    assert correct / N_TEST == best["test_acc"]  # k of N images: 4 decimals are every digit
    page = (out / REPORT_HTML).read_text()
    assert f"{best['test_acc']:.4f} ({correct} of {N_TEST} test images; 95 % interval" in page
    assert f'{TEST_PASSES_ROW}</th><td class="l">1</td>' in page
    low, high = best["test_acc_ci95"]
    assert low < best["test_acc"] <= high or best["test_acc"] == high == 1.0
    assert "retrained on all training images" in page


WEAK = {"n_layers": 1, "n_units_l0": 128, "dropout": 0.5, "batch_norm": False, "optimizer": "sgd",
        "lr_sgd": 1e-3, "weight_decay": 1e-6, "batch_size": 512}  # fmt: skip


def _accuracy(checkpoint: Path, data_dir: Path) -> float:
    images, labels = load_test(data_dir)
    return int((load_model(checkpoint).predict(images) == labels).sum()) / len(labels)


@pytest.mark.integration
def test_a_new_best_trial_gets_its_own_final_model_whose_file_scores_as_stored(
    fake_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    storage = f"sqlite:///{out / 'study.db'}"
    settings: dict[str, Any] = {
        "data_dir": fake_data_dir, "output_dir": out, "max_epochs": 2, "final_epochs": 2,
        "val_size": VAL_SIZE, "accelerator": "cpu", "warm_start": False, "pruner": "none",
    }  # fmt: skip
    out.mkdir()
    optuna.create_study(storage=storage, study_name="fmnist-mlp", direction="maximize")
    optuna.load_study(study_name="fmnist-mlp", storage=storage).enqueue_trial(WEAK)
    first = fmnist_tuning.tune(n_trials=1, **settings)
    optuna.load_study(study_name="fmnist-mlp", storage=storage).enqueue_trial(DEFAULT_PARAMS)
    second = fmnist_tuning.tune(n_trials=2, **settings)  # the resume adds a better trial

    assert (first.trial, second.trial) == (0, 1)
    best = json.loads((out / "best.json").read_text())
    assert (best["trial"], best["test_passes"]) == (1, 2)
    assert _accuracy(Path(best["checkpoint"]), fake_data_dir) == best["test_acc"]
    assert second.checkpoint == Path(best["checkpoint"]) and second.test_acc == best["test_acc"]
    # The first final model keeps its own file, which still scores as stored.
    (old,) = results.models_of(second.study, 0)
    assert (
        _accuracy(out / "checkpoints" / old[1]["model_file"], fake_data_dir) == old[1]["test_acc"]
    )
    assert old[1]["test_acc"] < best["test_acc"]  # two models, each scored as what it is


class _DroppingLock:
    """A lock whose database connection drops at its ``drop_at``-th check; another machine stores
    the final model's result before this one can take the lock again."""

    def __init__(self, drop_at: int, other_machine: Callable[[], None]) -> None:
        self.drop_at, self.other_machine = drop_at, other_machine
        self.checks, self.lost = 0, False

    def try_acquire(self) -> bool:
        if self.lost:
            self.other_machine()
            self.lost = False
        return True

    def held(self) -> bool:
        self.checks += 1
        self.lost = self.lost or self.checks == self.drop_at
        return not self.lost

    def release(self) -> None:
        pass


@pytest.mark.parametrize("drop_at", [1, 2], ids=["before-the-test-pass", "during-it"])
def test_a_lost_lock_yields_to_the_result_another_machine_stored_meanwhile(
    run_config: RunConfig, monkeypatch: pytest.MonkeyPatch, drop_at: int
) -> None:
    run = dataclasses.replace(run_config, n_trials=1)
    study = load_or_create(run)
    optimize(study, run)
    key = results.model_key(0, retrained=True)
    theirs = {"trial": 0, "test_acc": 0.5, "model": "on the other machine"}
    lock = _DroppingLock(drop_at, lambda: results.store_model(study, key, theirs))
    monkeypatch.setattr(once.locks, "study_lock", lambda *args: lock)
    passes: list[Path] = []
    score = scoring.score_on_test
    monkeypatch.setattr(once, "score_on_test", lambda m, r: passes.append(m) or score(m, r))

    assert once.final_model(study, study.best_trial, run, once.artifacts.open_store(run)) == theirs
    assert results.stored_model(study, key) == theirs  # the first result stored counts
    assert len(passes) == drop_at - 1  # dropped before the test pass: no pass at all
    assert not list((run.output_dir / "checkpoints").glob("*final*"))  # no unscored final model


def test_a_study_of_an_earlier_version_keeps_its_stored_final_model() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.9))
    key = results.model_key(0, retrained=True)
    legacy = {"trial": 0, "test_acc": 0.91}
    study.set_user_attr(FINAL_MODELS, {"current": key, "models": {key: legacy}})
    assert results.stored_result(study, 0) == legacy
    assert results.stored_model(study, key) == legacy  # so it is never scored again


@pytest.mark.parametrize(
    ("longer_curve", "chosen"),
    [
        ([0.2, 0.3, 0.9, 0.5], 1),  # the longer schedule peaks higher: it is used, to its peak
        ([0.1, 0.1, 0.1, 0.1], 0),  # lower: the trial's own stays
        ([0.1, 0.8, 0.1, 0.1], 0),  # a tie: the trial's own, shorter schedule stays
    ],
)
def test_the_final_schedule_is_the_one_with_the_higher_validation_accuracy(
    run_config: RunConfig,
    monkeypatch: pytest.MonkeyPatch,
    longer_curve: list[float],
    chosen: int,
) -> None:
    run = dataclasses.replace(run_config, max_epochs=2, final_epochs=4)
    trial = _trial([0.7, 0.8])
    asked: list[int] = []

    def curve(config: Any, run: RunConfig, schedule_epochs: int, seed: int, *_: Any) -> list[float]:
        asked.append(schedule_epochs)
        return longer_curve

    monkeypatch.setattr(schedule, "validation_curve", curve)
    choice = schedule.choose(trial, TrialConfig(), run)
    assert asked == [4]
    assert [(c["schedule_epochs"], c["epochs"], c["val_acc"]) for c in choice["candidates"]] == [
        (2, 2, 0.8),
        (4, 1 + longer_curve.index(max(longer_curve)), max(longer_curve)),
    ]
    assert choice["chosen"] == chosen
    assert [c["curve"] for c in choice["candidates"]] == [[0.7, 0.8], longer_curve]


def test_no_longer_schedule_is_tried_when_final_epochs_is_not_longer(
    run_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schedule, "validation_curve", None)  # would fail if called
    run = dataclasses.replace(run_config, max_epochs=4, final_epochs=4)
    choice = schedule.choose(_trial([0.7, 0.8, 0.75]), TrialConfig(), run)
    assert (choice["chosen"], len(choice["candidates"])) == (0, 1)


def test_the_final_model_trains_the_schedule_validation_chose_and_best_json_records_it(
    run_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Four 2-epoch trials: the search trained twice the 4-epoch schedule, which may then be tried.
    run = dataclasses.replace(run_config, n_trials=4, max_epochs=2, final_epochs=4, pruner="none")
    study = _one_trial_study(run)
    seen = _spy_on_the_retrain(monkeypatch)
    result = finalize.finalize(study, run)
    assert result is not None
    choice = result["final_schedule"]
    assert [len(c["curve"]) for c in choice["candidates"]] == [2, 4]  # a real 4-epoch run
    picked = choice["candidates"][choice["chosen"]]
    assert picked["val_acc"] == max(c["val_acc"] for c in choice["candidates"])
    assert seen["max_epochs"] == picked["schedule_epochs"] == result["schedule_epochs"]
    assert seen["epochs"] == picked["epochs"] == result["final_epochs"]
    assert seen["schedule_steps"] == picked["schedule_epochs"] * seen["batches"]
    assert json.loads((run.output_dir / "best.json").read_text())["final_schedule"] == choice
