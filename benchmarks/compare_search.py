"""The tuner measured: how soon each search setup finds a good network with the real command.

    python benchmarks/compare_search.py --data-dir ../shared/data/fashion-mnist --seeds 0 1 2 \
        --timeout 900

For every (setup, seed) this runs what a user types, ``scripts/tune.py --seed S --timeout T
--no-warm-start --no-test`` plus the setup's flags (:data:`SETUPS`: ``default`` is the command's
own defaults, ``tpe-median`` the defaults before successive halving: median pruning of 20-epoch
trials). No remembered starting trial, so the search alone finds what it finds; no final model
and no test pass: a comparison never looks at the test set. Each study has its own folder under
``--output-dir`` (a folder already there is resumed). With ``--jobs 2`` the setups of one seed run
side by side, each with half the cores, so that both see the same machine at the same time.

It then reads each study back: the best validation accuracy among the trials finished by each
minute (a trial counts from the moment it finished; pruned trials never count: their values are
not at full fidelity), and the seconds until that best first reached each of :data:`THRESHOLDS`.
Writes ``results.md``, ``results.csv`` (per setup and minute: median, min, max over seeds) and
``studies.csv`` (per study: trials complete/pruned, epochs trained, best value, times to the
thresholds).
"""

from __future__ import annotations

import argparse
import os
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
SETUPS: dict[str, list[str]] = {
    "default": [],  # the command's defaults: TPE with successive halving (--pruner asha)
    "tpe-median": [
        "--pruner",
        "median",
        "--max-epochs",
        "20",
    ],  # TPE + median pruning over 20 epochs
    "tpe-hyperband": ["--pruner", "hyperband", "--max-epochs", "20"],
}
THRESHOLDS = (0.90, 0.905, 0.91)


def study_command(setup: str, seed: int, args: argparse.Namespace, folder: Path) -> list[str]:
    """The real command of one study, in ``folder``."""
    return [
        sys.executable, str(ROOT / "scripts" / "tune.py"), *SETUPS[setup], "--seed", str(seed),
        "--search-timeout", str(args.timeout), "--n-trials", str(args.n_trials), "--no-warm-start",
        "--no-test", "--output-dir", str(folder),
        *(["--data-dir", str(args.data_dir)] if args.data_dir else []),
        *(["--val-size", str(args.val_size)] if args.val_size else []),
        *(["--max-epochs", str(args.max_epochs)] if args.max_epochs else []),  # the last one counts
    ]  # fmt: skip


def run_studies(commands: list[list[str]], jobs: int) -> list[int]:
    """Runs the commands ``jobs`` at a time, each with its share of the cores; their exit codes."""
    env = dict(os.environ)
    if jobs > 1:  # each study gets its own cores, as if it ran on a smaller machine
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    codes: list[int] = []
    for first in range(0, len(commands), jobs):
        running = [subprocess.Popen(c, env=env) for c in commands[first : first + jobs]]
        codes += [process.wait() for process in running]
    return codes


def _finished_at(study: optuna.Study) -> list[tuple[float, float]]:
    """(seconds from the study's start, value) of every complete trial, in order of finishing."""
    trials = study.get_trials(deepcopy=False)
    start = min(t.datetime_start for t in trials if t.datetime_start is not None)
    return sorted(
        ((t.datetime_complete - start).total_seconds(), t.value)
        for t in trials
        if t.state == TrialState.COMPLETE and t.value is not None and t.datetime_complete
    )


def best_by_minute(study: optuna.Study, minutes: int) -> list[float | None]:
    """The best value among trials finished within 1, 2, ... ``minutes`` of the study's start."""
    done = _finished_at(study)
    return [
        max((v for s, v in done if s <= 60 * minute), default=None)
        for minute in range(1, minutes + 1)
    ]


def seconds_to(study: optuna.Study, threshold: float) -> float | None:
    """Seconds from the study's start until a finished trial first reached ``threshold``."""
    return next((s for s, v in _finished_at(study) if v >= threshold), None)


def study_row(setup: str, seed: int, study: optuna.Study) -> dict[str, Any]:
    """What one study did: trials by state, epochs trained, best value, times to the thresholds."""
    trials = study.get_trials(deepcopy=False)
    row: dict[str, Any] = {
        "setup": setup,
        "seed": seed,
        "trials": sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "epochs": sum(int(t.user_attrs.get(EPOCHS, 0)) for t in trials),
        "best_val_acc": study.best_value,
        "best_trial": study.best_trial.number,
    }
    for threshold in THRESHOLDS:
        row[f"seconds_to_{threshold}"] = seconds_to(study, threshold)
    return row


def median(values: list[float | None], missing_is_high: bool) -> float | None:
    """The median over seeds, where a seed without a value (None) ranks lowest or highest.

    None when the middle itself is missing: for a best value, fewer than half the seeds have one;
    for a time, fewer than half the seeds reached the threshold.
    """
    # missing values first (ranked lowest) or last (highest), then the values in order
    ranked = sorted(values, key=lambda v: ((v is None) == missing_is_high, v or 0.0))
    middle = ranked[(len(ranked) - 1) // 2 : len(ranked) // 2 + 1]
    return None if None in middle else statistics.fmean(middle)  # type: ignore[arg-type]


def summarize(curves: dict[str, list[list[float | None]]]) -> list[dict[str, Any]]:
    """Per setup and minute: the median, min and max over seeds of the best value so far.

    A seed without a finished trial yet ranks below every value for the median.
    """
    rows = []
    for setup, per_seed in curves.items():
        for minute, values in enumerate(zip(*per_seed, strict=True), start=1):
            found = [v for v in values if v is not None]
            rows.append(
                {
                    "setup": setup,
                    "minute": minute,
                    "seeds_with_a_result": len(found),
                    "median": median(list(values), missing_is_high=False),
                    "min": min(found, default=None),
                    "max": max(found, default=None),
                }
            )
    return rows


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f} s"


def markdown(rows: list[dict[str, Any]], studies: list[dict[str, Any]]) -> str:
    """The tables as Markdown: per minute, per study, and the median times to each threshold."""
    lines = [
        "| setup | minute | best val acc so far: median (min-max) | seeds with a result |",
        "|---|---|---|---|",
    ]
    for r in rows:
        value = "-" if r["median"] is None else f"{r['median']:.4f}"
        if r["min"] is not None:
            value += f" ({r['min']:.4f}-{r['max']:.4f})"
        lines.append(f"| {r['setup']} | {r['minute']} | {value} | {r['seeds_with_a_result']} |")
    heads = " | ".join(f"to {t}" for t in THRESHOLDS)
    lines += [
        "",
        f"| setup | seed | trials (complete / pruned) | epochs | best val acc | {heads} |",
    ]
    lines.append("|---|---|---|---|---|" + "---|" * len(THRESHOLDS))
    for s in studies:
        times = " | ".join(_seconds(s[f"seconds_to_{t}"]) for t in THRESHOLDS)
        lines.append(
            f"| {s['setup']} | {s['seed']} | {s['trials']} ({s['complete']} / {s['pruned']}) | "
            f"{s['epochs']} | {s['best_val_acc']:.4f} (trial {s['best_trial']}) | {times} |"
        )
    lines += ["", f"| setup | median trials | {heads.replace('to', 'median seconds to')} |"]
    lines.append("|---|---|" + "---|" * len(THRESHOLDS))
    for setup in dict.fromkeys(s["setup"] for s in studies):
        mine = [s for s in studies if s["setup"] == setup]
        times = " | ".join(
            _seconds(median([s[f"seconds_to_{t}"] for s in mine], missing_is_high=True))
            for t in THRESHOLDS
        )
        lines.append(f"| {setup} | {statistics.median(s['trials'] for s in mine):g} | {times} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, help="default $FMNIST_DATA_DIR, else ./data")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--timeout", type=int, default=900, help="seconds per study (%(default)s)")
    p.add_argument("--setups", nargs="+", choices=SETUPS, default=["default", "tpe-median"])
    p.add_argument("--jobs", type=int, default=1, help="studies at a time (%(default)s)")
    p.add_argument("--n-trials", type=int, default=5000, help="cap per study (%(default)s)")
    p.add_argument("--val-size", type=int, help="validation images (default: the command's)")
    p.add_argument(
        "--max-epochs", type=int, help="epochs per trial of every setup (default: each's)"
    )
    p.add_argument("--output-dir", type=Path, default=Path("runs/compare-search"))
    args = p.parse_args(argv)
    if args.timeout < 60 or args.jobs < 1:
        print(
            "compare_search: error: --timeout must be at least 60, --jobs at least 1",
            file=sys.stderr,
        )
        return 2
    studies = [(setup, seed) for seed in args.seeds for setup in args.setups]
    folders = {(setup, seed): args.output_dir / f"{setup}-seed{seed}" for setup, seed in studies}
    commands = [study_command(setup, seed, args, folders[setup, seed]) for setup, seed in studies]
    for (setup, seed), code in zip(studies, run_studies(commands, args.jobs), strict=True):
        if code:
            print(f"compare_search: {setup} seed {seed} exited {code}", file=sys.stderr)
            return 2
    curves: dict[str, list[list[float | None]]] = {setup: [] for setup in args.setups}
    rows = []
    for setup, seed in studies:
        storage = f"sqlite:///{folders[setup, seed] / 'study.db'}"
        study = optuna.load_study(study_name="fmnist-mlp", storage=storage)
        curves[setup].append(best_by_minute(study, args.timeout // 60))
        rows.append(study_row(setup, seed, study))
    per_minute = summarize(curves)
    write_csv(args.output_dir / "results.csv", per_minute)
    write_csv(args.output_dir / "studies.csv", rows)
    table = markdown(per_minute, rows)
    (args.output_dir / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
