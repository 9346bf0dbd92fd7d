"""What a study hands back: :class:`TuneResult`, its best trial and final model, and predictions."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch

from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import NoResultError
from fmnist_tuning.training.recipe import TrialConfig

if TYPE_CHECKING:  # imported where used: it imports Lightning, after runtime.setup_process
    from fmnist_tuning.final.classifier import Classifier


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
