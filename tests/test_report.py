"""The study report: plots/, report.html, scripts/report.py, the progress line, Chromium rendering."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from fmnist_tuning.cli import main
from fmnist_tuning.config import RunConfig
from fmnist_tuning.final.results import stored_result
from fmnist_tuning.final.scoring import score_on_test
from fmnist_tuning.keys import FINAL_MODEL, REPORT_HTML, RUN_SETTINGS
from fmnist_tuning.report import plots
from fmnist_tuning.report.page import TEMPLATES, write_report
from fmnist_tuning.search.progress import log_trial
from fmnist_tuning.search.space import suggest_config
from fmnist_tuning.training.raw import CLASS_NAMES, load_test
from fmnist_tuning.training.recipe import TrialConfig
from fmnist_tuning.training.trainer import build_datamodule, build_module, build_trainer
from tests.conftest import N_TEST, VAL_SIZE, load_script

ROOT = Path(__file__).resolve().parents[1]
PLOT_NAMES = [spec.name for spec in plots.SPECS if spec.name not in plots.FRONT_ONLY]


@pytest.fixture(scope="module")
def study_run(fake_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real 3-trial study through the command line; returns its output dir.

    No pruning: every plot needs at least 2 complete trials (importances, contour).
    """
    out = tmp_path_factory.mktemp("study") / "out"
    args = [
        "--data-dir", str(fake_data_dir), "--output-dir", str(out), "--n-trials", "3",
        "--max-epochs", "2", "--val-size", str(VAL_SIZE), "--accelerator", "cpu",
        "--pruner", "none",
    ]  # fmt: skip
    assert main(args) == 0
    return out


def _page(out: Path) -> str:
    return (out / REPORT_HTML).read_text(encoding="utf-8")


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="fmnist-mlp", storage=f"sqlite:///{out / 'study.db'}")


def _fake_study(n_complete: int, n_pruned: int = 0) -> optuna.Study:
    """An in-memory study of the real search space with made-up accuracies (no training)."""

    def objective(trial: optuna.Trial) -> float:
        config = suggest_config(trial)
        for epoch in range(3):
            trial.report(0.6 + 0.1 * epoch + config.dropout / 10, epoch)
            if trial.number >= n_complete and epoch == 1:
                raise optuna.TrialPruned()
        return 0.8 + config.dropout / 10

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    study.optimize(objective, n_trials=n_complete + n_pruned)
    return study


@pytest.mark.integration
def test_a_study_run_leaves_every_plot_as_html_and_png(study_run: Path) -> None:
    folder = study_run / "plots"
    for name in PLOT_NAMES:
        assert (folder / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        page = (folder / f"{name}.html").read_text()
        assert 'src="plotly.min.js"' in page and "cdn" not in page.lower(), name
    assert (folder / plots.PLOTLY_JS).stat().st_size > 1_000_000  # the bundle, for offline use


def _points(trace: Any) -> int:
    """How many values a plotly trace draws (whatever its kind keeps them in)."""
    found = [getattr(trace, name, None) for name in ("x", "y", "z", "values", "dimensions")]
    return max(len(values) for values in found if values is not None)


@pytest.mark.integration
def test_every_plot_draws_the_studys_trials(study_run: Path) -> None:
    study = _study(study_run)
    drawn = {p.name: p for p in plots.make_plots(study)}
    assert sorted(drawn) == sorted(PLOT_NAMES) and not any(p.skipped for p in drawn.values())
    for name, plot in drawn.items():
        assert any(_points(trace) for trace in plot.figure.data), f"{name} is empty"
    history = drawn["optimization_history"].figure.data[0]  # one point per trial
    assert sorted(history.x) == [t.number for t in study.trials]
    assert sorted(history.y) == sorted(t.value for t in study.trials)
    curves = drawn["intermediate_values"].figure.data  # every trial's learning curve
    assert sorted(len(c.x) for c in curves) == sorted(
        len(t.intermediate_values) for t in study.trials
    )


@pytest.mark.integration
def test_report_is_one_offline_file_with_plotly_embedded_once(study_run: Path) -> None:
    page = _page(study_run)
    bundle = plots.plotly_js()
    assert page.count(bundle[:200]) == 1
    own = page.replace(bundle, "")  # plotly.js itself mentions URLs it never loads for these plots
    assert not re.search(r"""<(script|link|img|iframe)[^>]*(src|href)=["']?(https?:)?//""", own)
    # every plot as a plotly div plus its inline PNG, and the confusion grid's PNG or its note
    assert all(f'id="figure-{name}"' in page for name in PLOT_NAMES)
    assert page.count("data:image/png;base64,") >= len(PLOT_NAMES)


@pytest.mark.integration
def test_report_shows_summary_and_best_trial_with_test_accuracy(study_run: Path) -> None:
    best = json.loads((study_run / "best.json").read_text())
    page = _page(study_run)
    summary = page[page.index('id="summary"') : page.index('id="best-trial"')]
    assert re.search(r"complete</th><td[^>]*>3<", summary)
    assert re.search(r"pruned</th><td[^>]*>0<", summary)
    assert ">tpe<" in summary and ">none<" in summary and "study.db" in summary
    table = page[
        page.index('id="best-trial"') : page.index("</table>", page.index('id="best-trial"'))
    ]
    assert f">{best['trial']}<" in table
    assert f"{best['val_acc']:.4f}" in table and f"{best['test_acc']:.4f}" in table
    assert all(name in table for name in best["params"])


@pytest.mark.integration
def test_report_has_confusion_matrix_per_class_accuracy_and_trials_table(study_run: Path) -> None:
    page = _page(study_run)
    assert 'id="confusion-matrix"' in page and 'id="per-class"' in page
    per_class = page[page.index('id="per-class"') :]
    assert all(name in per_class for name in CLASS_NAMES)
    trials = page[page.index('id="trials"') : page.index("</table>", page.index('id="trials"'))]
    assert 'class="sortable"' in trials
    assert trials.count("<tr") == 1 + 3 and trials.count('class="best"') == 1


@pytest.mark.integration
def test_the_stored_test_result_is_what_best_json_and_the_page_show(study_run: Path) -> None:
    best = json.loads((study_run / "best.json").read_text())
    study = _study(study_run)
    (key,) = [k for k in study.user_attrs if k.startswith(FINAL_MODEL)]
    result = stored_result(study, best["trial"])
    assert result == study.user_attrs[key]
    assert result["test_acc"] == best["test_acc"] and result["model"] == best["checkpoint"]
    assert sum(map(sum, result["confusion"])) == result["n_images"] == N_TEST
    assert f"Accuracy {best['test_acc']:.4f} (" in _page(study_run)


@pytest.mark.integration
def test_a_report_written_with_no_test_shows_nothing_of_the_test_set(
    study_run: Path, tmp_path: Path
) -> None:
    best = json.loads((study_run / "best.json").read_text())
    url = f"sqlite:///{study_run / 'study.db'}"
    page = write_report(_study(study_run), tmp_path, url, test=False).read_text()
    assert "not shown (--no-test)" in page and "this report was written with --no-test" in page
    assert f"Accuracy {best['test_acc']:.4f} (" not in page and 'id="confusion-matrix"' not in page


def test_a_poor_model_scores_its_most_confident_mistakes(
    run_config: RunConfig, tmp_path: Path
) -> None:
    config = TrialConfig(hidden_sizes=(16,), optimizer="adam", lr=1e-3)
    fit = build_trainer(run_config, max_steps=1, limit_val_batches=0)
    fit.fit(build_module(config), datamodule=build_datamodule(config, run_config))
    fit.save_checkpoint(tmp_path / "poor.ckpt")
    result = score_on_test(tmp_path / "poor.ckpt", run_config)
    matrix = result["confusion"]
    assert result["test_acc"] < 0.9 and result["confused"]
    assert result["test_acc"] == pytest.approx(sum(matrix[k][k] for k in range(10)) / N_TEST)
    assert all(true != pred for _, true, pred, _ in result["confused"])
    confidences = [p for *_, p in result["confused"]]
    assert confidences == sorted(confidences, reverse=True)
    for k, row in enumerate(matrix):
        if sum(row):
            assert result["per_class"][k] == pytest.approx(row[k] / sum(row))
    png = plots.mistakes_png(load_test(run_config.data_dir)[0], result["confused"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_that_cannot_be_drawn_are_skipped_with_a_reason(tmp_path: Path) -> None:
    study = _fake_study(n_complete=1, n_pruned=1)
    drawn = {p.name: p for p in plots.make_plots(study)}
    assert "2 complete trials" in (drawn["param_importances"].skipped or "")
    assert drawn["contour"].skipped and "\n" not in drawn["contour"].skipped
    for name in ("optimization_history", "intermediate_values", "slice", "edf", "timeline"):
        assert drawn[name].skipped is None and drawn[name].png, name
    stale = tmp_path / "param_importances.png"
    stale.write_bytes(b"old picture")
    plots.write_plots(list(drawn.values()), tmp_path)
    assert not stale.exists() and (tmp_path / "timeline.png").is_file()


def test_contour_uses_two_parameters_that_vary_together(tmp_path: Path) -> None:
    study = _fake_study(n_complete=8)
    pair = plots.contour_params(study)
    assert isinstance(pair, tuple) and len(set(pair)) == 2
    assert list(pair) == [p for p in plots.importances(study) if p in pair]  # importance order


def test_report_of_a_study_without_complete_trials_says_so(tmp_path: Path) -> None:
    study = _fake_study(n_complete=0, n_pruned=2)
    page = write_report(study, tmp_path, "sqlite:///study.db").read_text()
    assert "No trial has completed yet" in page and "the best trial has no final model yet" in page
    assert "Skipped: needs at least 1 complete trial" in page
    assert 'id="figure-intermediate_values"' in page  # the pruned curves still show


def test_report_hides_the_storage_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://me:s3cret@db.lan/optuna"
    page = write_report(_fake_study(n_complete=2), tmp_path, url).read_text()
    assert "s3cret" not in page and "me:***@db.lan" in page


@pytest.mark.integration
def test_run_settings_are_stored_when_the_study_is_created(
    study_run: Path, fake_data_dir: Path
) -> None:
    settings = _study(study_run).user_attrs[RUN_SETTINGS]
    assert settings["data_dir"] == str(fake_data_dir.resolve())
    assert (settings["seed"], settings["val_size"], settings["max_epochs"]) == (0, VAL_SIZE, 2)
    assert (settings["sampler"], settings["pruner"]) == ("tpe", "none")


@pytest.mark.integration
def test_fmnist_tune_report_rebuilds_the_report_from_storage(
    study_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "again"
    storage = f"sqlite:///{study_run / 'study.db'}"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("fmnist-tune")), "report", "--storage", storage,
         "--study-name", "fmnist-mlp", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    page = _page(out)
    assert 'id="best-trial"' in page and 'id="confusion-matrix"' in page  # the stored result
    assert (out / "plots" / "slice.png").is_file()


@pytest.mark.integration
def test_report_script_names_a_missing_study_in_one_line(
    study_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{study_run / 'study.db'}"
    assert load_script("report").main(["--storage", storage, "--study-name", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nope'" in err[0] and "fmnist-mlp" in err[0]


def test_log_line_shows_progress_best_pruned_and_time_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    study = _fake_study(n_complete=2, n_pruned=1)
    with caplog.at_level(logging.INFO, logger="fmnist_tuning"):
        log_trial(study, study.trials[-1], n_trials=6)
    (line,) = [r.getMessage() for r in caplog.records if r.name.startswith("fmnist_tuning")]
    assert line.startswith("[3/6] trial 2 PRUNED")
    assert f"best={study.best_value:.4f} (trial {study.best_trial.number})" in line
    assert "pruned 1" in line and line.endswith(" left") and "\n" not in line


# ------------------------------------------------------------------------------------------------
# Headless Chromium (Debian package "chromium"); skipped where it is not installed

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)"
)


def _render(page: Path) -> tuple[str, str]:
    """The DOM after the page's scripts ran, and Chromium's log (console messages included)."""
    assert CHROMIUM is not None
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def _script_errors(dom: str) -> str:
    match = re.search(r'<pre id="script-errors"[^>]*>(.*?)</pre>', dom, re.S)
    assert match, "the error box is missing"
    return match.group(1).strip()


@pytest.mark.integration
@needs_chromium
def test_chromium_renders_the_report_without_script_errors(study_run: Path) -> None:
    dom, log = _render(study_run / REPORT_HTML)
    assert 'data-report-ready="1"' in dom  # every inline script ran to the end
    assert _script_errors(dom) == ""
    assert "Uncaught" not in log
    assert 'id="best-trial"' in dom
    assert dom.count('class="main-svg"') >= len(PLOT_NAMES)  # plotly drew every figure


# Clicks a header of the trials table twice (descending), then writes the row order into the DOM.
CLICK_AND_READ = """<script>
var header = Array.from(document.querySelectorAll("#trials th")).find(
  function (th) { return th.textContent === "val acc"; });
header.click(); header.click();
document.body.dataset.order = Array.from(document.querySelectorAll("#trials tbody tr")).map(
  function (row) { return row.cells[header.cellIndex].textContent; }).join(",");
</script></body>"""


@pytest.mark.integration
@needs_chromium
def test_clicking_a_trials_column_sorts_the_trials_by_it(study_run: Path, tmp_path: Path) -> None:
    page = tmp_path / "clicked.html"
    page.write_text(_page(study_run).replace("</body>", CLICK_AND_READ), encoding="utf-8")
    dom, _ = _render(page)
    assert _script_errors(dom) == ""
    order = re.search(r'data-order="([^"]*)"', dom)
    assert order, "the click script did not run"
    values = [float(v) for v in order.group(1).split(",") if v != "-"]
    assert len(values) == 3 and values == sorted(values, reverse=True)


@pytest.mark.integration
@needs_chromium
def test_chromium_check_catches_a_script_error(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        f"<html><head><script>{(TEMPLATES / 'errors.js').read_text()}</script></head><body>"
        '<pre id="script-errors" hidden></pre><script>undefinedFunction();</script></body></html>'
    )
    dom, _ = _render(page)
    assert "undefinedFunction" in _script_errors(dom)


@pytest.mark.integration
def test_the_report_imports_no_lightning() -> None:
    """It reads the stored study and scores nothing, so it needs no training framework."""
    probe = "import sys, fmnist_tuning.report.page; print('lightning' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.strip() == "False"


def test_report_script_on_a_missing_database_exits_2_and_creates_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.db"
    assert load_script("report").main(["--storage", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0]
    assert not missing.exists()
