"""The final models' stored test results, and the study's count of test passes: study attributes.

Each final model's result is an attribute of its own (``final_model <key>``), so that machines that
store different final models never overwrite each other's; ``final_current`` names the one the
latest ``best.json`` describes. Each pass over the test set is recorded just before it reads the
test set (``test_pass <id>``), so :func:`count_test_passes` counts every read, a pass whose result was
never stored too. Studies made by earlier versions kept their results in one attribute,
``final_models`` (``{"current": key, "models": {key: result}}``), which is still read.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import optuna

from fmnist_tuning.keys import DEPLOY, FINAL_CURRENT, FINAL_MODEL, FINAL_MODELS, TEST_PASS


def model_key(trial: int, retrained: bool, final_epochs: int = 0) -> str:
    """The name of a final model: the trial it was made from, and how.

    ``final_epochs``: the longest schedule validated for it (0: the trial's own schedule). A model
    not retrained is the trial's own checkpoint or, when no retrain fitted in ``--timeout``, the
    validation run's best epoch.
    """
    if not retrained:
        return (
            f"trial {trial} {final_epochs}-epoch validation run"
            if final_epochs
            else f"trial {trial} checkpoint"
        )
    longest = f", schedules up to {final_epochs} epochs validated" if final_epochs else ""
    return f"trial {trial} retrained on all training images{longest}"


def stored_model(study: optuna.Study, key: str) -> dict[str, Any] | None:
    """The stored result of the final model ``key``, read afresh from the storage; None if none."""
    result = stored_models(study).get(key)
    return None if result is None else dict(result)


def stored_models(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """Every stored final model's result by its key (an earlier version's too)."""
    return _models(study.user_attrs)


def _models(attrs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The final models' results among a study's attributes (read once by the caller)."""
    models: dict[str, dict[str, Any]] = dict(attrs.get(FINAL_MODELS, {}).get("models", {}))
    models.update(
        {k.removeprefix(FINAL_MODEL): v for k, v in attrs.items() if k.startswith(FINAL_MODEL)}
    )
    return models


def models_of(study: optuna.Study, trial: int) -> list[tuple[str, dict[str, Any]]]:
    """The stored final models made from ``trial``, as ``(key, result)``, the first scored first."""
    return _of(stored_models(study), trial)


def _of(models: dict[str, dict[str, Any]], trial: int) -> list[tuple[str, dict[str, Any]]]:
    made = [(k, dict(v)) for k, v in models.items() if v.get("trial") == trial]
    return sorted(made, key=lambda kv: (str(kv[1].get("scored_at", "")), kv[0]))


def made_for(study: optuna.Study, trial: int) -> tuple[str, dict[str, Any]] | None:
    """The stored final model of ``trial`` as ``(key, result)``: the first one made of it, with
    whatever settings (a trial's final model is made and scored once)."""
    made = _of(stored_models(study), trial)  # one read of the storage
    return made[0] if made else None


def record_test_pass(study: optuna.Study, key: str, worker: str) -> None:
    """Records, before it reads the test set, one pass of the final model ``key`` over it."""
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    study.set_user_attr(TEST_PASS + uuid.uuid4().hex, {"model": key, "worker": worker, "at": now})


def count_test_passes(study: optuna.Study) -> int:
    """How many times the study's final models were scored on the test set, on any machine.

    The recorded passes, and each stored result of an earlier version that recorded none.
    """
    attrs = study.user_attrs  # one read of the storage
    passes = [v.get("model") for k, v in attrs.items() if k.startswith(TEST_PASS)]
    return len(passes) + sum(key not in passes for key in _models(attrs))


def store_model(study: optuna.Study, key: str, result: dict[str, Any]) -> None:
    """Stores a final model's result (once: see :mod:`fmnist_tuning.final.once`)."""
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


def store_deploy(study: optuna.Study, key: str, figures: dict[str, Any]) -> None:
    """Stores the checks of the final model ``key``'s export (measured once, under the study's
    ``deploy`` lock: :mod:`fmnist_tuning.deploy.ship`)."""
    study.set_user_attr(DEPLOY + key, figures)


def stored_deploy(study: optuna.Study) -> dict[str, Any] | None:
    """The checks of the current final model's export (agreement, latencies), if measured."""
    key = current_key(study)
    figures = None if key is None else study.user_attrs.get(DEPLOY + key)
    return None if figures is None else dict(figures)
