"""The four original Fashion-MNIST files: found, downloaded when absent, decoded once per process.

The IDX ``.gz`` files are read in place (never written next to), either directly in ``data_dir``
(like ``../shared/data/fashion-mnist``) or in torchvision's layout ``data_dir/FashionMNIST/raw/``.
When neither exists, :func:`download` fetches them with torchvision (md5-checked).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from fmnist_tuning.errors import DataError

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
SPLIT_FILES = {split: (f"{split}_images", f"{split}_labels") for split in ("train", "test")}
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned byte data, 3-D images / 1-D labels


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: a cache key of the splits
class RawFashionMNIST:
    """The decoded official training set, as uint8 images (N, 784) and int64 labels (N,).

    The official test set is decoded apart, by :func:`load_test`, only where it is scored.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor


def _candidate_dirs(data_dir: Path) -> list[Path]:
    return [data_dir, data_dir / "FashionMNIST" / "raw"]


def find_files(data_dir: str | Path) -> dict[str, Path] | None:
    """Locates the IDX files (``.gz`` or unpacked) in either supported layout.

    The two training files must be there; the two test files may be absent (a run that never
    scores the test set does without them), but not one without the other.

    Returns:
        The paths by role (``test_*`` only when present), or ``None`` when no file of the dataset
        is present at all.

    Raises:
        DataError: Only part of the training files, or one test file without the other.
    """
    data_dir = Path(data_dir)
    for folder in _candidate_dirs(data_dir):
        found: dict[str, Path] = {}
        for role, stem in FILES.items():
            for name in (stem + ".gz", stem):
                if (folder / name).is_file():
                    found[role] = folder / name
                    break
        if not found:
            continue
        missing = [r for r in SPLIT_FILES["train"] if r not in found]
        if found.keys() & set(SPLIT_FILES["test"]):  # the test files: both or neither
            missing += [r for r in SPLIT_FILES["test"] if r not in found]
        if missing:
            names = ", ".join(FILES[r] + ".gz" for r in missing)
            raise DataError(
                f"{folder} has only part of Fashion-MNIST: missing {names}; "
                "copy the original .gz files there or pass another --data-dir"
            )
        return found
    return None


DATA_FIX = "replace it with an intact copy of the original file or pass another --data-dir"


def read_idx(path: Path, ndim: int, fix: str = DATA_FIX) -> torch.Tensor:
    """An IDX uint8 file (gzip-compressed when its name ends in ``.gz``): ``ndim``-D, images
    28 x 28.

    Raises:
        DataError: Not such a file, or a corrupt one; the message ends with ``fix``.
    """
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


def _decode_pair(images_file: Path, labels_file: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One split's images (N, 784) and labels, checked against each other."""
    images = read_idx(images_file, 3)
    labels = read_idx(labels_file, 1)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"{images_file} holds {tuple(images.shape)} images for {labels.shape[0]} labels; "
            f"replace both {images_file.name.split('-')[0]} files with the originals"
        )
    if labels.numel() and int(labels.max()) >= N_CLASSES:
        raise DataError(f"{labels_file} has labels outside 0-9; replace it")
    return images.reshape(-1, N_FEATURES), labels.long()


def _files(data_dir: str | Path) -> dict[str, Path]:
    files = find_files(data_dir)
    if files is None:
        raise DataError(
            f"no Fashion-MNIST files in {Path(data_dir).resolve()}; pass --data-dir (or set "
            "FMNIST_DATA_DIR) to a folder holding the four original .gz files"
        )
    return files


# Decoded splits by their resolved files: one training set and one test set per process.
_DECODED: dict[tuple[Path, ...], RawFashionMNIST] = {}
_DECODED_TEST: dict[tuple[Path, ...], tuple[torch.Tensor, torch.Tensor]] = {}


def load_raw(data_dir: str | Path) -> RawFashionMNIST:
    """Decodes the training set in ``data_dir``, once per process (later calls return the cache).

    Raises:
        DataError: The files are missing, partial or corrupt.
    """
    files = _files(data_dir)
    key = tuple(files[role].resolve() for role in SPLIT_FILES["train"])
    if key not in _DECODED:
        _DECODED.clear()  # one dataset per process is all a study needs; do not keep stale copies
        _DECODED[key] = RawFashionMNIST(*_decode_pair(*key))
    return _DECODED[key]


def load_test(data_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Decodes the official test set (images, labels) in ``data_dir``, once per process.

    Read where the final model is scored, for the report's pictures of its mistakes, and at the
    start of a run that will score, so that a missing or corrupt file stops it before it trains.

    Raises:
        DataError: The test files are missing, partial or corrupt.
    """
    files = _files(data_dir)
    if "test_images" not in files:
        where = files["train_images"].parent
        raise DataError(
            f"{where} has no official test files ({FILES['test_images']}.gz, "
            f"{FILES['test_labels']}.gz): the final model is scored on them; copy them there, "
            "or pass --no-test to finish without a test score"
        )
    key = tuple(files[role].resolve() for role in SPLIT_FILES["test"])
    if key not in _DECODED_TEST:
        _DECODED_TEST.clear()
        _DECODED_TEST[key] = _decode_pair(*key)
    return _DECODED_TEST[key]


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


def check_val_size(raw: RawFashionMNIST, val_size: int) -> None:
    """Raises :class:`DataError` unless ``val_size`` leaves training images on both sides."""
    n = raw.train_x.shape[0]
    if not 0 < val_size < n:
        raise DataError(f"--val-size {val_size} does not fit {n} training images; use 1 to {n - 1}")
