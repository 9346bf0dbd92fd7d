"""Fashion-MNIST as whole-split tensors: decoded once per process, batched by indexing.

The four original IDX ``.gz`` files are read in place (never written next to), either directly in
``data_dir`` (like ``../shared/data/fashion-mnist``) or in torchvision's layout
``data_dir/FashionMNIST/raw/``. When neither exists, ``prepare_data`` downloads them with torchvision
(md5-checked).
"""

from __future__ import annotations

import gzip
import logging
import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SIDE = 28
N_FEATURES = IMAGE_SIDE * IMAGE_SIDE
N_CLASSES = len(CLASS_NAMES)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned byte data, 3-D images / 1-D labels


class DataError(ValueError):
    """A Fashion-MNIST file is missing or unreadable; the message names the file and the fix."""


@dataclass(frozen=True)
class RawFashionMNIST:
    """The decoded official splits, as uint8 images (N, 784) and int64 labels (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def _candidate_dirs(data_dir: Path) -> list[Path]:
    return [data_dir, data_dir / "FashionMNIST" / "raw"]


def find_files(data_dir: str | Path) -> dict[str, Path] | None:
    """Locates the four IDX files (``.gz`` or unpacked) in either supported layout.

    Returns:
        The paths by role, or ``None`` when no file of the dataset is present at all.

    Raises:
        DataError: Some but not all of the files are present.
    """
    data_dir = Path(data_dir)
    for folder in _candidate_dirs(data_dir):
        found: dict[str, Path] = {}
        for role, stem in FILES.items():
            for name in (stem + ".gz", stem):
                if (folder / name).is_file():
                    found[role] = folder / name
                    break
        if len(found) == len(FILES):
            return found
        if found:
            missing = sorted(FILES[r] + ".gz" for r in FILES if r not in found)
            raise DataError(
                f"{folder} has only part of Fashion-MNIST: missing {', '.join(missing)}; "
                "copy the four original .gz files there or pass another --data-dir"
            )
    return None


def _read_idx(path: Path, ndim: int) -> torch.Tensor:
    fix = "replace it with an intact copy of the original file or pass another --data-dir"
    header_size = 4 + 4 * ndim
    try:
        with gzip.open(path) if path.suffix == ".gz" else path.open("rb") as f:
            header = f.read(header_size)
            if len(header) < header_size:
                raise DataError(f"{path} is corrupt (only {len(header)} bytes); {fix}")
            magic, *dims = struct.unpack(f">{1 + ndim}I", header)
            if magic != _IDX_MAGIC[ndim]:
                raise DataError(
                    f"{path} is not a {ndim}-D IDX uint8 file (magic {magic:#010x}); {fix}"
                )
            if dims[0] > 100_000 or any(d != IMAGE_SIDE for d in dims[1:]):
                raise DataError(f"{path} has an implausible IDX shape {tuple(dims)}; {fix}")
            payload = bytearray(math.prod(dims))  # decompressed straight into the tensor's memory
            got = f.readinto(payload)
            extra = len(f.read(1))
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is corrupt ({err}); {fix}") from None
    if got != len(payload) or extra:
        expected = header_size + len(payload)
        raise DataError(f"{path} is corrupt (expected {expected} bytes of IDX data); {fix}")
    return torch.frombuffer(payload, dtype=torch.uint8).view(*dims)


def _decode(files: dict[str, Path]) -> RawFashionMNIST:
    splits = {}
    for split in ("train", "test"):
        images = _read_idx(files[f"{split}_images"], 3)
        labels = _read_idx(files[f"{split}_labels"], 1)
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise DataError(
                f"{files[f'{split}_images']} holds {tuple(images.shape)} images for "
                f"{labels.shape[0]} labels; replace both {split} files with the originals"
            )
        if labels.numel() and int(labels.max()) >= N_CLASSES:
            raise DataError(f"{files[f'{split}_labels']} has labels outside 0-9; replace it")
        splits[split] = (images.reshape(-1, N_FEATURES), labels.long())
    return RawFashionMNIST(*splits["train"], *splits["test"])


_DECODED: dict[tuple[Path, ...], RawFashionMNIST] = {}


def load_raw(data_dir: str | Path) -> RawFashionMNIST:
    """Decodes the dataset in ``data_dir``, once per process (later calls return the cached tensors).

    Raises:
        DataError: The files are missing, partial or corrupt.
    """
    files = find_files(data_dir)
    if files is None:
        raise DataError(
            f"no Fashion-MNIST files in {Path(data_dir).resolve()}; pass --data-dir (or set "
            "FMNIST_DATA_DIR) to a folder holding the four original .gz files"
        )
    key = tuple(sorted(p.resolve() for p in files.values()))
    if key not in _DECODED:
        _DECODED.clear()  # one dataset per process is all a study needs; do not keep stale copies
        _SPLITS.clear()  # splits of the previous dataset are stale with it
        _DECODED[key] = _decode(files)
    return _DECODED[key]


def download(data_dir: str | Path) -> None:
    """Fetches the dataset with torchvision into ``data_dir/FashionMNIST/raw`` unless present."""
    if find_files(data_dir) is not None:
        return
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(data_dir), train=True, download=True)
        FashionMNIST(str(data_dir), train=False, download=True)
    except Exception as err:  # torchvision raises RuntimeError/URLError/OSError variants
        raise DataError(
            f"no Fashion-MNIST files in {Path(data_dir).resolve()} and the download failed "
            f"({type(err).__name__}); pass --data-dir to a folder holding the four .gz files"
        ) from None


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


_SPLITS: dict[tuple[int, int, str], Splits] = {}  # (val_size, seed, device) of the decoded data


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


def check_val_size(raw: RawFashionMNIST, val_size: int) -> None:
    """Raises :class:`DataError` unless ``val_size`` leaves training images on both sides."""
    n = raw.train_x.shape[0]
    if not 0 < val_size < n:
        raise DataError(f"--val-size {val_size} does not fit {n} training images; use 1 to {n - 1}")


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


def augment(x: torch.Tensor, flip: bool, shift: int, background: float) -> torch.Tensor:
    """Random horizontal flips and shifts of up to ``shift`` pixels, per image, on x's device.

    Args:
        x: A batch of flattened normalised images (B, 784).
        flip: Mirror each image left-right with probability 1/2 (garments are near-symmetric).
        shift: Largest translation in pixels along each axis; the border is filled with
            ``background`` (the normalised value of a black pixel).
        background: Fill value for pixels shifted in from outside.
    """
    if not flip and shift == 0:
        return x
    b, side = x.shape[0], IMAGE_SIDE
    img = x.view(b, side, side)
    if flip:
        mirrored = torch.rand(b, device=x.device) < 0.5
        img = torch.where(mirrored[:, None, None], img.flip(-1), img)
    if shift:
        padded = F.pad(img, (shift, shift, shift, shift), value=background)
        ar = torch.arange(side, device=x.device)
        dy = torch.randint(0, 2 * shift + 1, (b, 1), device=x.device) + ar  # (B, 28) rows
        dx = torch.randint(0, 2 * shift + 1, (b, 1), device=x.device) + ar  # (B, 28) cols
        batch = torch.arange(b, device=x.device)[:, None, None]
        img = padded[batch, dy[:, :, None], dx[:, None, :]]
    return img.reshape(b, -1)


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
        eval_batch_size: Batch size for validation and test. 1,000 keeps the widest models' eval
            activations small (5,000 added ~80 MB to the peak RSS of a 1917-1347 trial).
        flip: Random horizontal flips of training batches (on the device, after transfer).
        shift: Random shifts of training images by up to this many pixels.
        full_train: Train on all 60,000 official training images (the validation images too), for
            the final model of a finished study; there is then no validation set.
    """

    def __init__(
        self,
        data_dir: str | Path = "data",
        batch_size: int = 128,
        val_size: int = 5_000,
        seed: int = 0,
        eval_batch_size: int = 1_000,
        flip: bool = False,
        shift: int = 0,
        full_train: bool = False,
    ) -> None:
        super().__init__()
        self.full_train = full_train
        self.flip = flip
        self.shift = shift
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.val_size = val_size
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.splits: Splits | None = None
        self.test_x: torch.Tensor | None = None  # official test images, uint8, in file order
        self.test_y: torch.Tensor | None = None
        self._test_stats = (0.0, 1.0)

    def prepare_data(self) -> None:
        """Downloads the files when they are not on disk yet (one process, no state)."""
        download(self.data_dir)

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _shared_splits(self) -> Splits:
        raw = load_raw(self.data_dir)  # decoding a new dataset empties _SPLITS
        device = self._device()
        key = (self.val_size, self.seed, str(device))
        if key not in _SPLITS:
            _SPLITS.clear()  # one split per process; a new device or seed replaces it
            _SPLITS[key] = make_splits(raw, self.val_size, self.seed, device)
        return _SPLITS[key]

    def setup(self, stage: str | None = None) -> None:
        """Builds the on-device splits; the official test set only for ``stage="test"``."""
        if stage in (None, "fit", "validate"):
            self.splits = self._shared_splits()
        if stage in (None, "test", "predict"):
            stats = self._shared_splits()  # the test set is normalised with the training stats
            raw = load_raw(self.data_dir)
            self.test_x = raw.test_x.to(stats.images.device)
            self.test_y = raw.test_y.to(stats.images.device)
            self._test_stats = (stats.mean, stats.std)

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

    def test_dataloader(self) -> TensorBatches:
        assert self.test_x is not None and self.test_y is not None, "call setup('test') first"
        every = torch.arange(len(self.test_y), device=self.test_y.device)  # official order
        return TensorBatches(
            self.test_x, self.test_y, every, self.eval_batch_size, *self._test_stats
        )

    def on_after_batch_transfer(
        self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augments training batches only; validation and test images stay as they are."""
        trainer = self.trainer
        if trainer is None or not trainer.training or self.splits is None:
            return batch
        x, y = batch
        black = -self.splits.mean / self.splits.std
        return augment(x, self.flip, self.shift, black), y

    def teardown(self, stage: str | None = None) -> None:
        """Drops this module's references; the process-wide cache keeps the shared tensors."""
        if stage in (None, "fit"):
            self.splits = None
        if stage in (None, "test"):
            self.test_x = self.test_y = None
