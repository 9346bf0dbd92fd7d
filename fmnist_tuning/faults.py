"""What ends a trial or the study early: SIGINT/SIGTERM, and trial failures with a reason.

Lightning turns Ctrl-C inside ``trainer.fit`` into ``sys.exit(1)`` and SIGTERM into a ``SystemExit``
subclass, and Optuna catches neither, so by default an interrupted trial stays RUNNING in the
storage forever. Here SIGINT and SIGTERM only set a flag while a study runs; the trial's
:class:`~fmnist_tuning.training.callbacks.TrialGuard` turns the flag into :class:`Interrupted` at the next
batch, a ``KeyboardInterrupt`` that Optuna records as a FAIL before it re-raises it (and that no
``except Exception`` swallows).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_GAP = 1.0  # seconds: a signal this soon after the first is the same request, not a second


class TrialFailure(Exception):
    """Ends the running trial; ``reason`` is recorded in its ``fail_reason`` user attribute."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NonFiniteLoss(TrialFailure):
    """The training loss became NaN or infinite: the trial fails, the study goes on."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the trial fails and the study stops.

    Args:
        signum: The signal received.
    """

    def __init__(self, signum: int) -> None:
        self.reason = f"interrupted by {signal.Signals(signum).name}"
        super().__init__(self.reason)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class _State:
    signum: int | None = None  # the first signal received inside catch_signals()
    count = 0  # signals received inside catch_signals()
    deferring = False  # inside defer_interrupts(): record, and let safe points raise
    handler: Callable[[int, FrameType | None], None] | None = None  # catch_signals()'s, if active
    exit_at_second = False  # a command-line process: the second signal ends it at once
    first_at = 0.0  # time.monotonic() of the first signal


def received_signal() -> int | None:
    """The first SIGINT/SIGTERM received inside :func:`catch_signals`, if any."""
    return _State.signum


def raise_if_interrupted() -> None:
    """Raises :class:`Interrupted` when a signal arrived; a safe point between two steps."""
    if _State.signum is not None:
        raise Interrupted(_State.signum)


@contextmanager
def catch_signals(on_signal: Callable[[int], None] | None = None) -> Iterator[None]:
    """Handles SIGINT and SIGTERM inside the block; the previous handlers come back after it.

    A signal is recorded and passed to ``on_signal`` (e.g. to forward it to worker processes).
    Inside :func:`defer_interrupts` the first one only sets the flag; otherwise, and for any
    second signal, the handler raises :class:`Interrupted` where the program is. A signal within
    :data:`REPEAT_GAP` of the first is ignored: a scheduler that signals every process of a job
    reaches a worker twice (directly and forwarded by its parent).

    Args:
        on_signal: Called with the signal number from the handler.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if _State.signum is not None and now - _State.first_at < REPEAT_GAP:
            return  # the same stop delivered twice (Slurm signals every process, and the parent)
        _State.count += 1
        if _State.signum is None:
            _State.signum, _State.first_at = signum, now
        if on_signal is not None:
            on_signal(signum)
        if _State.count > 1 and _State.exit_at_second:
            sys.stderr.write(f"\n{signal.Signals(signum).name} again: stopping at once\n")
            sys.stderr.flush()
            os._exit(128 + signum)  # no clean-up: it is what may hang (e.g. a silent database)
        if not _State.deferring or _State.count > 1:
            raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _State.signum, _State.count, _State.deferring = None, 0, False
    _State.handler = handler
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        _State.signum, _State.count, _State.deferring, _State.handler = None, 0, False, None


def reinstall_handlers() -> None:
    """Puts :func:`catch_signals`'s handler back where something replaced it.

    Lightning ignores SIGINT from its first ``KeyboardInterrupt`` on, for the rest of the process
    (it calls ``signal.signal(SIGINT, SIG_IGN)``), which would swallow a second Ctrl-C.
    """
    if _State.handler is None or threading.current_thread() is not threading.main_thread():
        return
    for s in SIGNALS:
        if signal.getsignal(s) is signal.SIG_IGN:
            signal.signal(s, _State.handler)


def exit_at_second_signal() -> None:
    """Process-wide, for command-line entry points: a second SIGINT/SIGTERM ends the process.

    The first one still ends the running trial as FAIL and stops the study; a second one (at
    least :data:`REPEAT_GAP` later), when that takes too long (a database that does not answer),
    exits at once with 128 + the signal, leaving the running trial RUNNING until its heartbeat
    lapses. (In a notebook the second one
    raises :class:`Interrupted` instead, so that the kernel survives.)
    """
    _State.exit_at_second = True


@contextmanager
def defer_interrupts() -> Iterator[None]:
    """Inside the block a first signal only sets the flag, so that no storage write is cut short.

    The code inside must call :func:`raise_if_interrupted` (or run :class:`TrialGuard`) often.
    """
    before = _State.deferring
    _State.deferring = True
    try:
        yield
    finally:
        _State.deferring = before


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def exit_on_signals() -> Iterator[None]:
    """Inside the block (an entry point's imports and set-up), SIGINT/SIGTERM just end the process.

    Exit code 128 + the signal, without a traceback; the previous handlers come back after it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _exit) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
