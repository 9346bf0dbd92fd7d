"""Median vs Hyperband pruning: the best validation accuracy each finds per minute of the real command.

    python benchmarks/compare_pruners.py --data-dir ../shared/data/fashion-mnist --seeds 0 1 2 \
        --timeout 300

For every (pruner, seed) this runs what a user types, ``scripts/tune.py --pruner P --seed S
--timeout T --no-warm-start --no-test`` (TPE, default epochs and ranges, no remembered starting
trial, so the search alone finds what it finds; no final model and no test pass: a comparison
never looks at the test set), one study after another, each in its own folder
under ``--output-dir``. It then reads each study back and, for each whole minute of the budget, takes
the best validation accuracy among the trials that had finished by then (the last trial may run
past the timeout; it counts only at the minute it finished). The test set plays no part in it.
Writes ``results.md`` and ``results.csv`` (one row per pruner and minute: mean, min, max over
seeds) and ``studies.csv`` (per study: trials complete/pruned, epochs trained, best value).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from fmnist_tuning.files import write_csv
from fmnist_tuning.keys import EPOCHS

ROOT = Path(__file__).resolve().parents[1]
PRUNERS = ("median", "hyperband")


def run_study(pruner: str, seed: int, args: argparse.Namespace, folder: Path) -> None:
    """One study of the real command, in ``folder`` (resumed if it is there already)."""
    command = [
        sys.executable, str(ROOT / "scripts" / "tune.py"), "--pruner", pruner, "--seed", str(seed),
        "--timeout", str(args.timeout), "--n-trials", str(args.n_trials), "--no-warm-start",
        "--no-test", "--output-dir", str(folder),
        *(["--data-dir", str(args.data_dir)] if args.data_dir else []),
        *(["--max-epochs", str(args.max_epochs)] if args.max_epochs else []),
        *(["--val-size", str(args.val_size)] if args.val_size else []),
    ]  # fmt: skip
    subprocess.run(command, check=True)


def best_by_minute(study: optuna.Study, minutes: int) -> list[float | None]:
    """The best value among trials finished within 1, 2, ... ``minutes`` of the study's start."""
    trials = study.get_trials(deepcopy=False)
    start = min(t.datetime_start for t in trials if t.datetime_start is not None)
    curve: list[float | None] = []
    for minute in range(1, minutes + 1):
        done = [
            t.value
            for t in trials
            if t.state == TrialState.COMPLETE
            and t.value is not None
            and t.datetime_complete is not None
            and (t.datetime_complete - start).total_seconds() <= 60 * minute
        ]
        curve.append(max(done) if done else None)
    return curve


def study_row(pruner: str, seed: int, study: optuna.Study) -> dict[str, Any]:
    """What one study did: trials by state, epochs trained, best value."""
    trials = study.get_trials(deepcopy=False)
    return {
        "pruner": pruner,
        "seed": seed,
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "epochs": sum(int(t.user_attrs.get(EPOCHS, 0)) for t in trials),
        "best_val_acc": study.best_value,
    }


def summarize(curves: dict[str, list[list[float | None]]]) -> list[dict[str, Any]]:
    """Per pruner and minute: mean, min and max over seeds of the best value so far."""
    rows = []
    for pruner, per_seed in curves.items():
        for minute, values in enumerate(zip(*per_seed, strict=True), start=1):
            found = [v for v in values if v is not None]
            rows.append(
                {
                    "pruner": pruner,
                    "minute": minute,
                    "seeds_with_a_result": len(found),
                    "mean": statistics.fmean(found) if found else None,
                    "min": min(found, default=None),
                    "max": max(found, default=None),
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]], studies: list[dict[str, Any]]) -> str:
    """Both tables as Markdown."""
    lines = [
        "| pruner | minute | best val acc so far: mean (min-max) | seeds with a result |",
        "|---|---|---|---|",
    ]
    for r in rows:
        value = "-" if r["mean"] is None else f"{r['mean']:.4f} ({r['min']:.4f}-{r['max']:.4f})"
        lines.append(f"| {r['pruner']} | {r['minute']} | {value} | {r['seeds_with_a_result']} |")
    lines += ["", "| pruner | seed | complete | pruned | epochs trained | best val acc |"]
    lines.append("|---|---|---|---|---|---|")
    for s in studies:
        lines.append(
            f"| {s['pruner']} | {s['seed']} | {s['complete']} | {s['pruned']} | {s['epochs']} | "
            f"{s['best_val_acc']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, help="default $FMNIST_DATA_DIR, else ./data")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--timeout", type=int, default=300, help="seconds per study (%(default)s)")
    p.add_argument("--pruners", nargs="+", choices=PRUNERS, default=list(PRUNERS))
    p.add_argument("--n-trials", type=int, default=1000, help="cap per study (%(default)s)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial (default: the command's)")
    p.add_argument("--val-size", type=int, help="validation images (default: the command's)")
    p.add_argument("--output-dir", type=Path, default=Path("runs/compare-pruners"))
    args = p.parse_args(argv)
    if args.timeout < 60:
        print("compare_pruners: error: --timeout must be at least 60 seconds", file=sys.stderr)
        return 2
    minutes = args.timeout // 60
    curves: dict[str, list[list[float | None]]] = {pruner: [] for pruner in args.pruners}
    studies = []
    for seed in args.seeds:
        for pruner in args.pruners:
            folder = args.output_dir / f"{pruner}-seed{seed}"
            try:
                run_study(pruner, seed, args, folder)
            except subprocess.CalledProcessError as err:
                print(
                    f"compare_pruners: {pruner} seed {seed} exited {err.returncode}",
                    file=sys.stderr,
                )
                return 2
            study = optuna.load_study(
                study_name="fmnist-mlp", storage=f"sqlite:///{folder / 'study.db'}"
            )
            curves[pruner].append(best_by_minute(study, minutes))
            studies.append(study_row(pruner, seed, study))
    rows = summarize(curves)
    write_csv(args.output_dir / "results.csv", rows)
    write_csv(args.output_dir / "studies.csv", studies)
    table = markdown(rows, studies)
    (args.output_dir / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
