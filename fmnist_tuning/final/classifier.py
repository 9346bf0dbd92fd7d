"""A final model's file → a classifier of raw uint8 images that needs nothing but that file.

Every checkpoint a run saves (each trial's best epoch, each final model) holds the network's
architecture (the LightningModule's hyperparameters), its weights, and the DataModule's state: the
mean and standard deviation its inputs were normalised with, and the class names
(:meth:`fmnist_tuning.training.data.FashionMNISTDataModule.state_dict`). :func:`load_model` rebuilds the
network from that alone, on any machine with this package: no training data, no study, no
storage. The final model's one test pass (:func:`fmnist_tuning.final.scoring.score_on_test`) runs through
the same object, so what a user loads classifies exactly as what was scored.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fmnist_tuning.errors import ModelError, first_line
from fmnist_tuning.training.data import FashionMNISTDataModule, normalise
from fmnist_tuning.training.model import MLP
from fmnist_tuning.training.raw import CLASS_NAMES, N_FEATURES

BATCH = 1_000  # images per forward pass: the test pass's batches, whatever the caller passes
DATA_STATE = FashionMNISTDataModule.__qualname__  # where Lightning files the DataModule's state
NETWORK_PREFIX = "model."  # the MLP's weights inside the LightningModule's state dict


class NoNormalisation(ModelError):
    """The checkpoint lacks its input normalisation: an earlier version of this package saved it."""


class Classifier(torch.nn.Module):
    """A trained network with the normalisation of its inputs: raw images in, classes out.

    Args:
        network: The trained MLP (the classifier is in eval mode from the start).
        mean: The training split's pixel mean, in [0, 1] units, its inputs were normalised with.
        std: Their standard deviation, in [0, 1] units.
        class_names: The name of each class index.
    """

    def __init__(self, network: MLP, mean: float, std: float, class_names: Sequence[str]) -> None:
        super().__init__()
        self.network = network
        self.mean, self.std = mean, std
        self.class_names = tuple(class_names)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N x classes) of pixels 0-255 (N x 784), normalised here as in
        training (on a copy: the caller's tensor stays as it was)."""
        pixels = images.to(torch.float32, copy=True)
        logits: torch.Tensor = self.network(normalise(pixels, self.mean, self.std))
        return logits.softmax(dim=1)

    def probabilities(self, images: Any) -> torch.Tensor:
        """Class probabilities (N x classes) of a batch of images, on the CPU.

        Args:
            images: ``N x 28 x 28`` or ``N x 784``, a tensor or array: uint8 pixels (0-255, as in
                the dataset files) or floats in [0, 1] (torchvision's ``ToTensor`` scale).

        Raises:
            ValueError: Another shape, or floats outside [0, 1].
        """
        x = as_pixels(images)
        with torch.inference_mode():
            parts = [self(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
        return torch.cat(parts) if parts else torch.zeros(0, len(self.class_names))

    def predict(self, images: Any) -> torch.Tensor:
        """Class indices (0-9, named by :attr:`class_names`) of a batch of images (see
        :meth:`probabilities`)."""
        return self.probabilities(images).argmax(dim=1)


def as_pixels(images: Any) -> torch.Tensor:
    """``images`` as an N x 784 tensor of pixel values 0-255 on the CPU (see
    :meth:`Classifier.probabilities`)."""
    x = torch.as_tensor(images).cpu()
    if x.dim() not in (2, 3) or x.shape[1:].numel() != N_FEATURES:
        raise ValueError(f"expected images shaped N x 28 x 28 or N x 784, got {tuple(x.shape)}")
    x = x.reshape(len(x), N_FEATURES)
    if x.is_floating_point():
        if x.numel() and (x.isnan().any() or x.min() < 0 or x.max() > 1):
            raise ValueError("float images must lie in [0, 1]; pass uint8 for 0-255 pixels")
        x = x * 255
    return x


def load_model(path: str | Path, normalisation: tuple[float, float] | None = None) -> Classifier:
    """The classifier saved in a checkpoint of this package (a final model, or a trial's).

    Args:
        path: The checkpoint file.
        normalisation: The inputs' (mean, std), only for a checkpoint saved by an earlier version
            of this package, which lacks it (the training split's pixel statistics).

    Raises:
        ModelError: No such file, not a checkpoint, or one without what it needs (a file saved by
            an earlier version lacks the normalisation, unless it is given).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no model file at {path}; pass the path of a .ckpt file a study saved")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as err:
        raise ModelError(
            f"{path} is not a model checkpoint ({type(err).__name__}); pass a .ckpt a study saved"
        ) from None
    try:
        hparams = checkpoint["hyper_parameters"]
        network = MLP(hparams["hidden_sizes"], hparams["dropout"], hparams["batch_norm"])
        weights = checkpoint["state_dict"]
    except (KeyError, TypeError, ValueError):
        raise ModelError(
            f"{path} does not hold this package's network (a checkpoint of another model?); "
            "use a model a study of fmnist-tuning saved"
        ) from None
    state = checkpoint.get(DATA_STATE) or {}
    mean, std = normalisation or (state.get("mean"), state.get("std"))
    if mean is None or std is None:
        raise NoNormalisation(
            f"{path} does not hold its input normalisation (saved by an earlier version of "
            "fmnist-tuning); load it with load_result(...).predict, which knows its study"
        )
    try:
        network.load_state_dict(
            {
                k.removeprefix(NETWORK_PREFIX): v
                for k, v in weights.items()
                if k.startswith(NETWORK_PREFIX)
            }
        )
    except RuntimeError as err:
        raise ModelError(
            f"{path}: its weights do not fit its architecture ({first_line(err, 200)})"
        ) from None
    return Classifier(network, mean, std, state.get("class_names", CLASS_NAMES))
