"""Write the plots and the HTML report of a stored study (again, or while it still runs).

    python scripts/report.py --storage sqlite:///runs/fmnist-mlp/study.db --study-name fmnist-mlp

The same as ``fmnist-tune report`` once the package is installed. Writes
``<output-dir>/plots/*.html|png`` and ``<output-dir>/report.html`` (default output dir:
``runs/<study-name>``). Works on a running, interrupted or finished study; nothing is trained or
scored: the test figures are the final model's stored result, shown once the study has one. The
pictures of test mistakes come from the data folder the study recorded (``--data-dir`` overrides
it). Exit codes: 0 written, 2 bad input (storage, study name).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fmnist_tuning.cli import report


def main(argv: Sequence[str] | None = None) -> int:
    """``fmnist-tune report`` with these flags; returns the exit code."""
    return report(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
