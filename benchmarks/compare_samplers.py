"""Grid vs random vs TPE (Bayesian) search on the same small search space and trial budget.

    python benchmarks/compare_samplers.py --data-dir ../shared/data/fashion-mnist \
        --n-trials 12 --seeds 3 --max-epochs 2 --limit-train-batches 0.1

The search space is the box spanned by ``search.space.GRID``: every parameter with several grid
values ranges between its smallest and largest one (on the search space's own scale), the others
are fixed at their one grid value. The grid sampler tries the box's corners (the 16 grid points);
random and TPE may pick any point inside it. Each sampler runs ``--seeds`` studies of
``--n-trials`` trials with the real objective (training on the real data, no pruning so that every
trial costs the same), each seed with the same train/val split and weight-init seeds for all three
samplers. Note that TPE starts with ``n_startup_trials`` = 8 random trials (see
``search.sampling.make_sampler``), drawn exactly as the random sampler with the same seed draws them: the two
can only differ from trial 9 on.

Writes to ``--output-dir`` (default ``runs/compare-samplers``):
``best_so_far.png`` (best validation accuracy so far vs trial: mean and min-max band per sampler),
``results.md`` and ``results.csv`` (final best per sampler: mean, std, min, max; wall time) and
``trials.csv`` (every trial).
"""

# ruff: noqa: E402
from __future__ import annotations

import harness

harness.start()  # as fmnist-tune does, before the first Lightning import (hence E402 below)

import argparse
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from fmnist_tuning.config import RunConfig, default_data_dir
from fmnist_tuning.files import write_csv
from fmnist_tuning.search.objective import Objective
from fmnist_tuning.search.sampling import DIRECTION, make_sampler
from fmnist_tuning.search.space import GRID

SAMPLERS = ("grid", "random", "tpe")
COLORS = {"grid": "tab:gray", "random": "tab:blue", "tpe": "tab:orange"}
STYLES = {"grid": "-", "random": "--", "tpe": "-"}  # dashed: TPE's first 8 trials hide random

log = logging.getLogger("compare_samplers")


class BoxTrial:
    """A trial whose suggestions are narrowed to the box spanned by ``box`` (name → values).

    Everything else (number, report, should_prune, storage, ...) is the wrapped trial's, so the
    real :class:`~fmnist_tuning.search.objective.Objective` and its pruning callback use it unchanged.
    """

    def __init__(self, trial: optuna.Trial, box: dict[str, list[Any]]) -> None:
        self._trial = trial
        self._box = box

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        values = self._box[name]
        value: int = self._trial.suggest_int(name, min(values), max(values), step=step, log=log)
        return value

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        values = self._box[name]
        value: float = self._trial.suggest_float(name, min(values), max(values), step=step, log=log)
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._trial.suggest_categorical(name, self._box[name])


def _log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    log.info("  trial %d %s val_acc=%s %.1fs", trial.number, trial.state.name, value, seconds)


def run_study(
    sampler: str, seed: int, run: RunConfig, limit_train_batches: float = 1.0
) -> tuple[optuna.Study, float]:
    """One in-memory study of ``run.n_trials`` trials; returns it and its wall time in seconds."""
    study = optuna.create_study(
        direction=DIRECTION, sampler=make_sampler(sampler, seed), pruner=optuna.pruners.NopPruner()
    )
    with tempfile.TemporaryDirectory(prefix=f"compare-{sampler}-{seed}-") as tmp:
        objective = Objective(
            dataclasses.replace(run, seed=seed, output_dir=Path(tmp)),
            trainer_overrides={"limit_train_batches": limit_train_batches},
        )
        start = time.perf_counter()
        study.optimize(
            lambda trial: objective(BoxTrial(trial, GRID)),
            n_trials=run.n_trials,
            callbacks=[_log_trial],
        )
        seconds = time.perf_counter() - start
    return study, seconds


def best_so_far(study: optuna.Study) -> list[float]:
    """The best value after each trial, in trial order."""
    curve: list[float] = []
    for trial in study.trials:
        value = trial.value if trial.value is not None else float("-inf")
        curve.append(max(curve[-1], value) if curve else value)
    return curve


def plot(curves: dict[str, list[list[float]]], path: Path) -> None:
    """Mean best-so-far per sampler with its min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for sampler, per_seed in curves.items():
        length = min(len(c) for c in per_seed)  # the grid stops when its points run out
        steps = range(1, length + 1)
        columns = [[c[i] for c in per_seed] for i in range(length)]
        mean = [statistics.fmean(col) for col in columns]
        ax.plot(
            steps,
            mean,
            STYLES.get(sampler, "-"),
            color=COLORS.get(sampler),
            label=f"{sampler} (mean)",
            lw=2,
            zorder=3 if sampler == "random" else 2,
        )
        ax.fill_between(
            steps,
            [min(col) for col in columns],
            [max(col) for col in columns],
            color=COLORS.get(sampler),
            alpha=0.18,
            label=f"{sampler} (min-max over {len(per_seed)} seeds)",
        )
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title("Grid vs random vs TPE on the same box and budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(
    finals: dict[str, list[float]], seconds: dict[str, list[float]]
) -> list[dict[str, Any]]:
    """One row per sampler: final best values over seeds and wall time per study."""
    rows = []
    for sampler in finals:
        values = finals[sampler]
        rows.append(
            {
                "sampler": sampler,
                "seeds": len(values),
                "best_mean": statistics.fmean(values),
                "best_std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "best_min": min(values),
                "best_max": max(values),
                "seconds_per_study": statistics.fmean(seconds[sampler]),
                "seconds_total": sum(seconds[sampler]),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The summary as a Markdown table."""
    budget = f"{args.n_trials} trials x {args.max_epochs} epochs per study"
    if args.limit_train_batches < 1:
        budget += f" ({args.limit_train_batches:g} of each training epoch)"
    lines = [
        f"{budget}; best validation accuracy at the end of each study",
        "",
        "| sampler | seeds | best val acc (mean ± std) | min | max | wall time per study |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['seeds']} | {r['best_mean']:.4f} ± {r['best_std']:.4f} | "
            f"{r['best_min']:.4f} | {r['best_max']:.4f} | {r['seconds_per_study']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The flags of this script."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, help="default $FMNIST_DATA_DIR, else ./data")
    p.add_argument("--n-trials", type=int, default=12, help="trials per study (%(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="studies per sampler (%(default)s)")
    p.add_argument("--max-epochs", type=int, default=2, help="epochs per trial (%(default)s)")
    p.add_argument("--val-size", type=int, default=RunConfig.val_size)
    p.add_argument(
        "--limit-train-batches",
        type=float,
        default=1.0,
        help="fraction of each training epoch to run, for a quicker comparison (%(default)s)",
    )
    p.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    p.add_argument("--accelerator", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--output-dir", type=Path, default=Path("runs/compare-samplers"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs every sampler x seed and writes the plot and tables; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.n_trials < 1 or args.seeds < 1 or args.max_epochs < 1 or args.limit_train_batches <= 0:
        print(
            "compare_samplers: error: --n-trials, --seeds, --max-epochs must be >= 1 and "
            "--limit-train-batches > 0",
            file=sys.stderr,
        )
        return 2
    run = RunConfig(
        data_dir=args.data_dir or default_data_dir(),
        n_trials=args.n_trials,
        max_epochs=args.max_epochs,
        pruner="none",
        early_stopping=args.max_epochs,  # every trial trains its full budget
        val_size=args.val_size,
        accelerator=args.accelerator,
    )
    if not harness.data_ready("compare_samplers", run.data_dir, run.val_size):  # decoded once
        return 2
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list[list[float]]] = {s: [] for s in args.samplers}
    finals: dict[str, list[float]] = {s: [] for s in args.samplers}
    seconds: dict[str, list[float]] = {s: [] for s in args.samplers}
    trial_rows: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        for sampler in args.samplers:
            study, wall = run_study(sampler, seed, run, args.limit_train_batches)
            curve = best_so_far(study)
            curves[sampler].append(curve)
            finals[sampler].append(curve[-1])
            seconds[sampler].append(wall)
            log.info("%s seed %d: best %.4f in %.0f s", sampler, seed, curve[-1], wall)
            for trial, best in zip(study.trials, curve, strict=True):
                trial_rows.append(
                    {
                        "sampler": sampler,
                        "seed": seed,
                        "trial": trial.number,
                        "value": trial.value,
                        "best_so_far": best,
                        "seconds": trial.duration.total_seconds() if trial.duration else None,
                        **trial.params,
                    }
                )
    plot(curves, out / "best_so_far.png")
    rows = summarize(finals, seconds)
    write_csv(out / "results.csv", rows)
    names = list(dict.fromkeys(k for r in trial_rows for k in r))
    write_csv(out / "trials.csv", [{k: r.get(k) for k in names} for r in trial_rows])
    table = markdown(rows, args)
    (out / "results.md").write_text(table)
    print(table)
    log.info(
        "wrote %s",
        ", ".join(
            str(out / f) for f in ("best_so_far.png", "results.md", "results.csv", "trials.csv")
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
