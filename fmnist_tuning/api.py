"""The Python API: :func:`tune` runs the study the CLI runs; :func:`load_result` reopens one.

:func:`fmnist_tuning.load_model` (:mod:`fmnist_tuning.final.classifier`) reads a final model's
file alone.

    >>> from fmnist_tuning import tune
    >>> result = tune(n_trials=10, max_epochs=5)   # same settings and defaults as fmnist-tune
    >>> result.best_params, result.val_acc, result.test_acc
    >>> result.predict(images)                      # class indices of uint8 N x 28 x 28 images
    >>> from fmnist_tuning import load_model
    >>> load_model(result.checkpoint).predict(images)   # the same, from the file alone

Nothing here calls ``sys.exit``: bad settings, data or storage raise :mod:`fmnist_tuning.errors`,
and an interrupt (Ctrl-C, or "interrupt the kernel" in Jupyter) ends the running trial as FAIL and
raises ``KeyboardInterrupt`` with the study saved: call the same ``tune`` again to resume it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from fmnist_tuning import runtime
from fmnist_tuning.cluster.storage import load_existing
from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import NoResultError
from fmnist_tuning.final.results import stored_result
from fmnist_tuning.job import run_study
from fmnist_tuning.keys import CHECKPOINT, RUN_SETTINGS
from fmnist_tuning.result import TuneResult
from fmnist_tuning.search import front
from fmnist_tuning.search.binding import BINDING, BUDGETS
from fmnist_tuning.search.progress import configure_logging, summarize
from fmnist_tuning.search.space import suggest_config
from fmnist_tuning.settings import make_config


def tune(**settings: Any) -> TuneResult:
    """Runs (or resumes) the study ``fmnist-tune`` runs with the same settings, then its final model.

    Args:
        **settings: The fields of :class:`RunConfig` (``n_trials``, ``timeout`` for the whole
            call, ``search_timeout`` for the search alone, ``max_epochs``,
            ``sampler``, ``pruner``, ``storage``, ``workers``, ``output_dir``, ``data_dir``, ...),
            with the CLI's defaults; ``workers="auto"`` means one per core.

    Raises:
        fmnist_tuning.errors.SettingsError: A setting the CLI would refuse (same message).
        fmnist_tuning.errors.DataError: The data files are missing, partial or corrupt.
        fmnist_tuning.errors.StudyError: The storage or the stored study cannot be used as asked.
        fmnist_tuning.errors.NoResultError: No trial completed, or a worker died before the end.
        KeyboardInterrupt: SIGINT/SIGTERM; the running trials are FAIL, the rest is saved.
    """
    config = make_config(**settings)
    runtime.setup_process()
    configure_logging()
    study, final = run_study(config)
    return _result(study, config, trial=final["trial"])


def load_result(
    output_dir: str | Path | None = None,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    artifact_store: str | None = None,
) -> TuneResult:
    """Reopens a finished or running study: by its output folder, or by its storage and name.

    Without ``study_name``: the storage's only study, or else the default name's (``fmnist-mlp``).

    On a machine other than the one that made the final model, pass the ``artifact_store`` the
    study's machines share: the model is copied from there into ``output_dir``.

    Raises:
        fmnist_tuning.errors.StudyError: No such study.
        fmnist_tuning.errors.NoResultError: It has no complete trial yet.
    """
    default = Path("runs") / (RunConfig.study_name if study_name is None else study_name)
    folder = Path(output_dir) if output_dir is not None else default
    study = load_existing(RunConfig(output_dir=folder, storage=storage).storage_url, study_name)
    if output_dir is None and storage is not None:  # the folder the CLI gives this study
        folder = Path("runs") / study.study_name
    base = RunConfig(
        study_name=study.study_name,
        output_dir=folder,
        storage=storage,
        artifact_store=artifact_store,
    )
    recorded = study.user_attrs.get(RUN_SETTINGS, {})
    restored = (*BINDING, *BUDGETS, "sampler", "pruner", "objectives")  # what the study recorded
    changes: dict[str, Any] = {k: recorded[k] for k in restored if k in recorded}
    if "data_dir" in recorded:
        changes["data_dir"] = Path(recorded["data_dir"])
    config = dataclasses.replace(base, **changes)
    return _result(study, config)


def _result(study: optuna.Study, config: RunConfig, trial: int | None = None) -> TuneResult:
    """The result for ``trial`` (by default the study's best trial now)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise NoResultError(f"{summarize(study)}: no complete trial yet")
    best = front.best_trial(study) if trial is None else study.get_trials(deepcopy=False)[trial]
    final = stored_result(study, best.number) if config.test else None  # --no-test: not shown
    if final is not None:
        from fmnist_tuning.cluster.artifacts import open_store
        from fmnist_tuning.final.retrain import local_model

        # Made on another machine: copied from the artifact store into this output dir.
        checkpoint: Path | None = local_model(final, config, open_store(config))
    else:
        checkpoint = Path(best.user_attrs[CHECKPOINT]) if CHECKPOINT in best.user_attrs else None
    return TuneResult(
        study=study,
        config=config,
        trial=best.number,
        best_params=best.params,
        best_config=suggest_config(optuna.trial.FixedTrial(best.params), config.small_widths),
        val_acc=float(best.values[0]),  # its accuracy, in either mode
        pareto=front.pareto(study),
        test_acc=None if final is None else final["test_acc"],
        test_acc_ci95=None
        if final is None
        else (final["test_acc_ci95"][0], final["test_acc_ci95"][1]),
        checkpoint=checkpoint,
        output_dir=config.output_dir,
    )
