"""Model files in Optuna's artifact store, so that any machine can finalize a study without NFS.

Each complete trial uploads its best-epoch checkpoint (its artifact id is the trial's
``checkpoint_artifact`` attribute); beaten trials' copies are removed once each, as their local
files are (:mod:`fmnist_tuning.search.cleanup`); the final model is uploaded too. A machine that lacks a file on its own disk downloads it. The store is
``--artifact-store``: a folder (Optuna's ``FileSystemArtifactStore``; by default ``artifacts/`` in
the output dir), ``s3://BUCKET`` (``Boto3ArtifactStore``, needs boto3) or ``gs://BUCKET``
(``GCSArtifactStore``, needs google-cloud-storage).
"""

from __future__ import annotations

import io
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import (
    Boto3ArtifactStore,
    FileSystemArtifactStore,
    GCSArtifactStore,
    download_artifact,
    upload_artifact,
)
from optuna.artifacts.exceptions import ArtifactNotFound

from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import SettingsError, first_line

ARTIFACTS_DIR = "artifacts"  # the default store's folder in the output dir
BUCKETS = {"s3": (Boto3ArtifactStore, "boto3"), "gs": (GCSArtifactStore, "google-cloud-storage")}

log = logging.getLogger(__name__)


def store_location(run: RunConfig) -> str:
    """Where the run's artifact store is: ``--artifact-store``, else ``<output-dir>/artifacts``."""
    return run.artifact_store or str(run.output_dir / ARTIFACTS_DIR)


def open_store(run: RunConfig) -> Any:
    """The run's artifact store (see the module docstring).

    Raises:
        SettingsError: An unknown URL scheme, or the library of a cloud store is not installed.
    """
    location = store_location(run)
    scheme, sep, bucket = location.partition("://")
    if not sep:
        Path(location).mkdir(parents=True, exist_ok=True)
        return FileSystemArtifactStore(location)
    if scheme not in BUCKETS or not bucket:
        raise SettingsError(
            f"--artifact-store {location}: expected a folder, s3://BUCKET or gs://BUCKET"
        )
    kind, package = BUCKETS[scheme]
    try:
        return kind(bucket.strip("/"))
    except ImportError:
        raise SettingsError(
            f"--artifact-store {location} needs {package}: pip install {package}"
        ) from None


def check_writable(store: Any, run: RunConfig) -> None:
    """Writes and removes a small file: a wrong bucket or missing credentials show now, once per
    process that trains, not after its first trial (readers never write to the store).

    Raises:
        SettingsError: The store cannot be written.
    """
    probe = f"fmnist-tuning-probe-{uuid.uuid4().hex}"
    try:
        store.write(probe, io.BytesIO(b"ok"))
        store.remove(probe)
    except Exception as err:
        raise SettingsError(
            f"--artifact-store {store_location(run)} cannot be written ({first_line(err, 200)}); "
            "check the bucket name and the credentials"
        ) from None


def upload(store: Any, path: Path, owner: optuna.Trial | optuna.Study) -> str:
    """Copies ``path`` into the store, linked to a running trial or the study; returns its id."""
    return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=owner)


def remove(store: Any, artifact_id: str) -> bool:
    """Deletes a stored file; True once it is gone (deleted now, or missing already).

    A store that raises on a missing key (Google Cloud Storage's ``NotFound``; Optuna's folder
    store's ``ArtifactNotFound``) counts as done. Any other failure is logged in one line and
    returns False: clean-up never ends a worker, and the caller may try again later.
    """
    try:
        store.remove(artifact_id)
    except Exception as err:
        if _missing(err):
            return True
        log.warning(
            "could not delete %s from the artifact store (%s): trying again later",
            artifact_id,
            first_line(err, 200),
        )
        return False
    return True


def _missing(err: Exception) -> bool:
    """Whether a store's error says the file is not there (each cloud library has its own)."""
    if isinstance(err, (ArtifactNotFound, FileNotFoundError)):
        return True
    return type(err).__name__ in ("NotFound", "NoSuchKey") or getattr(err, "code", None) == 404


def fetch(store: Any, artifact_id: str, path: Path) -> Path:
    """Makes ``path`` a copy of a stored file (kept when it is there already); returns it.

    Raises:
        ArtifactNotFound: The store holds no such file.
    """
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        partial.unlink(missing_ok=True)
        try:
            download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(partial))
            partial.replace(path)  # whole or not at all
        finally:
            partial.unlink(missing_ok=True)
    return path
