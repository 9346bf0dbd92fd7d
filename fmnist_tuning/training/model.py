"""The network (a plain MLP) and the Lightning "system" that trains it. Nothing here knows Optuna."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import nn

from fmnist_tuning.keys import TRAIN_LOSS, VAL_ACC, VAL_LOSS
from fmnist_tuning.runtime import optimizer_options
from fmnist_tuning.training.raw import N_CLASSES, N_FEATURES

# The optimizer pair's first half: each name's torch optimizer (SGD with Nesterov momentum 0.9).
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": lambda params, **kw: torch.optim.SGD(params, momentum=0.9, nesterov=True, **kw),
    "rmsprop": torch.optim.RMSprop,
}
SCHEDULERS = ("none", "onecycle")


class MLP(nn.Module):
    """Fully-connected classifier: [Linear → (BatchNorm) → ReLU → Dropout] × depth → Linear.

    Args:
        hidden_sizes: Width of each hidden layer; empty gives logistic regression.
        dropout: Dropout probability after every hidden activation.
        batch_norm: Insert BatchNorm1d after every hidden Linear.
        in_features: Input size (flattened image).
        n_classes: Output logits.
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (128,),
        dropout: float = 0.0,
        batch_norm: bool = False,
        in_features: int = N_FEATURES,
        n_classes: int = N_CLASSES,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden_sizes:
            layers.append(nn.Linear(width, size, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x.flatten(1))
        return out


class FashionMNISTClassifier(pl.LightningModule):
    """Trains an :class:`MLP` with cross-entropy; logs loss and accuracy per epoch.

    ``training_step`` steps the optimizer and the schedule itself (Lightning's manual
    optimization; see ``__init__`` for why): zero_grad, ``manual_backward``, step, schedule step.

    Args:
        hidden_sizes: Hidden layer widths of the MLP.
        dropout: Dropout probability.
        batch_norm: Use batch normalisation in the hidden layers.
        optimizer: One of ``OPTIMIZERS`` (SGD uses Nesterov momentum 0.9).
        lr: Learning rate (the peak rate under the one-cycle schedule).
        weight_decay: L2 penalty (decoupled for AdamW).
        label_smoothing: Cross-entropy label smoothing for training.
        scheduler: ``none``, or ``onecycle`` (stepped per batch over the Trainer's planned steps:
            its ``max_epochs`` of batches).
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (128,),
        dropout: float = 0.0,
        batch_norm: bool = False,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
        scheduler: str = "none",
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose from {sorted(OPTIMIZERS)}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose from {SCHEDULERS}")
        self.save_hyperparameters(logger=False)  # the objective logs hparams once, with hp_metric
        self.model = MLP(hidden_sizes, dropout, batch_norm)
        # validate_args=False: the inputs are our own argmax and labels, checked once when the
        # files are decoded.
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(
            N_CLASSES, average="micro", validate_args=False
        )
        # The training loss is summed on the device and logged once per epoch: on a CPU, a
        # per-step self.log or torchmetrics update costs more than a small MLP's step itself.
        # Also read by callbacks.TrialGuard: a NaN or inf in any step leaves this sum non-finite.
        self.epoch_loss_sum: torch.Tensor
        self.register_buffer("epoch_loss_sum", torch.zeros(()), persistent=False)
        self._loss_count = 0
        # training_step takes the optimizer step itself (Lightning's manual optimization): the same
        # update as automatic optimization, through the same precision-aware backward and
        # step-counting optimizer wrapper, without the per-step closure and the zero-grad and
        # gradient-clipping hooks around it. A speed measure: docs/benchmarks.md, "Speed measures".
        self.automatic_optimization = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=self.hparams["label_smoothing"])
        optimizer = self.optimizers()
        assert isinstance(optimizer, LightningOptimizer)  # one optimizer (not a list)
        optimizer.zero_grad()
        self.manual_backward(loss)  # bf16 / precision plugins apply here
        optimizer.step()  # counts global_step; runs on_before_optimizer_step hooks
        scheduler = self.lr_schedulers()
        if scheduler is not None:  # configured per step ("interval": "step")
            assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
            scheduler.step()
        self.epoch_loss_sum.add_(loss.detach(), alpha=len(y))
        self._loss_count += len(y)

    def on_train_epoch_end(self) -> None:
        self.log(TRAIN_LOSS, self.epoch_loss_sum / max(self._loss_count, 1))
        self.epoch_loss_sum.zero_()
        self._loss_count = 0

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits.argmax(dim=1), y)
        self.log(VAL_LOSS, F.cross_entropy(logits, y), on_epoch=True, batch_size=len(y))
        self.log(VAL_ACC, self.val_acc, on_epoch=True)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        name = hp["optimizer"]
        opt = OPTIMIZERS[name](
            self.parameters(),
            lr=hp["lr"],
            weight_decay=hp["weight_decay"],
            **optimizer_options(name),
        )
        if hp["scheduler"] == "onecycle":
            steps = int(self.trainer.estimated_stepping_batches)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp["lr"], total_steps=steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt
