"""The search space: the only place that calls ``trial.suggest_*``.

A trial becomes a frozen :class:`~fmnist_tuning.training.recipe.TrialConfig`; everything downstream
(model, data, trainer) takes that dataclass, so a single hand-made training run and a tuning trial
share one code path.

Ranges (chosen so that the trials with the best validation accuracies so far lie well inside them,
not at an edge):

| parameter | range | scale |
|---|---|---|
| ``n_layers`` | 1-3 hidden layers | int |
| ``n_units_l{i}`` | 128-1024 units per layer | log int |
| ``dropout`` | 0.0-0.5 | linear |
| ``batch_norm`` | on / off | categorical |
| ``optimizer`` | adam, adamw, sgd (Nesterov, momentum 0.9), rmsprop | categorical |
| ``lr_{optimizer}`` | adam/adamw 1e-4-1e-2, sgd 1e-3-3e-1, rmsprop 1e-5-3e-3 (peak of the schedule) | log |
| ``weight_decay`` | 1e-6-1e-2 | log |
| ``batch_size`` | 128, 256, 512 | categorical |

Each optimizer has its own learning-rate parameter (the "optimizer pair"), because a good SGD rate
is 10-100x a good Adam rate: one shared range would waste most samples on one side or the other.

Every trial shares the fixed recipe of :mod:`fmnist_tuning.training.recipe`. Widths start at 128 and
batches at 128 because smaller ones lose accuracy and, on a CPU, cost more time per epoch. Widths
end at 1024 because wider layers cost far more time per epoch than they gain in validation
accuracy within the search's budget: given up to 2048, TPE spent its study on two-layer nets of
about 1900 units (docs/benchmarks.md, "A search that beats its starting point").
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, distribution_to_json

# Imported into this module, so that a measurement can patch the recipe a trial gets here.
from fmnist_tuning.training.recipe import FLIP, LABEL_SMOOTHING, SCHEDULER, TrialConfig

LR_RANGES: dict[str, tuple[float, float]] = {
    "adam": (1e-4, 1e-2),
    "adamw": (1e-4, 1e-2),
    "sgd": (1e-3, 3e-1),
    "rmsprop": (1e-5, 3e-3),
}
MAX_LAYERS = 3
UNITS_RANGE = (128, 1024)
# Under a deployment budget (--max-params, --max-latency-ms) and in a front, widths start at 16: one 128-unit layer
# alone has 100k weights, so a tight budget would otherwise leave no network to train.
BUDGET_UNITS_RANGE = (16, 1024)
BATCH_SIZES = (128, 256, 512)

# A strong, documented starting point, run as a new study's first trial (``enqueue_trial``) so the
# sampler and the pruner have a good reference from trial 0: 784-1024-640-10 with batch norm and
# light dropout, AdamW peaking at 8.5e-3. Its first width was 2000, the best trial of an early
# study; in 9-epoch runs on two validation splits 1024 lost 0.08 pt of validation accuracy on
# average and trained 40 % faster (``benchmarks/ablate.py``, figures in docs/benchmarks.md).
DEFAULT_PARAMS: dict[str, Any] = {
    "n_layers": 2,
    "n_units_l0": 1024,
    "n_units_l1": 640,
    "dropout": 0.13,
    "batch_norm": True,
    "optimizer": "adamw",
    "lr_adamw": 8.5e-3,
    "weight_decay": 5e-5,
    "batch_size": 256,
}

# The small grid for ``--sampler grid``: every parameter the objective can suggest must appear, so
# conditional ones (deeper widths, the rates of the unchosen optimizers) get a single value and do
# not multiply the grid. 2 depths x 2 widths x 2 optimizers x 2 dropouts = 16 points.
GRID: dict[str, list[Any]] = {
    "n_layers": [1, 2],
    "n_units_l0": [128, 512],
    "n_units_l1": [256],
    "n_units_l2": [256],
    "dropout": [0.0, 0.2],
    "batch_norm": [True],
    "optimizer": ["adamw", "sgd"],
    "lr_adam": [1e-3],
    "lr_adamw": [1e-3],
    "lr_sgd": [3e-2],
    "lr_rmsprop": [3e-4],
    "weight_decay": [1e-4],
    "batch_size": [128],
}


def suggest_config(
    trial: optuna.Trial | optuna.trial.FixedTrial, small_widths: bool = False
) -> TrialConfig:
    """Samples one configuration from the search space documented in this module.

    ``small_widths``: under a deployment budget or in a front, widths come from :data:`BUDGET_UNITS_RANGE`.
    """
    n_layers = trial.suggest_int("n_layers", 1, MAX_LAYERS)
    units = BUDGET_UNITS_RANGE if small_widths else UNITS_RANGE
    hidden = tuple(trial.suggest_int(f"n_units_l{i}", *units, log=True) for i in range(n_layers))
    dropout = trial.suggest_float("dropout", 0.0, 0.5)
    batch_norm = trial.suggest_categorical("batch_norm", [True, False])
    optimizer = trial.suggest_categorical("optimizer", list(LR_RANGES))
    lr = trial.suggest_float(f"lr_{optimizer}", *LR_RANGES[optimizer], log=True)
    weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    batch_size = trial.suggest_categorical("batch_size", list(BATCH_SIZES))
    return TrialConfig(
        hidden_sizes=hidden,
        dropout=dropout,
        batch_norm=batch_norm,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        label_smoothing=LABEL_SMOOTHING,
        scheduler=SCHEDULER,
        flip=FLIP,
    )


def distributions(small_widths: bool = False) -> dict[str, BaseDistribution]:
    """Every distribution :func:`suggest_config` can ask for, over all of its branches."""
    found: dict[str, BaseDistribution] = {}
    values = {name: choices[0] for name, choices in GRID.items()}  # GRID names every parameter
    for optimizer in LR_RANGES:  # each optimizer's rate; the deepest net has every width
        trial = optuna.trial.FixedTrial({**values, "n_layers": MAX_LAYERS, "optimizer": optimizer})
        suggest_config(trial, small_widths)
        found.update(trial.distributions)
    return found


def fingerprint(small_widths: bool = False) -> str:
    """A short hash of :func:`distributions`.

    Stored in a new study and compared on resume, so that a study is never continued with other
    ranges or choices than its trials were sampled from.
    """
    text = json.dumps(
        {k: distribution_to_json(d) for k, d in distributions(small_widths).items()}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]
