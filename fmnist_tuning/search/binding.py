"""The settings a study is tied to: recorded when it is created, checked on every resume."""

from __future__ import annotations

from typing import Any

import optuna

from fmnist_tuning.cluster.storage import redact
from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import StudyError
from fmnist_tuning.keys import RUN_SETTINGS
from fmnist_tuning.search import front, space
from fmnist_tuning.training import recipe

# The flags a study's values depend on: resuming with others would mix values that do not
# compare (another validation split, another schedule length, another in-trial patience). The
# search space, the fixed recipe, the objectives and the budgets are bound too (checked apart).
BINDING = ("seed", "val_size", "max_epochs", "early_stopping")
BUDGETS = ("max_params", "max_latency_ms")  # a study's constraints: its feasible set
LEGACY_SPLIT = "validation_split"  # what studies of earlier versions recorded instead


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


def check_settings(study: optuna.Study, run: RunConfig) -> None:
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
