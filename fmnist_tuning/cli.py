"""Command line: flags → :class:`RunConfig` → study → ``best.json``.

Exit codes: 0 success, 1 no trial completed, 2 bad input (flags, data files, storage).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from fmnist_tuning.config import RunConfig, default_data_dir

log = logging.getLogger("fmnist_tuning")

EXIT_OK, EXIT_NO_RESULT, EXIT_USAGE = 0, 1, 2


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


def build_parser() -> argparse.ArgumentParser:
    """The ``fmnist-tune`` / ``scripts/tune.py`` flags."""
    d = RunConfig()
    p = _Parser(prog="fmnist-tune", description="Tune an MLP on Fashion-MNIST with Optuna.")
    p.add_argument("--study-name", default=d.study_name, help="study name (default %(default)s)")
    p.add_argument("--output-dir", type=Path, help="default runs/<study-name>")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///<output-dir>/study.db)")
    p.add_argument("--data-dir", type=Path, help="default $FMNIST_DATA_DIR, else ./data")
    p.add_argument("--n-trials", type=_positive_int, default=d.n_trials, help="study total")
    p.add_argument("--timeout", type=_positive_float, help="seconds; no new trial after it")
    p.add_argument("--max-epochs", type=_positive_int, default=d.max_epochs)
    p.add_argument("--sampler", choices=("tpe", "random", "grid"), default=d.sampler)
    p.add_argument("--pruner", choices=("median", "none"), default=d.pruner)
    p.add_argument("--patience", type=_positive_int, help="stop after K trials without a new best")
    p.add_argument("--seed", type=int, default=d.seed)
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
        "--progress", choices=("trial", "epoch"), default="trial", help="epoch: per-epoch bars"
    )
    return p


def parse_config(argv: Sequence[str] | None = None) -> RunConfig:
    """Parses and validates the flags.

    Raises:
        UsageError: A flag is malformed or names something that cannot work here.
    """
    args = build_parser().parse_args(argv)
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
    )


def configure_logging() -> None:
    """Our one line per trial on stderr; Lightning's device banners and Optuna's echo off."""
    import optuna

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    for noisy in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def run(config: RunConfig) -> int:
    """Validates data and storage, runs the study, writes ``best.json``; returns the exit code."""
    from fmnist_tuning import data, study

    data.download(config.data_dir)  # no-op when the files are there
    data.load_raw(config.data_dir)  # decode and validate now: bad files fail before any output
    the_study = study.load_or_create(config)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    study.optimize(the_study, config)
    result = study.finalize(the_study, config)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fmnist-tune`` and ``scripts/tune.py``."""
    from fmnist_tuning.data import DataError
    from fmnist_tuning.study import StudyError

    try:
        config = parse_config(argv)
        configure_logging()
        return run(config)
    except (UsageError, DataError, StudyError) as err:
        print(f"fmnist-tune: error: {err}", file=sys.stderr)
        return EXIT_USAGE
