"""The Python API: :func:`tune` runs the study the CLI runs; :func:`load_result` reopens one;
:func:`load_model` reads a final model's file alone.

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
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import TrialState

from fmnist_tuning import runtime
from fmnist_tuning.cluster.storage import load_existing, redact
from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import NoResultError, StudyError
from fmnist_tuning.final.results import stored_result
from fmnist_tuning.keys import CHECKPOINT, RUN_SETTINGS
from fmnist_tuning.search import front
from fmnist_tuning.search.progress import configure_logging, summarize
from fmnist_tuning.search.space import suggest_config
from fmnist_tuning.settings import make_config
from fmnist_tuning.training.recipe import TrialConfig

if TYPE_CHECKING:  # imported where used: it imports Lightning, after runtime.setup_process
    from fmnist_tuning.final.classifier import Classifier

log = logging.getLogger("fmnist_tuning")


@dataclass(frozen=True)
class TuneResult:
    """A study and its best trial, with the final model's stored test score when it has one.

    Attributes:
        study: The ``optuna.Study`` (plots, trials dataframe, ``best_params``, ...).
        config: The run's settings.
        trial: The best trial's number (the one the final model was made from).
        best_params: The best trial's parameters, as Optuna stores them (``study.best_params``).
        best_config: The same trial as the :class:`TrialConfig` it trained.
        val_acc: The best trial's validation accuracy (what the study maximised).
        test_acc: The final model's accuracy on the official test set, scored once and stored in
            the study; ``None`` while the study has no final model (running or interrupted), and
            for a run with ``test=False``.
        test_acc_ci95: Its 95 % Wilson interval, or ``None``.
        checkpoint: The final model's weights (before there is one, or with ``test=False``, the
            path the trial's own checkpoint was saved at, maybe on another machine).
        output_dir: The run's output folder (``best.json``, ``report.html``, ``plots/``, ...).
        pareto: A front study's Pareto front, most accurate first: per trial ``trial``,
            ``val_acc``, ``n_params`` and/or ``latency_ms``, and its ``params`` (``[]`` for one
            objective).
    """

    study: optuna.Study
    config: RunConfig
    trial: int
    best_params: dict[str, Any]
    best_config: TrialConfig
    val_acc: float
    test_acc: float | None
    test_acc_ci95: tuple[float, float] | None
    checkpoint: Path | None
    output_dir: Path
    pareto: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def load_model(self) -> torch.nn.Module:
        """The trained network (a ``LightningModule``) on the CPU, in eval mode."""
        from fmnist_tuning.training.model import FashionMNISTClassifier

        if self.checkpoint is None or not self.checkpoint.is_file():
            raise NoResultError(
                f"no model file at {self.checkpoint}, nor in the artifact store; pass the "
                "artifact_store the study's machines share"
            )
        module = FashionMNISTClassifier.load_from_checkpoint(self.checkpoint, map_location="cpu")
        return module.eval()

    @functools.cached_property
    def _classifier(self) -> Classifier:
        from fmnist_tuning.final.classifier import NoNormalisation, load_model

        if self.checkpoint is None or not self.checkpoint.is_file():
            raise NoResultError(
                f"no model file at {self.checkpoint}; on another machine than the study's, pass "
                "the artifact_store its machines share"
            )
        try:
            return load_model(self.checkpoint)
        except NoNormalisation:  # saved by an earlier version: the normalisation from the data
            return load_model(self.checkpoint, normalisation=self._pixel_stats)

    @functools.cached_property
    def _pixel_stats(self) -> tuple[float, float]:
        """The training split's mean and std (for a model saved without them)."""
        from fmnist_tuning.training.data import make_splits
        from fmnist_tuning.training.raw import load_raw

        splits = make_splits(load_raw(self.config.data_dir), self.config.val_size, self.config.seed)
        return splits.mean, splits.std

    def predict(self, images: Any) -> torch.Tensor:
        """Class indices (0-9, see ``fmnist_tuning.training.raw.CLASS_NAMES``) for a batch of images.

        The model's own file classifies them (:func:`fmnist_tuning.load_model`): what the test
        pass scored.

        Args:
            images: ``N x 28 x 28`` or ``N x 784``, a tensor or array: uint8 pixels (0-255, as in
                the dataset files) or floats in [0, 1] (torchvision's ``ToTensor`` scale).
        """
        return self._classifier.predict(images)

    def figures(self) -> dict[str, Any]:
        """Optuna's plotly figures of the study by name (shown inline when a notebook cell ends
        with one); the report's list, without the ones this study cannot draw yet."""
        from fmnist_tuning.report.plots import make_plots

        return {p.name: p.figure for p in make_plots(self.study) if p.figure is not None}


def tune(**settings: Any) -> TuneResult:
    """Runs (or resumes) the study ``fmnist-tune`` runs with the same settings, then its final model.

    Args:
        **settings: The fields of :class:`RunConfig` (``n_trials``, ``timeout``, ``max_epochs``,
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


def run_study(config: RunConfig) -> tuple[optuna.Study, dict[str, Any]]:
    """Validates data and storage, runs the study, makes the final model and the report.

    Returns:
        The study and the ``best.json`` content of its final model (whose ``trial`` is the best
        trial when it was made: another machine may finish a better one right after).

    Raises:
        The errors of :func:`tune`; :class:`fmnist_tuning.faults.Interrupted` on a signal.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from fmnist_tuning.faults import Interrupted, catch_signals, received_signal
    from fmnist_tuning.final.finalize import finalize
    from fmnist_tuning.report.page import write_report
    from fmnist_tuning.search import study
    from fmnist_tuning.search.budget import budget_text
    from fmnist_tuning.search.loop import optimize
    from fmnist_tuning.training import raw

    workers = None
    if config.workers > 1:
        from fmnist_tuning.search.workers import Workers

        workers = Workers()
    the_study = None
    with catch_signals(on_signal=workers.forward if workers else None):
        try:
            raw.download(config.data_dir)  # no-op when the files are there
            data = raw.load_raw(config.data_dir)  # decode and validate now, before any output
            raw.check_val_size(data, config.val_size)
            if config.test:
                raw.load_test(config.data_dir)  # the final model's test pass must not fail late
            the_study = study.load_or_create(config)
            config.output_dir.mkdir(parents=True, exist_ok=True)
            first = study.reserve_worker_slots(the_study, config, config.workers)
            if config.budgeted:
                log.info("deployment budget: %s (trials over it stop early)", budget_text(config))
            if workers is None:
                the_study.sampler = study.make_sampler(config.sampler, config.seed + first)
                optimize(the_study, config)
            else:
                codes = workers.run(the_study, config, first)
                if 2 in codes:  # a worker could not use a store; it said why, in one line
                    raise StudyError(
                        f"a worker could not use storage {redact(config.storage_url)} or the "
                        "artifact store (its message is above); rerun the same command once "
                        "that is fixed"
                    )
                if any(codes) and not study.reached_total(the_study, config):
                    raise NoResultError(f"{summarize(the_study)}; rerun the same command to resume")
            result = finalize(the_study, config)
            runtime.release_memory()  # the retrain's memory, before the report's imports and figures
            write_report(
                the_study, config.output_dir, config.storage_url, config.data_dir, config.test
            )
        except (Interrupted, SystemExit, SIGTERMException) as err:
            # Outside a trial (the final retrain, the test pass) Lightning turns Ctrl-C into
            # sys.exit(1) and SIGTERM into SIGTERMException: raise them as the signal they were.
            signum = err.signum if isinstance(err, Interrupted) else received_signal()
            if signum is None:
                raise
            interrupted = err if isinstance(err, Interrupted) else Interrupted(signum)
            so_far = summarize(the_study) if the_study is not None else "no trial ran"
            log.warning("%s: %s; rerun the same command to resume", interrupted.reason, so_far)
            raise interrupted from None
    if result is None:
        raise NoResultError(
            "no trial completed within the budget: nothing to report; run more trials, relax "
            "pruning or the budget"
            if config.budgeted
            else "no trial completed: nothing to report; run more trials or relax pruning"
        )
    return the_study, result


def load_result(
    output_dir: str | Path | None = None,
    *,
    storage: str | None = None,
    study_name: str = RunConfig.study_name,
    artifact_store: str | None = None,
) -> TuneResult:
    """Reopens a finished or running study: by its output folder, or by its storage and name.

    On a machine other than the one that made the final model, pass the ``artifact_store`` the
    study's machines share: the model is copied from there into ``output_dir``.

    Raises:
        fmnist_tuning.errors.StudyError: No such study.
        fmnist_tuning.errors.NoResultError: It has no complete trial yet.
    """
    folder = Path(output_dir) if output_dir is not None else Path("runs") / study_name
    base = RunConfig(
        study_name=study_name, output_dir=folder, storage=storage, artifact_store=artifact_store
    )
    study = load_existing(base.storage_url, study_name)
    recorded = study.user_attrs.get(RUN_SETTINGS, {})
    restored = (
        "seed", "val_size", "max_epochs", "early_stopping", "sampler", "pruner", "objectives",
        "max_params", "max_latency_ms",
    )  # fmt: skip
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
        from fmnist_tuning.final.finalize import local_model

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
