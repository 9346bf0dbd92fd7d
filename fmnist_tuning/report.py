"""The study report: ``plots/`` and one self-contained ``report.html``, read from a finished study.

``report.html`` opens offline: plotly.js is embedded once and every PNG is inlined. It holds the
study summary, the best trial (validation and test accuracy), the best model's confusion matrix and
per-class accuracy on the official test set, the test images it gets most confidently wrong, a
sortable table of all trials and Optuna's plots (see :mod:`fmnist_tuning.plots`).

The best model is evaluated from its saved checkpoint; nothing is retrained.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import torchmetrics
from optuna.trial import FrozenTrial, TrialState

from fmnist_tuning import __version__, plots
from fmnist_tuning.config import RunConfig, default_data_dir
from fmnist_tuning.data import CLASS_NAMES, N_CLASSES, DataError, FashionMNISTDataModule, load_raw
from fmnist_tuning.files import write_atomic
from fmnist_tuning.model import FashionMNISTClassifier
from fmnist_tuning.study import redact

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
PLOTS_DIR = "plots"
CONFUSED_PNG = "confused_test_images.png"
# Study user attribute: the settings a later report needs to re-evaluate the best model.
RUN_ATTR = "run_config"
N_CONFUSED = 24  # test images in the "most confused" grid


# ---------------------------------------------------------------------------------------------
# The run settings, kept in the study so that a later, on-demand report can find data and split


def record_run(study: optuna.Study, run: RunConfig) -> None:
    """Stores the settings a later report needs (data, split, sampler, pruner) in the study."""
    study.set_user_attr(
        RUN_ATTR,
        {
            "data_dir": str(run.data_dir.resolve()),
            "val_size": run.val_size,
            "seed": run.seed,
            "sampler": run.sampler,
            "pruner": run.pruner,
            "max_epochs": run.max_epochs,
            "n_trials": run.n_trials,
            "timeout": run.timeout,
        },
    )


def run_from_study(
    study: optuna.Study, storage: str, output_dir: Path, data_dir: Path | None = None
) -> RunConfig:
    """The :class:`RunConfig` a study was run with, as far as it recorded it.

    Args:
        study: The loaded study.
        storage: Its storage URL (shown redacted in the report).
        output_dir: Where the report goes (and where ``best.json`` is looked for).
        data_dir: Overrides the recorded data folder.
    """
    recorded: dict[str, Any] = study.user_attrs.get(RUN_ATTR, {})
    defaults = RunConfig()
    return RunConfig(
        study_name=study.study_name,
        output_dir=output_dir,
        storage=storage,
        data_dir=data_dir or Path(recorded.get("data_dir") or default_data_dir()),
        n_trials=recorded.get("n_trials", defaults.n_trials),
        timeout=recorded.get("timeout"),
        max_epochs=recorded.get("max_epochs", defaults.max_epochs),
        sampler=recorded.get("sampler", "unknown (not recorded)"),
        pruner=recorded.get("pruner", "unknown (not recorded)"),
        seed=recorded.get("seed", defaults.seed),
        accelerator="cpu",
        val_size=recorded.get("val_size", defaults.val_size),
    )


# ---------------------------------------------------------------------------------------------
# The best model on the official test set


@dataclass(frozen=True)
class TestEvaluation:
    """The best model's predictions on the official test set.

    Attributes:
        confusion: Counts, rows = true class, columns = predicted class.
        per_class: Accuracy (recall) of each class, in ``CLASS_NAMES`` order.
        accuracy: Overall accuracy (the trace of ``confusion`` over its sum).
        confused: The most confident mistakes as ``(index, true, predicted, probability)``.
        grid_png: Those images as one PNG, labelled true → predicted (empty without mistakes).
    """

    confusion: list[list[int]]
    per_class: list[float]
    accuracy: float
    confused: list[tuple[int, int, int, float]]
    grid_png: bytes


def evaluate_best(checkpoint: Path, run: RunConfig, n_images: int = N_CONFUSED) -> TestEvaluation:
    """Loads the saved best model and scores it on the official test set (on the CPU).

    Raises:
        FileNotFoundError: The checkpoint is missing.
        DataError: The dataset is missing or corrupt.
    """
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} is missing")
    module = FashionMNISTClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    module.eval()
    datamodule = FashionMNISTDataModule(run.data_dir, val_size=run.val_size, seed=run.seed)
    datamodule.setup("test")  # normalised with the same training-split statistics as in training
    confusion = torchmetrics.classification.MulticlassConfusionMatrix(N_CLASSES)
    per_class = torchmetrics.classification.MulticlassAccuracy(N_CLASSES, average=None)
    probabilities = []
    with torch.inference_mode():
        for x, y in datamodule.test_dataloader():
            probs = module(x).softmax(dim=1)
            confusion.update(probs, y)
            per_class.update(probs, y)
            probabilities.append(probs)
    assert datamodule.test_y is not None
    labels = datamodule.test_y
    probs = torch.cat(probabilities)
    matrix = confusion.compute()
    confidence, predicted = probs.max(dim=1)
    wrong = (predicted != labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)[:n_images]].tolist()
    confused = [(i, int(labels[i]), int(predicted[i]), float(confidence[i])) for i in worst]
    images = load_raw(run.data_dir).test_x
    return TestEvaluation(
        confusion=matrix.tolist(),
        per_class=per_class.compute().tolist(),
        accuracy=float(matrix.trace() / matrix.sum()),
        confused=confused,
        grid_png=_image_grid(images, confused) if confused else b"",
    )


def _image_grid(images: torch.Tensor, confused: list[tuple[int, int, int, float]]) -> bytes:
    import matplotlib.pyplot as plt  # after fmnist_tuning.plots chose a file-only backend

    cols = 6
    rows = max(1, -(-len(confused) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * 2.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (index, true, pred, prob) in zip(axes.flat, confused, strict=False):
        ax.imshow(images[index].view(28, 28).numpy(), cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(
            f"#{index}\n{CLASS_NAMES[true]} → {CLASS_NAMES[pred]}\np={prob:.2f}", fontsize=7.5
        )
    fig.suptitle("Most confident mistakes on the test set (true → predicted)", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=plots.PNG_DPI)
    finally:
        plt.close(fig)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# The facts the report shows


def _best_json(output_dir: Path, best: FrozenTrial | None) -> dict[str, Any]:
    """``best.json`` when it describes the current best trial, else ``{}``."""
    path = output_dir / "best.json"
    if best is None or not path.is_file():
        return {}
    content: dict[str, Any] = json.loads(path.read_text())
    return content if content.get("trial") == best.number else {}


def _test_acc(study: optuna.Study, best: FrozenTrial, best_json: dict[str, Any]) -> float | None:
    if "test_acc" in best_json:
        return float(best_json["test_acc"])
    cached = study.user_attrs.get("test_acc", {})
    return float(cached["test_acc"]) if cached.get("trial") == best.number else None


def _wall_time(trials: list[FrozenTrial]) -> float | None:
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}
table.sortable th{cursor:pointer;user-select:none}table.sortable th[data-order=asc]::after{content:" ▲"}
table.sortable th[data-order=desc]::after{content:" ▼"}.scroll{overflow-x:auto}
tr.best td{font-weight:bold;background:#fff8d6}.skipped{color:#a33}.muted{color:#777}
img{max-width:100%}details{margin:.3em 0 1em}.plot{margin-bottom:1.5em}
"""

# Sorts a table.sortable by the clicked column: numbers numerically (data-sort holds the raw value).
_SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var asc = th.dataset.order !== "asc";
    table.querySelectorAll("th").forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = asc ? "asc" : "desc";
    var key = function (row) {
      var cell = row.cells[col];
      return cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent;
    };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
      var c = !isNaN(nx) && !isNaN(ny) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""

# Any script error lands in #script-errors, where a reader (and the Chromium test) sees it.
_ERROR_JS = """
(function () {
  function show(message) {
    var box = document.getElementById("script-errors");
    if (box) { box.hidden = false; box.textContent += message + "\\n"; }
  }
  window.addEventListener("error", function (e) { show("error: " + e.message); });
  window.addEventListener("unhandledrejection", function (e) { show("rejection: " + e.reason); });
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _kv_table(rows: list[tuple[str, Any]], table_id: str) -> str:
    body = "".join(
        f'<tr><th class="l">{_e(k)}</th><td class="l">{_e(v)}</td></tr>' for k, v in rows
    )
    return f'<table id="{table_id}">{body}</table>'


def _png_img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _summary(study: optuna.Study, run: RunConfig) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    trial_seconds = sum(t.duration.total_seconds() for t in trials if t.duration)
    rows: list[tuple[str, Any]] = [
        ("study", study.study_name),
        ("storage", redact(run.storage_url)),
        ("trials", len(trials)),
        ("complete", counts[TrialState.COMPLETE]),
        ("pruned", counts[TrialState.PRUNED]),
        ("failed", counts[TrialState.FAIL]),
    ]
    if counts[TrialState.RUNNING] or counts[TrialState.WAITING]:
        rows.append(
            ("running / waiting", f"{counts[TrialState.RUNNING]} / {counts[TrialState.WAITING]}")
        )
    rows += [
        ("wall time (first start → last end)", _duration(_wall_time(trials))),
        ("time inside trials (summed)", _duration(trial_seconds)),
        ("sampler", run.sampler),
        ("pruner", run.pruner),
        ("epochs per trial (max)", run.max_epochs),
        ("seed (split, sampler, init)", run.seed),
        ("validation images", run.val_size),
    ]
    return "<h2>Study</h2>" + _kv_table(rows, "summary")


def _best_section(
    study: optuna.Study, best: FrozenTrial | None, best_json: dict[str, Any]
) -> tuple[str, float | None]:
    if best is None:
        return (
            '<h2>Best trial</h2><p class="skipped">No trial has completed yet: nothing to report. '
            "Run more trials or relax pruning.</p>",
            None,
        )
    test_acc = _test_acc(study, best, best_json)
    rows: list[tuple[str, Any]] = [
        ("trial", best.number),
        ("validation accuracy", f"{best.value:.4f}"),
        (
            "test accuracy",
            f"{test_acc:.4f}" if test_acc is not None else "not evaluated yet (see below)",
        ),
        ("epochs trained", best.user_attrs.get("epochs", "-")),
        ("trial time", _duration(best.duration.total_seconds() if best.duration else None)),
    ]
    rows += [(f"param {k}", _fmt(v)) for k, v in best.params.items()]
    note = (
        '<p class="muted">Chosen on validation accuracy; the test set was used once, for this '
        "model only.</p>"
    )
    return "<h2>Best trial</h2>" + _kv_table(rows, "best-trial") + note, test_acc


def _test_section(evaluation: TestEvaluation | str, test_acc: float | None) -> str:
    head = "<h2>Best model on the official test set</h2>"
    if isinstance(evaluation, str):
        return head + f'<p class="skipped">Not evaluated: {_e(evaluation)}</p>'
    matrix = evaluation.confusion
    peak = max(max(row) for row in matrix) or 1
    header = "".join(f"<th>{_e(name)}</th>" for name in CLASS_NAMES)
    body = ""
    for true, row in enumerate(matrix):
        cells = ""
        for pred, count in enumerate(row):
            alpha = count / peak
            color = (
                f"rgba(40,110,200,{alpha:.2f})" if pred == true else f"rgba(220,60,40,{alpha:.2f})"
            )
            cells += f'<td style="background:{color}">{count}</td>'
        body += f'<tr><th class="l">{_e(CLASS_NAMES[true])}</th>{cells}</tr>'
    confusion = (
        '<div class="scroll"><table id="confusion-matrix"><tr><th class="l">true ↓ / predicted →'
        f"</th>{header}</tr>{body}</table></div>"
    )
    per_class = "".join(
        f'<tr><td class="l">{_e(name)}</td><td>{acc:.4f}</td><td>{sum(matrix[k])}</td></tr>'
        for k, (name, acc) in enumerate(zip(CLASS_NAMES, evaluation.per_class, strict=True))
    )
    pairs = sorted(
        ((matrix[t][p], t, p) for t in range(N_CLASSES) for p in range(N_CLASSES) if t != p),
        reverse=True,
    )[:5]
    top = ", ".join(f"{CLASS_NAMES[t]} → {CLASS_NAMES[p]} ({n})" for n, t, p in pairs if n)
    check = ""
    if test_acc is not None and abs(test_acc - evaluation.accuracy) > 1e-3:
        check = (
            f'<p class="skipped">Recomputed accuracy {evaluation.accuracy:.4f} differs from the '
            f"recorded {test_acc:.4f} (different data or device?)</p>"
        )
    return (
        head
        + f"<p>Accuracy {evaluation.accuracy:.4f} on {sum(map(sum, matrix))} test images.</p>"
        + check
        + "<h3>Confusion matrix</h3>"
        + confusion
        + f"<p>Most frequent confusions: {_e(top or 'none')}.</p>"
        + '<h3>Per-class accuracy</h3><table id="per-class" class="sortable"><thead><tr>'
        + '<th class="l">class</th><th>accuracy</th><th>images</th></tr></thead>'
        + f"<tbody>{per_class}</tbody></table>"
        + "<h3>Most confused test images</h3>"
        + (
            _png_img(evaluation.grid_png, "most confident mistakes on the test set")
            if evaluation.confused
            else "<p>The model gets every test image right.</p>"
        )
    )


def _trials_section(study: optuna.Study, best: FrozenTrial | None) -> str:
    trials = study.get_trials(deepcopy=False)
    names: list[str] = []
    for t in trials:
        names += [n for n in t.params if n not in names]
    header = "".join(
        f'<th class="l">{h}</th>' if h == "state" else f"<th>{_e(h)}</th>"
        for h in ["trial", "state", "val acc", "epochs", "seconds", *names]
    )
    rows = ""
    for t in trials:
        seconds = t.duration.total_seconds() if t.duration else None
        value = t.value
        cells = [
            f'<td data-sort="{t.number}">{t.number}</td>',
            f'<td class="l">{t.state.name.lower()}</td>',
            f'<td data-sort="{value if value is not None else "-Infinity"}">'
            f"{'-' if value is None else f'{value:.4f}'}</td>",
            f"<td>{_e(t.user_attrs.get('epochs', '-'))}</td>",
            f'<td data-sort="{seconds if seconds is not None else "-Infinity"}">'
            f"{'-' if seconds is None else f'{seconds:.1f}'}</td>",
        ]
        for n in names:
            v = t.params.get(n)
            sort = v if isinstance(v, int | float) and not isinstance(v, bool) else ""
            cells.append(f'<td data-sort="{_e(sort)}">{"" if v is None else _e(_fmt(v))}</td>')
        css = ' class="best"' if best is not None and t.number == best.number else ""
        rows += f"<tr{css}>{''.join(cells)}</tr>"
    return (
        "<h2>All trials</h2><p class=muted>Click a column to sort; the best trial is highlighted. "
        "Pruned trials have no final value.</p>"
        f'<div class="scroll"><table id="trials" class="sortable"><thead><tr>{header}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def _plots_section(drawn: list[plots.Plot]) -> str:
    parts = [
        "<h2>Plots</h2><p class=muted>Interactive (plotly): hover, zoom, click legends. "
        f"The same plots are in <code>{PLOTS_DIR}/</code> as HTML and PNG.</p>"
    ]
    for plot in drawn:
        parts.append(f'<div class="plot" id="plot-{plot.name}"><h3>{_e(plot.title)}</h3>')
        parts.append(f"<p>{_e(plot.description)}</p>")
        if plot.skipped is not None:
            parts.append(f'<p class="skipped">Skipped: {_e(plot.skipped)}</p></div>')
            continue
        parts.append(
            plot.figure.to_html(
                full_html=False, include_plotlyjs=False, div_id=f"figure-{plot.name}"
            )
        )
        assert plot.png is not None
        parts.append(
            f"<details><summary>static PNG</summary>{_png_img(plot.png, plot.title)}</details></div>"
        )
    return "".join(parts)


def render_html(
    study: optuna.Study,
    run: RunConfig,
    drawn: list[plots.Plot],
    evaluation: TestEvaluation | str,
) -> str:
    """The whole report page (plotly.js inlined once, images as data URIs)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = study.best_trial if complete else None
    best_json = _best_json(run.output_dir, best)
    best_html, test_acc = _best_section(study, best, best_json)
    if isinstance(evaluation, TestEvaluation) and test_acc is None:
        test_acc = evaluation.accuracy
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    headline = (
        f"best val accuracy {best.value:.4f}"
        + (f", test accuracy {test_acc:.4f}" if test_acc is not None else "")
        + f" (trial {best.number})"
        if best is not None and best.value is not None
        else "no complete trial yet"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{_e(study.study_name)}: Optuna study report</title>
<style>{_CSS}</style>
<script>{_ERROR_JS}</script>
<script>{plots.plotly_js()}</script>
</head><body>
<h1>{_e(study.study_name)}</h1>
<p>{_e(headline)}. <span class="muted">Generated {_e(generated)} by fmnist-tuning {__version__}
with Optuna {optuna.__version__}.</span></p>
<pre id="script-errors" class="skipped" hidden></pre>
{_summary(study, run)}
{best_html}
{_test_section(evaluation, test_acc)}
{_trials_section(study, best)}
{_plots_section(drawn)}
<script>{_SORT_JS}</script>
<script>document.documentElement.dataset.reportReady = "1";</script>
</body></html>
"""


def write_report(study: optuna.Study, run: RunConfig) -> Path:
    """Writes ``<output_dir>/plots/`` and ``<output_dir>/report.html`` for ``study``.

    The best model is evaluated from its checkpoint (``best.json``, else the trial's user attr); a
    missing checkpoint or dataset leaves that section out with the reason instead of failing.

    Returns:
        The path of ``report.html``.
    """
    run.output_dir.mkdir(parents=True, exist_ok=True)
    drawn = plots.make_plots(study)
    plots.write_plots(drawn, run.output_dir / PLOTS_DIR)
    evaluation: TestEvaluation | str = "no trial has completed yet"
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = study.best_trial
        best_json = _best_json(run.output_dir, best)
        recorded = best_json.get("checkpoint") or best.user_attrs.get("checkpoint")
        try:
            if not recorded:
                raise FileNotFoundError(f"trial {best.number} recorded no checkpoint")
            evaluation = evaluate_best(Path(recorded), run)
        except (FileNotFoundError, DataError) as err:
            evaluation = f"{err} (run the study from the machine and output dir that trained it)"
            log.warning("report: best model not evaluated: %s", evaluation)
        else:
            png = run.output_dir / PLOTS_DIR / CONFUSED_PNG
            if evaluation.grid_png:
                png.write_bytes(evaluation.grid_png)
            else:
                png.unlink(missing_ok=True)
    page = render_html(study, run, drawn, evaluation)
    path = run.output_dir / REPORT_FILE
    write_atomic(path, page)
    log.info("report → %s", path)
    return path


def report_study(study: optuna.Study, run: RunConfig) -> Path:
    """After a study run by ``fmnist-tune``: records its settings in the study, writes the report."""
    record_run(study, run)
    return write_report(study, run)
