"""What a tuning process does before it imports Lightning."""

from __future__ import annotations

import logging
import os
import sys

KEEP_TRITON = "FMNIST_KEEP_TRITON"  # =1: import Triton even without a GPU (as torch would)


def skip_triton_without_a_gpu() -> bool:
    """Keeps Triton, a compiler of GPU kernels, out of a process that has no CUDA device.

    Importing Lightning imports torchmetrics, which imports torchvision whenever it is installed;
    torchvision's ops import ``torch._dynamo``, and that imports Triton whenever the CUDA build of
    torch brought it along: 77 MB more resident memory on the 2-core reference CPU (``libtriton.so``
    alone 71.5 MB) that nothing can use without a GPU. Marking it absent makes ``import triton``
    raise ImportError, the path torch takes under its CPU-only builds, which ship no Triton; the
    project never compiles anything, so no computation changes.

    Called by ``fmnist-tune`` (and its workers) and by ``scripts/benchmark.py`` before their first
    Lightning import. Does nothing when a CUDA device is visible, when Triton is already imported
    (or already kept out), or when ``FMNIST_KEEP_TRITON=1``.

    Returns:
        Whether Triton was kept out.
    """
    if os.environ.get(KEEP_TRITON) == "1" or "triton" in sys.modules:
        return False
    # The NVML-based check does not initialize CUDA (forked children can still use it); Lightning
    # sets the same variable when it is imported.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    if torch.cuda.is_available():
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]
    # Lightning imports torch's flop counter, which, on a CUDA build without Triton, warns once at
    # import that it cannot count Triton kernels: true, and nothing here runs one.
    flop_log = logging.getLogger("torch.utils.flop_counter")
    level = flop_log.level
    flop_log.setLevel(logging.ERROR)
    try:
        import torch.utils.flop_counter
    finally:
        flop_log.setLevel(level)
    return True
