"""A final model's file alone classifies raw images: ``fmnist_tuning.load_model``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

import fmnist_tuning
from fmnist_tuning.errors import ModelError
from fmnist_tuning.final.classifier import load_model
from fmnist_tuning.training import raw
from fmnist_tuning.training.data import FashionMNISTDataModule, make_splits, normalise
from fmnist_tuning.training.model import FashionMNISTClassifier
from tests.conftest import VAL_SIZE, write_fake_fmnist
from tests.processes import ROOT


@pytest.fixture(scope="module")
def checkpoint(fake_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint saved as the final model's is, after one training batch."""
    pl.seed_everything(0, verbose=False)
    module = FashionMNISTClassifier(hidden_sizes=(32,), batch_norm=True, dropout=0.1)
    datamodule = FashionMNISTDataModule(fake_data_dir, val_size=VAL_SIZE)
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    path = tmp_path_factory.mktemp("ckpt") / "final.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    return path


def test_probabilities_are_the_networks_on_the_training_normalisation(
    checkpoint: Path, fake_data_dir: Path
) -> None:
    model = load_model(checkpoint)
    images = raw.load_test(fake_data_dir)[0]
    splits = make_splits(raw.load_raw(fake_data_dir), VAL_SIZE, seed=0)
    trained = FashionMNISTClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    with torch.inference_mode():
        expected = trained(normalise(images, splits.mean, splits.std)).softmax(dim=1)
    assert torch.equal(model.probabilities(images), expected)
    assert model.class_names == raw.CLASS_NAMES
    assert not model.training


def test_any_image_layout_gives_the_same_classes_and_the_input_stays_as_it_was(
    checkpoint: Path, fake_data_dir: Path
) -> None:
    model = load_model(checkpoint)
    images = raw.load_test(fake_data_dir)[0]
    predicted = model.predict(images)
    floats = images.float() / 255
    for same in (images.view(-1, 28, 28), images.numpy(), floats):
        assert torch.equal(model.predict(same), predicted)
    assert torch.equal(floats, images.float() / 255)  # not normalised in place
    assert model.predict(torch.zeros(0, 28, 28, dtype=torch.uint8)).shape == (0,)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.zeros(3, 27, 27, dtype=torch.uint8), "N x 28 x 28"),
        (torch.zeros(784, dtype=torch.uint8), "N x 28 x 28"),
        (torch.full((2, 784), float("nan")), r"\[0, 1\]"),
        (torch.full((2, 784), 2.0), r"\[0, 1\]"),
    ],
)
def test_images_of_another_shape_or_scale_are_refused(
    checkpoint: Path, images: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        load_model(checkpoint).predict(images)


def _without(checkpoint: Path, key: str, path: Path) -> Path:
    saved = torch.load(checkpoint, weights_only=True)
    del saved[key]
    torch.save(saved, path)
    return path


def test_a_file_that_is_not_a_model_of_this_package_is_one_clear_error(
    checkpoint: Path, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, other)
    cases = {
        tmp_path / "missing.ckpt": "no model file",
        tmp_path: "no model file",  # a folder
        garbage: "not a model checkpoint",
        other: "does not hold this package's network",
        _without(checkpoint, FashionMNISTDataModule.__qualname__, tmp_path / "old.ckpt"): (
            "earlier version"
        ),
    }
    for path, message in cases.items():
        with pytest.raises(ModelError, match=message) as raised:
            load_model(path)
        assert len(str(raised.value).splitlines()) == 1


def _tune(data_dir: Path, out: Path) -> Any:
    return fmnist_tuning.tune(
        data_dir=data_dir, output_dir=out, n_trials=1, max_epochs=1, final_epochs=1,
        val_size=VAL_SIZE, accelerator="cpu", warm_start=False,
    )  # fmt: skip


CLASSIFY = """
import json, sys
import numpy
from fmnist_tuning import load_model
model = load_model(sys.argv[1])
print(json.dumps([model.predict(numpy.load(sys.argv[2])).tolist(), list(model.class_names)]))
"""


@pytest.mark.integration
def test_a_final_model_classifies_in_a_fresh_process_without_data_or_study(
    tmp_path: Path,
) -> None:
    made = tmp_path / "made"  # the data and the study, removed once the model is made
    result = _tune(write_fake_fmnist(made / "data"), made / "out")
    best = json.loads((made / "out" / "best.json").read_text())
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    model = Path(shutil.copy(best["checkpoint"], shipped / "model.ckpt"))
    images = raw.load_test(made / "data")[0].view(-1, 28, 28).numpy()
    np.save(shipped / "images.npy", images)
    expected = result.predict(images).tolist()
    labels = raw.load_test(made / "data")[1]
    assert (
        sum(p == y for p, y in zip(expected, labels.tolist(), strict=True)) / len(labels)
        == (best["test_acc"])
    )
    shutil.rmtree(made)
    env = {k: v for k, v in os.environ.items() if k != "FMNIST_DATA_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", CLASSIFY, str(model), str(shipped / "images.npy")],
        capture_output=True, text=True, timeout=120, cwd=shipped, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    predicted, names = json.loads(proc.stdout.strip().splitlines()[-1])
    assert predicted == expected
    assert names == list(raw.CLASS_NAMES)
