"""Beaten trials' checkpoints go once each, from the disk and from the artifact store; the final
model needs none of them but its own trial's (and that one only without a retrain)."""

from __future__ import annotations

import dataclasses
import io
from collections import Counter
from pathlib import Path
from typing import BinaryIO, ClassVar

import optuna
import pytest
from optuna.artifacts.exceptions import ArtifactNotFound

import fmnist_tuning
from fmnist_tuning.cluster import artifacts
from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import SettingsError, StudyError
from fmnist_tuning.final import finalize
from fmnist_tuning.keys import CHECKPOINT_ARTIFACT
from fmnist_tuning.search.cleanup import Cleanup
from fmnist_tuning.search.loop import optimize
from fmnist_tuning.search.objective import checkpoint_path
from fmnist_tuning.search.study import load_or_create
from tests.conftest import VAL_SIZE


class NotFound(Exception):
    """What google-cloud-storage raises for a missing blob (``google.api_core.exceptions``)."""

    code = 404


class FakeBucketStore:
    """Behaves as Optuna's ``GCSArtifactStore`` over one bucket, in memory: deleting a key that
    is not there raises :class:`NotFound`. Every store opened on a bucket sees the same files."""

    buckets: ClassVar[dict[str, dict[str, bytes]]] = {}
    removes: ClassVar[Counter[str]] = Counter()
    reads: ClassVar[Counter[str]] = Counter()

    def __init__(self, bucket_name: str) -> None:
        self.files = self.buckets.setdefault(bucket_name, {})

    def open_reader(self, artifact_id: str) -> BinaryIO:
        self.reads[artifact_id] += 1
        if artifact_id not in self.files:
            raise ArtifactNotFound(artifact_id)
        return io.BytesIO(self.files[artifact_id])

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.files[artifact_id] = content_body.read()

    def remove(self, artifact_id: str) -> None:
        self.removes[artifact_id] += 1
        if artifact_id not in self.files:
            raise NotFound(f"404 DELETE {artifact_id}: No such object")
        del self.files[artifact_id]


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> type[FakeBucketStore]:
    """``gs://`` and ``s3://`` stores are fake buckets in memory, empty at the start."""
    FakeBucketStore.buckets.clear()
    FakeBucketStore.removes.clear()
    FakeBucketStore.reads.clear()
    fake = (FakeBucketStore, "google-cloud-storage")
    monkeypatch.setattr(artifacts, "BUCKETS", {"gs": fake, "s3": fake})
    return FakeBucketStore


@pytest.mark.integration
def test_a_20_trial_study_deletes_each_beaten_checkpoint_from_a_gcs_store_exactly_once(
    bucket: type[FakeBucketStore], fake_data_dir: Path, tmp_path: Path
) -> None:
    result = fmnist_tuning.tune(
        data_dir=fake_data_dir, output_dir=tmp_path / "out", n_trials=20, max_epochs=1,
        final_epochs=1, val_size=VAL_SIZE, accelerator="cpu", artifact_store="gs://models",
    )  # fmt: skip
    study = result.study
    stored = {t.number: t.user_attrs[CHECKPOINT_ARTIFACT] for t in study.trials}
    assert len(stored) == 20
    best = {t.number for t in study.trials if t.value == study.best_value}  # ties may still win
    beaten = {n: a for n, a in stored.items() if n not in best}
    assert beaten and all(bucket.removes[a] == 1 for a in beaten.values())  # each once, no more
    files = bucket.buckets["models"]
    assert {stored[n] for n in best} <= files.keys() and not beaten.keys() & files.keys()
    assert not any(bucket.reads.values())  # the retrain fetched nothing
    Cleanup(tmp_path / "out", artifacts.open_store(result.config)).prune(study)  # another process
    assert all(bucket.removes[a] == 1 for a in beaten.values())  # the study's record holds
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == sorted(
        [f"final_trial_{result.trial:04d}.ckpt", *(f"trial_{n:04d}.ckpt" for n in best)]
    )


def test_a_store_that_fails_is_asked_again_later_and_never_ends_the_worker(
    bucket: type[FakeBucketStore], run_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = dataclasses.replace(run_config, artifact_store="s3://models")
    study = optuna.create_study(direction="maximize")
    for number, value in enumerate((0.5, 0.9)):
        study.add_trial(
            optuna.trial.create_trial(
                value=value, user_attrs={CHECKPOINT_ARTIFACT: f"ckpt{number}"}
            )
        )
    store = artifacts.open_store(run)
    store.write("ckpt0", io.BytesIO(b"weights"))
    cleanup = Cleanup(run.output_dir, store)
    broken = store.remove
    monkeypatch.setattr(store, "remove", lambda key: (_ for _ in ()).throw(OSError("503")))
    cleanup.prune(study)  # logged, not raised
    assert "ckpt0" in bucket.buckets["models"]
    monkeypatch.setattr(store, "remove", broken)
    cleanup.prune(study)
    assert "ckpt0" not in bucket.buckets["models"] and bucket.removes["ckpt0"] == 1


def test_the_final_models_trial_keeps_its_checkpoint_and_so_does_a_better_one(
    bucket: type[FakeBucketStore], run_config: RunConfig
) -> None:
    run = dataclasses.replace(run_config, artifact_store="gs://models")
    store = artifacts.open_store(run)
    study = optuna.create_study(direction="maximize")
    for number, value in enumerate((0.5, 0.7, 0.9)):  # 2 finished while 1's model was made
        store.write(f"ckpt{number}", io.BytesIO(b"weights"))
        study.add_trial(
            optuna.trial.create_trial(
                value=value, user_attrs={CHECKPOINT_ARTIFACT: f"ckpt{number}"}
            )
        )
    Cleanup(run.output_dir, store).prune(study, keep=1)
    assert sorted(bucket.buckets["models"]) == ["ckpt1", "ckpt2"]


def test_an_s3_or_gs_store_names_its_bucket_and_its_missing_package(
    bucket: type[FakeBucketStore], run_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = artifacts.open_store(dataclasses.replace(run_config, artifact_store="s3://models/"))
    assert isinstance(store, FakeBucketStore) and store.files is bucket.buckets["models"]

    def missing(bucket_name: str) -> None:
        raise ImportError("No module named 'boto3'")

    monkeypatch.setattr(artifacts, "BUCKETS", {"s3": (missing, "boto3")})
    with pytest.raises(SettingsError, match="needs boto3: pip install boto3"):
        artifacts.open_store(dataclasses.replace(run_config, artifact_store="s3://models"))


def test_the_retrain_needs_no_trial_checkpoint_and_only_no_retrain_fetches_one(
    run_config: RunConfig,
) -> None:
    run = dataclasses.replace(run_config, n_trials=1)
    study = load_or_create(run)
    optimize(study, run)
    store = artifacts.open_store(run)
    store.remove(study.best_trial.user_attrs[CHECKPOINT_ARTIFACT])
    checkpoint_path(run.output_dir, 0).unlink()  # the trial's weights, gone from everywhere
    with pytest.raises(StudyError, match="checkpoint"):
        finalize.finalize(study, dataclasses.replace(run, retrain=False))
    result = finalize.finalize(study, run)
    assert result is not None and result["retrained_on_full_train"]
