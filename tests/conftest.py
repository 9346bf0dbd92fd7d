"""Shared fixtures: a tiny synthetic Fashion-MNIST in the real IDX .gz format; the network guard."""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

N_TRAIN, N_TEST, VAL_SIZE = 600, 100, 100
ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "tests" / "offline"  # its sitecustomize.py guards every process the tests start


def _guard_the_network() -> Path:
    """No test reaches the network or downloads the dataset, in this process or any it starts
    (``tests/offline/sitecustomize.py``); returns the file where download attempts are recorded."""
    record = Path(tempfile.mkdtemp(prefix="fmnist-downloads-")) / "downloads.log"
    record.touch()
    os.environ["FMNIST_TEST_OFFLINE"] = "1"
    os.environ["FMNIST_TEST_DOWNLOADS"] = str(record)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(OFFLINE), str(ROOT), os.environ.get("PYTHONPATH")])
    )
    spec = importlib.util.spec_from_file_location(
        "fmnist_test_offline", OFFLINE / "sitecustomize.py"
    )
    assert spec is not None and spec.loader is not None
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)  # installs it here (FMNIST_TEST_OFFLINE is set)
    return record


DOWNLOADS = _guard_the_network()  # before the package's modules are imported below

from fmnist_tuning.config import RunConfig  # noqa: E402
from fmnist_tuning.training import data, raw  # noqa: E402


@pytest.fixture(autouse=True)
def _no_download() -> Iterator[None]:
    """Fails the test that tried to download the dataset, here or in a process it started."""
    before = DOWNLOADS.stat().st_size
    yield
    with DOWNLOADS.open() as record:
        record.seek(before)
        tried = record.read().strip()
    if tried:
        pytest.fail(f"this test tried to download Fashion-MNIST (tests never do): {tried}")


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` or ``benchmarks/<name>.py`` imported as a module (not a package)."""
    path = ROOT / "scripts" / f"{name}.py"
    if not path.is_file():
        path = ROOT / "benchmarks" / f"{name}.py"
    if str(path.parent) not in sys.path:  # as `python benchmarks/<name>.py` has: its helpers
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Writes a uint8 tensor as an IDX file (gzip-compressed when the name ends in .gz)."""
    header = struct.pack(">I", 0x0800 + array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    payload = header + array.contiguous().numpy().tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def synthetic_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable fake images: class k lights up rows 2k..2k+3, over uniform noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=gen, dtype=torch.uint8)
    images = torch.randint(0, 120, (n, 28, 28), generator=gen, dtype=torch.uint8)
    for i, k in enumerate(labels.tolist()):
        images[i, 2 * k + 4 : 2 * k + 8, 4:24] = 250
    return images, labels


def write_fake_fmnist(folder: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> Path:
    """The four files, named as the originals, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = synthetic_split(n, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


class FakeClock:
    """Stands in for a module's ``time`` (``monotonic`` and ``sleep``): time moves when told."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def fake_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_fmnist(tmp_path_factory.mktemp("fmnist"))


TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def without_test_files(source: Path, folder: Path) -> Path:
    """A copy of the data in ``source`` without the official test files: nothing can score."""
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns(*TEST_FILES))
    return folder


@pytest.fixture(scope="session")
def train_only_data_dir(fake_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny data set without its test files, for the comparisons (they never score)."""
    return without_test_files(fake_data_dir, tmp_path_factory.mktemp("train-only") / "d")


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    """Each test sees cold process caches, as a new process would."""
    raw._DECODED.clear()
    raw._DECODED_TEST.clear()
    data._SPLITS.clear()


@pytest.fixture
def run_config(fake_data_dir: Path, tmp_path: Path) -> RunConfig:
    return RunConfig(
        output_dir=tmp_path / "out",
        data_dir=fake_data_dir,
        n_trials=2,
        max_epochs=2,
        final_epochs=2,  # the trial's own schedule: tests of the longer one ask for it
        val_size=VAL_SIZE,
        accelerator="cpu",
        warm_start=False,  # tests enqueue their own trials
    )


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    path = os.environ.get("FMNIST_DATA_DIR")
    if not path:
        pytest.skip("real Fashion-MNIST not configured: set FMNIST_DATA_DIR to run this test")
    return Path(path)
