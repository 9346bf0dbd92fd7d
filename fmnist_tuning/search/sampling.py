"""The samplers and pruners a study can use, by the names the settings accept."""

from __future__ import annotations

import optuna

from fmnist_tuning.errors import StudyError
from fmnist_tuning.search import space
from fmnist_tuning.settings import CHOICES

SAMPLERS = CHOICES["sampler"]  # one list of the choices, also what the settings check accepts
PRUNERS = CHOICES["pruner"]
WARMUP_EPOCHS = 2  # no trial is pruned in its first epochs: slow starters need them
ASHA_MIN_EPOCHS = 2  # successive halving's first rung: every trial trains this many epochs
ASHA_REDUCTION = 3  # the top third of the trials scored at a rung go on to the next
DIRECTION = optuna.study.StudyDirection.MAXIMIZE


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (Bayesian), random, or the small documented grid, all seeded."""
    if name == "tpe":
        # multivariate TPE models the joint distribution (e.g. optimizer x learning rate); group
        # splits the conditional space (n_units_l2 exists only with 3 layers); constant_liar keeps
        # parallel workers from sampling the same point.
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=8, multivariate=True, group=True, constant_liar=True
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.GRID, seed=seed)
    if name == "nsga2":  # a genetic algorithm, Optuna's usual choice for Pareto fronts
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise StudyError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    """Successive halving (the default), median pruning after a warm-up, Hyperband, or none.

    The pruning callback reports epoch indices, so step 1 is the end of the second epoch; every
    pruner's resources below are such steps. Successive halving (Optuna's asynchronous
    ``SuccessiveHalvingPruner``) is what makes most trials cheap: every trial is scored at rungs
    after epochs 2, 4, 10, ..., and goes on only while it is in the top third of the trials scored
    at that rung; with the default 9-epoch budget, a trial costs 2 epochs unless it earns more.
    Without the warm-up the median of epoch-0 accuracies prunes nearly every trial at its first
    epoch, before slow starters (small learning rates, SGD) show what they can do. Hyperband
    (successive halving over several brackets, by thirds) starts its rungs after the same warm-up
    (epoch 2) and takes the trial's last epoch as its largest budget.
    """
    if name == "asha":
        halving = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=ASHA_MIN_EPOCHS - 1, reduction_factor=ASHA_REDUCTION
        )
        return LastEpochKept(halving, max_epochs)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=WARMUP_EPOCHS)
    if name == "hyperband":
        first, last = WARMUP_EPOCHS - 1, max_epochs - 1  # steps: epoch indices
        return optuna.pruners.HyperbandPruner(
            min_resource=first, max_resource=max(last, first), reduction_factor=3
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise StudyError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


class LastEpochKept(optuna.pruners.BasePruner):
    """Asks ``pruner`` at every epoch but the trial's last: a trial that trained its whole budget
    completes, even where a rung falls on its last epoch (``--max-epochs 10``: the rung after
    epoch 10), since pruning it would save nothing and discard a finished result."""

    def __init__(self, pruner: optuna.pruners.BasePruner, max_epochs: int) -> None:
        self.pruner = pruner
        self.max_epochs = max_epochs

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step  # the epoch index the pruning callback reported last
        return step is not None and step < self.max_epochs - 1 and self.pruner.prune(study, trial)
