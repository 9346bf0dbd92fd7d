"""The one pass of a final model over the official test set, and its 95 % interval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from scipy.stats import binomtest

from fmnist_tuning.config import RunConfig
from fmnist_tuning.final.classifier import load_model
from fmnist_tuning.training.raw import N_CLASSES, load_test

N_CONFUSED = 24  # the most confident mistakes kept for the report


def wilson_interval(correct: int, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of an accuracy of ``correct`` out of ``n`` images."""
    interval = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)


def score_on_test(model: Path, run: RunConfig) -> dict[str, Any]:
    """The one pass of a saved model over the official 10,000-image test set.

    The model is read as any user reads it (:func:`fmnist_tuning.final.classifier.load_model`), so the
    score is that of the file a user gets.

    Returns:
        ``test_acc``, its 95 % interval ``test_acc_ci95`` (Wilson: how far another draw of as
        many test images could move it), ``n_images``, ``confusion`` (rows = true class,
        columns = predicted), ``per_class`` accuracy, and ``confused``: the most confident
        mistakes as ``[index, true, predicted, probability]``, most confident first.
    """
    images, labels = load_test(run.data_dir)
    probs = load_model(model).probabilities(images)
    confidence, predicted = probs.max(dim=1)
    confusion = torch.bincount(labels * N_CLASSES + predicted, minlength=N_CLASSES**2)
    confusion = confusion.view(N_CLASSES, N_CLASSES)
    wrong = (predicted != labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True, stable=True)[:N_CONFUSED]].tolist()
    per_class = confusion.diag() / confusion.sum(dim=1).clamp(min=1)
    return {
        "test_acc": int(confusion.trace()) / len(labels),  # exact: k of n images
        "test_acc_ci95": list(wilson_interval(int(confusion.trace()), len(labels))),
        "n_images": len(labels),
        "confusion": confusion.tolist(),
        "per_class": per_class.tolist(),
        "confused": [[i, int(labels[i]), int(predicted[i]), float(confidence[i])] for i in worst],
    }
