"""The DataModule: files, split, normalisation, batches."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from fmnist_tuning.training import data, raw
from fmnist_tuning.training.data import (
    FashionMNISTDataModule,
    TensorBatches,
    random_flip,
    random_shift,
)
from fmnist_tuning.training.raw import DataError
from tests.conftest import N_TEST, N_TRAIN, VAL_SIZE, synthetic_split, write_idx


def _setup(data_dir: Path, stage: str = "fit", seed: int = 0) -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(data_dir, batch_size=64, val_size=VAL_SIZE, seed=seed)
    dm.setup(stage)
    return dm


def _all(batches: TensorBatches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_split_sizes_dtypes_and_shapes(fake_data_dir: Path) -> None:
    dm = _setup(fake_data_dir)
    train_x, train_y = _all(dm.train_dataloader())
    val_x, val_y = _all(dm.val_dataloader())
    assert train_x.shape == (N_TRAIN - VAL_SIZE, 784) and val_x.shape == (VAL_SIZE, 784)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
    assert len(train_y) == N_TRAIN - VAL_SIZE and len(val_y) == VAL_SIZE
    assert dm.splits is not None and dm.splits.images.dtype == torch.uint8  # stored compactly


def test_seeded_split_is_stable_and_seed_dependent(fake_data_dir: Path) -> None:
    first = _setup(fake_data_dir, seed=0).splits
    data._SPLITS.clear()
    again = _setup(fake_data_dir, seed=0).splits
    data._SPLITS.clear()
    other = _setup(fake_data_dir, seed=1).splits
    assert first is not None and again is not None and other is not None
    assert first is not again  # really rebuilt, not the cached object
    assert torch.equal(first.val_idx, again.val_idx)
    assert not torch.equal(first.val_idx, other.val_idx)


def test_train_and_val_partition_the_official_training_set(fake_data_dir: Path) -> None:
    s = _setup(fake_data_dir).splits
    assert s is not None
    everything = torch.cat([s.train_idx, s.val_idx]).sort().values
    assert torch.equal(everything, torch.arange(N_TRAIN))
    raw_images, raw_labels = synthetic_split(N_TRAIN, 1)
    assert torch.equal(s.images, raw_images.reshape(N_TRAIN, -1))
    assert torch.equal(s.labels, raw_labels.long())


def test_normalised_with_training_split_statistics(fake_data_dir: Path) -> None:
    dm = _setup(fake_data_dir)
    train_x, _ = _all(dm.train_dataloader())
    assert abs(train_x.mean().item()) < 1e-4
    assert abs(train_x.std().item() - 1) < 1e-3
    assert dm.splits is not None and 0 < dm.splits.mean < 1 and 0 < dm.splits.std < 1


def test_normalisation_statistics_are_the_training_rows_alone(
    fake_data_dir: Path, tmp_path: Path
) -> None:
    dm = _setup(fake_data_dir)
    assert dm.splits is not None
    train_x = raw.load_raw(fake_data_dir).train_x
    assert (dm.splits.mean, dm.splits.std) == data.pixel_stats(train_x, dm.splits.train_idx)

    # Other validation and test pixels (white and black), the same training rows: same statistics.
    changed = tmp_path / "changed"
    shutil.copytree(fake_data_dir, changed)
    images, _ = synthetic_split(N_TRAIN, 1)
    images.view(N_TRAIN, -1)[dm.splits.val_idx] = 255
    write_idx(changed / "train-images-idx3-ubyte.gz", images)
    write_idx(changed / "t10k-images-idx3-ubyte.gz", torch.zeros(N_TEST, 28, 28, dtype=torch.uint8))
    other = _setup(changed).splits
    assert other is not None and torch.equal(other.train_idx, dm.splits.train_idx)
    assert (other.mean, other.std) == (dm.splits.mean, dm.splits.std)
    assert data.pixel_stats(images.view(N_TRAIN, -1), torch.arange(N_TRAIN))[0] > other.mean


@pytest.mark.parametrize("stage", ["fit", "validate", "test", None])
def test_no_stage_reads_the_test_set(fake_data_dir: Path, stage: str | None) -> None:
    _setup(fake_data_dir, stage=stage)
    assert not raw._DECODED_TEST  # only the final model's test pass decodes it


def test_the_checkpointed_state_is_the_training_split_normalisation(fake_data_dir: Path) -> None:
    dm = FashionMNISTDataModule(fake_data_dir, val_size=VAL_SIZE)
    assert dm.state_dict() == {}  # nothing to save before the data are set up
    dm.setup("fit")
    splits = dm.splits
    assert splits is not None
    dm.teardown("fit")  # a retrain saves its checkpoint after fit has torn down
    assert dm.state_dict() == {
        "mean": splits.mean,
        "std": splits.std,
        "class_names": list(raw.CLASS_NAMES),
    }


def test_decoded_once_per_process(fake_data_dir: Path) -> None:
    assert raw.load_raw(fake_data_dir) is raw.load_raw(fake_data_dir)
    first = _setup(fake_data_dir).splits
    assert first is _setup(fake_data_dir).splits  # every trial shares the same tensors


def test_random_flip_mirrors_some_images_left_right_and_keeps_the_others() -> None:
    x = torch.randn(64, 784)
    flipped = random_flip(x).view(64, 28, 28)
    same = (flipped == x.view(64, 28, 28)).flatten(1).all(1)
    mirrored = (flipped == x.view(64, 28, 28).flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and mirrored.any() and same.any()


def test_torchvision_raw_layout_is_found(fake_data_dir: Path, tmp_path: Path) -> None:
    layout = tmp_path / "FashionMNIST" / "raw"
    shutil.copytree(fake_data_dir, layout)
    files = raw.find_files(tmp_path)
    assert files is not None and all(p.parent == layout for p in files.values())


def test_partial_folder_names_the_missing_file(fake_data_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(fake_data_dir, tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz"):
        raw.load_raw(tmp_path / "d")


def test_truncated_file_is_reported_as_corrupt(fake_data_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(fake_data_dir, tmp_path / "d")
    bad = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is corrupt"):
        raw.load_raw(tmp_path / "d")


def test_empty_folder_says_where_to_point(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data-dir"):
        raw.load_raw(tmp_path)


def _batches(indices: list[int], shuffle: bool, seed: int = 3) -> TensorBatches:
    images = torch.arange(12, dtype=torch.uint8).unsqueeze(1)
    rows = torch.tensor(indices)
    return TensorBatches(images, torch.arange(12), rows, 4, 0.0, 1 / 255, shuffle, seed)


def test_batches_cover_every_sample_once_and_reshuffle_each_epoch() -> None:
    batches = _batches(list(range(2, 12)), shuffle=True)
    epochs = [torch.cat([b[1] for b in batches]) for _ in range(2)]
    assert len(batches) == 3
    assert all(sorted(e.tolist()) == list(range(2, 12)) for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])
    replay = _batches(list(range(2, 12)), shuffle=True)
    assert torch.equal(torch.cat([b[1] for b in replay]), epochs[0])
    x, y = next(iter(replay))
    assert x.dtype == torch.float32 and torch.equal(x.squeeze(1), y.float())  # std 1/255: raw


def test_eval_batches_keep_order() -> None:
    batches = _batches([5, 1, 7, 3, 0], shuffle=False)
    assert [b[1].tolist() for b in batches] == [[5, 1, 7, 3], [0]]


def test_a_folder_without_the_test_files_serves_training_but_not_scoring(
    fake_data_dir: Path, tmp_path: Path
) -> None:
    shutil.copytree(fake_data_dir, tmp_path / "d")
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / "d" / name).unlink()
    assert raw.load_raw(tmp_path / "d").train_x.shape == (N_TRAIN, 784)
    with pytest.raises(DataError, match="--no-test"):
        raw.load_test(tmp_path / "d")


def test_random_shift_moves_each_image_by_at_most_its_pixels_and_fills_the_border() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 784) + 1.0  # every pixel above the background value 0
    shifted = random_shift(x, 2, 0.0).view(64, 28, 28)
    images = x.view(64, 28, 28)
    offsets = set()
    for image, moved in zip(images, shifted, strict=True):
        (match,) = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(
                moved[max(dy, 0) : 28 + min(dy, 0), max(dx, 0) : 28 + min(dx, 0)],
                image[max(-dy, 0) : 28 + min(-dy, 0), max(-dx, 0) : 28 + min(-dx, 0)],
            )
        ]
        offsets.add(match)
        assert int((moved == 0).sum()) == 28 * 28 - (28 - abs(match[0])) * (28 - abs(match[1]))
    assert len(offsets) > 5  # each image its own offset
