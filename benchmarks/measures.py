"""What each speed measure of ``fmnist_tuning/runtime.py`` is worth: every one on vs off, paired.

    python benchmarks/measures.py --data-dir ../shared/data/fashion-mnist --json measures.json
    python benchmarks/measures.py --data-dir ../shared/data/fashion-mnist --quick   # a smoke test

A measure stays in the project only while it is worth at least 5 % of an epoch or of a trial, or
50 MB of memory (docs/benchmarks.md, "Speed measures"). On and off alternate within one process (the
Triton pair: two fresh processes per repeat), so a slow spell of a shared machine hits both alike;
each figure is the median of the paired differences.

1. fused optimizers: one Adam step of the default 784-1024-640-10 model (batch 256), torch's fused
   kernel vs its default implementation.
2. NVML check: one epoch of the benchmark's 784-128-10 trial (Adam, the objective's Trainer) with
   the per-step driver lookup that Lightning's setting causes on a machine without a GPU, and
   without it.
3. gc.freeze: the full collection that follows every trial (``gc_after_trial``), with the
   long-lived objects (imports, decoded data, study) frozen and not.
4. Triton: the resident memory of a process set up as ``fmnist-tune`` sets it up, after importing
   Lightning, with Triton kept out and with ``FMNIST_KEEP_TRITON=1``.
5. malloc_trim: the resident memory a study of short trials of varied widths adds, from its 5th to
   its 50th trial (the benchmark's growth figure), with ``release_memory`` after each trial and
   without.
"""

# ruff: noqa: E402
from __future__ import annotations

import harness

from fmnist_tuning import runtime

harness.start(quiet=True)  # as fmnist-tune does, before the first Lightning import (hence E402)

import argparse
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/benchmark.py, beside this one
import benchmark

from fmnist_tuning.config import RunConfig
from fmnist_tuning.training.model import MLP, OPTIMIZERS
from fmnist_tuning.training.recipe import TrialConfig


def paired(on: Callable[[], float], off: Callable[[], float], repeats: int) -> dict[str, Any]:
    """Alternates ``on`` and ``off``; their medians and the median paired saving (off - on)."""
    ons, offs = [], []
    for i in range(repeats):
        for fn, out in ((on, ons), (off, offs)) if i % 2 == 0 else ((off, offs), (on, ons)):
            out.append(fn())
    saving = statistics.median(b - a for a, b in zip(ons, offs, strict=True))
    off_median = statistics.median(offs)
    return {
        "on": statistics.median(ons),
        "off": off_median,
        "saving": saving,
        "saving_pct": 100 * saving / off_median if off_median else float("nan"),
        "samples": {"on": ons, "off": offs},
    }


def fused_step(fused: bool, steps: int) -> Callable[[], float]:
    """Seconds per Adam step of the default model, with or without the fused kernel."""
    config = TrialConfig()

    def run() -> float:
        torch.manual_seed(0)
        net = MLP(config.hidden_sizes, config.dropout, config.batch_norm)
        extra = runtime.optimizer_options("adam") if fused else {}  # what trials get, or none
        opt = OPTIMIZERS["adam"](net.parameters(), lr=1e-3, **extra)
        x, y = torch.randn(config.batch_size, 784), torch.randint(0, 10, (config.batch_size,))
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        return (time.perf_counter() - start) / steps

    return run


def nvml_epoch(run: RunConfig, check: bool) -> Callable[[], float]:
    """Seconds of the benchmark's warm 784-128-10 epoch, with or without the NVML driver lookup."""
    counter = iter(range(10_000))

    def epoch() -> float:
        os.environ[runtime.NVML_CHECK] = "1" if check else "0"
        try:
            return benchmark.epoch_project(
                dataclasses.replace(run, output_dir=run.output_dir / f"nvml{check}{next(counter)}")
            )
        finally:
            os.environ[runtime.NVML_CHECK] = "0"

    return epoch


def collection(frozen: bool) -> Callable[[], float]:
    """Seconds of one full collection with everything alive now frozen (or not)."""

    def collect() -> float:
        if frozen:
            gc.freeze()
        try:
            start = time.perf_counter()
            gc.collect()
            return time.perf_counter() - start
        finally:
            gc.unfreeze()

    return collect


TRITON_PROBE = (
    "from fmnist_tuning import runtime; runtime.setup_process(); import lightning.pytorch; "
    "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
)


def triton_rss(keep: bool) -> Callable[[], float]:
    """MB resident in a fresh process set up like fmnist-tune, once Lightning is imported."""

    def probe() -> float:
        env = {**os.environ, runtime.KEEP_TRITON: "1" if keep else "0"}
        out = subprocess.run(
            [sys.executable, "-c", TRITON_PROBE],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.split()[-1]) / 1024

    return probe


def trim_growth(run: RunConfig, n_trials: int, trim: bool) -> float:
    """MB of resident memory a study of short trials adds from its 5th trial to its last."""
    real = runtime._MALLOC_TRIM
    runtime._MALLOC_TRIM = real if trim else None  # our own switch: release_memory does nothing
    try:
        return benchmark.rss_growth(run, n_trials)
    finally:
        runtime._MALLOC_TRIM = real


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.add_argument("--quick", action="store_true", help="fewer repeats and trials")
    p.add_argument("--val-size", type=int, default=RunConfig.val_size)
    args = p.parse_args(argv)
    if not harness.data_ready("measures", args.data_dir, args.val_size):
        return 2
    repeats = 2 if args.quick else 10
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fmnist-measures-") as tmp:
        base = RunConfig(
            data_dir=args.data_dir,
            output_dir=Path(tmp),
            max_epochs=2,
            accelerator="cpu",
            early_stopping=99,
            val_size=args.val_size,
        )
        steps = 5 if args.quick else 20
        results["fused"] = paired(fused_step(True, steps), fused_step(False, steps), repeats)
        if not torch.cuda.is_available():
            results["nvml"] = paired(nvml_epoch(base, False), nvml_epoch(base, True), repeats)
        benchmark.run_study(  # the data, a study and a Trainer's imports alive, as in the loop
            dataclasses.replace(base, output_dir=Path(tmp) / "warm", max_epochs=1),
            1,
            enqueue=benchmark.BASELINE_PARAMS,
            objective_kwargs={"trainer_overrides": {"limit_train_batches": 2}},
        )
        results["gc_freeze"] = paired(collection(True), collection(False), repeats)
        results["triton"] = paired(triton_rss(False), triton_rss(True), 1 if args.quick else 4)
        n_trials = 6 if args.quick else 50
        growth = {}
        for trim in (True, False):
            run = dataclasses.replace(base, output_dir=Path(tmp) / f"trim{trim}", max_epochs=1)
            growth[trim] = trim_growth(run, n_trials, trim)
        results["malloc_trim"] = {
            "on": growth[True],
            "off": growth[False],
            "saving": growth[False] - growth[True],
            "trials": n_trials,
        }
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def format_table(r: dict[str, Any]) -> str:
    """The human-readable table (also pasted into docs/benchmarks.md)."""

    def row(name: str, key: str, unit: str, scale: float, what: str) -> str:
        m = r[key]
        return (
            f"| {name} | {m['on'] * scale:.3f} {unit} | {m['off'] * scale:.3f} {unit} | "
            f"{m['saving'] * scale:.3f} {unit} ({m['saving_pct']:.0f} %) | {what} |"
        )

    lines = [
        "| measure | on | off | saved (median of pairs) | of what |",
        "|---|---|---|---|---|",
        row("fused optimizers", "fused", "ms", 1000, "an Adam step, 784-1024-640-10, batch 256"),
    ]
    if "nvml" in r:
        lines.append(row("no NVML lookup", "nvml", "s", 1, "a warm 784-128-10 epoch"))
    lines += [
        row("gc.freeze", "gc_freeze", "s", 1, "the collection after every trial"),
        row("Triton kept out", "triton", "MB", 1, "resident memory once Lightning is imported"),
        f"| malloc_trim | {r['malloc_trim']['on']:+.1f} MB | {r['malloc_trim']['off']:+.1f} MB | "
        f"{r['malloc_trim']['saving']:.1f} MB | resident memory added from trial 5 to "
        f"{r['malloc_trim']['trials']} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
