"""The final models' stored test results: read and written as the study's attributes.

Each final model's result is an attribute of its own (``final_model <key>``), so that machines that
store different final models never overwrite each other's; ``final_current`` names the one the
latest ``best.json`` describes. Studies made by earlier versions kept them all in one attribute,
``final_models`` (``{"current": key, "models": {key: result}}``), which is still read.
"""

from __future__ import annotations

from typing import Any

import optuna

from fmnist_tuning.keys import FINAL_CURRENT, FINAL_MODEL, FINAL_MODELS


def model_key(trial: int, retrained: bool, final_epochs: int = 0) -> str:
    """The name of a final model: the trial it was made from, and how.

    ``final_epochs``: the longest schedule validated for its retrain (``--final-epochs``).
    """
    if not retrained:
        return f"trial {trial} checkpoint"
    longest = f", schedules up to {final_epochs} epochs validated" if final_epochs else ""
    return f"trial {trial} retrained on all training images{longest}"


def stored_model(study: optuna.Study, key: str) -> dict[str, Any] | None:
    """The stored result of the final model ``key``, read afresh from the storage; None if none."""
    attrs = study.user_attrs
    result = attrs.get(FINAL_MODEL + key) or attrs.get(FINAL_MODELS, {}).get("models", {}).get(key)
    return None if result is None else dict(result)


def store_model(study: optuna.Study, key: str, result: dict[str, Any]) -> None:
    """Stores a final model's result (once: see ``final.py``)."""
    study.set_user_attr(FINAL_MODEL + key, result)


def set_current(study: optuna.Study, key: str) -> None:
    """Makes ``key`` the final model the report and ``best.json`` describe."""
    if current_key(study) != key:
        study.set_user_attr(FINAL_CURRENT, key)


def current_key(study: optuna.Study) -> str | None:
    """The name of the current final model, if there is one."""
    attrs = study.user_attrs
    key: str | None = attrs.get(FINAL_CURRENT) or attrs.get(FINAL_MODELS, {}).get("current")
    return key


def stored_result(study: optuna.Study, trial: int) -> dict[str, Any] | None:
    """The stored test result of the study's current final model, if it is ``trial``'s.

    None before the best trial has a final model (the study still runs, was interrupted before
    its end, or finished without a test pass).
    """
    key = current_key(study)
    result = None if key is None else stored_model(study, key)
    return result if result is not None and result["trial"] == trial else None
