"""A final model's checkpoint → ``model.onnx`` (or TorchScript): raw uint8 images in, probabilities out.

The graph holds everything between a Fashion-MNIST image and its class: the cast to float, the
normalisation the model was trained with, the flattening, the network and the softmax. Its input
``images`` is ``N x 28 x 28`` uint8 (pixels 0-255, as in the dataset files), with a dynamic batch
axis; its output ``probabilities`` is ``N x 10``. An ONNX file names its maker and classes in its
metadata (:data:`PRODUCER`, :data:`CLASSES_KEY`), so a reader can tell it from another model; a
TorchScript file holds the class names as an extra file.
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from pathlib import Path

import torch

from fmnist_tuning.deploy.extra import require
from fmnist_tuning.files import write_atomic
from fmnist_tuning.final.classifier import Classifier, load_model
from fmnist_tuning.keys import MODEL_ONNX
from fmnist_tuning.training.raw import IMAGE_SIDE

FORMATS = ("onnx", "torchscript")
FILE_NAMES = {"onnx": MODEL_ONNX, "torchscript": "model.pt"}  # in the study's output folder
INPUT, OUTPUT = "images", "probabilities"  # the graph's input and output names
PRODUCER = "fmnist-tuning"  # the ONNX producer_name of every file made here
CLASSES_KEY = "class_names"  # metadata: the class names, a JSON list
OPSET = 17  # ONNX Runtime 1.15 and later run it


class RawImages(torch.nn.Module):
    """A classifier of raw images: ``N x 28 x 28`` uint8 in, class probabilities out."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N x classes) of pixels 0-255 (N x 28 x 28)."""
        probabilities: torch.Tensor = self.classifier(
            images.reshape(images.shape[0], IMAGE_SIDE * IMAGE_SIDE)
        )
        return probabilities


def example_batch() -> torch.Tensor:
    """The traced input: two images (the batch axis stays dynamic)."""
    return torch.zeros(2, IMAGE_SIDE, IMAGE_SIDE, dtype=torch.uint8)


def export(checkpoint: Path, target: Path, fmt: str = "onnx") -> Path:
    """Writes the model saved in ``checkpoint`` to ``target`` as ONNX or TorchScript (atomically).

    Raises:
        fmnist_tuning.errors.ModelError: ``checkpoint`` is not a model of this package.
        fmnist_tuning.errors.SettingsError: ONNX without the ``deploy`` extra installed.
    """
    model = RawImages(load_model(checkpoint))
    names = json.dumps(list(model.classifier.class_names))
    if fmt == "torchscript":  # deprecated by PyTorch, still read by its C++ runtime: on request
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore", FutureWarning)  # its deprecation, asked for here
            traced = torch.jit.trace(model, example_batch())  # type: ignore[no-untyped-call]
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer, _extra_files={CLASSES_KEY: names})
        data = buffer.getvalue()
    else:
        onnx = require("onnx", "exporting to ONNX")
        # The TorchScript-based exporter: about 0.2 s for these networks, against 10 s and more
        # for the torch.export-based one (its first call in a process), the same graph. Its
        # deprecation warning is silenced here, for this call only.
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            exported = Path(folder) / target.name
            torch.onnx.export(
                model,
                (example_batch(),),
                exported,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
            graph = onnx.load(exported)
        graph.producer_name = PRODUCER
        onnx.helper.set_model_props(graph, {CLASSES_KEY: names})
        data = graph.SerializeToString()
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, data)
    return target
