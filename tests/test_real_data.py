"""On the real Fashion-MNIST; skipped unless FMNIST_DATA_DIR points at the four .gz files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fmnist_tuning.config import RunConfig
from fmnist_tuning.keys import VAL_ACC
from fmnist_tuning.training import data, raw
from fmnist_tuning.training.recipe import TrialConfig
from fmnist_tuning.training.trainer import build_datamodule, build_module, build_trainer

pytestmark = pytest.mark.real_data


def test_real_files_decode_to_the_official_splits(real_data_dir: Path) -> None:
    decoded = raw.load_raw(real_data_dir)
    test_x, test_y = raw.load_test(real_data_dir)
    assert decoded.train_x.shape == (60_000, 784) and test_x.shape == (10_000, 784)
    assert decoded.train_y.bincount().tolist() == [6_000] * 10
    assert test_y.bincount().tolist() == [1_000] * 10
    splits = data.make_splits(decoded, 5_000, seed=0)
    assert len(splits.train_idx) == 55_000 and len(splits.val_idx) == 5_000
    assert splits.mean == pytest.approx(0.2860, abs=2e-3)  # published training-set statistics
    assert splits.std == pytest.approx(0.3530, abs=2e-3)


def test_one_epoch_of_the_baseline_mlp_beats_80_percent(
    real_data_dir: Path, tmp_path: Path
) -> None:
    run = dataclasses.replace(
        RunConfig(), data_dir=real_data_dir, output_dir=tmp_path, max_epochs=1, accelerator="cpu"
    )
    # the 784-128-10 baseline: Adam 1e-3, batch 128, plain cross-entropy, no flips
    config = TrialConfig(
        hidden_sizes=(128,), dropout=0.0, batch_norm=False, optimizer="adam", lr=1e-3,
        weight_decay=0.0, batch_size=128, label_smoothing=0.0, scheduler="none", flip=False,
    )  # fmt: skip
    trainer = build_trainer(run)
    trainer.fit(build_module(config), datamodule=build_datamodule(config, run))
    assert float(trainer.callback_metrics[VAL_ACC]) > 0.80
