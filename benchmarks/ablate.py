"""The fixed recipe, one piece at a time, judged on validation accuracy only.

    python benchmarks/ablate.py --data-dir ../shared/data/fashion-mnist --seeds 0 1

Every variant trains the documented starting configuration (``space.DEFAULT_PARAMS``, a new
study's first trial) with the real objective, on the study's own seeded train/validation split, for
``--max-epochs`` epochs without pruning or early stopping, and changes one piece of the fixed recipe
(``space.LABEL_SMOOTHING``, ``SCHEDULER``, ``FLIP``), the configuration's hidden widths, or a
candidate lever for the final model (random shifts, which the final stage does not use: see
docs/benchmarks.md). The test set is never read. Prints, and
appends to ``--output`` (CSV), one row per (variant, seed): best validation accuracy, its epoch, the
accuracy at the last epoch and the training time.
"""

# ruff: noqa: E402
from __future__ import annotations

import harness

harness.start()  # as fmnist-tune does, before the first Lightning import (hence E402 below)

import argparse
import contextlib
import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import optuna

from fmnist_tuning.config import RunConfig, default_data_dir
from fmnist_tuning.search import objective, space
from fmnist_tuning.search.objective import Objective
from fmnist_tuning.search.sampling import DIRECTION

CONFIG = "config"  # a variant's TrialConfig fields, set on every suggested configuration
# Variant name → the recipe constants it changes (``base`` changes nothing).
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "no_flip": {"FLIP": False},
    "no_smoothing": {"LABEL_SMOOTHING": 0.0},
    "smoothing_0.05": {"LABEL_SMOOTHING": 0.05},
    "smoothing_0.2": {"LABEL_SMOOTHING": 0.2},
    "no_onecycle": {"SCHEDULER": "none"},
    # Candidate levers for the final model (TrialConfig fields, set on the trial's configuration)
    "shift_1": {CONFIG: {"shift": 1}},
    "shift_2": {CONFIG: {"shift": 2}},
    # Other widths for the starting configuration itself (everything else as DEFAULT_PARAMS)
    **{
        f"widths_{'_'.join(map(str, widths))}": {
            "DEFAULT_PARAMS": {
                **space.DEFAULT_PARAMS,
                "n_layers": len(widths),
                **{f"n_units_l{i}": w for i, w in enumerate(widths)},
            }
        }
        for widths in ((2000, 640), (1024, 640), (1024, 1024), (640, 640), (1024, 512, 256))
    },
}
FIELDS = ("variant", "seed", "max_epochs", "best_val_acc", "best_epoch", "last_val_acc", "seconds")


def recipe(variant: str) -> contextlib.AbstractContextManager[Any]:
    """While entered, every trial the search space suggests follows ``variant``'s recipe."""
    changes = dict(VARIANTS[variant])
    fields = changes.pop(CONFIG, {})
    stack = contextlib.ExitStack()
    if changes:
        stack.enter_context(mock.patch.multiple(space, **changes))
    if fields:
        suggest = objective.suggest_config
        stack.enter_context(
            mock.patch.object(
                objective,
                "suggest_config",
                lambda *a, **k: dataclasses.replace(suggest(*a, **k), **fields),
            )
        )
    return stack


def run_variant(
    variant: str, seed: int, data_dir: Path, max_epochs: int, val_size: int = RunConfig.val_size
) -> dict[str, Any]:
    """Trains the starting configuration once with ``variant``'s recipe; returns its row."""
    with tempfile.TemporaryDirectory() as tmp, recipe(variant):
        run = RunConfig(
            output_dir=Path(tmp),
            data_dir=data_dir,
            seed=seed,
            max_epochs=max_epochs,
            val_size=val_size,
            early_stopping=max_epochs,  # never stops early: the whole curve is the result
        )
        study = optuna.create_study(direction=DIRECTION, pruner=optuna.pruners.NopPruner())
        study.enqueue_trial(space.DEFAULT_PARAMS)
        start = time.perf_counter()
        study.optimize(Objective(run), n_trials=1)
        seconds = time.perf_counter() - start
    curve = study.trials[0].intermediate_values
    best_epoch = max(curve, key=lambda epoch: (curve[epoch], -epoch))
    return {
        "variant": variant,
        "seed": seed,
        "max_epochs": max_epochs,
        "best_val_acc": round(curve[best_epoch], 4),
        "best_epoch": best_epoch + 1,
        "last_val_acc": round(curve[max(curve)], 4),
        "seconds": round(seconds, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max-epochs", type=int, default=RunConfig.max_epochs)
    parser.add_argument("--val-size", type=int, default=RunConfig.val_size)
    parser.add_argument("--output", type=Path, default=Path("runs/ablate.csv"))
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    if not harness.data_ready("ablate.py", data_dir, args.val_size):  # decoded once for all
        return 2
    with harness.csv_rows("ablate.py", args.output, FIELDS) as write:
        if write is None:
            return 2
        for seed in args.seeds:
            for variant in args.variants:
                write(run_variant(variant, seed, data_dir, args.max_epochs, args.val_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
