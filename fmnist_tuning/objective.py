"""One trial: search space → config → DataModule + LightningModule + Trainer → best val accuracy."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from optuna_integration import PyTorchLightningPruningCallback

from fmnist_tuning.config import RunConfig
from fmnist_tuning.data import FashionMNISTDataModule
from fmnist_tuning.faults import FAIL_REASON, Interrupted, TrialFailure, TrialGuard, received_signal
from fmnist_tuning.model import TEST_ACC, VAL_ACC, FashionMNISTClassifier
from fmnist_tuning.search_space import TrialConfig, suggest_config

CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
FINAL_CHECKPOINT = "final_{name}.ckpt"  # the best configuration retrained on all training images

# Lightning's advice for DataLoader-based pipelines does not apply to on-device tensor batches.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def trial_name(number: int) -> str:
    """The name shared by a trial's TensorBoard run and its checkpoint file."""
    return f"trial_{number:04d}"


def uses_gpu(accelerator: str) -> bool:
    """Whether ``accelerator`` resolves to a CUDA device on this machine."""
    return accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())


def uses_bf16(accelerator: str) -> bool:
    """Whether trials under ``accelerator`` train in bf16 mixed precision (GPUs that support it)."""
    return uses_gpu(accelerator) and torch.cuda.is_bf16_supported()


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
                trainer.logger.log_metrics({"hp_metric": self.best}, step=trainer.current_epoch)

    @property
    def best(self) -> float:
        return max(self.values, default=float("nan"))


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return getattr(libc, "malloc_trim", None)  # glibc only (not musl, not macOS)


_MALLOC_TRIM = _glibc_malloc_trim()


def release_memory(*_: object) -> None:
    """Hands the finished trial's freed memory back to the OS (an Optuna study callback).

    Runs after ``study.optimize(gc_after_trial=True)`` has collected the trial's objects. glibc
    keeps freed heap blocks for reuse; trials of very different widths leave them fragmented, and
    RSS crept up ~75 MB over 50 trials before this (~5 MB with it).
    """
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@contextlib.contextmanager
def spare_long_lived_objects() -> Iterator[None]:
    """Keeps the garbage collector from walking, after every trial, what outlives all trials.

    ``study.optimize(gc_after_trial=True)`` runs a full collection after each trial, so that the
    trial's Trainer, module and tensors (held in reference cycles) are freed at once; on a GPU the
    objective also collects before it empties CUDA's cache. A full collection walks every tracked
    object: ~450,000 once torch, Lightning and Optuna are imported, 0.33-0.45 s on the 2-core
    reference CPU. Around a trial loop, ``gc.freeze()`` moves everything alive at its start
    (modules, the decoded data, the study) into a generation the collector skips, so each
    collection walks only what was made since: under 1 ms here. Objects made inside are collected
    as before. On exit the freeze is undone, unless the process had frozen objects of its own.
    """
    frozen_before = gc.get_freeze_count()
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


_NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def _cheap_cuda_checks_without_a_gpu() -> None:
    """Stops every optimizer step of a CPU-only machine from looking for NVIDIA's driver again.

    Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (fork-safe CUDA checks), and Adam, AdamW and
    RMSprop ask ``torch.cuda.is_available()`` on every step. Without a driver that check first
    fails to load libnvidia-ml (not cached), then falls back to the CUDA runtime's device count
    anyway; going to the fallback directly took 1.59 instead of 1.77 s per epoch of the
    784-128-10 benchmark model. With a GPU the answer is cached after CUDA starts, so nothing
    changes there.
    """
    if os.environ.get(_NVML_CHECK) == "1" and not torch.cuda.is_available():
        os.environ[_NVML_CHECK] = "0"


# The callback hooks Lightning calls once or more per batch.
BATCH_HOOKS = (
    *(
        f"on_{stage}_batch_{when}"
        for stage in ("train", "validation", "test", "predict")
        for when in ("start", "end")
    ),
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
)


def skip_unused_batch_hooks(callbacks: Sequence[Callback]) -> None:
    """Spares Lightning the calls of the per-batch hooks that a callback only inherits (no-ops).

    Lightning calls every hook of every callback, each inside a profiler context, whether the
    callback does anything there or not; it passes over an attribute that is not callable. A
    benchmark trial of the 784-128-10 model (five callbacks and a timer) made 13,014 callback
    calls per epoch, nearly all of them no-ops; with those skipped it makes 919, and the epoch
    took 0.012-0.054 s less (medians of three paired runs of 10-15 repeats) on the 2-core
    reference CPU, out of Lightning's ~0.2 s share. Hooks a callback overrides are kept, and so
    is every hook that runs once per epoch or less.
    """
    for callback in callbacks:
        for hook in BATCH_HOOKS:
            if getattr(type(callback), hook) is getattr(Callback, hook):
                setattr(callback, hook, None)


def build_trainer(
    run: RunConfig,
    callbacks: list[Callback] | None = None,
    logger: TensorBoardLogger | None = None,
    **overrides: Any,
) -> pl.Trainer:
    """The Trainer every trial uses: quiet, no sanity check, bf16 on GPUs that support it."""
    gpu = uses_gpu(run.accelerator)
    _cheap_cuda_checks_without_a_gpu()
    kwargs: dict[str, Any] = {
        "accelerator": "gpu" if gpu else "cpu",
        "devices": 1,
        "max_epochs": run.max_epochs,
        "precision": "bf16-mixed" if uses_bf16(run.accelerator) else "32-true",
        "logger": logger if logger is not None else False,
        "callbacks": callbacks or [],
        "enable_checkpointing": any(isinstance(c, ModelCheckpoint) for c in callbacks or []),
        "enable_progress_bar": run.progress,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 50,
    }
    kwargs.update(overrides)
    skip_unused_batch_hooks(kwargs["callbacks"])
    return pl.Trainer(**kwargs)


def build_module(config: TrialConfig, run: RunConfig) -> FashionMNISTClassifier:
    """The LightningModule for ``config``."""
    return FashionMNISTClassifier(**config.model_kwargs(), max_epochs=run.max_epochs)


def build_datamodule(
    config: TrialConfig, run: RunConfig, full_train: bool = False
) -> FashionMNISTDataModule:
    """The DataModule for ``config`` (the data tensors themselves are shared process-wide)."""
    return FashionMNISTDataModule(
        run.data_dir,
        batch_size=config.batch_size,
        val_size=run.val_size,
        seed=run.seed,
        flip=config.flip,
        shift=config.shift,
        full_train=full_train,
    )


def _remove_checkpoint(checkpoint: ModelCheckpoint) -> None:
    """Deletes the file a pruned trial's checkpoint callback wrote, if it wrote one yet."""
    if checkpoint.best_model_path:  # "" before the first save: Path("") would be the cwd
        Path(checkpoint.best_model_path).unlink(missing_ok=True)


DataModuleFactory = Callable[[TrialConfig, RunConfig], pl.LightningDataModule]


class Objective:
    """Trains one trial's configuration and returns its best validation accuracy.

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

    def __call__(self, trial: optuna.Trial) -> float:
        run = self.run
        config = suggest_config(trial)
        name = trial_name(trial.number)
        pl.seed_everything(run.seed + trial.number, verbose=False)
        history = ValHistory()
        checkpoint = ModelCheckpoint(
            dirpath=run.output_dir / CHECKPOINT_DIR,
            filename=name,
            monitor=VAL_ACC,
            mode="max",
            save_top_k=1,
            save_weights_only=True,
            enable_version_counter=False,
        )
        callbacks: list[Callback] = [
            TrialGuard(),  # a signal or a non-finite loss ends the trial at the next batch
            history,
            # Reports every epoch (the intermediate values plot needs them); prunes per the pruner.
            PyTorchLightningPruningCallback(trial, monitor=VAL_ACC),
            EarlyStopping(monitor=VAL_ACC, mode="max", patience=run.early_stopping),
            checkpoint,
            *self.extra_callbacks,
        ]
        logger = TensorBoardLogger(
            run.output_dir / TENSORBOARD_DIR, name="", version=name, default_hp_metric=False
        )
        # The HParams entry is written once, up front; ValHistory then updates its hp_metric.
        logger.log_hyperparams({"trial": trial.number, **config.flat()}, {"hp_metric": 0.0})
        trainer = build_trainer(run, callbacks, logger, **self.trainer_overrides)
        module = build_module(config, run)
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
            trial.set_user_attr("epochs", len(history.values))
            trial.set_user_attr("train_seconds", round(time.perf_counter() - start, 3))
            del trainer, module  # on a CPU, study.optimize(gc_after_trial=True) collects them
            for callback in self.extra_callbacks:
                # Lightning binds the module's log methods onto every callback; a callback that
                # outlives the trial would keep the trial's module and Trainer alive with them.
                vars(callback).pop("log", None)
                vars(callback).pop("log_dict", None)
            if torch.cuda.is_available():
                gc.collect()  # before empty_cache, so the trial's tensors are really released
                torch.cuda.empty_cache()
        if out_of_memory:
            _remove_checkpoint(checkpoint)
            trial.set_user_attr(FAIL_REASON, out_of_memory)
            raise optuna.TrialPruned(out_of_memory)
        trial.set_user_attr("checkpoint", str(Path(checkpoint.best_model_path).resolve()))
        return history.best


def retrain_full(config: TrialConfig, run: RunConfig, epochs: int, path: Path) -> Path:
    """Trains ``config`` afresh on all 60,000 training images for ``epochs``; saves it at ``path``.

    The chosen configuration was selected on the validation split; the final model may then also
    learn from those 5,000 images (the schedule spans ``epochs``, the length the trial trained).
    """
    pl.seed_everything(run.seed, verbose=False)
    module = build_module(config, run)
    datamodule = build_datamodule(config, run, full_train=True)
    trainer = build_trainer(run, max_epochs=epochs, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path, weights_only=True)
    return path


def evaluate_test(checkpoint: str | Path, config: TrialConfig, run: RunConfig) -> float:
    """Accuracy of a saved model on the official 10,000-image test set (the final, single use)."""
    module = FashionMNISTClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    trainer = build_trainer(run, logger=None)
    (result,) = trainer.test(module, datamodule=build_datamodule(config, run), verbose=False)
    return float(result[TEST_ACC])
