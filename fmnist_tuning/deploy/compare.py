"""The exported model against eager PyTorch: agreement on validation images, latency on each runtime."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fmnist_tuning.deploy.export import RawImages
from fmnist_tuning.deploy.onnx_model import OnnxModel

BATCHES = (1, 256)  # the batch sizes timed: one request, and a batch job's chunk
RUNS = {1: 200, 256: 30}  # timed calls per batch size (medians of repeats agree within a few %)
WARMUP = {1: 10, 256: 3}  # untimed calls first (allocations, caches)


def agreement(eager: RawImages, exported: OnnxModel, images: torch.Tensor) -> dict[str, Any]:
    """How exactly the exported model reproduces PyTorch on ``images`` (uint8, N x 28 x 28).

    Returns:
        ``images`` (how many), ``top1_agreement`` (the fraction whose predicted class is the
        same) and ``max_abs_diff`` (the largest difference of any class probability).
    """
    with torch.inference_mode():
        expected = torch.cat([eager(images[i : i + 1000]) for i in range(0, len(images), 1000)])
    got = torch.from_numpy(exported.probabilities(images.numpy()))
    return {
        "images": len(images),
        "top1_agreement": float((got.argmax(1) == expected.argmax(1)).float().mean()),
        "max_abs_diff": float((got - expected).abs().max()),
    }


def _timed(call: Callable[[], Any], batch: int) -> dict[str, float]:
    for _ in range(WARMUP[batch]):
        call()
    times = []
    for _ in range(RUNS[batch]):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return {
        "median_ms": round(float(np.median(times)), 4),
        "p95_ms": round(float(np.percentile(times, 95)), 4),
        "runs": RUNS[batch],
    }


def latency(eager: RawImages, exported: OnnxModel, images: torch.Tensor) -> dict[str, Any]:
    """Milliseconds per call of each runtime, on one thread, at batch 1 and 256.

    ``exported`` must have been opened with one thread; PyTorch runs on one for the measurement
    (its thread count is restored after). A batch is the first ``batch`` of ``images`` (uint8),
    repeated when there are fewer.

    Returns:
        ``{"onnxruntime": {"batch_1": {median_ms, p95_ms, runs}, "batch_256": ...},
        "pytorch_eager": {...}, "threads": 1}``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    figures: dict[str, Any] = {"onnxruntime": {}, "pytorch_eager": {}, "threads": 1}
    try:
        with torch.inference_mode():
            for batch in BATCHES:
                chunk = images[torch.arange(batch) % len(images)]  # repeated when fewer
                array = chunk.numpy()
                figures["onnxruntime"][f"batch_{batch}"] = _timed(
                    functools.partial(exported.probabilities, array), batch
                )
                figures["pytorch_eager"][f"batch_{batch}"] = _timed(
                    functools.partial(eager, chunk), batch
                )
    finally:
        torch.set_num_threads(threads)
    return figures
