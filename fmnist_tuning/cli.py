"""The command line, a thin layer over :func:`fmnist_tuning.api.tune`: flags → settings → exit code.

``fmnist-tune report`` rebuilds the report of a stored study instead (nothing is trained or scored);
``fmnist-tune export`` and ``fmnist-tune predict`` (:mod:`fmnist_tuning.commands`) write a final
model's ONNX file and classify images with it.

Exit codes: 0 success, 1 no trial completed (or a worker died before the study was done), 2 bad
input (flags, data files, storage, an incompatible stored study), 130 / 143 interrupted by SIGINT /
SIGTERM (the running trials are FAIL; rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from fmnist_tuning.commands import Parser
from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import NoResultError, TuningError
from fmnist_tuning.faults import exit_on_signals
from fmnist_tuning.keys import BEST_JSON
from fmnist_tuning.settings import AUTO_WORKERS, CHOICES, make_config, text_problem

log = logging.getLogger("fmnist_tuning")

EXIT_OK, EXIT_NO_RESULT, EXIT_USAGE = 0, 1, 2
__all__ = ["AUTO_WORKERS", "build_parser", "build_report_parser", "entry", "main", "parse_config"]


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _text(text: str) -> str:
    if (problem := text_problem(text)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _folder(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a folder, got {text!r}")
    return Path(text)


def _workers(text: str) -> int:
    return AUTO_WORKERS if text == "auto" else _integer(text)


def _choice(name: str) -> str:
    return "{" + ",".join(CHOICES[name]) + "}"


def build_parser() -> argparse.ArgumentParser:
    """The ``fmnist-tune`` / ``scripts/tune.py`` flags."""
    d = RunConfig()
    p = Parser(
        prog="fmnist-tune",
        description="Tune an MLP on Fashion-MNIST with Optuna. (fmnist-tune report --help: "
        "rebuild a stored study's report.)",
    )
    p.add_argument("--study-name", default=d.study_name, help="study name (default %(default)s)")
    p.add_argument("--output-dir", type=_folder, help="default runs/<study-name>")
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
        type=_integer,
        default=d.heartbeat_interval,
        metavar="SECONDS",
        help="a running trial's heartbeat, SQL storages (default %(default)s)",
    )
    p.add_argument(
        "--grace-period",
        type=_integer,
        metavar="SECONDS",
        help="without heartbeat for this long a trial is FAIL and retried (default 3 heartbeats)",
    )
    p.add_argument(
        "--artifact-store",
        metavar="FOLDER|s3://BUCKET|gs://BUCKET",
        help="model files, for machines without a shared disk (default <output-dir>/artifacts)",
    )
    p.add_argument(
        "--storage-timeout",
        type=_integer,
        default=d.storage_timeout,
        metavar="SECONDS",
        help="a database server unreachable this long ends the run, exit 2 (default %(default)s)",
    )
    p.add_argument("--data-dir", type=_folder, help="default $FMNIST_DATA_DIR, else ./data")
    p.add_argument("--n-trials", type=_integer, default=d.n_trials, help="study total")
    p.add_argument(
        "--timeout",
        type=_number,
        metavar="SECONDS",
        help="for the whole job: search, final model and report (the search stops in time)",
    )
    p.add_argument(
        "--search-timeout",
        type=_number,
        metavar="SECONDS",
        help="for the search alone, as Optuna's timeout: no new trial after it",
    )
    p.add_argument(
        "--max-epochs",
        type=_integer,
        default=d.max_epochs,
        help="epochs per trial at most (default %(default)s)",
    )
    p.add_argument(
        "--final-epochs",
        type=_integer,
        default=d.final_epochs,
        help="the final model's longer schedule, tried on the validation split before the retrain; "
        "kept only if it scores higher there; shorter when --timeout leaves less time, or the "
        "search trained fewer than twice its epochs (default %(default)s)",
    )
    p.add_argument(
        "--max-params",
        type=_integer,
        metavar="N",
        help="deployment budget: parameters at most (a constraint; bigger nets never train)",
    )
    p.add_argument(
        "--max-latency-ms",
        type=_number,
        metavar="MS",
        help="deployment budget: milliseconds per image, batch 1, in eager PyTorch on one CPU thread "
        "(measured after epoch 1; best.json also times the exported model in ONNX Runtime)",
    )
    p.add_argument(
        "--objectives",
        metavar=_choice("objectives"),
        default=d.objectives,
        help="accuracy (default), or a Pareto front of accuracy against size or latency: no "
        "pruning, the final model chosen from the front",
    )
    p.add_argument("--sampler", metavar=_choice("sampler"), default=d.sampler)
    p.add_argument("--pruner", metavar=_choice("pruner"), default=d.pruner)
    p.add_argument("--patience", type=_integer, help="stop after K trials without a new best")
    p.add_argument("--seed", type=_integer, default=d.seed)
    p.add_argument("--accelerator", metavar=_choice("accelerator"), default=d.accelerator)
    p.add_argument(
        "--early-stopping",
        type=_integer,
        default=d.early_stopping,
        help="in-trial patience in epochs (default %(default)s)",
    )
    p.add_argument(
        "--val-size",
        type=_integer,
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
        "--no-test",
        dest="test",
        action="store_false",
        help="finish without a final model or a test pass (for comparisons): not scored",
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


def parse_config(argv: Sequence[str] | None = None, started_at: float | None = None) -> RunConfig:
    """Parses the flags into a checked :class:`RunConfig` of a job started at ``started_at``.

    Raises:
        SettingsError: A flag is malformed or names something that cannot work here.
    """
    args = vars(build_parser().parse_args(argv))
    args["progress"] = args["progress"] == "epoch"
    return make_config(**args, started_at=started_at)


def build_report_parser() -> argparse.ArgumentParser:
    """The ``fmnist-tune report`` / ``scripts/report.py`` flags."""
    p = Parser(
        prog="fmnist-tune report",
        description="Write the plots and report.html of a stored study (running, interrupted or "
        "finished); nothing is trained or scored.",
    )
    p.add_argument("--storage", type=_text, required=True, help="Optuna storage URL of the study")
    p.add_argument(
        "--study-name", type=_text, default=RunConfig.study_name, help="default %(default)s"
    )
    p.add_argument("--output-dir", type=_folder, help="default runs/<study-name>")
    p.add_argument("--data-dir", type=_folder, help="default: the folder the study recorded")
    return p


def report(argv: Sequence[str]) -> int:
    """``fmnist-tune report``: writes a stored study's report; returns the exit code."""
    from fmnist_tuning.cluster.storage import load_existing
    from fmnist_tuning.report.page import write_report
    from fmnist_tuning.search.progress import configure_logging

    try:
        args = build_report_parser().parse_args(argv)
        configure_logging()
        study = load_existing(args.storage, args.study_name)
        output_dir = args.output_dir or Path("runs") / args.study_name
        write_report(study, output_dir, args.storage, args.data_dir)
    except (TuningError, OSError) as err:
        print(f"fmnist-tune report: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fmnist-tune`` and ``scripts/tune.py``; returns the exit code."""
    started_at = time.time()  # --timeout counts from here: the imports and data are the job's too
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:
        return report(argv[1:])
    if argv[:1] in (["export"], ["predict"]):
        from fmnist_tuning import commands

        return commands.export(argv[1:]) if argv[0] == "export" else commands.predict(argv[1:])
    with exit_on_signals():  # until the study takes over (the imports take seconds)
        try:
            config = parse_config(argv, started_at)
            from fmnist_tuning.api import tune
            from fmnist_tuning.faults import Interrupted

            try:
                result = tune(
                    **{f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
                )
            except Interrupted as err:
                return err.exit_code
        except NoResultError as err:
            log.error("%s", err)
            return EXIT_NO_RESULT
        except TuningError as err:
            print(f"fmnist-tune: error: {err}", file=sys.stderr)
            return EXIT_USAGE
    test = "not scored" if result.test_acc is None else f"{result.test_acc:.4f}"
    log.info(
        "best trial %d: val_acc=%.4f test_acc=%s → %s",
        result.trial,
        result.val_acc,
        test,
        config.output_dir / BEST_JSON,
    )
    return EXIT_OK


def entry() -> NoReturn:
    """``fmnist-tune`` and ``scripts/tune.py``: :func:`main`, then an exit without teardown."""
    from fmnist_tuning.faults import exit_at_second_signal

    exit_at_second_signal()
    code = main()
    from fmnist_tuning.runtime import exit_without_teardown

    exit_without_teardown(code)


if __name__ == "__main__":
    entry()
