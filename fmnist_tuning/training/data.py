"""The Fashion-MNIST DataModule: a seeded train/val split on the device, batched by indexing.

The decoded images (:mod:`fmnist_tuning.training.raw`) are moved to the trial's device once per process and
shared by every trial; a batch is one index gather plus one normalisation, with a seeded
permutation per epoch: no per-sample transforms, no DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from fmnist_tuning.training.raw import (
    CLASS_NAMES,
    IMAGE_SIDE,
    RawFashionMNIST,
    check_val_size,
    download,
    load_raw,
)


class TensorBatches:
    """Mini-batches gathered by index from whole-split uint8 images, normalised on the fly.

    The images stay uint8 on the device (a quarter of the memory of float32); each batch is one
    index gather plus one fused normalisation, with a seeded permutation per epoch.

    Args:
        images: All images of the split's source (N, 784), uint8, on the target device.
        labels: Their labels (N,), on the same device.
        indices: The rows of ``images`` that form this split, in order.
        batch_size: Samples per batch; the last batch may be smaller.
        mean: Normalisation mean, in [0, 1] pixel units.
        std: Normalisation standard deviation, in [0, 1] pixel units.
        shuffle: Draw a fresh permutation every epoch (seeded by ``seed`` and the epoch count).
        seed: Base seed of the permutations.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        batch_size: int,
        mean: float,
        std: float,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        self.images, self.labels, self.indices = images, labels, indices
        self.batch_size = batch_size
        self.mean, self.std = mean, std
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            perm = torch.randperm(len(order), generator=gen).to(order.device)
            order = order[perm]
            self.epoch += 1
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield normalise(self.images[idx], self.mean, self.std), self.labels[idx]


@dataclass(frozen=True)
class Splits:
    """The official training set on one device, split by index; shared by every trial.

    ``images``/``labels`` hold all 60,000 training images once (uint8); ``train_idx`` and
    ``val_idx`` are the seeded split; ``mean``/``std`` are the training split's pixel statistics.
    """

    images: torch.Tensor
    labels: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    mean: float
    std: float


# The split of the decoded data on one device, by (data, val_size, seed, device): one at a time.
_SPLITS: dict[tuple[RawFashionMNIST, int, int, str], Splits] = {}


def pixel_stats(images: torch.Tensor, rows: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of ``images[rows]`` in [0, 1] units, in chunks (no float copy)."""
    total = squares = 0.0
    for chunk in torch.split(rows, 2048):
        px = images[chunk].double()
        total += float(px.sum())
        squares += float(px.square().sum())
    n = rows.numel() * images.shape[1]
    mean = total / n
    var = max(squares / n - mean * mean, 0.0) * n / max(n - 1, 1)
    return mean / 255, var**0.5 / 255


def make_splits(
    raw: RawFashionMNIST, val_size: int, seed: int, device: torch.device | str = "cpu"
) -> Splits:
    """Seeded train/val split of the official training set, with the train-split statistics."""
    check_val_size(raw, val_size)
    n = raw.train_x.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train_idx, val_idx = order[val_size:], order[:val_size]
    mean, std = pixel_stats(raw.train_x, train_idx)
    return Splits(
        images=raw.train_x.to(device),
        labels=raw.train_y.to(device),
        train_idx=train_idx.to(device),
        val_idx=val_idx.to(device),
        mean=mean,
        std=std,
    )


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Mirrors each image of a batch of flattened images (B, 784) left-right with probability 1/2.

    Garments are near-symmetric, so a mirrored image is as plausible as the original. Runs on x's
    device, with torch's global generator (seeded per trial).
    """
    b = x.shape[0]
    img = x.view(b, IMAGE_SIDE, IMAGE_SIDE)
    mirrored = torch.rand(b, device=x.device) < 0.5
    return torch.where(mirrored[:, None, None], img.flip(-1), img).reshape(b, -1)


def random_shift(x: torch.Tensor, pixels: int, background: float) -> torch.Tensor:
    """Moves each image of a batch of flattened images (B, 784) by its own random offset of up to
    ``pixels`` in each direction, filling the uncovered border with ``background``.

    One padded copy and one index gather on x's device, with torch's global generator.
    """
    b, side = x.shape[0], IMAGE_SIDE
    padded = torch.nn.functional.pad(x.view(b, side, side), (pixels,) * 4, value=background)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, b, 1), device=x.device)
    steps = torch.arange(side, device=x.device)
    rows, cols = (dy + steps)[:, :, None], (dx + steps)[:, None, :]
    return padded[torch.arange(b, device=x.device)[:, None, None], rows, cols].reshape(b, -1)


def normalise(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 pixels → float32 standardised with the given (training) mean and std in [0, 1] units."""
    return images.float().sub_(255 * mean).div_(255 * std)


class FashionMNISTDataModule(pl.LightningDataModule):
    """Fashion-MNIST with a seeded train/val split and on-device whole-tensor batches.

    Args:
        data_dir: Folder with the four IDX ``.gz`` files, or torchvision's ``FashionMNIST/raw``
            layout below it (downloaded there by ``prepare_data`` when absent).
        batch_size: Training batch size.
        val_size: Images of the official training set held out for validation.
        seed: Seed of the train/val split and of the per-epoch shuffles.
        eval_batch_size: Batch size for validation; small enough that the widest
            models' evaluation activations stay a small part of a trial's memory.
        flip: Random horizontal flips of training batches (on the device, after transfer).
        shift: Random shifts of training batches by up to this many pixels (0: none).
        full_train: Train on all 60,000 official training images (the validation images too), for
            the final model of a finished study; its validation batches are then training images,
            so such a run validates nothing (the retrain sets ``limit_val_batches=0``).
    """

    def __init__(
        self,
        data_dir: str | Path = "data",
        batch_size: int = 128,
        val_size: int = 5_000,
        seed: int = 0,
        eval_batch_size: int = 1_000,
        flip: bool = False,
        full_train: bool = False,
        shift: int = 0,
    ) -> None:
        super().__init__()
        self.shift = shift
        self.full_train = full_train
        self.flip = flip
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.val_size = val_size
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.splits: Splits | None = None
        # The training split's (mean, std), once set up: the inputs' normalisation, kept after
        # teardown for the checkpoints saved then (see state_dict).
        self.normalisation: tuple[float, float] | None = None

    def prepare_data(self) -> None:
        """Downloads the files when they are not on disk yet (one process, no state)."""
        download(self.data_dir)

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _shared_splits(self) -> Splits:
        raw = load_raw(self.data_dir)
        device = self._device()
        key = (raw, self.val_size, self.seed, str(device))
        if key not in _SPLITS:
            _SPLITS.clear()  # one split per process; new data, seed or device replaces it
            _SPLITS[key] = make_splits(raw, self.val_size, self.seed, device)
        return _SPLITS[key]

    def setup(self, stage: str | None = None) -> None:
        """Builds the on-device splits (shared by every trial of the process).

        No stage reads the official test set: the final model alone is scored on it, once,
        through its own file (:func:`fmnist_tuning.final.scoring.score_on_test`).
        """
        self.splits = self._shared_splits()
        self.normalisation = (self.splits.mean, self.splits.std)

    def state_dict(self) -> dict[str, Any]:
        """What a model needs beside its weights to classify raw images: the normalisation of its
        inputs and the class names. Lightning stores this in every checkpoint of a run with this
        DataModule, so a final model's file stands alone (:mod:`fmnist_tuning.final.classifier`)."""
        if self.normalisation is None:
            return {}
        mean, std = self.normalisation
        return {"mean": mean, "std": std, "class_names": list(CLASS_NAMES)}

    def train_dataloader(self) -> TensorBatches:
        assert self.splits is not None, "call setup('fit') first"
        s = self.splits
        rows = torch.cat([s.train_idx, s.val_idx]) if self.full_train else s.train_idx
        return TensorBatches(
            s.images, s.labels, rows, self.batch_size, s.mean, s.std, True, self.seed
        )

    def val_dataloader(self) -> TensorBatches:
        assert self.splits is not None, "call setup('fit') first"
        s = self.splits
        return TensorBatches(s.images, s.labels, s.val_idx, self.eval_batch_size, s.mean, s.std)

    def on_after_batch_transfer(
        self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flips and shifts training batches (with ``flip``, ``shift``); validation images stay
        as they are."""
        trainer = self.trainer
        if trainer is None or not trainer.training or self.splits is None:
            return batch
        x, y = batch
        if self.flip:
            x = random_flip(x)
        if self.shift:
            x = random_shift(x, self.shift, -self.splits.mean / self.splits.std)
        return x, y

    def teardown(self, stage: str | None = None) -> None:
        """Drops this module's references; the process-wide cache keeps the shared tensors."""
        self.splits = None
