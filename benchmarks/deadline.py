"""Does the search earn its share of a deadline? The default against no search, on validation only.

    python benchmarks/deadline.py --data-dir ../shared/data/fashion-mnist \\
        --timeouts 600 900 1800 --seeds 0 1 2

For each deadline T and seed, each variant runs the study's own search loop and final stage (the
code ``fmnist-tune`` runs), in a fresh study, and records the validation accuracy of its final
model's validated schedule and the wall times:

- ``default``: ``--timeout T`` (the search keeps the final stage's time, then the final model);
- ``no_search``: ``--timeout T --n-trials 1``: the starting configuration, and the rest of the
  deadline given to its final training;
- ``previous``: ``--search-timeout T --final-epochs 40``: the search takes all of T, then the
  40-epoch final schedule comes on top, unbounded (the default before the whole-job deadline).

The test set is never read (no test pass, no report). The final model's retrain on all 60k images
runs, so the wall times hold the whole final stage. Prints, and appends to ``--output`` (CSV),
one row per (T, seed, variant).
"""

# ruff: noqa: E402
from __future__ import annotations

import harness

harness.start()  # as fmnist-tune does, before the first Lightning import (hence E402 below)

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from fmnist_tuning.cluster import artifacts
from fmnist_tuning.config import RunConfig, default_data_dir
from fmnist_tuning.final.once import train_final
from fmnist_tuning.search import deadline, front
from fmnist_tuning.search.loop import optimize
from fmnist_tuning.search.states import count_states
from fmnist_tuning.search.study import load_or_create
from fmnist_tuning.settings import make_config

# Variant → its settings, given the deadline T.
VARIANTS = {
    "default": lambda t: {"timeout": t},
    "no_search": lambda t: {"timeout": t, "n_trials": 1},
    "previous": lambda t: {"search_timeout": t, "final_epochs": 40},
}
FIELDS = (
    "timeout", "seed", "variant", "trials", "complete", "best_trial", "final_val_acc",
    "final_epochs", "schedule_epochs", "retrained", "search_s", "final_s", "wall_s",
)  # fmt: skip


def run_variant(
    variant: str, timeout: float, seed: int, data_dir: Path, val_size: int = RunConfig.val_size
) -> dict[str, Any]:
    """One study of ``variant`` at deadline ``timeout``: its search, then its final stage."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        run = make_config(
            output_dir=tmp,
            data_dir=data_dir,
            seed=seed,
            val_size=val_size,
            started_at=start,
            **VARIANTS[variant](timeout),
        )
        study = load_or_create(run)
        optimize(study, run)
        searched = time.time()
        best = front.best_trial(study)
        plan = deadline.plan_final(study, best, run)
        made = train_final(best, run, artifacts.open_store(run), plan)
        made.discard()
        end = time.time()
    choice = made.choice or {"candidates": [{"val_acc": front.accuracy(best)}], "chosen": 0}
    states = count_states(study)
    return {
        "timeout": timeout,
        "seed": seed,
        "variant": variant,
        "trials": len(study.trials),
        "complete": states[TrialState.COMPLETE],
        "best_trial": best.number,
        "final_val_acc": round(choice["candidates"][choice["chosen"]]["val_acc"], 4),
        "final_epochs": made.epochs,
        "schedule_epochs": made.schedule_epochs,
        "retrained": made.retrained,
        "search_s": round(searched - start, 1),
        "final_s": round(end - searched, 1),
        "wall_s": round(end - start, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--timeouts", nargs="+", type=float, default=[600, 900, 1800])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--val-size", type=int, default=RunConfig.val_size)
    parser.add_argument("--output", type=Path, default=Path("runs/deadline.csv"))
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    if not harness.data_ready("deadline.py", data_dir, args.val_size):
        return 2
    with harness.csv_rows("deadline.py", args.output, FIELDS) as write:
        if write is None:
            return 2
        for timeout in args.timeouts:
            for seed in args.seeds:
                for variant in args.variants:
                    write(run_variant(variant, timeout, seed, data_dir, args.val_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
