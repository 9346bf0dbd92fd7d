"""The docs describe today's code: every module is on the guide's map, every module, flag and
default they name exists, and the defaults the README and the guide quote are the code's."""

from __future__ import annotations

import importlib
import re

import pytest

from fmnist_tuning.config import RunConfig
from fmnist_tuning.search import deadline
from fmnist_tuning.search.sampling import ASHA_MIN_EPOCHS
from fmnist_tuning.search.space import BUDGET_UNITS_RANGE, UNITS_RANGE
from tests.conftest import ROOT

PACKAGE = ROOT / "fmnist_tuning"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Flags of the tools the docs also show (pip, pytest, tensorboard, jupyter, the dashboard).
OTHER_TOOLS = {
    "--index-url",
    "--logdir",
    "--to",
    "--execute",
    "--inplace",
    "--check",
    "--help",
    "--durations",
}
# Where a module may be named in prose: the docs, and the docstrings and comments of the code.
PROSE = [*DOCS, *PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"), ROOT / ".ci" / "run"]


def modules() -> list[str]:
    """Every module of the package, as a path below ``fmnist_tuning/`` (``search/loop.py``)."""
    found = PACKAGE.rglob("*.py")
    return sorted(str(p.relative_to(PACKAGE)) for p in found if p.name != "__init__.py")


def test_the_guides_module_map_lists_every_module() -> None:
    guide = (ROOT / "docs" / "guide.md").read_text()
    missing = [m for m in modules() if f"`{m}`" not in guide and f"fmnist_tuning/{m}`" not in guide]
    assert not missing, f"docs/guide.md's module map lacks {missing}"


def test_every_module_the_docs_name_exists() -> None:
    named = {
        (str(doc.relative_to(ROOT)), name)
        for doc in PROSE
        for name in re.findall(r"\bfmnist_tuning(?:\.[a-z_]+)+", doc.read_text())
    }
    lacking = []
    for doc, name in sorted(named):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest module, then attributes on it
            try:
                target = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attr in parts[cut:]:
                target = getattr(target, attr, None)
            if target is None:
                lacking.append(f"{doc}: {name}")
            break
    paths = {
        (str(doc.relative_to(ROOT)), path)
        for doc in PROSE
        for path in re.findall(
            r"\b((?:fmnist_tuning|benchmarks|scripts|tests)/[\w/]+\.py)", doc.read_text()
        )
    }
    lacking += [f"{doc}: {path}" for doc, path in sorted(paths) if not (ROOT / path).is_file()]
    assert not lacking, lacking


def test_every_flag_the_docs_show_exists() -> None:
    sources = [
        PACKAGE / "cli.py",
        PACKAGE / "commands.py",
        *(ROOT / "benchmarks").glob("*.py"),
        *(ROOT / "scripts").glob("*.py"),
    ]
    known = {f for src in sources for f in re.findall(r"\"(--[a-z][a-z0-9-]*)\"", src.read_text())}
    shown = {
        (doc.name, flag)
        for doc in DOCS
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", doc.read_text())
    }
    unknown = sorted(f"{doc}: {flag}" for doc, flag in shown if flag not in known | OTHER_TOOLS)
    assert not unknown, unknown


SHARE_WORDS = {
    0.5: "half",
    0.75: "three quarters",
}  # the final stage's share, as the README says it


@pytest.mark.parametrize(
    ("doc", "quote"),
    [
        ("README.md", f"up to {RunConfig.n_trials} trials of up to {RunConfig.max_epochs} epochs"),
        ("README.md", f"most stopped after {ASHA_MIN_EPOCHS}"),
        ("README.md", f"(up to `--final-epochs`, {RunConfig.final_epochs}, as far as"),
        (
            "README.md",
            f"(at most {SHARE_WORDS[deadline.FINAL_SHARE]} of T) plus {deadline.REPORT_SECONDS:g} s",
        ),
        ("docs/guide.md", f"a final schedule of up to {RunConfig.final_epochs} epochs"),
        ("README.md", f"successive halving (`--pruner {RunConfig.pruner}`)"),
        ("README.md", f"`--sampler {RunConfig.sampler}`, the default"),
        ("docs/guide.md", f"{UNITS_RANGE[0]}-{UNITS_RANGE[1]}"),
        ("docs/guide.md", f"{BUDGET_UNITS_RANGE[0]}-{BUDGET_UNITS_RANGE[1]}"),
    ],
)
def test_the_defaults_the_docs_quote_are_the_codes(doc: str, quote: str) -> None:
    text = " ".join((ROOT / doc).read_text().split())  # line breaks do not matter
    assert quote in text, f"{doc} does not say {quote!r}"
