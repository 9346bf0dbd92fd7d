"""How a tuning process runs: its process-wide settings and every speed measure, in one place.

The entry points that train (``fmnist-tune`` and its worker processes, ``benchmarks/benchmark.py``,
``benchmarks/measures.py``, ``benchmarks/compare_samplers.py``) call :func:`setup_process` once, before
anything else imports Lightning (``fmnist-tune report`` trains nothing and imports no Lightning,
so it needs none of this); nothing here runs as a side effect of an import or of building a Trainer. Each speed
measure is kept because the benchmark shows it is worth at least 5 % of an epoch or of a trial, or
50 MB of memory; its figures are in docs/benchmarks.md ("Speed measures"). One measure cannot live
here: the model's training step takes the optimizer step itself (Lightning's manual optimization,
``fmnist_tuning/training/model.py``), measured there too.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

KEEP_TRITON = "FMNIST_KEEP_TRITON"  # =1: import Triton even without a GPU (as torch would)
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"

# torch's fused optimizer kernels (CPU and CUDA): the same updates without per-tensor temporaries.
# docs/benchmarks.md, "Speed measures", row "fused optimizers". RMSprop has no fused kernel.
FUSED_OPTIMIZERS = frozenset({"adam", "adamw", "sgd"})


def setup_process() -> None:
    """Process-wide settings of a tuning process; call first thing at an entry point (again: no-op)."""
    keep_triton_out()
    import lightning.pytorch  # noqa: F401  (it sets NVML_CHECK=1 on import; see below)

    skip_nvml_checks()
    # Lightning's advice for DataLoader pipelines does not apply to on-device tensor batches.
    for message in (
        ".*does not have many workers.*",
        ".*smaller than the logging interval.*",
        ".*Checkpoint directory .* exists and is not empty.*",
        ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
    ):
        warnings.filterwarnings("ignore", message=message)
    # Optuna's ExperimentalWarning, by its text: this module imports no Optuna (training uses it).
    warnings.filterwarnings("ignore", message=r".*(is experimental|experimental feature)")


def keep_triton_out() -> bool:
    """Keeps Triton, a compiler of GPU kernels, out of a process that has no CUDA device.

    docs/benchmarks.md, "Speed measures", row "Triton kept out". Lightning imports torchmetrics,
    which imports torchvision, whose ops import ``torch._dynamo``, which imports Triton whenever
    the CUDA build of torch brought it along; nothing can use it without a GPU.
    Marking it absent is the path torch takes under its CPU-only builds. Must run before the first
    Lightning import; does nothing with a CUDA device, when Triton is already imported, or with
    ``FMNIST_KEEP_TRITON=1``.

    Returns:
        Whether Triton was kept out.
    """
    if os.environ.get(KEEP_TRITON) == "1" or "triton" in sys.modules:
        return False
    os.environ.setdefault(NVML_CHECK, "1")  # a CUDA check that does not initialize CUDA
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


def skip_nvml_checks() -> None:
    """Stops every optimizer step of a machine without a GPU from looking for NVIDIA's driver.

    docs/benchmarks.md, "Speed measures", row "no NVML lookup". Lightning sets
    ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` when imported, and Adam, AdamW and RMSprop ask
    ``torch.cuda.is_available()`` on every step; without a driver that check first fails to load
    libnvidia-ml (not cached), then falls back to the CUDA runtime's device count anyway. Going to
    the fallback directly answers the same. With a GPU the answer is cached once CUDA starts, so
    nothing changes there.
    """
    import torch

    if os.environ.get(NVML_CHECK) == "1" and not torch.cuda.is_available():
        os.environ[NVML_CHECK] = "0"


def optimizer_options(name: str) -> dict[str, Any]:
    """Keyword arguments that make torch's optimizer ``name`` use its fused kernel if it has one."""
    return {"fused": True} if name in FUSED_OPTIMIZERS else {}


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return getattr(libc, "malloc_trim", None)  # glibc only (not musl, not macOS)


_MALLOC_TRIM = _glibc_malloc_trim()


def release_memory(*_: object) -> None:
    """Collects a finished trial's (or retrain's) objects and hands the freed heap back to the OS.

    docs/benchmarks.md, "Speed measures", row "malloc_trim" (below the 50 MB bar by trial 50, kept
    for the benchmark's memory-growth target: see there). An Optuna study callback, and called once
    more before the report. glibc keeps freed heap blocks for reuse, and trials of very
    different widths leave them fragmented, so without it the resident memory of a study grows
    with every trial. (Lightning's objects hold reference cycles, hence the collection first; with
    the long-lived objects frozen it walks only the trial's own.)
    """
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def exit_without_teardown(code: int) -> NoReturn:
    """Ends a process whose work is done: flushes the logs and output, skips interpreter teardown.

    docs/benchmarks.md, "Speed measures", row "exit without teardown". At a normal exit the CUDA
    build of torch runs the static destructors of its libraries, which pages their code in: the
    peak resident memory of a finished ``fmnist-tune`` was set at that moment, above its working
    peak. Nothing is lost by skipping it: every output file is written and closed by then (each
    replaced in one step), and every trial is committed to the storage.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextlib.contextmanager
def spare_long_lived_objects() -> Iterator[None]:
    """Keeps the garbage collector from walking, after every trial, what outlives all trials.

    docs/benchmarks.md, "Speed measures", row "gc.freeze". The full collection after each trial
    (``gc_after_trial``, which frees the trial's Trainer, module and tensors at once) walks every
    tracked object, several hundred thousand once torch, Lightning and Optuna are imported. Around
    a trial loop, ``gc.freeze()`` moves everything alive at its start (modules, the decoded data,
    the study) into a generation the collector skips; objects made inside are collected as before.
    On exit the freeze is undone, unless the process had frozen objects of its own.
    """
    frozen_before = gc.get_freeze_count()
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()
