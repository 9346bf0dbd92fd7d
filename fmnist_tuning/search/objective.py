"""One trial: search space → config → DataModule + LightningModule + Trainer → best val accuracy."""

from __future__ import annotations

import gc
import logging
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback

from fmnist_tuning.cluster import artifacts
from fmnist_tuning.config import RunConfig
from fmnist_tuning.faults import Interrupted, TrialFailure, received_signal
from fmnist_tuning.keys import (
    CHECKPOINT,
    CHECKPOINT_ARTIFACT,
    CHECKPOINT_DIR,
    EPOCHS,
    FAIL_REASON,
    HP_METRIC,
    LATENCY_MS,
    PARAMS,
    TENSORBOARD_DIR,
    TRAIN_SECONDS,
    VAL_ACC,
    VAL_CURVE,
    trial_name,
)
from fmnist_tuning.search import budget, deadline, front
from fmnist_tuning.search.space import suggest_config
from fmnist_tuning.training.callbacks import StopBefore, TrialGuard, ValHistory
from fmnist_tuning.training.recipe import TrialConfig
from fmnist_tuning.training.trainer import (
    best_epoch_checkpoint,
    build_datamodule,
    build_module,
    build_trainer,
)

log = logging.getLogger(__name__)

DataModuleFactory = Callable[[TrialConfig, RunConfig], pl.LightningDataModule]


def checkpoint_path(output_dir: Path, number: int) -> Path:
    """Where trial ``number`` keeps its weights at its best epoch."""
    return output_dir / CHECKPOINT_DIR / f"{trial_name(number)}.ckpt"


def _remove_checkpoint(checkpoint: ModelCheckpoint) -> None:
    """Deletes the file a pruned trial's checkpoint callback wrote, if it wrote one yet."""
    if checkpoint.best_model_path:  # "" before the first save: Path("") would be the cwd
        Path(checkpoint.best_model_path).unlink(missing_ok=True)


class Objective:
    """Trains one trial's configuration and returns its best validation accuracy.

    Under ``--timeout`` a trial stops before an epoch that would end after the search's end
    (:func:`fmnist_tuning.search.deadline.search_deadline`): pruned, or, when it is the study's
    first, complete with what it reached.

    Records on the trial: ``epochs`` trained, ``train_seconds``, its network's ``params`` and
    ``latency_ms`` (:mod:`fmnist_tuning.search.budget`; under a budget also as constraints), its
    ``checkpoint`` and that file's ``checkpoint_artifact`` in the artifact store (complete trials)
    and, when it failed or was pruned for another reason than its accuracy, ``fail_reason``.

    Args:
        run: The study-wide settings (data, epochs, output folder, accelerator, pruning).
        make_datamodule: Builds the trial's data pipeline (the benchmark swaps in a DataLoader one).
        extra_callbacks: Added to every trial's Trainer (e.g. timers).
        trainer_overrides: Trainer arguments that replace the defaults (e.g. ``limit_train_batches``).
    """

    def __init__(
        self,
        run: RunConfig,
        make_datamodule: DataModuleFactory | None = None,
        extra_callbacks: Sequence[Callback] = (),
        trainer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.run = run
        self.make_datamodule = make_datamodule or build_datamodule
        self.extra_callbacks = list(extra_callbacks)
        self.trainer_overrides = trainer_overrides or {}
        self.store = artifacts.open_store(run)
        artifacts.check_writable(self.store, run)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        run = self.run
        config = suggest_config(trial, run.small_widths)
        name = trial_name(trial.number)
        pl.seed_everything(run.seed + trial.number, verbose=False)
        module = build_module(config)
        params = budget.count_params(module)
        if over := budget.record_params(trial, params, run):
            trial.set_user_attr(EPOCHS, 0)
            raise optuna.TrialPruned(over)  # never trains: known before the first epoch
        history = ValHistory()
        checkpoint = best_epoch_checkpoint(checkpoint_path(run.output_dir, trial.number))
        latency = budget.LatencyProbe(trial, run)
        early_stopping = EarlyStopping(monitor=VAL_ACC, mode="max", patience=run.early_stopping)
        # Under --timeout: the trial ends before an epoch that would eat into the final model's time.
        stop_at = (
            deadline.search_deadline(trial.study, run) if isinstance(trial, optuna.Trial) else None
        )
        clock = StopBefore(stop_at, deadline.now) if stop_at is not None else None
        callbacks: list[Callback] = [
            TrialGuard(),  # a signal or a non-finite loss ends the trial at the next batch
            history,
            latency,  # after epoch 1, before any pruning can happen
            # Reports every epoch (the intermediate values plot needs them); prunes per the pruner.
            # Optuna cannot report or prune in a multi-objective study (a front).
            *(
                []
                if front.is_front(run)
                else [PyTorchLightningPruningCallback(trial, monitor=VAL_ACC)]
            ),
            early_stopping,
            checkpoint,
            *([clock] if clock else []),
            *self.extra_callbacks,
        ]
        logger = TensorBoardLogger(
            run.output_dir / TENSORBOARD_DIR, name="", version=name, default_hp_metric=False
        )
        # The HParams entry is written once, up front; ValHistory then updates its hp_metric, and
        # LatencyProbe its latency_ms.
        logger.log_hyperparams(
            {"trial": trial.number, **config.flat(), PARAMS: params},
            {HP_METRIC: 0.0, LATENCY_MS: 0.0},
        )
        trainer = build_trainer(run, callbacks, logger, **self.trainer_overrides)
        start = time.perf_counter()
        out_of_memory = ""
        try:
            trainer.fit(module, datamodule=self.make_datamodule(config, run))
        except optuna.TrialPruned:
            _remove_checkpoint(checkpoint)
            raise
        except (TrialFailure, Interrupted, SystemExit) as err:
            # Lightning turns Ctrl-C into sys.exit(1) and SIGTERM into SIGTERMException.
            default = signal.SIGTERM if isinstance(err, SIGTERMException) else signal.SIGINT
            failure = (
                err
                if isinstance(err, (TrialFailure, Interrupted))
                else Interrupted(received_signal() or default)
            )
            trial.set_user_attr(FAIL_REASON, failure.reason)
            raise failure from None
        except torch.cuda.OutOfMemoryError as err:  # pruned below, once the memory is freed
            out_of_memory = str(err).strip()[:300] or "CUDA out of memory"
        finally:
            trial.set_user_attr(EPOCHS, len(history.values))
            trial.set_user_attr(VAL_CURVE, [round(v, 6) for v in history.values])
            trial.set_user_attr(TRAIN_SECONDS, round(time.perf_counter() - start, 3))
            del trainer, module  # on a CPU, the loop's gc_after_trial collects them
            for callback in self.extra_callbacks:
                # Lightning binds the module's log methods onto every callback; a callback that
                # outlives the trial would keep the trial's module and Trainer alive with them.
                vars(callback).pop("log", None)
                vars(callback).pop("log_dict", None)
            if torch.cuda.is_available():
                gc.collect()  # before empty_cache, so the trial's tensors are really released
                torch.cuda.empty_cache()
        if clock is not None and clock.cut and not early_stopping.stopped_epoch:
            why = f"stopped after {len(history.values)} epochs at the search's end (--timeout)"
            log.info("trial %d %s", trial.number, why)
            if trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                # Cut short, it is no complete trial; the first one is (it measures the cost).
                _remove_checkpoint(checkpoint)
                trial.set_user_attr(FAIL_REASON, why)
                raise optuna.TrialPruned(why)
        if out_of_memory:
            _remove_checkpoint(checkpoint)
            trial.set_user_attr(FAIL_REASON, out_of_memory)
            raise optuna.TrialPruned(out_of_memory)
        if checkpoint.best_model_path:
            path = Path(checkpoint.best_model_path).resolve()
            trial.set_user_attr(CHECKPOINT, str(path))
            if isinstance(trial, optuna.Trial):  # not a stand-in (FixedTrial, a wrapper)
                artifact = artifacts.upload(self.store, path, trial)
                trial.set_user_attr(CHECKPOINT_ARTIFACT, artifact)
        if run.objectives == "accuracy,params":
            return history.best, float(params)
        if run.objectives == "accuracy,latency" and latency.latency_ms is not None:
            return history.best, latency.latency_ms
        return history.best
