"""Create or resume the study: its storage, sampler and pruner, and the settings it is tied to."""

from __future__ import annotations

from typing import Any

import optuna

from fmnist_tuning.cluster import locks
from fmnist_tuning.cluster.storage import open_storage, redact
from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import StudyError
from fmnist_tuning.keys import RUN_SETTINGS, WORKER_SLOTS
from fmnist_tuning.search import budget, front, space
from fmnist_tuning.search.progress import count_states, finished
from fmnist_tuning.settings import CHOICES
from fmnist_tuning.training import recipe

SAMPLERS = CHOICES["sampler"]  # one list of the choices, also what the settings check accepts
PRUNERS = CHOICES["pruner"]
WARMUP_EPOCHS = 2  # no trial is pruned in its first epochs: slow starters need them
ASHA_MIN_EPOCHS = 2  # successive halving's first rung: every trial trains this many epochs
ASHA_REDUCTION = 3  # the top third of the trials scored at a rung go on to the next
DIRECTION = optuna.study.StudyDirection.MAXIMIZE
# The flags a study's values depend on: resuming with others would mix values that do not
# compare (another validation split, another schedule length, another in-trial patience). The
# search space, the fixed recipe, the objectives and the budgets are bound too (checked apart).
BINDING = ("seed", "val_size", "max_epochs", "early_stopping")
BUDGETS = ("max_params", "max_latency_ms")  # a study's constraints: its feasible set
LEGACY_SPLIT = "validation_split"  # what studies of earlier versions recorded instead


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


def run_settings(run: RunConfig) -> dict[str, Any]:
    """What a study records about itself when it is created (its ``run_settings`` attribute).

    The :data:`BINDING` ones must match on every resume; the rest describe how it was started.
    """
    return {
        "seed": run.seed,
        "val_size": run.val_size,
        "max_epochs": run.max_epochs,
        "search_space": space.fingerprint(run.small_widths),
        "recipe": recipe.recipe(),
        "max_params": run.max_params,
        "max_latency_ms": run.max_latency_ms,
        "early_stopping": run.early_stopping,
        "final_epochs": run.final_epochs,
        "sampler": run.sampler,
        "pruner": "none" if front.is_front(run) else run.pruner,  # a front cannot prune
        "objectives": run.objectives,
        "data_dir": str(run.data_dir.resolve()),
    }


def _check_trials_fit(study: optuna.Study, where: str, small_widths: bool) -> None:
    """For a study that recorded no settings (made by hand): its trials must fit the space."""
    current = space.distributions(small_widths)
    for t in study.get_trials(deepcopy=False):
        for name, distribution in t.distributions.items():
            if current.get(name) != distribution:
                raise StudyError(
                    f"{where} was sampled from another search space (trial {t.number}: {name}); "
                    "its trials cannot guide this one: use another --study-name"
                )


def _check_settings(study: optuna.Study, run: RunConfig) -> None:
    """Refuses a stored study that another direction, search space, split or schedule made."""
    where = f"study {study.study_name!r} in {redact(run.storage_url)}"
    if study.directions != front.directions(run):
        directions = "/".join(d.name.lower() for d in study.directions)
        raise StudyError(
            f"{where} was created to {directions}, but --objectives {run.objectives} means "
            f"{'/'.join(d.name.lower() for d in front.directions(run))}; use the study's own "
            "--objectives, another --study-name or another storage"
        )
    settings = run_settings(run)
    stored: dict[str, Any] | None = study.user_attrs.get(RUN_SETTINGS)
    if stored is None:  # a new study, or one made by hand or by an earlier version
        _check_trials_fit(study, where, run.small_widths)
        # An earlier version kept only the split, as {"seed": ..., "val_size": ...}.
        legacy = study.user_attrs.get(LEGACY_SPLIT, {})
        if any(legacy.get(key, settings[key]) != settings[key] for key in ("seed", "val_size")):
            raise StudyError(
                f"{where} was tuned on the validation split of --seed {legacy.get('seed')} "
                f"--val-size {legacy.get('val_size')}; resume it with those flags or use another "
                "--study-name"
            )
        study.set_user_attr(RUN_SETTINGS, settings)  # tied to these settings from now on
        return
    if (objectives := stored.get("objectives", front.ACCURACY)) != run.objectives:
        raise StudyError(
            f"{where} was created with --objectives {objectives}; resume it with that or use "
            "another --study-name"
        )
    if any(stored.get(key) != settings[key] for key in BUDGETS):
        budget = " ".join(
            f"--{key.replace('_', '-')} {stored[key]}" for key in BUDGETS if stored.get(key)
        )
        raise StudyError(
            f"{where} was tuned under {'the budget ' + budget if budget else 'no budget'}; its "
            "trials were judged feasible by that budget: resume it with the same budget flags "
            "or use another --study-name"
        )
    if stored.get("search_space") != settings["search_space"]:
        raise StudyError(
            f"{where} was sampled from another search space ({stored.get('search_space')}, now "
            f"{settings['search_space']}); its trials cannot guide this one: use another "
            "--study-name"
        )
    if stored.get("recipe", settings["recipe"]) != settings["recipe"]:  # older studies: unknown
        raise StudyError(
            f"{where} was trained with another fixed recipe ({stored['recipe']}, this version "
            f"{settings['recipe']}); its values do not compare: use another --study-name"
        )
    # A flag a study of an earlier version did not record is taken as it comes.
    changed = [key for key in BINDING if key in stored and stored[key] != settings[key]]
    if changed:
        flags = " ".join(f"--{key.replace('_', '-')} {stored[key]}" for key in changed)
        raise StudyError(
            f"{where} was tuned with {flags}, which its trials' values depend on; resume it with "
            "that, or use another --study-name"
        )


def load_or_create(run: RunConfig, slot: int = 0) -> optuna.Study:
    """Creates the study, or resumes it when it already exists in the storage.

    Args:
        run: The study-wide settings.
        slot: This worker's number (see :func:`reserve_worker_slots`); seeds its sampler.

    Raises:
        StudyError: The storage cannot be opened, or holds a study of this name with another
            direction, search space, validation split (``--seed``, ``--val-size``) or schedule
            (``--max-epochs``).
    """
    if run.storage is None:
        run.output_dir.mkdir(parents=True, exist_ok=True)  # the default SQLite file lives there
    storage = open_storage(
        run.storage_url, run.heartbeat_interval, run.grace_period, run.storage_timeout
    )
    study = optuna.create_study(
        storage=storage,
        study_name=run.study_name,
        directions=front.directions(run),
        sampler=make_sampler(run.sampler, run.seed + slot),
        pruner=make_pruner("none" if front.is_front(run) else run.pruner, run.max_epochs),
        load_if_exists=True,
    )
    # Under the study's claim lock, as every machine reads, checks and writes these: the first
    # machine records the settings and queues the start, the others find them.
    start = run.warm_start and run.sampler != "grid" and budget.start_fits(run)
    with locks.holding(claim_lock(run, study.study_name), None, poll=0.2):
        _check_settings(study, run)
        if start and not study.trials:
            study.enqueue_trial(space.DEFAULT_PARAMS)
    return study


def claim_lock(run: RunConfig, study_name: str) -> locks.Lock:
    """The study's lock, every machine's: for claiming a trial, recording the run settings,
    queueing the start and numbering workers."""
    return locks.run_lock(run, study_name, "claim")


def reserve_worker_slots(study: optuna.Study, run: RunConfig, n: int) -> int:
    """Numbers ``n`` new workers of the study; returns the first number.

    Worker ``k`` seeds its sampler with ``seed + k``: the workers of one run, of a resumed run and
    of other machines draw different trials, yet a run is reproducible from its seed. Read and
    written under the study's :func:`claim_lock`, so machines that start together never share a
    number.
    """
    with locks.holding(claim_lock(run, study.study_name), None, poll=0.2):
        first = int(study.user_attrs.get(WORKER_SLOTS, 0))
        study.set_user_attr(WORKER_SLOTS, first + n)
    return first


def reached_total(study: optuna.Study, run: RunConfig) -> bool:
    """Whether the study holds its ``n_trials`` finished trials."""
    return run.n_trials is not None and finished(count_states(study)) >= run.n_trials
