"""Output files that a reader (a browser, another worker, a crash) never sees half-written."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes | str) -> None:
    """Writes ``data`` (str as UTF-8) to a hidden temporary file beside ``path``, then renames it.

    The rename replaces ``path`` in one step: an interrupt or a crash mid-write leaves the previous
    file (or none), never a truncated one. The process id in the temporary name keeps concurrent
    writers (workers of one study) from writing into each other's temporary file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left behind when the write or the rename failed


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Writes ``rows`` (dicts with the same keys, in order) as a CSV file with a header, atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())
