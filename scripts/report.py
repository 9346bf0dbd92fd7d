"""Write the plots and the HTML report of a stored study (again, or while it still runs).

    python scripts/report.py --storage sqlite:///runs/fmnist-mlp/study.db --study-name fmnist-mlp

Writes ``<output-dir>/plots/*.html|png`` and ``<output-dir>/report.html`` (default output dir:
``runs/<study-name>``). Works on a running, interrupted or finished study; nothing is trained or
scored: the test figures are the final model's stored result, shown once the study has one. The
pictures of test mistakes come from the data folder the study recorded (``--data-dir`` overrides
it). Exit codes: 0 written, 2 bad input (storage, study name).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import optuna

from fmnist_tuning.errors import StudyError
from fmnist_tuning.report import write_report
from fmnist_tuning.storage import load_existing


def build_parser() -> argparse.ArgumentParser:
    """The flags of this script."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", required=True, help="Optuna storage URL of the study")
    p.add_argument("--study-name", default="fmnist-mlp", help="default %(default)s")
    p.add_argument("--output-dir", type=Path, help="default runs/<study-name>")
    p.add_argument("--data-dir", type=Path, help="default: the folder the study recorded")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Loads the study and writes its report; returns the exit code."""
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    ours = logging.getLogger("fmnist_tuning")  # our lines only, not matplotlib's chatter
    ours.handlers[:] = [handler]
    ours.setLevel(logging.INFO)
    ours.propagate = False
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    output_dir = args.output_dir or Path("runs") / args.study_name
    try:
        study = load_existing(args.storage, args.study_name)
        write_report(study, output_dir, args.storage, args.data_dir)
    except (StudyError, OSError) as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
