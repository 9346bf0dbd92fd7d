"""--timeout bounds the whole job: the search stops in time for the final model, which fits what is
left (or stops at the deadline with the weights chosen on validation)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import pytest
from lightning.pytorch.callbacks import Callback

from fmnist_tuning.config import RunConfig
from fmnist_tuning.final import finalize, once, retrain, schedule
from fmnist_tuning.final.classifier import load_model
from fmnist_tuning.keys import EPOCHS, FAIL_REASON, REPORT_HTML, TRAIN_SECONDS
from fmnist_tuning.report.page import write_report
from fmnist_tuning.search import deadline, objective
from fmnist_tuning.search.loop import optimize
from fmnist_tuning.search.study import load_or_create
from fmnist_tuning.training.data import make_splits
from fmnist_tuning.training.raw import load_raw


class Clock:
    """The wall clock the deadline logic reads: it moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(deadline, "now", fake)
    return fake


def _trial(number: int, value: float, epochs: int, seconds: float) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(
        value=value, user_attrs={EPOCHS: epochs, TRAIN_SECONDS: seconds}
    )
    trial.number = number
    return trial


def _study(*trials: optuna.trial.FrozenTrial) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for trial in trials:
        study.add_trial(trial)
    return study


def test_the_search_keeps_the_best_trials_final_stage_at_most_its_share_and_the_reports(
    run_config: RunConfig, clock: Clock
) -> None:
    run = dataclasses.replace(
        run_config, timeout=1000, started_at=0.0, max_epochs=9, final_epochs=40
    )
    report, share = deadline.REPORT_SECONDS, deadline.FINAL_SHARE * 1000
    fast = _trial(0, 0.9, epochs=9, seconds=9.0)  # 1 s per epoch
    # Its validation run, then the retrain, each epoch predicted with the margin.
    final = deadline.MARGIN * 1.0 * 40 * (1 + deadline.retrain_factor(run))
    assert final < share
    assert deadline.search_deadline(_study(fast), run) == pytest.approx(1000 - report - final)
    # The reserve is the best trial's: a slower, worse one changes nothing.
    slow = _trial(1, 0.8, epochs=9, seconds=90.0)  # 10 s per epoch: 40 epochs exceed the share
    assert deadline.search_deadline(_study(fast, slow), run) == pytest.approx(1000 - report - final)
    # A slow best trial: the final stage's share of the timeout is kept. None yet: the first
    # trials measure the cost, and only the report's time is kept.
    slow.values = [0.95]
    assert deadline.search_deadline(_study(fast, slow), run) == pytest.approx(1000 - report - share)
    assert deadline.search_deadline(_study(), run) == pytest.approx(1000 - report)
    no_timeout = dataclasses.replace(run, timeout=None)
    assert deadline.search_deadline(_study(slow), no_timeout) is None


def test_the_final_schedule_shrinks_to_the_time_left_and_to_the_search_without_a_timeout(
    run_config: RunConfig, clock: Clock
) -> None:
    run = dataclasses.replace(
        run_config, timeout=600, started_at=0.0, max_epochs=9, final_epochs=40
    )
    best = _trial(0, 0.9, epochs=9, seconds=45.0)
    per_epoch = deadline.MARGIN * 5.0
    clock.now = (
        600 - deadline.REPORT_SECONDS - per_epoch * 25 * (1 + deadline.retrain_factor(run)) - 1e-6
    )
    plan = deadline.plan_final(_study(best), best, run)
    assert (plan.schedule_epochs, plan.retrain) == (25, True)  # what fits, not --final-epochs
    assert plan.stop_at == 600 - deadline.REPORT_SECONDS
    clock.now = 600 - deadline.REPORT_SECONDS - per_epoch * 9 * deadline.retrain_factor(run) - 1e-6
    plan = deadline.plan_final(_study(best), best, run)
    assert (plan.schedule_epochs, plan.retrain) == (0, True)  # the trial's own, retrained
    # Without a timeout: at most half the epochs the search trained (here 4 trials of 2).
    small = dataclasses.replace(run, timeout=None, max_epochs=2)
    trials = [_trial(i, 0.5 + i / 10, epochs=2, seconds=2.0) for i in range(4)]
    assert deadline.plan_final(_study(*trials), trials[-1], small).schedule_epochs == 4
    assert deadline.plan_final(_study(*trials[:2]), trials[1], small).schedule_epochs == 0


def test_the_search_stops_starting_trials_when_the_final_model_needs_the_rest(
    run_config: RunConfig, clock: Clock
) -> None:
    run = dataclasses.replace(
        run_config, n_trials=50, max_epochs=1, final_epochs=1, timeout=200, started_at=0.0
    )
    starts: list[float] = []

    class TenSeconds(objective.Objective):
        def __call__(self, trial: optuna.Trial) -> Any:
            starts.append(clock.now)
            clock.now += 10
            return super().__call__(trial)

    study = load_or_create(run)
    optimize(study, run, objective=TenSeconds(run))
    stop = deadline.search_deadline(study, run)
    assert stop is not None and stop < 200 - deadline.REPORT_SECONDS
    assert starts and max(starts) < stop  # none started after the search's end
    # And it did not stop sooner than it had to: the next trial would have started past the end
    # less its shortest measured epoch (real seconds: these trials train for real).
    shortest = min(filter(None, map(deadline.seconds_per_epoch, study.trials)))
    assert max(starts) + 10 + shortest + 1e-6 >= stop


# Learns slowly: a longer schedule beats its own 2 epochs and still gains at its last epoch.
SLOW_LEARNER = {"n_layers": 1, "n_units_l0": 128, "dropout": 0.5, "batch_norm": False,
                "optimizer": "sgd", "lr_sgd": 1e-3, "weight_decay": 1e-6, "batch_size": 512}  # fmt: skip


class _Tick(Callback):
    """Moves the clock by ``seconds`` at every training epoch's end (before the clock is read)."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.now += self.seconds


def _slow_final_training(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, validation: float, retrain_epoch: float
) -> None:
    """Each epoch of the validation run, and of the retrain, takes this long on the fake clock."""
    for module, seconds in ((schedule, validation), (retrain, retrain_epoch)):
        build = module.build_trainer

        def ticking(*args: Any, _build: Any = build, _s: float = seconds, **kwargs: Any) -> Any:
            kwargs["callbacks"] = [_Tick(clock, _s), *kwargs.get("callbacks", [])]
            return _build(*args, **kwargs)

        monkeypatch.setattr(module, "build_trainer", ticking)


@pytest.mark.parametrize(
    ("validation", "retrain_epoch", "validated_epochs", "why"),
    [
        # 1 s per epoch as predicted: the 9-epoch validation run fits; the retrain's epochs take
        # 5 s, though, and it stops at the deadline, unfinished.
        (1.0, 5.0, 9, "the retrain on all training images was stopped at the deadline"),
        # 3 s per epoch: the validation run stops after 6 (18 s; a 7th would end at 21 s), and
        # what it measured leaves no time for the retrain.
        (3.0, 3.0, 6, "no time left to retrain on all training images"),
    ],
    ids=["retrain-cut", "validation-run-cut"],
)
def test_a_final_training_cut_at_the_deadline_keeps_the_weights_chosen_on_validation(
    run_config: RunConfig,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    validation: float,
    retrain_epoch: float,
    validated_epochs: int,
    why: str,
) -> None:
    run = dataclasses.replace(run_config, n_trials=1, pruner="none", final_epochs=40)
    study = load_or_create(run)
    study.enqueue_trial(SLOW_LEARNER)
    optimize(study, run)
    # 20 s left for the final training; the trial predicts 1 s per epoch: a validation run of 9
    # epochs and its retrain (60k/59.9k as long) fit.
    monkeypatch.setattr(deadline, "final_seconds_per_epoch", lambda trial: 1.0)
    clock.now = 100.0
    timed = dataclasses.replace(run, timeout=20 + deadline.REPORT_SECONDS, started_at=100.0)
    _slow_final_training(monkeypatch, clock, validation, retrain_epoch)
    result = finalize.finalize(study, timed)
    assert result is not None
    assert clock.now <= 100 + 20  # no epoch ended after the deadline
    candidates = result["final_schedule"]["candidates"]
    assert candidates[1]["schedule_epochs"] == 9
    assert len(candidates[1]["curve"]) == validated_epochs
    assert result["final_schedule"]["chosen"] == 1 and candidates[1]["epochs"] > 2
    assert not result["retrained_on_full_train"]
    assert why in result["time_split"]["note"]
    chosen = candidates[result["final_schedule"]["chosen"]]
    assert result["final_epochs"] == chosen["epochs"]
    # The file scored is the chosen schedule's best epoch: it scores its validation accuracy.
    splits = make_splits(load_raw(run.data_dir), run.val_size, run.seed)
    model = load_model(Path(result["checkpoint"]))
    images, labels = splits.images[splits.val_idx], splits.labels[splits.val_idx]
    accuracy = float((model.predict(images) == labels).float().mean())
    assert accuracy == pytest.approx(chosen["val_acc"], abs=1e-6)
    assert not list((run.output_dir / "checkpoints").glob(".*"))  # no scratch file left
    # The report says what the model is, and how the time was spent.
    write_report(study, run.output_dir, run.storage_url, run.data_dir)
    page = (run.output_dir / REPORT_HTML).read_text()
    assert "validation run" in page and "not retrained on all training images" in page
    assert "final training" in page and why in page


class _EpochsTakeTenSeconds(Callback):
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.now += 10


def test_a_trial_running_into_the_searchs_end_is_cut_and_pruned_but_the_first_completes(
    run_config: RunConfig, clock: Clock
) -> None:
    run = dataclasses.replace(
        run_config, n_trials=50, max_epochs=4, pruner="none", timeout=200, started_at=0.0
    )
    study = load_or_create(run)
    optimize(
        study,
        run,
        objective=objective.Objective(run, extra_callbacks=[_EpochsTakeTenSeconds(clock)]),
    )
    first, *rest = study.trials
    assert first.state == optuna.trial.TrialState.COMPLETE
    cut = [t for t in rest if t.user_attrs[EPOCHS] < run.max_epochs]
    assert cut and all(t.state == optuna.trial.TrialState.PRUNED for t in cut)
    assert all("search's end (--timeout)" in t.user_attrs[FAIL_REASON] for t in cut)
    # Past the search's end at most by the first epoch of a trial started before it (here the
    # measured epochs, real ones, are far shorter than the clock's: the loop could not know).
    assert clock.now <= 200 - deadline.REPORT_SECONDS + 10


def test_with_no_retrain_the_search_keeps_only_the_reports_time(
    run_config: RunConfig, clock: Clock
) -> None:
    run = dataclasses.replace(run_config, timeout=1000, started_at=0.0, retrain=False)
    best = _trial(0, 0.9, epochs=9, seconds=90.0)
    assert deadline.search_deadline(_study(best), run) == 1000 - deadline.REPORT_SECONDS
    assert deadline.plan_final(_study(best), best, run).schedule_epochs == 0


def test_an_interrupted_final_training_leaves_no_scratch_file(
    run_config: RunConfig, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = dataclasses.replace(run_config, n_trials=1, pruner="none", final_epochs=4)
    study = load_or_create(run)
    study.enqueue_trial(SLOW_LEARNER)
    optimize(study, run)
    timed = dataclasses.replace(run, timeout=1000, started_at=0.0)

    def interrupted(*args: Any, **kwargs: Any) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(once, "retrain_full", interrupted)
    plan = deadline.plan_final(study, study.best_trial, timed)
    assert plan.schedule_epochs == 4  # a validation run that keeps its weights, then the retrain
    with pytest.raises(KeyboardInterrupt):
        once.train_final(study.best_trial, timed, None, plan)
    assert {p.name for p in (run.output_dir / "checkpoints").iterdir()} == {"trial_0000.ckpt"}
