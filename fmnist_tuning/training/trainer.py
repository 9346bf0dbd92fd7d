"""The Lightning pieces every run builds the same way: Trainer, LightningModule, DataModule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger

from fmnist_tuning.config import RunConfig
from fmnist_tuning.keys import VAL_ACC
from fmnist_tuning.training.callbacks import KeepSignalHandlers
from fmnist_tuning.training.data import FashionMNISTDataModule
from fmnist_tuning.training.model import FashionMNISTClassifier
from fmnist_tuning.training.recipe import TrialConfig


def uses_gpu(accelerator: str) -> bool:
    """Whether ``accelerator`` resolves to a CUDA device on this machine."""
    return accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())


def uses_bf16(accelerator: str) -> bool:
    """Whether runs under ``accelerator`` train in bf16 mixed precision (GPUs that support it)."""
    return uses_gpu(accelerator) and torch.cuda.is_bf16_supported()


def build_trainer(
    run: RunConfig,
    callbacks: list[Callback] | None = None,
    logger: Logger | None = None,
    **overrides: Any,
) -> pl.Trainer:
    """The Trainer of every trial, retrain and test pass: quiet, no sanity check, bf16 on GPUs.

    Args:
        run: The study-wide settings (accelerator, ``max_epochs``, progress bars).
        callbacks: The run's callbacks; checkpointing is on when one is a ``ModelCheckpoint``.
            :class:`~fmnist_tuning.training.callbacks.KeepSignalHandlers` is added to them.
        logger: Where metrics go (none by default).
        **overrides: Trainer arguments that replace these defaults (e.g. ``limit_val_batches``).
    """
    callbacks = [*(callbacks or []), KeepSignalHandlers()]
    kwargs: dict[str, Any] = {
        "accelerator": "gpu" if uses_gpu(run.accelerator) else "cpu",
        "devices": 1,
        "max_epochs": run.max_epochs,
        "precision": "bf16-mixed" if uses_bf16(run.accelerator) else "32-true",
        "logger": logger if logger is not None else False,
        "callbacks": callbacks,
        "enable_checkpointing": any(isinstance(c, ModelCheckpoint) for c in callbacks),
        "enable_progress_bar": run.progress,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 50,
    }
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


def best_epoch_checkpoint(path: Path) -> ModelCheckpoint:
    """Keeps the weights of the run's best epoch on validation (``val/acc``) at ``path``."""
    return ModelCheckpoint(
        dirpath=path.parent,
        filename=path.stem,
        monitor=VAL_ACC,
        mode="max",
        save_top_k=1,
        save_weights_only=True,
        enable_version_counter=False,
    )


def build_module(config: TrialConfig) -> FashionMNISTClassifier:
    """The LightningModule for ``config``."""
    return FashionMNISTClassifier(**config.model_kwargs())


def build_datamodule(
    config: TrialConfig, run: RunConfig, full_train: bool = False
) -> FashionMNISTDataModule:
    """The DataModule for ``config`` (the data tensors themselves are shared process-wide).

    Args:
        config: The configuration (batch size, flips).
        run: The study-wide settings (data folder, validation split).
        full_train: Train on all 60,000 training images (the final model; validate nothing then).
    """
    return FashionMNISTDataModule(
        run.data_dir,
        batch_size=config.batch_size,
        val_size=run.val_size,
        seed=run.seed,
        flip=config.flip,
        full_train=full_train,
        shift=config.shift,
    )
