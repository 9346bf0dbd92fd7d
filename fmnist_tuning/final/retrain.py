"""Where a final model comes from and lies: the retrain on all 60k images, or a trial's checkpoint."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from fmnist_tuning.cluster import artifacts
from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import StudyError
from fmnist_tuning.final import schedule
from fmnist_tuning.keys import CHECKPOINT, CHECKPOINT_ARTIFACT, CHECKPOINT_DIR, WORKER, trial_name
from fmnist_tuning.search import deadline
from fmnist_tuning.search.objective import checkpoint_path
from fmnist_tuning.training.callbacks import StopAfterEpochs, StopBefore
from fmnist_tuning.training.recipe import TrialConfig
from fmnist_tuning.training.trainer import build_datamodule, build_module, build_trainer


def final_path(output_dir: Path, trial: int, final_epochs: int = 0) -> Path:
    """Where the configuration of ``trial`` retrained on all 60k images is saved.

    The name carries the final model's result key (:func:`fmnist_tuning.final.results.model_key`): the
    trial, and the longest schedule validated for it (``_e40``; none when the trial's own
    schedule stood), so no final model's file is ever another's.
    """
    longest = f"_e{final_epochs}" if final_epochs else ""
    return output_dir / CHECKPOINT_DIR / f"final_{trial_name(trial)}{longest}.ckpt"


def best_epoch(trial: FrozenTrial) -> int:
    """The epoch (from 1) of the trial's best validation accuracy: where its checkpoint was saved."""
    return schedule.best_epoch(schedule.trial_curve(trial))


def retrain_full(
    config: TrialConfig,
    run: RunConfig,
    epochs: int,
    path: Path,
    seed: int,
    schedule_epochs: int,
    stop_at: float | None = None,
) -> bool:
    """Trains ``config`` afresh on all 60,000 training images; saves the weights at ``path``.

    The recipe validated on the 55k/5k split (:mod:`fmnist_tuning.final.schedule`): the one-cycle
    schedule of ``schedule_epochs`` epochs, stopped after ``epochs`` epochs (its best on
    validation), from the trial's seed. Only the data differ: the 5,000 validation images are
    trained on too (so the batches, and the draws that shuffle and flip them, differ as well).

    Returns:
        Whether it trained its ``epochs`` and saved them; False when it stopped before an epoch
        that would have ended after ``stop_at`` (a wall-clock time): then nothing is saved.
    """
    pl.seed_everything(seed, verbose=False)
    module = build_module(config)
    datamodule = build_datamodule(config, run, full_train=True)
    callbacks: list[Callback] = [StopAfterEpochs(epochs)]
    if stop_at is not None:
        callbacks.append(StopBefore(stop_at, deadline.now))
    trainer = build_trainer(
        run, callbacks=callbacks, limit_val_batches=0, max_epochs=schedule_epochs
    )
    trainer.fit(module, datamodule=datamodule)
    if trainer.current_epoch < epochs:  # (the count of epochs trained, once fit returns)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path, weights_only=True)
    return True


def trial_checkpoint(trial: FrozenTrial, run: RunConfig, store: Any) -> Path:
    """The trial's best-epoch weights on this machine: its own file, or the artifact store's copy.

    Raises:
        StudyError: Neither is there.
    """
    checkpoint = Path(trial.user_attrs.get(CHECKPOINT, ""))
    if trial.user_attrs.get(CHECKPOINT) and checkpoint.is_file():
        return checkpoint
    if CHECKPOINT_ARTIFACT in trial.user_attrs:
        with contextlib.suppress(ArtifactNotFound):
            local = checkpoint_path(run.output_dir, trial.number)
            return artifacts.fetch(store, trial.user_attrs[CHECKPOINT_ARTIFACT], local)
    host = str(trial.user_attrs.get(WORKER, "")).rpartition(":")[0]
    where = f" (host {host})" if host and host != socket.gethostname() else ""
    raise StudyError(
        f"the best trial's checkpoint {checkpoint} is missing, and the artifact store "
        f"{artifacts.store_location(run)} has no copy; pass the --artifact-store the machines "
        f"share, or run the same command on the machine{where} and output dir that trained it"
    )


def local_model(final: dict[str, Any], run: RunConfig, store: Any | None = None) -> Path:
    """Where this machine has a final model's weights: in its output dir, else where recorded.

    Given the artifact store, a model missing from the output dir is copied from there first (it
    was made on another machine, or in another output dir). A result stored by an earlier version
    names no file of its own (two final models of one trial shared one name, the later one
    overwriting the earlier): its own stored copy is fetched under a name of its own.
    """
    name = final.get("model_file")
    if name is None:
        stem, artifact = Path(final["model"]).stem, final.get("model_artifact")
        name = f"{stem}_{artifact[:8]}.ckpt" if artifact and store is not None else f"{stem}.ckpt"
    here = run.output_dir / CHECKPOINT_DIR / name
    if not here.is_file() and store is not None and final.get("model_artifact"):
        with contextlib.suppress(ArtifactNotFound):
            artifacts.fetch(store, final["model_artifact"], here)
    return here if here.is_file() else Path(final["model"])
