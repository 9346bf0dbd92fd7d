"""Fashion-MNIST as whole-split tensors: decoded once per process, batched by indexing.

The four original IDX ``.gz`` files are read in place (never written next to), either directly in
``data_dir`` (like ``../shared/data/fashion-mnist``) or in torchvision's layout
``data_dir/FashionMNIST/raw/``. When neither exists, ``prepare_data`` downloads them with torchvision
(md5-checked).
"""

from __future__ import annotations

import gzip
import logging
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
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is corrupt ({err}); {fix}") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is corrupt (only {len(raw)} bytes); {fix}")
    magic, *dims = struct.unpack(f">{1 + ndim}I", raw[:header])
    if magic != _IDX_MAGIC[ndim]:
        raise DataError(f"{path} is not a {ndim}-D IDX uint8 file (magic {magic:#010x}); {fix}")
    expected = header + int(torch.tensor(dims).prod())
    if len(raw) != expected:
        raise DataError(f"{path} is corrupt ({len(raw)} bytes, expected {expected}); {fix}")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header).view(*dims)


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
    """Mini-batches of a whole-split tensor pair by index slicing, with a seeded per-epoch shuffle.

    Args:
        x: Inputs, already on the target device.
        y: Labels, on the same device.
        batch_size: Samples per batch; the last batch may be smaller.
        shuffle: Draw a fresh permutation every epoch (seeded by ``seed`` and the epoch count).
        seed: Base seed of the permutations.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=gen).to(self.x.device)
            self.epoch += 1
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                yield self.x[idx], self.y[idx]
        else:
            for start in range(0, n, self.batch_size):
                yield (
                    self.x[start : start + self.batch_size],
                    self.y[start : start + self.batch_size],
                )


@dataclass(frozen=True)
class Splits:
    """Normalised float32 splits on one device; shared by every trial of the process."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    mean: float
    std: float


_SPLITS: dict[tuple[tuple[Path, ...], int, int, str], Splits] = {}


def make_splits(
    raw: RawFashionMNIST, val_size: int, seed: int, device: torch.device | str = "cpu"
) -> Splits:
    """Seeded train/val split of the official training set, normalised with the train-split stats."""
    n = raw.train_x.shape[0]
    if not 0 < val_size < n:
        raise DataError(f"val_size must be between 1 and {n - 1}, got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train_idx, val_idx = order[val_size:], order[:val_size]
    train_x = raw.train_x[train_idx].to(device)
    pixels = train_x.float().div_(255)
    mean, std = pixels.mean().item(), pixels.std().item()
    return Splits(
        train_x=pixels.sub_(mean).div_(std),
        train_y=raw.train_y[train_idx].to(device),
        val_x=normalise(raw.train_x[val_idx].to(device), mean, std),
        val_y=raw.train_y[val_idx].to(device),
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
    """uint8 pixels → float32 standardised with the given (training) mean and std."""
    return images.float().div_(255).sub_(mean).div_(std)


class FashionMNISTDataModule(pl.LightningDataModule):
    """Fashion-MNIST with a seeded train/val split and on-device whole-tensor batches.

    Args:
        data_dir: Folder with the four IDX ``.gz`` files, or torchvision's ``FashionMNIST/raw``
            layout below it (downloaded there by ``prepare_data`` when absent).
        batch_size: Training batch size.
        val_size: Images of the official training set held out for validation.
        seed: Seed of the train/val split and of the per-epoch shuffles.
        eval_batch_size: Batch size for validation and test (no gradients, so larger is faster).
        flip: Random horizontal flips of training batches (on the device, after transfer).
        shift: Random shifts of training images by up to this many pixels.
    """

    def __init__(
        self,
        data_dir: str | Path = "data",
        batch_size: int = 128,
        val_size: int = 5_000,
        seed: int = 0,
        eval_batch_size: int = 5_000,
        flip: bool = False,
        shift: int = 0,
    ) -> None:
        super().__init__()
        self.flip = flip
        self.shift = shift
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.val_size = val_size
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.splits: Splits | None = None
        self.test_x: torch.Tensor | None = None
        self.test_y: torch.Tensor | None = None

    def prepare_data(self) -> None:
        """Downloads the files when they are not on disk yet (one process, no state)."""
        download(self.data_dir)

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _shared_splits(self) -> Splits:
        raw = load_raw(self.data_dir)
        device = self._device()
        files = tuple(sorted(p.resolve() for p in (find_files(self.data_dir) or {}).values()))
        key = (files, self.val_size, self.seed, str(device))
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
            self.test_x = normalise(raw.test_x.to(stats.train_x.device), stats.mean, stats.std)
            self.test_y = raw.test_y.to(stats.train_x.device)

    def train_dataloader(self) -> TensorBatches:
        assert self.splits is not None, "call setup('fit') first"
        s = self.splits
        return TensorBatches(s.train_x, s.train_y, self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> TensorBatches:
        assert self.splits is not None, "call setup('fit') first"
        return TensorBatches(self.splits.val_x, self.splits.val_y, self.eval_batch_size)

    def test_dataloader(self) -> TensorBatches:
        assert self.test_x is not None and self.test_y is not None, "call setup('test') first"
        return TensorBatches(self.test_x, self.test_y, self.eval_batch_size)

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
