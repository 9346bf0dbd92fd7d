"""Settings → a checked :class:`RunConfig`, with the same one-line errors for the CLI and the API.

``fmnist-tune`` parses its flags, ``fmnist_tuning.tune`` takes keywords; both end here, so a bad
value is refused with the same words (naming the keyword and its flag) before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

from fmnist_tuning.config import RunConfig, default_data_dir
from fmnist_tuning.errors import SettingsError

CHOICES = {
    "sampler": ("tpe", "random", "grid", "nsga2"),
    "objectives": ("accuracy", "accuracy,params", "accuracy,latency"),
    "pruner": ("asha", "median", "hyperband", "none"),
    "accelerator": ("auto", "cpu", "gpu"),
}
# What workers="auto" (--workers auto) means: one worker process per core, one torch thread each.
# Measured on the 2-core reference CPU (16-point grid, 2-epoch trials): 2 workers 15.9 trials/min,
# 1 worker 11.9.
AUTO_WORKERS = max(1, os.cpu_count() or 1)
DAY = 86_400  # seconds
# Every count and interval is a positive integer no larger than its bound here: a value past it is
# a typo or a unit mix-up (milliseconds for seconds), never a plan, and would run for ages or
# start a process storm before anything said so.
POSITIVE_INTS = {
    "n_trials": 1_000_000,
    "max_epochs": 1_000,
    "final_epochs": 1_000,
    "max_params": 10**12,
    "patience": 1_000_000,
    "early_stopping": 1_000,
    "val_size": 10**9,  # and checked against the data, once it is read
    "workers": 4 * AUTO_WORKERS,  # more processes than that only compete for the cores
    "heartbeat_interval": 3_600,
    "grace_period": 7 * DAY,
    "storage_timeout": 7 * DAY,
}
OPTIONAL = ("n_trials", "max_params", "patience", "grace_period")  # None: no limit, or the default
MAX_TIMEOUT = 365 * DAY
ARTIFACT_SCHEMES = ("s3", "gs")  # the cloud artifact stores Optuna has (folders need none)
STUDY_NAME_LENGTH = 512  # Optuna's study-name column
TEXTS = ("study_name", "storage", "artifact_store")  # given as text: never empty or padded
# 784*16 + 16 + 16*10 + 10: one hidden layer of the smallest width (search.space's 16), no BN.
SMALLEST_NET_PARAMS = 12_730


def _name(field: str) -> str:
    """``n_trials (--n-trials)``: how a message names a setting, for both ways of giving it."""
    return f"{field} (--{field.replace('_', '-')})"


def make_config(**settings: Any) -> RunConfig:
    """A checked :class:`RunConfig` from keywords named like its fields (defaults for the rest).

    Also accepted: ``workers="auto"`` (one per core); ``output_dir`` defaults to
    ``runs/<study_name>``, ``data_dir`` to ``$FMNIST_DATA_DIR`` or ``./data``, ``started_at`` to
    now; paths may be strings.

    Raises:
        SettingsError: An unknown keyword or a value that cannot work (see :func:`check`).
    """
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise SettingsError(
            f"unknown setting {unknown[0]!r}; the settings are {', '.join(sorted(known))}"
        )
    if settings.get("workers") == "auto":
        settings["workers"] = AUTO_WORKERS
    for path in ("output_dir", "data_dir"):
        if settings.get(path) is not None:
            if isinstance(settings[path], str) and not settings[path].strip():
                raise SettingsError(f"{_name(path)}: expected a folder, got {settings[path]!r}")
            settings[path] = Path(settings[path])
    if settings.get("output_dir") is None:
        _check_folder_name(settings.get("study_name"))
        settings["output_dir"] = Path("runs") / settings.get("study_name", RunConfig.study_name)
    if settings.get("data_dir") is None:
        settings["data_dir"] = default_data_dir()
    if settings.get("started_at") is None:
        settings["started_at"] = time.time()  # --timeout counts from here
    config = RunConfig(**settings)
    check(config)
    return config


def check(config: RunConfig) -> None:
    """Refuses a configuration that cannot run here, with one line that says how to fix it.

    Raises:
        SettingsError: A count or interval that is not a positive integer, an unknown choice, a
            grace period not longer than the heartbeat, an output folder or artifact store that
            cannot be made, or a GPU asked for where there is none.
    """
    _check_texts(config)
    for field, most in POSITIVE_INTS.items():
        value = getattr(config, field)
        if value is None and field in OPTIONAL:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SettingsError(f"{_name(field)}: expected a positive integer, got {value!r}")
        if value > most:
            raise SettingsError(f"{_name(field)}: {value} is too large; at most {most} makes sense")
    for field in ("timeout", "search_timeout", "max_latency_ms"):
        value = getattr(config, field)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not value > 0
            or not math.isfinite(value)
        ):
            raise SettingsError(f"{_name(field)}: expected a positive number, got {value!r}")
    for field in ("timeout", "search_timeout"):
        value = getattr(config, field)
        if value is not None and value > MAX_TIMEOUT:
            raise SettingsError(
                f"{_name(field)}: {value:g} s is over a year; give it in seconds "
                f"(at most {MAX_TIMEOUT})"
            )
    if config.started_at is not None and not isinstance(config.started_at, int | float):
        raise SettingsError(f"started_at: expected time.time() seconds, got {config.started_at!r}")
    if config.max_params is not None and config.max_params < SMALLEST_NET_PARAMS:
        raise SettingsError(
            f"{_name('max_params')}: {config.max_params} is below the smallest network of the "
            f"search space ({SMALLEST_NET_PARAMS} parameters: one layer of 16 units); raise it"
        )
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise SettingsError(f"{_name('seed')}: expected an integer, got {config.seed!r}")
    if not 0 <= config.seed < 2**31:
        raise SettingsError(
            f"{_name('seed')}: expected an integer from 0 to 2**31-1, got {config.seed!r}"
        )
    for field, choices in CHOICES.items():
        value = getattr(config, field)
        if value not in choices:
            raise SettingsError(
                f"{_name(field)}: unknown choice {value!r}; choose one of {', '.join(choices)}"
            )
    for objectives, field in (
        ("accuracy,params", "max_latency_ms"),
        ("accuracy,latency", "max_params"),
    ):
        if config.objectives == objectives and getattr(config, field) is not None:
            raise SettingsError(
                f"{_name(field)} does not apply to --objectives {objectives}: the front's budget "
                f"is on its second objective; drop it or use --objectives accuracy"
            )
    for switch in ("progress", "warm_start", "retrain", "test"):
        if not isinstance(getattr(config, switch), bool):
            raise SettingsError(
                f"{switch}: expected True or False, got {getattr(config, switch)!r}"
            )
    if config.grace_period is not None and config.grace_period <= config.heartbeat_interval:
        raise SettingsError(
            f"--grace-period {config.grace_period} must exceed --heartbeat-interval "
            f"{config.heartbeat_interval}, or live trials would be failed"
        )
    _check_output_dir(config.output_dir)
    if config.data_dir.is_file():
        raise SettingsError(f"{_name('data_dir')}: {config.data_dir} is a file; name a folder")
    store = config.artifact_store
    if store is not None:
        scheme, sep, bucket = str(store).partition("://")
        if sep and (scheme not in ARTIFACT_SCHEMES or not bucket):
            raise SettingsError(
                f"--artifact-store {store}: expected a folder, s3://BUCKET or gs://BUCKET"
            )
        if not sep:
            _check_output_dir(Path(store), flag="--artifact-store")
    if config.accelerator == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise SettingsError(
                "--accelerator gpu: no CUDA device here; use --accelerator auto or cpu"
            )


def text_problem(value: Any) -> str | None:
    """What is wrong with ``value`` as a name or URL (empty, padded, unprintable); None if nothing.

    The one rule for every such flag, of ``fmnist-tune`` and of ``fmnist-tune report``.
    """
    if not isinstance(value, str) or not value.strip():
        return f"expected a non-empty text, got {value!r}"
    if value != value.strip() or not value.isprintable():
        return f"{value!r} has leading or trailing spaces or unprintable characters; remove them"
    return None


def _check_texts(config: RunConfig) -> None:
    """Refuses an empty, padded or unprintable name, storage URL or artifact store, and a study
    name longer than Optuna stores."""
    for field in TEXTS:
        value = getattr(config, field)
        if value is None and field != "study_name":
            continue
        if (problem := text_problem(value)) is not None:
            raise SettingsError(f"{_name(field)}: {problem}")
    if len(config.study_name) > STUDY_NAME_LENGTH:
        raise SettingsError(
            f"{_name('study_name')}: {len(config.study_name)} characters; Optuna stores at most "
            f"{STUDY_NAME_LENGTH}"
        )


def _check_folder_name(name: Any) -> None:
    """Refuses a study name that cannot be the default output folder's (``runs/<study-name>``)."""
    if isinstance(name, str) and (name in (".", "..") or "/" in name or "\\" in name):
        raise SettingsError(
            f"{_name('study_name')}: {name!r} cannot name a folder (runs/<study-name>); use "
            "letters, digits, '-', '_' or '.', or pass --output-dir"
        )


def _check_output_dir(path: Path, flag: str = "--output-dir") -> None:
    """Refuses an output folder that cannot be made: a file, or under one, or not writable."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == path else f"is under {existing}, a file"
        raise SettingsError(f"{flag} {path} {what}; name a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SettingsError(f"{flag} {path}: {existing} is not writable; name another folder")
