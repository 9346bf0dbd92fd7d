"""How the measurement tools in ``benchmarks/`` start: process settings, log lines, the data check.

Those that train in their own process call :func:`start` first thing (before their own imports of
Lightning), then :func:`data_ready` in ``main``.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fmnist_tuning import runtime
from fmnist_tuning.errors import DataError
from fmnist_tuning.search.progress import configure_logging
from fmnist_tuning.training import raw


def start(quiet: bool = False) -> None:
    """Process settings as ``fmnist-tune`` has them, and timestamped log lines on stderr.

    Args:
        quiet: Only errors from the package, Lightning and Optuna (a tool that prints a table).
    """
    runtime.setup_process()
    configure_logging()  # the package's lines; Lightning's banners and Optuna's echo off
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if quiet:
        for name in ("fmnist_tuning", "lightning.pytorch", "lightning.fabric", "optuna"):
            logging.getLogger(name).setLevel(logging.ERROR)


def data_ready(tool: str, data_dir: Path, val_size: int | None = None) -> bool:
    """Decodes the training set once (later uses in the process are free) and checks the split.

    Returns:
        True, or False after printing one line that names the problem and the fix.
    """
    try:
        decoded = raw.load_raw(data_dir)
        if val_size is not None:
            raw.check_val_size(decoded, val_size)
    except DataError as err:
        print(f"{tool}: error: {err}", file=sys.stderr)
        return False
    return True


@contextlib.contextmanager
def csv_rows(
    tool: str, path: Path, fields: Sequence[str]
) -> Iterator[Callable[[dict[str, Any]], None] | None]:
    """Appends rows to the CSV file ``path`` (its header first when it is new), each one flushed
    and logged as it comes. Yields None, after one line naming the problem, when its folder
    cannot be made."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"{tool}: error: {err}", file=sys.stderr)
        yield None
        return
    new = not path.exists()
    with path.open("a", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        if new:
            writer.writeheader()

        def write(row: dict[str, Any]) -> None:
            writer.writerow(row)
            out.flush()
            logging.info(" ".join(f"{k}={v}" for k, v in row.items()))

        yield write
