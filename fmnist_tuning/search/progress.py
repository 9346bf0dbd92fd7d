"""What a study shows while it runs: one log line per trial, the study summary, durations."""

from __future__ import annotations

import logging
import sys
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from fmnist_tuning.config import RunConfig
from fmnist_tuning.faults import Interrupted, TrialFailure
from fmnist_tuning.keys import EPOCHS, LATENCY_MS, PARAMS
from fmnist_tuning.search import deadline
from fmnist_tuning.search.states import FINISHED, count_states, feasible, finished, rungs

log = logging.getLogger("fmnist_tuning")


def format_duration(seconds: float | None) -> str:
    """``0m42s``, ``3m07s`` or ``2h05m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(max(round(seconds), 0), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def _best(study: optuna.Study, label: str = "best val_acc") -> str:
    """``best val_acc=0.9012 (trial 8)``; for a front, also its size; ``-`` with no trial yet."""
    try:
        if len(study.directions) > 1:
            pareto = study.best_trials
            top = max(pareto, key=lambda t: (t.values[0], -t.number))
            return f"{label}={top.values[0]:.4f} (trial {top.number}, front of {len(pareto)})"
        return f"{label}={study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        return f"{label}=-"


def summarize(study: optuna.Study) -> str:
    """One line on the study so far: trials per state and the best value."""
    counts = count_states(study)
    states = ", ".join(f"{counts[s]} {s.name.lower()}" for s in TrialState if counts[s])
    return (
        f"study {study.study_name!r}: {finished(counts)} finished trials "
        f"({states or 'none'}); {_best(study)}"
    )


def describe(trial: FrozenTrial) -> str:
    """The trial in one line: number, state, value, epochs, seconds, parameters."""
    params = " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    value = "-" if not trial.values else f"{trial.values[0]:.4f}"  # accuracy, in either mode
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    rung = "" if (reached := rungs(trial)) is None else f" rung={reached}"
    return (
        f"trial {trial.number} {trial.state.name}{'' if feasible(trial) else ' OVER-BUDGET'} "
        f"val_acc={value} epochs={trial.user_attrs.get(EPOCHS, 0)}{rung} {seconds:.1f}s "
        f"{size(trial)} {params}"
    )


def size(trial: FrozenTrial) -> str:
    """``params=101.8k latency=0.084ms``: what the trial's network costs (what is known of it)."""
    parts = []
    if (params := trial.user_attrs.get(PARAMS)) is not None:
        parts.append(f"params={params / 1000:.1f}k")
    if (latency := trial.user_attrs.get(LATENCY_MS)) is not None:
        parts.append(f"latency={latency:.3f}ms")
    return " ".join(parts)


def log_trial(
    study: optuna.Study,
    trial: FrozenTrial,
    *,
    n_trials: int | None = None,
    search_stop: float | None = None,
    run: RunConfig | None = None,
) -> None:
    """One line per finished trial: study progress, the trial, the best so far, pruned, time left.

    A plain log line (no carriage returns), so a terminal, a log file and CI all get one line per
    trial, e.g. ``[7/50] trial 6 PRUNED val_acc=- … | best=0.8912 (trial 3) | pruned 2 | ~4m10s
    left``.

    Args:
        study: The study (all workers' trials count).
        trial: The trial that just finished.
        n_trials: The study's total of finished trials (``--n-trials``), for "i/N" and the estimate.
        search_stop: ``time.monotonic()`` after which no new trial starts (``--search-timeout``).
        run: The study-wide settings: under ``--timeout``, the search's end
            (:func:`fmnist_tuning.search.deadline.search_deadline`) counts too.
    """
    counts = count_states(study)
    done = finished(counts)
    progress = f"[{done}/{n_trials}]" if n_trials else f"[{done}]"
    best = _best(study, "best")
    tally = f"pruned {counts[TrialState.PRUNED]}"
    if over := sum(not feasible(t) for t in study.get_trials(deepcopy=False, states=FINISHED)):
        tally += f" ({over} over budget)"
    if counts[TrialState.FAIL]:
        tally += f", failed {counts[TrialState.FAIL]}"
    left: list[float] = []
    if n_trials:
        durations = [
            t.duration.total_seconds()
            for t in study.get_trials(deepcopy=False, states=FINISHED)
            if t.duration
        ]
        if durations:  # the mean trial so far, shared among the trials running in parallel
            per_trial = sum(durations) / len(durations) / (1 + counts[TrialState.RUNNING])
            left.append(max(n_trials - done, 0) * per_trial)
    if search_stop is not None:
        left.append(search_stop - time.monotonic())
    if run is not None and (stop := deadline.search_deadline(study, run)) is not None:
        left.append(stop - deadline.now())
    eta = f" | ~{format_duration(min(left))} left" if left else ""
    log.info("%s %s | %s | %s%s", progress, describe(trial), best, tally, eta)


def configure_logging(prefix: str = "") -> None:
    """Our one line per trial on stderr; Lightning's device banners and Optuna's echo off.

    Args:
        prefix: Starts every line (e.g. the worker's number).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    for noisy in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna.study._optimize").filters[:] = [_HandledFailures()]


class _HandledFailures(logging.Filter):
    """Drops Optuna's traceback for a trial that failed for a known reason (NaN loss, a signal).

    Our own line for the trial says FAIL, and its ``fail_reason`` attribute says why.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(
            error, (TrialFailure, Interrupted)
        ) and "failed with value None" not in str(record.msg)
