"""Output files that a reader (a browser, another worker, a crash) never sees half-written."""

from __future__ import annotations

import os
from pathlib import Path


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
