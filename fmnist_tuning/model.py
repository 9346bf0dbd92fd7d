"""The network (a plain MLP) and the Lightning "system" that trains it. Nothing here knows Optuna."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import nn

from fmnist_tuning.data import N_CLASSES, N_FEATURES

# The one name of the monitored metric: logged here, watched by pruning, early stopping, checkpoints.
VAL_ACC = "val/acc"
VAL_LOSS = "val/loss"
TRAIN_LOSS = "train/loss"
TEST_ACC = "test/acc"

# Fused kernels (CPU and CUDA) where torch has them: the same updates, no per-tensor temporaries;
# on this project's CPU a step of the default 2000-640 model took 26 instead of 42 ms with Adam
# and 26 instead of 32 ms with SGD (RMSprop has no fused kernel).
OPTIMIZERS: dict[str, Callable[[Iterator[nn.Parameter], float, float], torch.optim.Optimizer]] = {
    "adam": lambda p, lr, wd: torch.optim.Adam(p, lr=lr, weight_decay=wd, fused=True),
    "adamw": lambda p, lr, wd: torch.optim.AdamW(p, lr=lr, weight_decay=wd, fused=True),
    "sgd": lambda p, lr, wd: torch.optim.SGD(
        p, lr=lr, weight_decay=wd, momentum=0.9, nesterov=True, fused=True
    ),
    "rmsprop": lambda p, lr, wd: torch.optim.RMSprop(p, lr=lr, weight_decay=wd),
}
SCHEDULERS = ("none", "onecycle")
_PLAIN_ATTRIBUTES = frozenset({"_current_fx_name", "_loss_count"})  # never tensors or modules


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
        scheduler: ``none``, or ``onecycle`` (stepped per batch over the whole training).
        max_epochs: Planned epochs, the length of the schedules.
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
        max_epochs: int = 10,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose from {sorted(OPTIMIZERS)}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose from {SCHEDULERS}")
        self.save_hyperparameters(logger=False)  # the objective logs hparams once, with hp_metric
        self.model = MLP(hidden_sizes, dropout, batch_norm)
        # One accuracy metric per evaluation stage. validate_args=False: the inputs are our own
        # argmax and labels, checked once when the files are decoded.
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(
            N_CLASSES, average="micro", validate_args=False
        )
        self.test_acc = self.val_acc.clone()
        # The training loss is summed on the device and logged once per epoch: on a CPU, a
        # per-step self.log or torchmetrics update costs more than a small MLP's step itself.
        # Also read by faults.TrialGuard: a NaN or inf in any step leaves this sum non-finite.
        self.epoch_loss_sum: torch.Tensor
        self.register_buffer("epoch_loss_sum", torch.zeros(()), persistent=False)
        self._loss_count = 0
        # training_step takes the optimizer step itself (Lightning's manual optimization): the same
        # update as automatic optimization, through the same precision-aware backward and
        # step-counting optimizer wrapper, without the per-step closure and the zero-grad and
        # gradient-clipping hooks around it: 1.06 -> 1.01 s per epoch of the benchmark's
        # 784-128-10 model, the Trainer's share of which is what scripts/benchmark.py measures.
        self.automatic_optimization = False

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning records the running hook's name in _current_fx_name about 30 times per training
        # step; nn.Module.__setattr__ would first look for a parameter, buffer or submodule of that
        # name each time (~1 us). Plain bookkeeping attributes go straight to the instance, where
        # nn.Module would put them too.
        if name in _PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def model_step(
        self, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shared by validation and test: the loss, the predictions and the targets of a batch."""
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y), logits.argmax(dim=1), y

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
        loss, preds, y = self.model_step(batch)
        self.val_acc(preds, y)
        self.log(VAL_LOSS, loss, on_epoch=True, batch_size=len(y))
        self.log(VAL_ACC, self.val_acc, on_epoch=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, preds, y = self.model_step(batch)
        self.test_acc(preds, y)
        self.log("test/loss", loss, on_epoch=True, batch_size=len(y))
        self.log(TEST_ACC, self.test_acc, on_epoch=True)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = OPTIMIZERS[hp["optimizer"]](self.parameters(), hp["lr"], hp["weight_decay"])
        if hp["scheduler"] == "onecycle":
            steps = int(self.trainer.estimated_stepping_batches)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp["lr"], total_steps=steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt
