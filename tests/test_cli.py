"""The command line contract: flags, outputs, resume, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fmnist_tuning.cli import AUTO_WORKERS, main, parse_config
from tests.conftest import N_TRAIN, VAL_SIZE

ROOT = Path(__file__).resolve().parents[1]


def _args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data-dir", str(data_dir), "--output-dir", str(out), "--max-epochs", "2",
        "--val-size", str(VAL_SIZE), "--accelerator", "cpu", *extra,
    ]  # fmt: skip


@pytest.mark.integration
def test_two_trial_study_writes_best_json_tensorboard_and_storage(
    fake_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert main(_args(fake_data_dir, out, "--n-trials", "2")) == 0

    best = json.loads((out / "best.json").read_text())
    assert {"trial", "params", "val_acc", "test_acc"} <= best.keys()
    assert isinstance(best["trial"], int) and best["params"]
    params, config = best["params"], best["config"]  # the best trial's parameters, resolved
    widths = [params[f"n_units_l{i}"] for i in range(params["n_layers"])]
    assert config["hidden_sizes"] == "-".join(map(str, widths))
    assert config["n_layers"] == params["n_layers"]
    assert config["lr"] == params[f"lr_{params['optimizer']}"]
    for key in ("dropout", "batch_norm", "optimizer", "weight_decay", "batch_size"):
        assert config[key] == params[key], key
    assert (config["label_smoothing"], config["scheduler"], config["flip"]) == (
        0.1,
        "onecycle",
        True,
    )
    assert 0.0 <= best["test_acc"] <= 1.0 and 0.0 <= best["val_acc"] <= 1.0
    assert Path(best["checkpoint"]).is_file() and best["retrained_on_full_train"]
    kept = {p.name for p in (out / "checkpoints").iterdir()}
    name = f"trial_{best['trial']:04d}"
    # Two 2-epoch trials trained at most 4 epochs: half of that is no longer than the trials' own
    # schedule, so the final model is the best trial's configuration retrained with it.
    final = f"final_{name}.ckpt"
    assert kept == {final, f"{name}.ckpt"}  # beaten trials' are gone
    assert best["checkpoint"] == str(out.resolve() / "checkpoints" / final)

    runs = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert runs == ["trial_0000", "trial_0001"]
    for run in runs:
        events = EventAccumulator(str(out / "tensorboard" / run))
        events.Reload()
        tags = events.Tags()["scalars"]
        assert {"val/acc", "val/loss", "train/loss", "hp_metric"} <= set(tags)
        assert len(events.Scalars("val/acc")) == 2  # one point per epoch

    study = optuna.load_study(study_name="fmnist-mlp", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 2
    assert study.best_trial.number == best["trial"]
    assert study.best_value == pytest.approx(best["val_acc"])


@pytest.mark.integration
def test_rerunning_resumes_the_same_study(fake_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(_args(fake_data_dir, out, "--n-trials", "1")) == 0
    assert main(_args(fake_data_dir, out, "--n-trials", "2")) == 0
    study = optuna.load_study(study_name="fmnist-mlp", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.number for t in study.trials] == [0, 1]  # total is 2, not 1 + 2


@pytest.mark.integration
def test_patience_stops_the_study_at_the_first_trial_without_a_new_best(
    fake_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert main(_args(fake_data_dir, out, "--n-trials", "30", "--patience", "1")) == 0
    study = optuna.load_study(study_name="fmnist-mlp", storage=f"sqlite:///{out / 'study.db'}")
    done = sorted(study.trials, key=lambda t: t.datetime_complete)
    values = [t.value if t.value is not None else -1.0 for t in done]
    new_best = [v > max(values[:i], default=-1.0) for i, v in enumerate(values)]
    assert new_best == [True] * (len(values) - 1) + [False]  # went on while each one was better
    assert len(values) < 30


@pytest.mark.integration
def test_progress_epoch_shows_lightnings_per_epoch_bars(
    fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _args(fake_data_dir, tmp_path / "out", "--n-trials", "1", "--no-test")
    assert main([*args, "--progress", "epoch"]) == 0
    shown = capsys.readouterr()
    # TQDM's bars ("Epoch 1: 100%"), or Rich's where rich is installed ("Epoch 1/1"): to the last.
    assert re.search(r"Epoch 1[:/]", shown.out + shown.err), shown


@pytest.mark.integration
def test_pruner_hyperband_runs_a_study(fake_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = _args(fake_data_dir, out, "--n-trials", "3", "--max-epochs", "4", "--no-test")
    assert main([*args, "--pruner", "hyperband"]) == 0
    study = optuna.load_study(study_name="fmnist-mlp", storage=f"sqlite:///{out / 'study.db'}")
    assert study.user_attrs["run_settings"]["pruner"] == "hyperband"
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)


@pytest.mark.integration
def test_sampler_nsga2_searches_a_front(fake_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = _args(fake_data_dir, out, "--n-trials", "3", "--objectives", "accuracy,params")
    assert main([*args, "--sampler", "nsga2", "--no-test", "--no-warm-start"]) == 0
    study = optuna.load_study(study_name="fmnist-mlp", storage=f"sqlite:///{out / 'study.db'}")
    drawn_by = optuna.samplers.NSGAIISampler._get_generation_key()  # what NSGA-II marks
    assert all(drawn_by in t.system_attrs for t in study.trials)
    best = json.loads((out / "best.json").read_text())
    assert best["pareto"] and {r["trial"] for r in best["pareto"]} <= {0, 1, 2}


@pytest.mark.parametrize(
    "flags",
    [
        ["--n-trials", "0"],
        ["--sampler", "bayes"],
        ["--max-epochs", "x"],
        ["--bogus"],
        ["--workers", "0"],
        ["--workers", "many"],
        ["--heartbeat-interval", "10", "--grace-period", "5"],
        ["--val-size", str(N_TRAIN)],  # leaves no training image
        ["--study-name", ""],
        ["--study-name=  "],
        ["--study-name", " padded"],
        ["--study-name", "x" * 513],
        ["--study-name", "tab\there"],
        ["--storage", ""],
        ["--storage", " "],
        ["--artifact-store", ""],
        ["--output-dir", ""],
        ["--data-dir", " "],
        ["--timeout", "inf"],
        ["--timeout", "nan"],
        ["--timeout", "1e12"],
        ["--max-epochs", "100000"],
        ["--final-epochs", "0"],
        ["--final-epochs", "100000"],
        ["--early-stopping", "0"],
        ["--n-trials", "10000000000"],
        ["--workers", "100000"],
        ["--heartbeat-interval", "86400"],
        ["--storage-timeout", "0"],
        ["--patience", "0"],
        ["--max-params", "-5"],
        ["--max-latency-ms", "inf"],
        ["--seed", "2147483648"],
    ],
)
def test_bad_flags_exit_2_with_one_line(
    flags: list[str], fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(fake_data_dir, tmp_path / "out", *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fmnist-tune: error:")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_an_output_dir_that_cannot_be_a_folder_exits_2_with_one_line(
    where: str, fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    out = taken if where == "file" else taken / "runs"
    assert main(_args(fake_data_dir, out, "--n-trials", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("fmnist-tune: error: --output-dir") and "file" in err[0]
    )
    assert taken.read_text() == "not a folder"


def test_workers_and_heartbeat_flags_reach_the_config() -> None:
    assert parse_config([]).workers == 1
    assert parse_config(["--workers", "auto"]).workers == AUTO_WORKERS
    config = parse_config(["--workers", "3", "--heartbeat-interval", "2", "--grace-period", "5"])
    assert (config.workers, config.heartbeat_interval, config.grace_period) == (3, 2, 5)


def test_missing_data_file_exits_2_naming_it(
    fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in fake_data_dir.iterdir():
        if not f.name.startswith("train-labels"):
            (partial / f.name).write_bytes(f.read_bytes())
    assert main(_args(partial, tmp_path / "out", "--n-trials", "1")) == 2
    err = capsys.readouterr().err
    assert "train-labels-idx1-ubyte.gz" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unreachable_storage_exits_2_without_password(
    fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql+psycopg://user:s3cret@127.0.0.1:1/nowhere"
    assert main(_args(fake_data_dir, tmp_path / "out", "--storage", url)) == 2
    err = capsys.readouterr().err
    assert "cannot open storage" in err and "s3cret" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["a/b", "..", "a\\b"])
def test_a_study_name_that_cannot_be_the_default_folder_exits_2_unless_one_is_given(
    name: str,
    fake_data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--data-dir", str(fake_data_dir), "--study-name", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot name a folder" in err[0] and not Path("runs").exists()
    given = parse_config(["--study-name", name, "--output-dir", str(tmp_path / "out")])
    assert given.study_name == name  # any name Optuna takes, with a folder of its own


def test_a_data_dir_that_is_a_file_exits_2_with_one_line(
    fake_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "data.gz"
    a_file.write_bytes(b"")
    assert main(_args(a_file, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0] and not (tmp_path / "out").exists()


@pytest.mark.integration
def test_script_reports_bad_input_without_traceback(fake_data_dir: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"  # the dataset's folder, its training labels missing
    partial.mkdir()
    for f in fake_data_dir.glob("*-images-*"):
        (partial / f.name).write_bytes(f.read_bytes())
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "tune.py"), "--data-dir", str(partial)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Fashion-MNIST" in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["report"],
        ["report", "--storage"],
        ["report", "--bogus", "1"],
        ["report", "--storage", "x"],
        ["report", "--storage", ""],
        ["report", "--storage", "x", "--study-name", " "],
        ["report", "--storage", "x", "--output-dir", ""],
    ],
)
def test_fmnist_tune_report_refuses_bad_input_in_one_line(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fmnist-tune report: error: ")
