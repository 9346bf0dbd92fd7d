"""An exported ``model.onnx`` opened with ONNX Runtime, checked to be a model of this package."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_tuning.deploy.export import CLASSES_KEY, INPUT, OUTPUT, PRODUCER
from fmnist_tuning.deploy.extra import require
from fmnist_tuning.errors import ModelError, first_line
from fmnist_tuning.training.raw import IMAGE_SIDE

REEXPORT = "write it again with fmnist-tune export --output-dir <the study's folder>"


class OnnxModel:
    """A ``model.onnx`` of this package in an ONNX Runtime session on the CPU.

    Args:
        path: The file.
        threads: ONNX Runtime's threads within an operator (1: as latency is measured).

    Raises:
        ModelError: No such file, not an ONNX file, or another program's.
        fmnist_tuning.errors.SettingsError: onnxruntime is not installed.
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        ort = require("onnxruntime", "an ONNX model")
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"no model file at {path}; pass a model.onnx a study wrote")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its warnings are not the user's to act on
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own classes for every unreadable file
            raise ModelError(
                f"{path} is not a readable ONNX model ({first_line(err, 160)}); {REEXPORT}"
            ) from None
        meta = self.session.get_modelmeta()
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if (
            meta.producer_name != PRODUCER
            or [i.name for i in inputs] != [INPUT]
            or [o.name for o in outputs] != [OUTPUT]
            or inputs[0].type != "tensor(uint8)"
            or list(inputs[0].shape[1:]) != [IMAGE_SIDE, IMAGE_SIDE]
        ):
            raise ModelError(
                f"{path} is not a Fashion-MNIST model of fmnist-tuning (made by "
                f"{meta.producer_name or 'an unnamed program'}, input "
                f"{[(i.name, i.type, i.shape) for i in inputs]}); {REEXPORT}"
            )
        try:
            names = json.loads(meta.custom_metadata_map.get(CLASSES_KEY, ""))
        except json.JSONDecodeError:
            names = None
        n_classes = outputs[0].shape[-1]
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)) or (
            isinstance(n_classes, int) and len(names) != n_classes
        ):
            raise ModelError(f"{path} does not name its classes in its metadata; {REEXPORT}")
        self.class_names: Sequence[str] = tuple(names)

    def probabilities(self, images: Any) -> np.ndarray:
        """Class probabilities (N x classes) of uint8 images (N x 28 x 28)."""
        batch = np.ascontiguousarray(images, dtype=np.uint8)
        result: np.ndarray = self.session.run([OUTPUT], {INPUT: batch})[0]
        return result
