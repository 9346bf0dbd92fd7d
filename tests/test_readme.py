"""The README's commands run as written: the first one on a machine with internet and no data (the
download comes from a server of this test's, on loopback), and its Python block on tiny data."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_fake_fmnist

pytestmark = pytest.mark.integration  # whole runs in subprocesses

README = (ROOT / "README.md").read_text()
N_TRAIN = 5_600  # the default --val-size (5,000) fits, so the commands need no flag of their own


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment without a data folder of its own, and its own download record."""
    env = {k: v for k, v in os.environ.items() if k != "FMNIST_DATA_DIR"}
    return {**env, "FMNIST_TEST_DOWNLOADS": str(tmp_path / "downloads.log"), **extra}


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[str]:
    """A local web server with the four dataset files, as Fashion-MNIST's own mirror serves them."""
    files = write_fake_fmnist(tmp_path / "mirror", n_train=N_TRAIN)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(files))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_the_first_command_downloads_the_data_itself(tmp_path: Path, mirror: str) -> None:
    first = blocks("bash")[0]
    tune = next(part for part in first.split("&&") if "scripts/tune.py" in part)
    args = shlex.split(tune)[2:]  # after ".venv/bin/python scripts/tune.py"
    assert "--data-dir" not in args
    # As written, but for a trial cap: the 60-second budget would fill with tiny trials.
    command = [sys.executable, str(ROOT / "scripts" / "tune.py"), *args, "--n-trials", "2"]
    env = environment(tmp_path, FMNIST_TEST_MIRROR=mirror)
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    downloads = (tmp_path / "downloads.log").read_text().splitlines()
    assert len(downloads) == 1 and str(tmp_path / "data") in downloads[0]
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    assert {p.name for p in raw.glob("*.gz")} == {p.name for p in (tmp_path / "mirror").iterdir()}
    name = args[args.index("--study-name") + 1]
    best = json.loads((tmp_path / "runs" / name / "best.json").read_text())
    assert best["test_acc"] is not None and (tmp_path / "runs" / name / "report.html").is_file()


def test_the_python_block_runs_as_written(tmp_path: Path) -> None:
    (code,) = blocks("python")
    write_fake_fmnist(tmp_path / "data", n_train=N_TRAIN)  # where the block's tune() looks
    env = environment(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "downloads.log").exists() or not (tmp_path / "downloads.log").read_text()
    lines = done.stdout.strip().splitlines()
    predicted = [line for line in lines if line.startswith("tensor([")]
    assert len(predicted) == 2 and predicted[0] == predicted[1], done.stdout  # file = result
    assert "'slice'" in lines[-2], done.stdout
