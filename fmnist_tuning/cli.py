"""Command line: flags → :class:`RunConfig` → study → ``best.json``.

Exit codes: 0 success, 1 no trial completed (or a worker died before the study was done), 2 bad
input (flags, data files, storage, an incompatible stored study), 130 / 143 interrupted by SIGINT /
SIGTERM (the running trials are FAIL; rerun the same command to resume).

``python -m fmnist_tuning.cli --worker`` is one of the processes of ``--workers N``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from fmnist_tuning.config import RunConfig, default_data_dir

log = logging.getLogger("fmnist_tuning")

EXIT_OK, EXIT_NO_RESULT, EXIT_USAGE = 0, 1, 2
WORKER_FLAG = "--worker"  # internal: this process is one of the workers of --workers N
WORKER_COMMAND = [sys.executable, "-m", "fmnist_tuning.cli", WORKER_FLAG]
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
    p.add_argument("--pruner", choices=("median", "none"), default=d.pruner)
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
    if args.accelerator == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise UsageError(
                "--accelerator gpu: no CUDA device here; use --accelerator auto or cpu"
            )
    return RunConfig(
        study_name=args.study_name,
        output_dir=args.output_dir or Path("runs") / args.study_name,
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


def configure_logging(prefix: str = "") -> None:
    """Our one line per trial on stderr; Lightning's device banners and Optuna's echo off.

    Args:
        prefix: Starts every line (e.g. the worker's number).
    """
    import optuna

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    for noisy in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial_loop = logging.getLogger("optuna.study._optimize")
    trial_loop.filters[:] = [_HandledFailures()]


class _HandledFailures(logging.Filter):
    """Drops Optuna's traceback for a trial that failed for a known reason (NaN loss, a signal).

    Our own line for the trial says FAIL, and its ``fail_reason`` attribute says why.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from fmnist_tuning.faults import Interrupted, TrialFailure

        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(
            error, (TrialFailure, Interrupted)
        ) and "failed with value None" not in str(record.msg)


def run(config: RunConfig) -> int:
    """Validates data and storage, runs the study, writes ``best.json``; returns the exit code."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from fmnist_tuning import data, parallel, report, study
    from fmnist_tuning.faults import Interrupted, catch_signals, received_signal

    workers = parallel.Workers(WORKER_COMMAND)
    the_study = None
    with catch_signals(on_signal=workers.forward):
        try:
            data.download(config.data_dir)  # no-op when the files are there
            raw = data.load_raw(config.data_dir)  # decode and validate now, before any output
            data.check_val_size(raw, config.val_size)
            the_study = study.load_or_create(config)
            config.output_dir.mkdir(parents=True, exist_ok=True)
            failed = any(workers.run(the_study, config))
            if failed and not study.reached_total(the_study, config):
                log.error("%s; rerun the same command to resume", study.summarize(the_study))
                return EXIT_NO_RESULT
            result = study.finalize(the_study, config)
            report.report_study(the_study, config)  # plots/, report.html (even with no best)
        except (Interrupted, SystemExit, SIGTERMException) as err:
            # Outside a trial (the final retrain, the test pass) Lightning turns Ctrl-C into
            # sys.exit(1) and SIGTERM into SIGTERMException: report them as the signal they were.
            signum = err.signum if isinstance(err, Interrupted) else received_signal()
            if signum is None:
                raise
            so_far = study.summarize(the_study) if the_study is not None else "no trial ran"
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
        config.output_dir / "best.json",
    )
    return EXIT_OK


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # before any trial runs: just leave, quietly


def _worker() -> int:
    """One process of ``--workers N``: its job arrives as JSON on stdin."""
    from fmnist_tuning import parallel

    job = parallel.Job.from_json(sys.stdin.read())
    configure_logging(prefix=f"[worker {job.slot}] ")
    return parallel.work(job)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fmnist-tune`` and ``scripts/tune.py``."""
    args = sys.argv[1:] if argv is None else list(argv)
    previous: dict[signal.Signals, Callable[..., Any] | int | None] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):  # until run() takes over (imports: seconds)
            previous[signum] = signal.signal(signum, _exit_on_signal)
    try:
        from fmnist_tuning.startup import skip_triton_without_a_gpu

        skip_triton_without_a_gpu()  # before the first Lightning import
        if args == [WORKER_FLAG]:
            return _worker()
        from fmnist_tuning.data import DataError
        from fmnist_tuning.study import StudyError

        try:
            config = parse_config(args)
            configure_logging()
            return run(config)
        except (UsageError, DataError, StudyError) as err:
            print(f"fmnist-tune: error: {err}", file=sys.stderr)
            return EXIT_USAGE
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
