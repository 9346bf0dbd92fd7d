"""``fmnist-tune export`` and ``fmnist-tune predict``: a study's final model as a file, and its answers.

Both print one line and exit 2 on any input they cannot use (a missing or corrupt file, a model of
another program, a flag out of range, a study without a final model, the deploy extra not
installed), before any output; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from fmnist_tuning.errors import NoResultError, SettingsError, TuningError

EXIT_OK, EXIT_USAGE = 0, 2


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are :class:`SettingsError` (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise SettingsError(f"{message} (see --help)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def build_export_parser() -> argparse.ArgumentParser:
    """The ``fmnist-tune export`` flags."""
    from fmnist_tuning.deploy.export import FORMATS

    p = Parser(
        prog="fmnist-tune export",
        description="Write a finished study's final model as model.onnx (or model.pt, "
        "TorchScript): raw uint8 N x 28 x 28 images in, class probabilities out.",
    )
    p.add_argument("--output-dir", type=Path, help="the study's folder (default runs/<study>)")
    p.add_argument("--storage", help="the study's storage URL (default: the folder's study.db)")
    p.add_argument("--study-name", help="default: the storage's only study")
    p.add_argument("--artifact-store", help="where the machines of the study keep model files")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="default %(default)s")
    return p


def export(argv: Sequence[str]) -> int:
    """``fmnist-tune export``: writes the final model's file; returns the exit code."""
    return _run("export", _export, argv)


def _export(argv: Sequence[str]) -> None:
    from fmnist_tuning.api import load_result
    from fmnist_tuning.deploy.export import FILE_NAMES
    from fmnist_tuning.deploy.export import export as write

    args = build_export_parser().parse_args(argv)
    result = load_result(
        args.output_dir,
        storage=args.storage,
        study_name=args.study_name,
        artifact_store=args.artifact_store,
    )
    if result.test_acc is None or result.checkpoint is None:
        raise NoResultError(
            f"study {result.study.study_name!r} has no final model yet; run it to its end "
            "(without --no-test), then export"
        )
    target = write(result.checkpoint, result.output_dir / FILE_NAMES[args.format], args.format)
    print(target)


def build_predict_parser() -> argparse.ArgumentParser:
    """The ``fmnist-tune predict`` flags."""
    from fmnist_tuning.deploy.images import KINDS

    p = Parser(
        prog="fmnist-tune predict",
        description="Classify images with an exported model: one line per image, its most "
        "probable classes and their probabilities.",
    )
    p.add_argument("model", type=Path, help="a model.onnx, or a study's folder that holds one")
    p.add_argument("images", type=Path, nargs="+", help=KINDS)
    p.add_argument("--top-k", type=_positive, default=1, help="classes per image (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead")
    return p


def predict(argv: Sequence[str]) -> int:
    """``fmnist-tune predict``: prints each image's classes; returns the exit code."""
    return _run("predict", _predict, argv)


def _predict(argv: Sequence[str]) -> None:
    from fmnist_tuning.deploy.images import read_images
    from fmnist_tuning.deploy.onnx_model import OnnxModel
    from fmnist_tuning.errors import DataError, ModelError
    from fmnist_tuning.keys import MODEL_ONNX

    args = build_predict_parser().parse_args(argv)
    path = args.model / MODEL_ONNX if args.model.is_dir() else args.model
    if args.model.is_dir() and not path.is_file():
        raise ModelError(
            f"no {MODEL_ONNX} in {args.model}; write it with fmnist-tune export --output-dir "
            f"{args.model}"
        )
    model = OnnxModel(path)
    k = len(model.class_names)
    if args.top_k > k:
        raise SettingsError(f"--top-k {args.top_k}: the model knows {k} classes; pass 1 to {k}")
    batches = [(file, read_images(file)) for file in args.images]  # every file read before output
    for file, images in batches:
        if not len(images):
            raise DataError(f"{file} holds no image; pass a file with at least one")
    lines = []
    for file, images in batches:
        probabilities = model.probabilities(images)
        for i, row in enumerate(probabilities):
            name = str(file) if len(images) == 1 else f"{file}[{i}]"
            top = row.argsort()[::-1][: args.top_k]
            classes = [(model.class_names[c], float(row[c])) for c in top]
            if args.json:
                best = [{"class": c, "probability": round(p, 6)} for c, p in classes]
                lines.append(json.dumps({"file": str(file), "index": i, "top": best}))
            else:
                lines.append(f"{name}: " + ", ".join(f"{c} {p:.4f}" for c, p in classes))
    print("\n".join(lines))


def _run(command: str, body: Callable[[Sequence[str]], None], argv: Sequence[str]) -> int:
    try:
        body(argv)
    except BrokenPipeError:  # the reader stopped early (predict ... | head): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (TuningError, OSError) as err:
        print(f"fmnist-tune {command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
