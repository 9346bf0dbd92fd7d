"""The command line: flags → :class:`RunConfig` → the study, final model and report → exit code.

Exit codes: 0 success, 1 no trial completed (or a worker died before the study was done), 2 bad
input (flags, data files, storage, an incompatible stored study), 130 / 143 interrupted by SIGINT /
SIGTERM (the running trials are FAIL; rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from fmnist_tuning.config import RunConfig, default_data_dir
from fmnist_tuning.faults import exit_on_signals
from fmnist_tuning.keys import BEST_JSON

log = logging.getLogger("fmnist_tuning")

EXIT_OK, EXIT_NO_RESULT, EXIT_USAGE = 0, 1, 2
# What --workers auto means: one worker process per core, one torch thread each. Measured on the
# 2-core reference CPU (16-point grid, 2-epoch trials): 2 workers 15.9 trials/min, 1 worker 11.9.
AUTO_WORKERS = max(1, os.cpu_count() or 1)


class UsageError(Exception):
    """Bad input; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**31-1, got {text!r}")
    return value


def _workers(text: str) -> int:
    return AUTO_WORKERS if text == "auto" else _positive_int(text)


def build_parser() -> argparse.ArgumentParser:
    """The ``fmnist-tune`` / ``scripts/tune.py`` flags."""
    d = RunConfig()
    p = _Parser(prog="fmnist-tune", description="Tune an MLP on Fashion-MNIST with Optuna.")
    p.add_argument("--study-name", default=d.study_name, help="study name (default %(default)s)")
    p.add_argument("--output-dir", type=Path, help="default runs/<study-name>")
    p.add_argument(
        "--storage",
        help="SQLAlchemy URL (e.g. postgresql+psycopg://user@host/db) or journal:PATH "
        "(default sqlite:///<output-dir>/study.db)",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=d.workers,
        help="worker processes on this machine, or auto (default %(default)s)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=_positive_int,
        default=d.heartbeat_interval,
        metavar="SECONDS",
        help="a running trial's heartbeat, SQL storages (default %(default)s)",
    )
    p.add_argument(
        "--grace-period",
        type=_positive_int,
        metavar="SECONDS",
        help="without heartbeat for this long a trial is FAIL and retried (default 3 heartbeats)",
    )
    p.add_argument("--data-dir", type=Path, help="default $FMNIST_DATA_DIR, else ./data")
    p.add_argument("--n-trials", type=_positive_int, default=d.n_trials, help="study total")
    p.add_argument("--timeout", type=_positive_float, help="seconds; no new trial after it")
    p.add_argument("--max-epochs", type=_positive_int, default=d.max_epochs)
    p.add_argument("--sampler", choices=("tpe", "random", "grid"), default=d.sampler)
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default=d.pruner)
    p.add_argument("--patience", type=_positive_int, help="stop after K trials without a new best")
    p.add_argument("--seed", type=_seed, default=d.seed)
    p.add_argument("--accelerator", choices=("auto", "cpu", "gpu"), default=d.accelerator)
    p.add_argument(
        "--early-stopping",
        type=_positive_int,
        default=d.early_stopping,
        help="in-trial patience in epochs (default %(default)s)",
    )
    p.add_argument(
        "--val-size",
        type=_positive_int,
        default=d.val_size,
        help="training images held out for validation (default %(default)s)",
    )
    p.add_argument(
        "--no-retrain",
        dest="retrain",
        action="store_false",
        help="test the best trial's own checkpoint instead of retraining it on all 60k images",
    )
    p.add_argument(
        "--no-warm-start",
        dest="warm_start",
        action="store_false",
        help="do not start a new study with the documented default configuration",
    )
    p.add_argument(
        "--progress", choices=("trial", "epoch"), default="trial", help="epoch: per-epoch bars"
    )
    return p


def _check_output_dir(path: Path) -> None:
    """Refuses an output folder that cannot be made: a file, or under one, or not writable."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == path else f"is under {existing}, a file"
        raise UsageError(f"--output-dir {path} {what}; name a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir {path}: {existing} is not writable; name another folder")


def parse_config(argv: Sequence[str] | None = None) -> RunConfig:
    """Parses and validates the flags.

    Raises:
        UsageError: A flag is malformed or names something that cannot work here.
    """
    args = build_parser().parse_args(argv)
    if args.grace_period is not None and args.grace_period <= args.heartbeat_interval:
        raise UsageError(
            f"--grace-period {args.grace_period} must exceed --heartbeat-interval "
            f"{args.heartbeat_interval}, or live trials would be failed"
        )
    output_dir = args.output_dir or Path("runs") / args.study_name
    _check_output_dir(output_dir)
    if args.accelerator == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise UsageError(
                "--accelerator gpu: no CUDA device here; use --accelerator auto or cpu"
            )
    return RunConfig(
        study_name=args.study_name,
        output_dir=output_dir,
        storage=args.storage,
        data_dir=args.data_dir or default_data_dir(),
        n_trials=args.n_trials,
        timeout=args.timeout,
        max_epochs=args.max_epochs,
        sampler=args.sampler,
        pruner=args.pruner,
        patience=args.patience,
        seed=args.seed,
        accelerator=args.accelerator,
        early_stopping=args.early_stopping,
        val_size=args.val_size,
        progress=args.progress == "epoch",
        warm_start=args.warm_start,
        retrain=args.retrain,
        workers=args.workers,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
    )


def run(config: RunConfig) -> int:
    """Validates data and storage, runs the study, makes the final model and the report.

    Call after :func:`fmnist_tuning.runtime.setup_process`.

    Returns:
        The exit code.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from fmnist_tuning import raw, study
    from fmnist_tuning.faults import Interrupted, catch_signals, received_signal
    from fmnist_tuning.final import finalize
    from fmnist_tuning.loop import optimize
    from fmnist_tuning.progress import summarize
    from fmnist_tuning.report import write_report
    from fmnist_tuning.runtime import release_memory

    workers = None
    if config.workers > 1:
        from fmnist_tuning.parallel import Workers

        workers = Workers()
    the_study = None
    with catch_signals(on_signal=workers.forward if workers else None):
        try:
            raw.download(config.data_dir)  # no-op when the files are there
            data = raw.load_raw(config.data_dir)  # decode and validate now, before any output
            raw.check_val_size(data, config.val_size)
            the_study = study.load_or_create(config)
            config.output_dir.mkdir(parents=True, exist_ok=True)
            first = study.reserve_worker_slots(the_study, config.workers)
            if workers is None:
                the_study.sampler = study.make_sampler(config.sampler, config.seed + first)
                optimize(the_study, config)
            elif any(workers.run(the_study, config, first)) and not study.reached_total(
                the_study, config
            ):
                log.error("%s; rerun the same command to resume", summarize(the_study))
                return EXIT_NO_RESULT
            result = finalize(the_study, config)
            release_memory()  # the retrain's memory, before the report's imports and figures
            write_report(the_study, config.output_dir, config.storage_url, config.data_dir)
        except (Interrupted, SystemExit, SIGTERMException) as err:
            # Outside a trial (the final retrain, the test pass) Lightning turns Ctrl-C into
            # sys.exit(1) and SIGTERM into SIGTERMException: report them as the signal they were.
            signum = err.signum if isinstance(err, Interrupted) else received_signal()
            if signum is None:
                raise
            so_far = summarize(the_study) if the_study is not None else "no trial ran"
            interrupted = Interrupted(signum)
            log.warning("%s: %s; rerun the same command to resume", interrupted.reason, so_far)
            return interrupted.exit_code
    if result is None:
        log.error("no trial completed: nothing to report; run more trials or relax pruning")
        return EXIT_NO_RESULT
    log.info(
        "best trial %d: val_acc=%.4f test_acc=%.4f → %s",
        result["trial"],
        result["val_acc"],
        result["test_acc"],
        config.output_dir / BEST_JSON,
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fmnist-tune`` and ``scripts/tune.py``."""
    with exit_on_signals():  # until run() takes over (the imports take seconds)
        from fmnist_tuning.raw import DataError
        from fmnist_tuning.storage import StudyError

        try:
            config = parse_config(sys.argv[1:] if argv is None else list(argv))
            from fmnist_tuning import runtime
            from fmnist_tuning.progress import configure_logging

            runtime.setup_process()
            configure_logging()
            return run(config)
        except (UsageError, DataError, StudyError) as err:
            print(f"fmnist-tune: error: {err}", file=sys.stderr)
            return EXIT_USAGE


def entry() -> NoReturn:
    """``fmnist-tune`` and ``scripts/tune.py``: :func:`main`, then an exit without teardown."""
    code = main()
    from fmnist_tuning.runtime import exit_without_teardown

    exit_without_teardown(code)


if __name__ == "__main__":
    entry()
