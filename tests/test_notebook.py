"""docs/walkthrough.ipynb runs top to bottom (tiny synthetic data, a tiny budget): no cell raises,
and its comparison cells run without the test files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import TEST_FILES, without_test_files

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "walkthrough.ipynb"


@pytest.mark.integration
def test_the_walkthrough_executes_and_its_comparisons_never_read_the_test_set(
    fake_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    data = without_test_files(fake_data_dir, tmp_path / "data")
    monkeypatch.setenv("FMNIST_DATA_DIR", str(data))
    monkeypatch.setenv("WALKTHROUGH_BUDGET", "tiny")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    tags = [set(cell.metadata.get("tags", [])) for cell in notebook.cells]
    last_comparison = max(i for i, t in enumerate(tags) if "comparison" in t)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            if index == last_comparison + 1:  # the comparisons ran without them; now the study
                for name in TEST_FILES:
                    shutil.copy(fake_data_dir / name, data / name)
            client.execute_cell(cell, index)  # raises CellExecutionError, naming the cell
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "test accuracy" in text and "whole notebook:" in text
    assert (tmp_path / "runs" / "walkthrough" / "study" / "best.json").is_file()
    for sampler in ("grid", "random", "tpe"):
        best = (tmp_path / "runs" / "walkthrough" / f"sampler-{sampler}" / "best.json").read_text()
        assert '"test_acc": null' in best
