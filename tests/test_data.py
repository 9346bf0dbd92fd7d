"""The DataModule: files, split, normalisation, batches."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from fmnist_tuning import data
from fmnist_tuning.data import DataError, FashionMNISTDataModule, TensorBatches
from tests.conftest import N_TEST, N_TRAIN, VAL_SIZE, synthetic_split


def _setup(data_dir: Path, stage: str = "fit", seed: int = 0) -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(data_dir, batch_size=64, val_size=VAL_SIZE, seed=seed)
    dm.setup(stage)
    return dm


def test_split_sizes_dtypes_and_shapes(fake_data_dir: Path) -> None:
    s = _setup(fake_data_dir).splits
    assert s is not None
    assert s.train_x.shape == (N_TRAIN - VAL_SIZE, 784) and s.val_x.shape == (VAL_SIZE, 784)
    assert s.train_x.dtype == torch.float32 and s.train_y.dtype == torch.int64
    assert len(s.train_y) == N_TRAIN - VAL_SIZE and len(s.val_y) == VAL_SIZE


def test_seeded_split_is_stable_and_seed_dependent(fake_data_dir: Path) -> None:
    first = _setup(fake_data_dir, seed=0).splits
    data._SPLITS.clear()
    again = _setup(fake_data_dir, seed=0).splits
    data._SPLITS.clear()
    other = _setup(fake_data_dir, seed=1).splits
    assert first is not None and again is not None and other is not None
    assert first is not again  # really rebuilt, not the cached object
    assert torch.equal(first.val_x, again.val_x) and torch.equal(first.val_y, again.val_y)
    assert not torch.equal(first.val_x, other.val_x)


def test_train_and_val_partition_the_official_training_set(fake_data_dir: Path) -> None:
    s = _setup(fake_data_dir).splits
    assert s is not None
    raw_images, _ = synthetic_split(N_TRAIN, 1)
    pixels = ((torch.cat([s.train_x, s.val_x]) * s.std + s.mean) * 255).round().to(torch.uint8)
    as_bytes = sorted(row.numpy().tobytes() for row in pixels)
    assert as_bytes == sorted(row.numpy().tobytes() for row in raw_images.reshape(N_TRAIN, -1))


def test_normalised_with_training_split_statistics(fake_data_dir: Path) -> None:
    s = _setup(fake_data_dir).splits
    assert s is not None
    assert abs(s.train_x.mean().item()) < 1e-4
    assert abs(s.train_x.std().item() - 1) < 1e-3
    assert 0 < s.mean < 1 and 0 < s.std < 1  # computed on [0, 1] pixels


def test_test_set_is_untouched_and_in_order(fake_data_dir: Path) -> None:
    dm = _setup(fake_data_dir, stage="test")
    assert dm.splits is None  # the test stage builds no training batches
    stats = data._SPLITS[next(iter(data._SPLITS))]
    images, labels = synthetic_split(N_TEST, 2)
    assert dm.test_x is not None and dm.test_y is not None
    assert torch.equal(dm.test_y, labels.long())
    expected = data.normalise(images.reshape(N_TEST, -1), stats.mean, stats.std)
    assert torch.allclose(dm.test_x, expected)


def test_fit_stage_does_not_load_the_test_set(fake_data_dir: Path) -> None:
    dm = _setup(fake_data_dir, stage="fit")
    assert dm.test_x is None


def test_decoded_once_per_process(fake_data_dir: Path) -> None:
    assert data.load_raw(fake_data_dir) is data.load_raw(fake_data_dir)
    first = _setup(fake_data_dir).splits
    assert first is _setup(fake_data_dir).splits  # every trial shares the same tensors


def test_torchvision_raw_layout_is_found(fake_data_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    shutil.copytree(fake_data_dir, raw)
    files = data.find_files(tmp_path)
    assert files is not None and all(p.parent == raw for p in files.values())


def test_partial_folder_names_the_missing_file(fake_data_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(fake_data_dir, tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz"):
        data.load_raw(tmp_path / "d")


def test_truncated_file_is_reported_as_corrupt(fake_data_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(fake_data_dir, tmp_path / "d")
    bad = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is corrupt"):
        data.load_raw(tmp_path / "d")


def test_empty_folder_says_where_to_point(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data-dir"):
        data.load_raw(tmp_path)


def test_batches_cover_every_sample_once_and_reshuffle_each_epoch() -> None:
    x = torch.arange(10).float().unsqueeze(1)
    batches = TensorBatches(x, torch.arange(10), batch_size=4, shuffle=True, seed=3)
    epochs = [torch.cat([b[1] for b in batches]) for _ in range(2)]
    assert len(batches) == 3
    assert all(sorted(e.tolist()) == list(range(10)) for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])
    replay = TensorBatches(x, torch.arange(10), batch_size=4, shuffle=True, seed=3)
    assert torch.equal(torch.cat([b[1] for b in replay]), epochs[0])


def test_eval_batches_keep_order() -> None:
    batches = TensorBatches(torch.zeros(5, 1), torch.arange(5), batch_size=2)
    assert [b[1].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
