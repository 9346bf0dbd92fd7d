"""After a study's final model: ``model.onnx``, its checks against PyTorch, and ``MODEL.md``.

The checks run on the study's validation images, never on the test set: ONNX Runtime's predictions
against PyTorch's, and the latency of each runtime on one thread. Their figures are stored in the
study (``deploy <final model>``), where the report reads them, and go into ``best.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import optuna

from fmnist_tuning.cluster import locks
from fmnist_tuning.config import RunConfig
from fmnist_tuning.deploy import card, compare
from fmnist_tuning.deploy.export import FILE_NAMES, RawImages, export
from fmnist_tuning.deploy.extra import require
from fmnist_tuning.deploy.onnx_model import OnnxModel
from fmnist_tuning.errors import TuningError, first_line
from fmnist_tuning.files import write_atomic
from fmnist_tuning.final.classifier import load_model
from fmnist_tuning.final.results import current_key, store_deploy, stored_deploy, stored_model
from fmnist_tuning.keys import BEST_JSON
from fmnist_tuning.search.budget import LATENCY_REPEATS
from fmnist_tuning.training.data import make_splits
from fmnist_tuning.training.raw import IMAGE_SIDE, load_raw

log = logging.getLogger("fmnist_tuning")

WAITING = "another machine is checking model.onnx: waiting for its figures"
# What --max-latency-ms budgets (search/budget.py's measurement).
BUDGET_RUNTIME = f"PyTorch eager, one CPU thread, batch 1 (median of {LATENCY_REPEATS} calls)"


def ship(study: optuna.Study, run: RunConfig, best: dict[str, Any]) -> dict[str, Any]:
    """Exports the final model ``best`` describes, checks it, writes ``MODEL.md`` and ``best.json``.

    Args:
        study: The study.
        run: Its settings (``output_dir``, ``data_dir``, ``val_size``, ``seed``).
        best: The ``best.json`` content :func:`fmnist_tuning.final.finalize.finalize` wrote.

    Returns:
        ``best`` with ``deploy``: the files, the agreement and the latencies, or why there is no
        ``model.onnx`` (the deploy extra is not installed, or the export failed: the final model
        and its score stand, and ``fmnist-tune export`` can try again).
    """
    target = run.output_dir / FILE_NAMES["onnx"]
    try:  # onnx or onnxruntime missing: a SettingsError that names the pip command
        best["deploy"] = measure(study, run, best, target)
    except (TuningError, OSError, RuntimeError) as err:  # the model and its score stand
        target.unlink(missing_ok=True)  # no stale file of another final model
        best["deploy"] = {"skipped": f"no model.onnx: {first_line(err, 300)}"}
        log.warning("%s", best["deploy"]["skipped"])
    else:
        log.info(
            "exported %s: ONNX Runtime agrees with PyTorch on %.2f %% of %d validation images",
            target,
            100 * best["deploy"]["agreement"]["top1_agreement"],
            best["deploy"]["agreement"]["images"],
        )
    write_atomic(run.output_dir / BEST_JSON, json.dumps(best, indent=2) + "\n")
    key = current_key(study)
    final = stored_model(study, key) if key is not None else None
    card.write_card(run.output_dir, best, final, run.val_size)
    return best


def measure(
    study: optuna.Study, run: RunConfig, best: dict[str, Any], target: Path
) -> dict[str, Any]:
    """Writes ``target`` (``model.onnx``) and its checks against PyTorch on the validation images.

    The checks are measured once per final model, by the first machine that takes the study's
    ``deploy`` lock, and stored in the study; a resume, or another machine, reads them.
    """
    # The whole extra, even when the checks are stored already: a study ships both or neither.
    require("onnxruntime", "checking model.onnx")
    export(Path(best["checkpoint"]), target)
    with locks.holding(locks.run_lock(run, study.study_name, "deploy"), WAITING):
        figures = stored_deploy(study)  # read again under the lock: another may have measured
        if figures is None:
            figures = _checks(study, run, best, target)
    return {"onnx": target.name, **figures}  # in the output folder, on every machine


def _checks(
    study: optuna.Study, run: RunConfig, best: dict[str, Any], target: Path
) -> dict[str, Any]:
    """Measures and stores the checks of ``target`` (holding the study's ``deploy`` lock)."""
    splits = make_splits(load_raw(run.data_dir), run.val_size, run.seed)
    images = splits.images[splits.val_idx].cpu().reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    eager = RawImages(load_model(best["checkpoint"]))
    exported = OnnxModel(target, threads=1)
    figures: dict[str, Any] = {
        "agreement": compare.agreement(eager, exported, images),  # validation images only
        "latency": compare.latency(eager, exported, images),
        "budget_runtime": BUDGET_RUNTIME,
        "trial_latency_ms": best.get("latency_ms"),  # the search's estimate, this network
    }
    onnx_ms = figures["latency"]["onnxruntime"]["batch_1"]["median_ms"]
    if figures["trial_latency_ms"] and onnx_ms:
        figures["trial_estimate_over_onnx"] = round(figures["trial_latency_ms"] / onnx_ms, 2)
    if (key := current_key(study)) is not None:
        store_deploy(study, key, figures)
    return figures
