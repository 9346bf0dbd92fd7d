"""The project's own Lightning callbacks: stop on a signal, a bad loss, an epoch or the clock;
the curve."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from fmnist_tuning.faults import NonFiniteLoss, raise_if_interrupted, reinstall_handlers
from fmnist_tuning.keys import HP_METRIC, VAL_ACC


class ValHistory(Callback):
    """Records the monitored metric after every validation epoch (the trial's curve).

    Also logs ``hp_metric`` = best value so far, which TensorBoard's HParams tab shows per trial.
    """

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and VAL_ACC in trainer.callback_metrics:
            self.values.append(float(trainer.callback_metrics[VAL_ACC]))
            if trainer.logger is not None:
                trainer.logger.log_metrics({HP_METRIC: self.best}, step=trainer.current_epoch)

    @property
    def best(self) -> float:
        """The best value so far (NaN before the first validation)."""
        return max(self.values, default=float("nan"))


class TrialGuard(Callback):
    """Stops a trial at the next batch on a signal, and fails it when the loss is not finite.

    The loss check reads the module's on-device epoch loss sum (``epoch_loss_sum``: one NaN or inf
    step makes it non-finite) once per epoch, before validation, so it adds no work or
    synchronisation per step; Lightning's ``detect_anomaly`` would slow every step instead.
    """

    def __init__(self) -> None:
        self._loss_sum: torch.Tensor | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss_sum = getattr(pl_module, "epoch_loss_sum", None)
        self._loss_sum = loss_sum if isinstance(loss_sum, torch.Tensor) else None
        raise_if_interrupted()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        raise_if_interrupted()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_loss(trainer)  # before the epoch's accuracy reaches pruning or checkpoints

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_loss(trainer)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        raise_if_interrupted()

    def _check_loss(self, trainer: pl.Trainer) -> None:
        if self._loss_sum is not None and not bool(torch.isfinite(self._loss_sum)):
            raise NonFiniteLoss(
                f"non-finite training loss (NaN or inf) in epoch {trainer.current_epoch}; "
                "the learning rate is probably too high"
            )


class StopAfterEpochs(Callback):
    """Ends training after ``epochs`` epochs, whatever the Trainer's ``max_epochs`` (the schedule).

    The final model trains with the schedule chosen on validation (its length: the one-cycle
    learning rate spans it) but stops at that schedule's best epoch on validation.
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class StopBefore(Callback):
    """Ends training before an epoch that would end after ``stop_at`` (a wall-clock time).

    The next epoch's length is predicted as the mean of the epochs so far (validation included),
    so a run that cannot finish its schedule in time stops at an epoch boundary, with its last
    validation and checkpoint done. ``cut`` tells whether it stopped early.
    """

    def __init__(self, stop_at: float, clock: Callable[[], float] = time.time) -> None:
        self.stop_at, self.clock = stop_at, clock
        self.started: float | None = None
        self.cut = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = self.clock()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.started is None or trainer.should_stop:
            return
        now = self.clock()
        per_epoch = (now - self.started) / (trainer.current_epoch + 1)
        last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0) > 0
        if now + per_epoch > self.stop_at and not last:
            trainer.should_stop = self.cut = True


class KeepSignalHandlers(Callback):
    """Undoes Lightning's "ignore SIGINT" after its first ``KeyboardInterrupt`` (every Trainer).

    Lightning calls ``on_exception`` right after it set SIGINT to be ignored; a second Ctrl-C
    then reaches :mod:`fmnist_tuning.faults` again, and stops the run at once.
    """

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        reinstall_handlers()
