"""The report's figures: Optuna's plots of a study (HTML and PNG), and the grid of test mistakes.

Every plot of the study is drawn by ``optuna.visualization`` and
``optuna.visualization.matplotlib``; nothing here re-implements one. A plot the study cannot
support yet (importances with fewer than 2 complete trials, a contour without 2 varying
parameters, ...) is skipped with a one-line reason: Optuna itself would only log a warning and
draw an empty figure.
"""

from __future__ import annotations

import io
import itertools
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import optuna
from optuna.trial import FrozenTrial, TrialState

if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")  # files only, never a window; leave a backend someone chose alone
import matplotlib.pyplot as plt
import optuna.visualization as vis
import optuna.visualization.matplotlib as vis_mpl

from fmnist_tuning.files import write_atomic
from fmnist_tuning.keys import RUN_SETTINGS
from fmnist_tuning.training.raw import CLASS_NAMES, IMAGE_SIDE

log = logging.getLogger(__name__)

PLOTLY_JS = "plotly.min.js"  # written once into plots/, shared by every plots/*.html
PNG_DPI = 90
TARGET_NAME = "Validation accuracy"  # axis label instead of Optuna's generic "Objective Value"


@dataclass(frozen=True)
class Plot:
    """One Optuna plot of the study, drawn or skipped.

    Attributes:
        name: File stem in ``plots/`` (``<name>.html`` and ``<name>.png``).
        title: Heading for the report.
        description: What the plot shows and what to look for, one or two sentences.
        figure: The interactive plotly figure, or ``None`` when skipped.
        png: The static matplotlib rendering, or ``None`` when skipped.
        skipped: Why the plot was not drawn (one line), or ``None``.
    """

    name: str
    title: str
    description: str
    figure: Any = None  # plotly.graph_objects.Figure (plotly ships no type stubs)
    png: bytes | None = None
    skipped: str | None = None


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


# A "prepare" function returns the plot function's keyword arguments, or why it cannot be drawn.
Prepare = Callable[[optuna.Study], dict[str, Any] | str]


def _accuracy(trial: FrozenTrial) -> float:
    """A front's trials have two values: its plots of one objective draw the accuracy."""
    return float(trial.values[0])


def _target(study: optuna.Study) -> dict[str, Any]:
    """The plot arguments that name the plotted value (and pick it, in a front study)."""
    return {"target_name": TARGET_NAME} | ({"target": _accuracy} if _is_front(study) else {})


def _is_front(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def _need_complete(n: int) -> Prepare:
    def prepare(study: optuna.Study) -> dict[str, Any] | str:
        have = len(_complete(study))
        if have < n:
            return f"needs at least {n} complete trial{'s' * (n > 1)}, the study has {have}"
        return _target(study)

    return prepare


def _pareto_kwargs(study: optuna.Study) -> dict[str, Any] | str:
    if not _complete(study):
        return "needs at least 1 complete trial, the study has 0"
    second = study.user_attrs.get(RUN_SETTINGS, {}).get("objectives", "").partition(",")[2]
    names = {"params": "Parameters", "latency": "CPU latency per image (ms)"}
    return {"target_names": [TARGET_NAME, names.get(second, second)]}


def _need_intermediate(study: optuna.Study) -> dict[str, Any] | str:
    if not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        return "no trial has reported a per-epoch value yet"
    return {}


def _need_any_trial(study: optuna.Study) -> dict[str, Any] | str:
    return {} if study.get_trials(deepcopy=False) else "the study has no trials"


def _contour_kwargs(study: optuna.Study) -> dict[str, Any] | str:
    pair = contour_params(study)
    return pair if isinstance(pair, str) else {"params": list(pair), **_target(study)}


def importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's default (PED-ANOVA) parameter importances, most important first.

    Raises:
        ValueError: Fewer than 2 complete trials (too few to compare).
    """
    if len(_complete(study)) < 2:
        raise ValueError("needs at least 2 complete trials")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "some regimes have less than 2 trials": expected early on
        # A custom target counts as lower-is-better here: rank by the negated accuracy.
        return optuna.importance.get_param_importances(
            study, target=(lambda t: -_accuracy(t)) if _is_front(study) else None
        )


def _varies_jointly(trials: list[FrozenTrial], x: str, y: str) -> bool:
    both = [t for t in trials if x in t.params and y in t.params]
    return (
        len({repr(t.params[x]) for t in both}) >= 2 and len({repr(t.params[y]) for t in both}) >= 2
    )


def contour_params(study: optuna.Study) -> tuple[str, str] | str:
    """The two most important parameters that vary together across complete trials.

    Conditional parameters (``lr_sgd`` exists only in SGD trials) may be important yet never meet
    another one often enough for a contour, so pairs are tried in order of importance.

    Returns:
        The pair, or a one-line reason why there is none.
    """
    try:
        ranked = list(importances(study))
    except ValueError as err:
        return str(err)
    trials = _complete(study)
    pairs = sorted(itertools.combinations(range(len(ranked)), 2), key=lambda p: (p[0] + p[1], p))
    for i, j in pairs:
        if _varies_jointly(trials, ranked[i], ranked[j]):
            return ranked[i], ranked[j]
    return "no two parameters take 2 or more values together in the complete trials"


@dataclass(frozen=True)
class _Spec:
    name: str
    title: str
    description: str
    prepare: Prepare


FRONT_ONLY = ("pareto_front",)  # drawn for a multi-objective (front) study only
SPECS: tuple[_Spec, ...] = (
    _Spec(
        "pareto_front",
        "Pareto front",
        "A front study's trials by validation accuracy and cost (size or latency): the front is "
        "the trials no other trial beats on both; the final model is made from one of them.",
        _pareto_kwargs,
    ),
    _Spec(
        "optimization_history",
        "Optimization history",
        "Validation accuracy of every complete trial in the order they ran, and the best so far: "
        "a flat best-so-far line means more trials stopped paying off.",
        _need_complete(1),
    ),
    _Spec(
        "intermediate_values",
        "Intermediate values (learning curves)",
        "Validation accuracy after every epoch of every trial. The curves that stop early were "
        "pruned at a rung (by default: not in the top third of the trials scored there) or "
        "stopped by early stopping once they no longer improved.",
        _need_intermediate,
    ),
    _Spec(
        "param_importances",
        "Hyperparameter importances",
        "How much of the variation in validation accuracy each hyperparameter explains "
        "(PED-ANOVA, Optuna's default); spend the next search on the top ones.",
        _need_complete(2),
    ),
    _Spec(
        "parallel_coordinate",
        "Parallel coordinates",
        "One line per complete trial through its hyperparameters, coloured by validation "
        "accuracy: the good lines show which ranges win together.",
        _need_complete(1),
    ),
    _Spec(
        "slice",
        "Slice",
        "Validation accuracy against each hyperparameter separately (colour = trial number): "
        "where the late, dark points cluster is where the sampler concentrated.",
        _need_complete(1),
    ),
    _Spec(
        "contour",
        "Contour of the two most important parameters",
        "Interpolated validation accuracy over the two most important hyperparameters that vary "
        "together; dots are the trials that were actually run.",
        _contour_kwargs,
    ),
    _Spec(
        "edf",
        "Empirical distribution function",
        "Fraction of complete trials that reached at most a given validation accuracy: a curve "
        "rising late and steeply means most of the search space is good.",
        _need_complete(1),
    ),
    _Spec(
        "timeline",
        "Timeline",
        "When each trial ran and how it ended (complete, pruned, failed): shows parallel workers, "
        "idle gaps and how much time pruning saved.",
        _need_any_trial,
    ),
)


def _png(axes: Any) -> bytes:
    """Renders what an ``optuna.visualization.matplotlib`` function returned (Axes or an array)."""
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    figure = first.figure
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=PNG_DPI, bbox_inches="tight")
    finally:
        plt.close(figure)
    return buffer.getvalue()


def draw(study: optuna.Study, spec: _Spec) -> Plot:
    """Draws one plot both ways, or returns it skipped with the reason."""
    kwargs = spec.prepare(study)
    if isinstance(kwargs, str):
        return Plot(spec.name, spec.title, spec.description, skipped=kwargs)
    function = f"plot_{spec.name}"
    description = spec.description
    if "params" in kwargs:
        description += f" Here: {' and '.join(kwargs['params'])}."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning, "few trials per regime", ...
        try:
            figure = getattr(vis, function)(study, **kwargs)
            png = _png(getattr(vis_mpl, function)(study, **kwargs))
        except Exception as err:  # a report must survive one plot an odd study breaks
            plt.close("all")
            first_line = (str(err).strip().splitlines() or [""])[0][:200]
            return Plot(
                spec.name,
                spec.title,
                spec.description,
                skipped=f"Optuna could not draw it: {type(err).__name__}: {first_line}",
            )
    return Plot(spec.name, spec.title, description, figure=figure, png=png)


def make_plots(study: optuna.Study) -> list[Plot]:
    """Every plot of :data:`SPECS` for ``study``, drawn or skipped (never raises for a study);
    the Pareto front only for a front study."""
    front = _is_front(study)
    return [draw(study, spec) for spec in SPECS if front or spec.name not in FRONT_ONLY]


def plotly_js() -> str:
    """The minified plotly.js bundle shipped with the installed plotly (offline, no CDN)."""
    from plotly.offline import get_plotlyjs

    js: str = get_plotlyjs()
    return js


def write_plots(plots: list[Plot], folder: Path) -> None:
    """Writes ``<name>.html`` (+ one shared ``plotly.min.js``) and ``<name>.png`` per drawn plot.

    Files of a plot that is skipped now are removed, so ``plots/`` never shows a stale picture.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if any(p.figure is not None for p in plots):
        js = plotly_js().encode()
        target = folder / PLOTLY_JS
        if not target.is_file() or target.stat().st_size != len(js):
            write_atomic(target, js)
    for plot in plots:
        html, png = folder / f"{plot.name}.html", folder / f"{plot.name}.png"
        if plot.skipped is not None:
            log.info("plot %s skipped: %s", plot.name, plot.skipped)
            html.unlink(missing_ok=True)
            png.unlink(missing_ok=True)
            continue
        page = plot.figure.to_html(include_plotlyjs="directory", full_html=True)
        write_atomic(html, page)
        assert plot.png is not None
        write_atomic(png, plot.png)


def mistakes_png(images: Any, confused: list[list[Any]]) -> bytes:
    """The test images a model gets most confidently wrong, labelled true → predicted, as a PNG.

    Args:
        images: The official test images, (N, 784) uint8.
        confused: ``[index, true, predicted, probability]`` per image, as the final model stored.
    """
    cols = 6
    rows = max(1, -(-len(confused) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * 2.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (index, true, pred, prob) in zip(axes.flat, confused, strict=False):
        ax.imshow(
            images[index].view(IMAGE_SIDE, IMAGE_SIDE).numpy(), cmap="gray_r", vmin=0, vmax=255
        )
        ax.set_title(
            f"#{index}\n{CLASS_NAMES[true]} → {CLASS_NAMES[pred]}\np={prob:.2f}", fontsize=7.5
        )
    fig.suptitle("Most confident mistakes on the test set (true → predicted)", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=PNG_DPI)
    finally:
        plt.close(fig)
    return buffer.getvalue()
