"""How stable are a study's latency figures, and how close is a trial's estimate to ONNX Runtime?

    python benchmarks/latency.py runs/fmnist-mlp --repeats 5

Measures the final model of the study in that folder ``--repeats`` times, as the study does
(``deploy/compare.py``: ONNX Runtime on ``model.onnx`` and eager PyTorch, one thread, batch 1 and
256, median and p95), and as a trial estimates it (``search/budget.py``: eager PyTorch, batch 1,
the median of 50 calls: what ``--max-latency-ms`` budgets). Prints, per figure, the median of the
repeats with their range, and the estimate over ONNX Runtime's batch-1 median. Reads the study's
validation images; never the test set.
"""

# ruff: noqa: E402
from __future__ import annotations

import harness

harness.start(quiet=True)  # as fmnist-tune does, before the first Lightning import (hence E402)

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from fmnist_tuning.api import load_result
from fmnist_tuning.deploy import compare
from fmnist_tuning.deploy.export import RawImages
from fmnist_tuning.deploy.onnx_model import OnnxModel
from fmnist_tuning.errors import TuningError
from fmnist_tuning.final.classifier import load_model
from fmnist_tuning.keys import MODEL_ONNX
from fmnist_tuning.search.budget import cpu_latency_ms
from fmnist_tuning.training.data import make_splits
from fmnist_tuning.training.model import FashionMNISTClassifier
from fmnist_tuning.training.raw import IMAGE_SIDE, load_raw


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study_dir", type=Path, help="a finished study's folder (with model.onnx)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        result = load_result(args.study_dir)
        exported = OnnxModel(args.study_dir / MODEL_ONNX, threads=1)
        run = result.config
        splits = make_splits(load_raw(run.data_dir), run.val_size, run.seed)
        eager_file = result.checkpoint or Path()
        eager = RawImages(load_model(eager_file))
    except TuningError as err:
        print(f"latency.py: error: {err}", file=sys.stderr)
        return 2
    images = splits.images[splits.val_idx].cpu().reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    module = FashionMNISTClassifier.load_from_checkpoint(eager_file, map_location="cpu")
    figures: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        measured = compare.latency(eager, exported, images)
        for runtime in ("onnxruntime", "pytorch_eager"):
            for batch, timed in measured[runtime].items():
                for stat in ("median_ms", "p95_ms"):
                    figures.setdefault(f"{runtime} {batch} {stat}", []).append(timed[stat])
        figures.setdefault("trial estimate (eager, batch 1, median of 50)", []).append(
            cpu_latency_ms(module)
        )
    print(f"{eager_file.name}, {args.repeats} repeats: median (min-max) ms")
    for name, values in figures.items():
        print(f"  {name}: {statistics.median(values):.4f} ({min(values):.4f}-{max(values):.4f})")
    onnx = statistics.median(figures["onnxruntime batch_1 median_ms"])
    estimate = statistics.median(figures["trial estimate (eager, batch 1, median of 50)"])
    print(f"  trial estimate / ONNX Runtime batch 1: {estimate / onnx:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
