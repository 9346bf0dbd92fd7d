"""The study report: ``plots/`` and one self-contained ``report.html``, read from the stored study.

``report.html`` opens offline: plotly.js is embedded once and every PNG is inlined. The page is the
Jinja2 template ``templates/report.html.j2``, fed the small dict :func:`page_context` makes from
the study: its settings, the best trial, the final model's stored test result (the report never
scores a model itself), every trial and Optuna's plots (:mod:`fmnist_tuning.report.plots`).
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib.metadata
import logging
from pathlib import Path
from typing import Any

import jinja2
import optuna
from markupsafe import Markup
from optuna.trial import FrozenTrial, TrialState

from fmnist_tuning.cluster.storage import redact
from fmnist_tuning.errors import DataError
from fmnist_tuning.files import write_atomic
from fmnist_tuning.final.results import count_test_passes, stored_deploy, stored_result
from fmnist_tuning.keys import EPOCHS, LATENCY_MS, PARAMS, PLOTS_DIR, REPORT_HTML, RUN_SETTINGS
from fmnist_tuning.report import plots
from fmnist_tuning.search import front
from fmnist_tuning.search.progress import format_duration
from fmnist_tuning.search.states import count_states, feasible, rungs, wall_time
from fmnist_tuning.training.raw import CLASS_NAMES, N_CLASSES, load_test

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
MISTAKES_PNG = "confused_test_images.png"  # in plots/
TEST_PASSES_ROW = "test passes (final models scored on the test set, ever)"
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, keep_trailing_newline=True
)


def _version() -> str:
    """This package's installed version (the report names the code that made it)."""
    try:
        return importlib.metadata.version("fmnist-tuning")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _score(result: dict[str, Any]) -> str:
    """``0.9127 (9127 of 10000 test images; 95 % interval …)``: 4 decimals are every digit."""
    correct = sum(row[k] for k, row in enumerate(result["confusion"]))
    low, high = result["test_acc_ci95"]
    return (
        f"{result['test_acc']:.4f} ({correct} of {result['n_images']} test images; "
        f"95 % interval {low:.4f}-{high:.4f})"
    )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _summary(study: optuna.Study, storage_url: str) -> list[tuple[str, Any]]:
    trials = study.get_trials(deepcopy=False)
    counts = count_states(study)
    settings: dict[str, Any] = study.user_attrs.get(RUN_SETTINGS, {})

    def setting(key: str) -> Any:
        return settings.get(key, "not recorded")

    rows: list[tuple[str, Any]] = [
        ("study", study.study_name),
        ("storage", redact(storage_url)),
        ("trials", len(trials)),
        ("complete", counts[TrialState.COMPLETE]),
        ("pruned", counts[TrialState.PRUNED]),
        ("failed", counts[TrialState.FAIL]),
    ]
    if counts[TrialState.RUNNING] or counts[TrialState.WAITING]:
        waiting = f"{counts[TrialState.RUNNING]} / {counts[TrialState.WAITING]}"
        rows.append(("running / waiting", waiting))
    trial_seconds = sum(t.duration.total_seconds() for t in trials if t.duration)
    return [
        *rows,
        (TEST_PASSES_ROW, count_test_passes(study)),
        ("wall time (first start → last end)", format_duration(wall_time(trials))),
        ("time inside trials (summed)", format_duration(trial_seconds)),
        ("sampler (when created)", setting("sampler")),
        ("pruner (when created)", setting("pruner")),
        ("epochs per trial (max)", setting("max_epochs")),
        ("objectives", setting("objectives")),
        ("budget: parameters at most", settings.get("max_params") or "none"),
        ("budget: CPU ms per image at most", settings.get("max_latency_ms") or "none"),
        ("early stopping (epochs without a gain)", setting("early_stopping")),
        ("seed (split, sampler, init)", setting("seed")),
        ("validation images", setting("val_size")),
        ("data folder (when created)", setting("data_dir")),
    ]


def _best(
    best: FrozenTrial | None,
    result: dict[str, Any] | None,
    test: bool,
    deployed: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    if best is None or not best.values:
        return None
    unscored = "not scored (no final model yet)" if test else "not shown (--no-test)"
    score = _score(result) if result else unscored
    rows: list[tuple[str, Any]] = [
        ("trial", best.number),
        ("validation accuracy", f"{best.values[0]:.4f}"),
        ("test accuracy (final model)", score),
        ("epochs trained", best.user_attrs.get(EPOCHS, "-")),
        ("parameters", _fmt(best.user_attrs.get(PARAMS, "-"))),
        ("CPU latency per image, PyTorch eager (ms)", _fmt(best.user_attrs.get(LATENCY_MS, "-"))),
        *_deploy_rows(deployed),
        ("trial time", format_duration(best.duration.total_seconds() if best.duration else None)),
    ]
    return {"rows": rows + [(f"param {k}", _fmt(v)) for k, v in best.params.items()]}


def _deploy_rows(deployed: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The final model's export: its latency on each runtime, and its agreement with PyTorch."""
    if not deployed or "latency" not in deployed:
        return []
    rows = []
    for runtime, name in (("onnxruntime", "ONNX Runtime"), ("pytorch_eager", "PyTorch eager")):
        timed = deployed["latency"][runtime]
        one, many = timed["batch_1"], timed["batch_256"]
        rows.append(
            (
                f"final model, {name}, one thread: ms per call, batch 1 / 256 (median, p95)",
                f"{one['median_ms']:.3f} ({one['p95_ms']:.3f}) / "
                f"{many['median_ms']:.2f} ({many['p95_ms']:.2f})",
            )
        )
    agree = deployed["agreement"]
    rows.append(
        (
            "model.onnx against PyTorch (validation images)",
            f"top-1 agreement {100 * agree['top1_agreement']:.2f} % of {agree['images']}, "
            f"max |Δp| {agree['max_abs_diff']:.1e}",
        )
    )
    return rows


def _test(result: dict[str, Any] | None, data_dir: Path | None, test: bool) -> dict[str, Any]:
    """The final model's stored test result, laid out for the page."""
    if result is None and not test:
        return {"skipped": "Not shown: this report was written with --no-test."}
    if result is None:
        return {
            "skipped": "Not scored: the best trial has no final model yet. It is made and scored "
            "once, when a run of the study ends without --no-test."
        }
    matrix: list[list[int]] = result["confusion"]
    peak = max(max(row) for row in matrix) or 1
    hue = {True: "40,110,200", False: "220,60,40"}  # blue on the diagonal, red off it
    rows = [
        {
            "name": CLASS_NAMES[true],
            "cells": [
                {"count": n, "color": f"rgba({hue[pred == true]},{n / peak:.2f})"}
                for pred, n in enumerate(row)
            ],
        }
        for true, row in enumerate(matrix)
    ]
    pairs = sorted(
        ((matrix[t][p], t, p) for t in range(N_CLASSES) for p in range(N_CLASSES) if t != p),
        reverse=True,
    )[:5]
    top = ", ".join(f"{CLASS_NAMES[t]} → {CLASS_NAMES[p]} ({n})" for n, t, p in pairs if n)
    grid_png, grid_note = None, "The model gets every test image right."
    if result["confused"] and data_dir is None:
        grid_note = "Test images not shown: no data folder known; pass --data-dir."
    elif result["confused"] and data_dir is not None:
        try:
            images = load_test(data_dir)[0]
            if len(images) != result["n_images"]:
                raise DataError(
                    f"{data_dir} holds {len(images)} test images, the final model was scored on "
                    f"{result['n_images']}; pass --data-dir"
                )
            grid_png = plots.mistakes_png(images, result["confused"])
        except DataError as err:
            grid_note = f"Test images not shown: {err}"
    kind = "the trial's checkpoint"
    choice = result.get("schedule_choice")
    if not result["retrained"] and choice and choice["chosen"]:
        kind = (
            f"the {result['schedule_epochs']}-epoch validation run's best epoch "
            f"({result['epochs']}; not retrained on all training images)"
        )
    if result["retrained"]:
        kind = (
            f"retrained on all training images: {result['epochs']} epochs of a "
            f"{result['schedule_epochs']}-epoch schedule"
        )
    if choice:
        scored = ", ".join(
            f"{c['schedule_epochs']} epochs: {c['val_acc']:.4f}" for c in choice["candidates"]
        )
        kind += f", chosen on validation ({scored})"
    return {
        "skipped": None,
        "score": _score(result),
        "model": f"trial {result['trial']}, {kind}"
        + (f" (checkpoints/{result['model_file']})" if result.get("model_file") else ""),
        "matrix": rows,
        "top_confusions": top,
        "per_class": [
            {"name": name, "accuracy": acc, "images": sum(matrix[k])}
            for k, (name, acc) in enumerate(zip(CLASS_NAMES, result["per_class"], strict=True))
        ],
        "grid_png": grid_png,
        "grid_uri": None if grid_png is None else _png_uri(grid_png),
        "grid_note": grid_note,
        "time": _time_split(result.get("time")),
    }


def _time_split(split: dict[str, Any] | None) -> str | None:
    """How the run that made the final model spent its time, in one sentence (None: not known)."""
    if not split or split.get("search_seconds") is None:
        return None
    limit = f" of --timeout {split['timeout']:g} s" if split.get("timeout") else ""
    note = f" ({split['note']})" if split.get("note") else ""
    return (
        f"Search {split['search_seconds']:.0f} s, final training {split['final_seconds']:.0f} s"
        f"{limit}{note}. Rule: {split['rule']}."
    )


# The trial table's own columns; the trial's hyperparameters follow.
TRIAL_COLUMNS = (
    "trial", "state", "val acc", "epochs", "rung", "seconds", "params", "latency ms",
    "onnx ms (final model)", "fits budget",
)  # fmt: skip


def _number_cell(value: float | None, form: str) -> dict[str, Any]:
    """A table cell of a number that may be missing (``-``, sorted last)."""
    return {
        "text": "-" if value is None else form.format(value),
        "sort": "-Infinity" if value is None else value,
    }


def _trials(
    study: optuna.Study, best: FrozenTrial | None, deployed: dict[str, Any] | None = None
) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    onnx_ms = None  # ONNX Runtime's batch-1 median of the final model, in its trial's row
    if deployed and "latency" in deployed:
        onnx_ms = deployed["latency"]["onnxruntime"]["batch_1"]["median_ms"]
    names: list[str] = []
    for t in trials:
        names += [n for n in t.params if n not in names]
    rows = []
    for t in trials:
        seconds = t.duration.total_seconds() if t.duration else None
        cells = [
            {"text": t.number, "sort": t.number},
            {"text": t.state.name.lower(), "left": True, "sort": None},
            {
                "text": "-" if not t.values else f"{t.values[0]:.4f}",
                "sort": "-Infinity" if not t.values else t.values[0],
            },
            {"text": t.user_attrs.get(EPOCHS, "-"), "sort": None},
            {"text": rungs(t) or "-", "sort": None},
            {
                "text": "-" if seconds is None else f"{seconds:.1f}",
                "sort": "-Infinity" if seconds is None else seconds,
            },
            _number_cell(t.user_attrs.get(PARAMS), "{:,}"),
            _number_cell(t.user_attrs.get(LATENCY_MS), "{:.3f}"),
            _number_cell(
                onnx_ms if best is not None and t.number == best.number else None, "{:.3f}"
            ),
            {"text": "yes" if feasible(t) else "no", "sort": None},
        ]
        for n in names:
            v = t.params.get(n)
            number = isinstance(v, int | float) and not isinstance(v, bool)
            cells.append({"text": "" if v is None else _fmt(v), "sort": v if number else ""})
        rows.append({"cells": cells, "best": best is not None and t.number == best.number})
    return {
        "header": [*TRIAL_COLUMNS, *names],
        "rows": rows,
    }


def page_context(
    study: optuna.Study,
    storage_url: str,
    drawn: list[plots.Plot],
    data_dir: Path | None,
    test: bool = True,
) -> dict[str, Any]:
    """Everything the page shows, as plain values (strings, numbers, lists, dicts); with ``test``
    false, nothing of the test set (not even a score stored by an earlier run)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    try:
        best = front.best_trial(study) if complete else None
    except ValueError:  # complete trials, but none feasible (a budget)
        best = None
    result = stored_result(study, best.number) if best is not None and test else None
    deployed = stored_deploy(study) if result else None  # the final model's export, checked
    if best is None or not best.values:
        headline = "no complete trial yet"
    else:
        score = f", test accuracy {result['test_acc']:.4f}" if result else ""
        headline = f"best val accuracy {best.values[0]:.4f}{score} (trial {best.number})"
    return {
        "study_name": study.study_name,
        "headline": headline,
        "generated": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "version": _version(),
        "optuna_version": optuna.__version__,
        "summary": _summary(study, storage_url),
        "best": _best(best, result, test, deployed),
        "test": _test(result, data_dir, test),
        "class_names": CLASS_NAMES,
        "trials": _trials(study, best, deployed),
        "plots_dir": PLOTS_DIR,
        "plots": [
            {
                "name": p.name,
                "title": p.title,
                "description": p.description,
                "skipped": p.skipped,
                "figure_html": None
                if p.skipped
                else Markup(  # plotly's own div and script
                    p.figure.to_html(
                        full_html=False, include_plotlyjs=False, div_id=f"figure-{p.name}"
                    )
                ),
                "png_uri": None if p.png is None else _png_uri(p.png),
            }
            for p in drawn
        ],
    }


def write_report(
    study: optuna.Study,
    output_dir: Path,
    storage_url: str,
    data_dir: Path | None = None,
    test: bool = True,
) -> Path:
    """Writes ``<output_dir>/plots/`` and ``<output_dir>/report.html`` for ``study``.

    Works on any stored study: running, interrupted or finished.

    Args:
        study: The study.
        output_dir: Where the report and its plots go.
        storage_url: The study's storage (shown with any password masked).
        data_dir: The Fashion-MNIST folder, for the pictures of test mistakes; by default the one
            the study recorded when it was created.
        test: False for a run with ``--no-test``: the page shows nothing of the test set.

    Returns:
        The path of ``report.html``.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    drawn = plots.make_plots(study)
    plots.write_plots(drawn, output_dir / PLOTS_DIR)
    if data_dir is None and (recorded := study.user_attrs.get(RUN_SETTINGS, {}).get("data_dir")):
        data_dir = Path(recorded)
    context = page_context(study, storage_url, drawn, data_dir, test)
    grid = output_dir / PLOTS_DIR / MISTAKES_PNG
    if context["test"].get("grid_png"):
        write_atomic(grid, context["test"]["grid_png"])
    else:
        grid.unlink(missing_ok=True)
    page = _ENV.get_template("report.html.j2").render(
        plotly_js=Markup(plots.plotly_js()), **context
    )
    path = output_dir / REPORT_HTML
    write_atomic(path, page)
    log.info("report → %s", path)
    return path
