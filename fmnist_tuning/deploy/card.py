"""``MODEL.md``: the model card of a study's final model, from ``best.json`` and its test result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from fmnist_tuning.files import write_atomic
from fmnist_tuning.training.raw import CLASS_NAMES

MODEL_MD = "MODEL.md"
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=False,  # Markdown, not HTML
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
)


def write_card(
    folder: Path, best: dict[str, Any], final: dict[str, Any] | None, val_size: int
) -> Path:
    """Writes ``folder/MODEL.md`` for the model ``best`` (``best.json``) describes.

    Args:
        folder: The study's output folder.
        best: The ``best.json`` content, with its ``deploy`` figures.
        final: The final model's stored test result (its ``per_class`` accuracy), if any.
        val_size: The training images the study held out for validation.
    """
    config = best["config"]
    deploy = best.get("deploy") or {}
    choice = best.get("final_schedule") or {}
    candidates = choice.get("candidates") or []
    retrained = best.get("retrained_on_full_train")
    split = (
        f"{val_size:,} of them were held out for validation while the search and the final "
        "schedule were chosen"
        + ("; the final model was then retrained on all 60,000." if retrained else ".")
    )
    text = _ENV.get_template("MODEL.md.j2").render(
        name=f"Fashion-MNIST MLP {config['hidden_sizes']}",
        best=best,
        config=config,
        architecture=f"784-{config['hidden_sizes']}-10 fully connected",
        checkpoint=Path(best["checkpoint"]).name,
        onnx=deploy.get("onnx"),
        split=split,
        val_size=val_size,
        schedule_val=candidates[choice["chosen"]]["val_acc"] if candidates else None,
        per_class=list(zip(CLASS_NAMES, (final or {}).get("per_class") or [], strict=False)),
        latency=deploy.get("latency"),
        agreement=deploy.get("agreement"),
        skipped=deploy.get("skipped", "no final model"),
    )
    path = folder / MODEL_MD
    write_atomic(path, text)
    return path
