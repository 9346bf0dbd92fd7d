"""A study's trials counted: by state, towards the total, by rung; their feasibility and span."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards --n-trials
RUNG_PREFIX = "completed_rung_"  # Optuna's successive halving: the trial's value at a rung


def count_states(study: optuna.Study) -> Counter[TrialState]:
    """How many of the study's trials are in each state (all workers' trials)."""
    return Counter(t.state for t in study.get_trials(deepcopy=False))


def finished(counts: Counter[TrialState]) -> int:
    """Trials that count towards the study's total: complete and pruned."""
    return sum(counts[state] for state in FINISHED)


def wall_time(trials: list[FrozenTrial]) -> float | None:
    """Seconds from the first trial's start to the last trial's end."""
    starts: list[datetime] = [t.datetime_start for t in trials if t.datetime_start]
    ends: list[datetime] = [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else None


def rungs(trial: FrozenTrial) -> int | None:
    """How many successive-halving rungs scored the trial (``--pruner asha`` or hyperband).

    The pruner records a trial's value at each rung it reaches (``completed_rung_<k>``); a pruned
    trial stopped at its last one. None under a pruner without rungs (median, none).
    """
    reached = sum(key.startswith(RUNG_PREFIX) for key in trial.system_attrs)
    return reached or None


def feasible(trial: FrozenTrial) -> bool:
    """Whether the trial fits every budget it was held to (a trial without budgets does)."""
    return all(value <= 0 for value in trial.constraints.values())
