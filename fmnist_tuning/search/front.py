"""The study's objectives: accuracy alone, or a Pareto front of accuracy against size or latency.

``--objectives accuracy`` (the default) maximizes validation accuracy, with pruning.
``--objectives accuracy,params`` or ``accuracy,latency`` makes a multi-objective study: maximize
validation accuracy, minimize the network's parameter count or its CPU latency per image. Optuna
cannot prune a multi-objective study (``trial.report`` is single-objective only), so every trial of
a front trains its whole schedule (early stopping still ends it). The study's result is its Pareto
front, and the final model is made from one trial of it, chosen by :data:`RULE_BUDGET` when the
matching budget is given, else by :data:`RULE_KNEE`.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from fmnist_tuning.config import RunConfig
from fmnist_tuning.keys import LATENCY_MS, PARAMS, RUN_SETTINGS

ACCURACY = "accuracy"
# The second objective of each front mode: the trial attribute it minimizes.
SECOND = {"accuracy,params": PARAMS, "accuracy,latency": LATENCY_MS}
# The budget flag that belongs to each front mode (the other one makes no sense there).
BUDGET_FIELD = {"accuracy,params": "max_params", "accuracy,latency": "max_latency_ms"}
RULE_BUDGET = "the most accurate trial of the front within the budget"
RULE_KNEE = (
    "the knee of the front: the trial closest to the ideal point (best accuracy, smallest cost) "
    "once both objectives are scaled to [0, 1] over the front, the cost on a log scale"
)


def is_front(run: RunConfig) -> bool:
    """Whether the study is multi-objective (a Pareto front)."""
    return run.objectives != ACCURACY


def directions(run: RunConfig) -> list[optuna.study.StudyDirection]:
    """Maximize accuracy; in front mode, then minimize the second objective."""
    maximize, minimize = optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE
    return [maximize, minimize] if is_front(run) else [maximize]


def accuracy(trial: FrozenTrial) -> float | None:
    """The trial's validation accuracy (its first value), in either mode; None when it has none."""
    return trial.values[0] if trial.values else None


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The study's best trial: the best feasible one, or the one chosen from its front.

    Raises:
        ValueError: No complete (feasible) trial yet.
    """
    if len(study.directions) == 1:
        return study.best_trial
    return choose(study)[0]


def choose(study: optuna.Study) -> tuple[FrozenTrial, str]:
    """The trial of a front study the final model is made from, and the rule that chose it.

    The rule depends on the budget the study was created with (its ``run_settings``).

    Raises:
        ValueError: An empty front.
    """
    pareto = study.best_trials
    if not pareto:
        raise ValueError("the front is empty: no complete feasible trial yet")
    settings = study.user_attrs.get(RUN_SETTINGS, {})
    if settings.get(BUDGET_FIELD.get(settings.get("objectives", ""), ""), None) is not None:
        # Over-budget trials are infeasible, and the front holds feasible trials only.
        return max(pareto, key=lambda t: (t.values[0], -t.values[1], -t.number)), RULE_BUDGET
    acc = [t.values[0] for t in pareto]
    cost = [math.log10(max(t.values[1], 1e-12)) for t in pareto]

    def scaled(values: list[float], v: float) -> float:
        span = max(values) - min(values)
        return 0.0 if span == 0 else (v - min(values)) / span

    def distance(t: FrozenTrial) -> float:
        a = 1 - scaled(acc, t.values[0])  # 0 at the best accuracy
        c = scaled(cost, math.log10(max(t.values[1], 1e-12)))  # 0 at the smallest cost
        return math.hypot(a, c)

    return min(pareto, key=lambda t: (distance(t), t.number)), RULE_KNEE


def pareto(study: optuna.Study) -> list[dict[str, Any]]:
    """The study's Pareto front (feasible trials), most accurate first; [] for one objective."""
    if len(study.directions) == 1:
        return []
    second = dict(zip(SECOND.values(), ("n_params", LATENCY_MS), strict=True))
    rows = []
    for t in study.best_trials:
        row: dict[str, Any] = {"trial": t.number, "val_acc": t.values[0]}
        for key, name in second.items():
            if key in t.user_attrs:
                row[name] = t.user_attrs[key]
        rows.append(row | {"params": t.params})
    return sorted(rows, key=lambda r: (-r["val_acc"], r["trial"]))
