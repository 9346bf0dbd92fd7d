"""The errors a caller can act on: bad settings, data or storage (the CLI's exit 2), no result.

Every one carries a one-line message that says what was wrong and how to fix it; the command line
prints it as ``fmnist-tune: error: <message>`` and exits 2 (1 for :class:`NoResultError`), the
Python API (:func:`fmnist_tuning.tune`) raises it.
"""

from __future__ import annotations


class TuningError(Exception):
    """Base class of the errors below."""


class SettingsError(TuningError, ValueError):
    """A setting (a flag of ``fmnist-tune``, a keyword of ``tune``) has a value that cannot work."""


class DataError(TuningError, ValueError):
    """A Fashion-MNIST file is missing or unreadable; the message names the file and the fix."""


class StudyError(TuningError, ValueError):
    """The storage or the stored study cannot be used as asked; the message says how to fix it."""


class ModelError(TuningError, ValueError):
    """A model file is missing, unreadable, or not a model this package made."""


class NoResultError(TuningError):
    """The study ended without a completed trial, so there is no best configuration to return."""


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of an error's message (its type's name when it has none), for one-line
    messages; cut to ``limit`` characters when given."""
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:limit]
