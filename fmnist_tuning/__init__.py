"""Tune a fully-connected network on Fashion-MNIST with Optuna and PyTorch Lightning.

The Python API (see :mod:`fmnist_tuning.api`): :func:`tune`, :func:`load_result`,
:class:`TuneResult` (:mod:`fmnist_tuning.result`), and :func:`load_model` (a final model's file →
a classifier of raw images); its errors live in :mod:`fmnist_tuning.errors`. The names are loaded
on first use, so that ``import fmnist_tuning.cli`` stays light until the command line has been checked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fmnist_tuning.api import load_result, tune
    from fmnist_tuning.final.classifier import load_model
    from fmnist_tuning.result import TuneResult

__version__ = "0.1.0"
__all__ = ["TuneResult", "load_model", "load_result", "tune"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from fmnist_tuning.final import classifier

        return classifier.load_model
    if name == "TuneResult":
        from fmnist_tuning import result

        return result.TuneResult
    if name in __all__:
        from fmnist_tuning import api

        return getattr(api, name)
    raise AttributeError(f"module 'fmnist_tuning' has no attribute {name!r}")
