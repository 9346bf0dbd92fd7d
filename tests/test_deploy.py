"""The shipped model: model.onnx from a study, its checks, fmnist-tune export / predict, MODEL.md."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmnist_tuning.cli import main
from fmnist_tuning.config import RunConfig
from fmnist_tuning.deploy.onnx_model import OnnxModel
from fmnist_tuning.final.classifier import load_model
from fmnist_tuning.training.data import make_splits
from fmnist_tuning.training.raw import CLASS_NAMES, load_raw
from tests.conftest import VAL_SIZE, write_idx

# Whole studies, exports and ONNX Runtime: with the other whole runs, outside the fast subset
# (whose lower-bound install has no deploy extra).
pytestmark = pytest.mark.integration


def _study_args(data_dir: Path, out: Path) -> list[str]:
    """A one-trial study of 3-epoch trials on the tiny data, its final model on the same schedule."""
    return [
        "--data-dir", str(data_dir), "--output-dir", str(out), "--n-trials", "1",
        "--max-epochs", "3", "--final-epochs", "3", "--val-size", str(VAL_SIZE),
        "--accelerator", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def study_dir(fake_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-trial study on the tiny data: its final model, model.onnx and MODEL.md."""
    out = tmp_path_factory.mktemp("deploy") / "study"
    assert main(_study_args(fake_data_dir, out)) == 0
    return out


def _validation_images(data_dir: Path, checkpoint: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The study's validation images (uint8, N x 28 x 28) the PyTorch model classifies right,
    and their labels."""
    splits = make_splits(load_raw(data_dir), VAL_SIZE, RunConfig.seed)
    images = splits.images[splits.val_idx].reshape(-1, 28, 28)
    labels = splits.labels[splits.val_idx]
    right = load_model(checkpoint).predict(images) == labels
    assert right.sum() >= 5, "the tiny study's model should learn the tiny data"
    return images[right], labels[right]


def test_the_study_writes_model_onnx_that_agrees_with_pytorch_and_its_latencies(
    study_dir: Path,
) -> None:
    best = json.loads((study_dir / "best.json").read_text())
    deploy = best["deploy"]
    assert deploy["onnx"] == "model.onnx" and (study_dir / "model.onnx").is_file()
    assert deploy["agreement"]["images"] == VAL_SIZE  # the validation images, not the test set
    assert deploy["agreement"]["top1_agreement"] == 1.0
    assert deploy["agreement"]["max_abs_diff"] <= 1e-5
    for runtime in ("onnxruntime", "pytorch_eager"):
        for batch in ("batch_1", "batch_256"):
            timed = deploy["latency"][runtime][batch]
            assert 0 < timed["median_ms"] <= timed["p95_ms"]
    assert deploy["latency"]["threads"] == 1 and "PyTorch eager" in deploy["budget_runtime"]
    report = (study_dir / "report.html").read_text()
    assert "onnx ms (final model)" in report and "ONNX Runtime, one thread" in report


def test_model_md_describes_the_model_its_scores_and_limits(study_dir: Path) -> None:
    best = json.loads((study_dir / "best.json").read_text())
    card = (study_dir / "MODEL.md").read_text()
    assert f"784-{best['config']['hidden_sizes']}-10" in card
    assert f"{best['n_params']:,}" in card
    assert f"{best['test_acc']:.4f}" in card and f"{best['test_acc_ci95'][0]:.4f}" in card
    assert all(f"| {name} |" in card for name in CLASS_NAMES)  # per-class test accuracy
    median = best["deploy"]["latency"]["onnxruntime"]["batch_1"]["median_ms"]
    assert f"| ONNX Runtime (`model.onnx`) | {median} /" in card
    assert "## Known limits" in card and "not tested on photographs" in card.replace("\n", " ")


def test_predict_names_the_class_of_pngs_of_validation_images_and_of_a_photo_like_one(
    study_dir: Path, fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best = json.loads((study_dir / "best.json").read_text())
    images, labels = _validation_images(fake_data_dir, best["checkpoint"])
    files, expected = [], []
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = images[i].numpy()
        plain = tmp_path / f"val_{i}.png"
        Image.fromarray(pixels).save(plain)
        # A photo of it: 4x larger, in colour, a dark garment on a wider light background, noisy.
        canvas = np.full((112, 160), 240, dtype=np.int16)
        canvas[:, 24:136] = np.kron(255 - pixels.astype(np.int16), np.ones((4, 4), np.int16))
        noisy = np.clip(canvas + rng.integers(-8, 9, canvas.shape), 0, 255).astype(np.uint8)
        photo = tmp_path / f"photo_{i}.png"
        Image.fromarray(np.stack([noisy, noisy, (noisy * 0.9).astype(np.uint8)], -1)).save(photo)
        files += [plain, photo]
        expected += [CLASS_NAMES[int(labels[i])]] * 2
    assert main(["predict", str(study_dir / "model.onnx"), *map(str, files)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(f) for f in files]
    assert [line.split(": ")[1].rsplit(" ", 1)[0] for line in lines] == expected


def test_predict_reads_npy_and_idx_batches_from_the_study_folder_as_json_top_k(
    study_dir: Path, fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best = json.loads((study_dir / "best.json").read_text())
    images, labels = _validation_images(fake_data_dir, best["checkpoint"])
    np.save(tmp_path / "batch.npy", images[:3].numpy().astype(np.float32) / 255)  # [0, 1] floats
    write_idx(tmp_path / "images-idx3-ubyte", images[3:5])
    argv = [str(tmp_path / "batch.npy"), str(tmp_path / "images-idx3-ubyte")]
    assert main(["predict", str(study_dir), *argv, "--top-k", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(Path(r["file"]).name, r["index"]) for r in rows] == [
        ("batch.npy", 0), ("batch.npy", 1), ("batch.npy", 2),
        ("images-idx3-ubyte", 0), ("images-idx3-ubyte", 1),
    ]  # fmt: skip
    assert [r["top"][0]["class"] for r in rows] == [CLASS_NAMES[int(k)] for k in labels[:5]]
    for r in rows:
        p = [c["probability"] for c in r["top"]]
        assert len(p) == 3 and p == sorted(p, reverse=True) and sum(p) <= 1 + 1e-6


def test_export_writes_the_onnx_and_torchscript_files_again(
    study_dir: Path, fake_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best = json.loads((study_dir / "best.json").read_text())
    images, _ = _validation_images(fake_data_dir, best["checkpoint"])
    (study_dir / "model.onnx").unlink()
    assert main(["export", "--output-dir", str(study_dir)]) == 0
    assert main(["export", "--output-dir", str(study_dir), "--format", "torchscript"]) == 0
    assert capsys.readouterr().out.split() == [
        str(study_dir / "model.onnx"),
        str(study_dir / "model.pt"),
    ]
    expected = load_model(best["checkpoint"]).probabilities(images)
    onnx = OnnxModel(study_dir / "model.onnx").probabilities(images.numpy())
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, and asked for
        traced = torch.jit.load(str(study_dir / "model.pt"))(images)
    assert torch.allclose(torch.from_numpy(onnx), expected, atol=1e-5)
    assert torch.allclose(traced, expected, atol=1e-6)
    assert len(traced) == len(images)  # the batch axis is dynamic


def _another_models_onnx(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter
        torch.onnx.export(
            torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(path), input_names=["x"], dynamo=False
        )
    return path


def _bad(kind: str, study_dir: Path, tmp: Path) -> list[str]:
    """The argv of one bad call of predict or export."""
    onnx = str(study_dir / "model.onnx")
    npy = tmp / "x.npy"
    match kind:
        case "missing model":
            return ["predict", str(tmp / "nope.onnx"), onnx]
        case "folder without model.onnx":
            return ["predict", str(tmp), onnx]
        case "model not onnx":
            (tmp / "junk.onnx").write_bytes(b"\x00not a model")
            return ["predict", str(tmp / "junk.onnx"), onnx]
        case "onnx of another model":
            return ["predict", str(_another_models_onnx(tmp / "other.onnx")), onnx]
        case "missing image":
            return ["predict", onnx, str(tmp / "shirt.png")]
        case "corrupt png":
            (tmp / "shirt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
            return ["predict", onnx, str(tmp / "shirt.png")]
        case "npy of another shape":
            np.save(npy, np.zeros((3, 32, 32), dtype=np.uint8))
            return ["predict", onnx, str(npy)]
        case "npy floats outside [0, 1]":
            np.save(npy, np.full((28, 28), 3.5, dtype=np.float32))
            return ["predict", onnx, str(npy)]
        case "unknown suffix":
            (tmp / "shirt.txt").write_text("a shirt")
            return ["predict", onnx, str(tmp / "shirt.txt")]
        case "corrupt idx":
            (tmp / "x-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00")
            return ["predict", onnx, str(tmp / "x-idx3-ubyte")]
        case "top-k 0":
            return ["predict", onnx, onnx, "--top-k", "0"]
        case "top-k above the classes":
            np.save(npy, np.zeros((28, 28), dtype=np.uint8))
            return ["predict", onnx, str(npy), "--top-k", "11"]
        case "export of a folder without a study":
            return ["export", "--output-dir", str(tmp)]
        case "export in an unknown format":
            return ["export", "--output-dir", str(study_dir), "--format", "tflite"]
        case "export of a study name the storage lacks":
            return ["export", "--output-dir", str(study_dir), "--study-name", "other"]
    raise AssertionError(kind)


BAD = [
    "missing model", "folder without model.onnx", "model not onnx", "onnx of another model",
    "missing image", "corrupt png", "npy of another shape", "npy floats outside [0, 1]",
    "unknown suffix", "corrupt idx", "top-k 0", "top-k above the classes",
    "export of a folder without a study", "export in an unknown format",
    "export of a study name the storage lacks",
]  # fmt: skip


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_to_predict_or_export_exits_2_with_one_line(
    kind: str, study_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _bad(kind, study_dir, tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fmnist-tune {argv[0]}: error:"), err
    assert captured.out == ""


@pytest.mark.parametrize("argv", [["predict", "model.onnx", "x.png"], ["export"]])
def test_without_the_deploy_extra_predict_and_export_say_how_to_install_it(
    argv: list[str],
    study_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.chdir(study_dir)
    if argv[0] == "export":
        argv = [*argv, "--output-dir", str(study_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'fmnist-tuning[deploy]'" in err[0]


def test_without_the_deploy_extra_a_study_says_why_it_has_no_model_onnx(
    study_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fmnist_tuning.api import load_result
    from fmnist_tuning.deploy.ship import ship

    copy = shutil.copytree(study_dir, tmp_path / "study")
    (copy / "model.onnx").unlink()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = load_result(copy)
    best = json.loads((copy / "best.json").read_text())
    shipped = ship(result.study, result.config, {**best, "deploy": None})
    assert "pip install 'fmnist-tuning[deploy]'" in shipped["deploy"]["skipped"]
    assert json.loads((copy / "best.json").read_text())["deploy"] == shipped["deploy"]
    assert "Not measured: no model.onnx" in (copy / "MODEL.md").read_text()
    assert not (copy / "model.onnx").exists()


def test_a_resumed_study_reuses_its_exports_stored_checks(
    study_dir: Path, fake_data_dir: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(study_dir, tmp_path / "study")
    before = json.loads((copy / "best.json").read_text())["deploy"]
    assert main(_study_args(fake_data_dir, copy)) == 0
    after = json.loads((copy / "best.json").read_text())["deploy"]
    assert after == before  # measured once, then read
