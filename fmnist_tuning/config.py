"""The run configuration: every flag of ``scripts/tune.py``, with its default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def default_data_dir() -> Path:
    """``$FMNIST_DATA_DIR`` when set, else ``./data``."""
    return Path(os.environ.get("FMNIST_DATA_DIR") or "data")


@dataclass(frozen=True)
class RunConfig:
    """Everything fixed for a whole study (what varies per trial lives in ``TrialConfig``)."""

    study_name: str = "fmnist-mlp"  # name of the Optuna study inside the storage
    output_dir: Path = Path("runs/fmnist-mlp")  # best.json, tensorboard/, checkpoints/, study.db
    storage: str | None = None  # Optuna storage URL; None = sqlite:///<output_dir>/study.db
    # The four IDX .gz files (or torchvision's FashionMNIST/raw below): $FMNIST_DATA_DIR, else data
    data_dir: Path = field(default_factory=default_data_dir)
    n_trials: int | None = 500  # trials of the whole study (finished ones count on resume)
    # Seconds for the whole job: search, final model, test pass and report (search.deadline)
    timeout: float | None = None
    search_timeout: float | None = None  # seconds after which no new trial starts (Optuna's)
    max_epochs: int = 9  # epochs per trial at most (early stopping and pruning end many sooner)
    sampler: str = "tpe"  # tpe (Bayesian), random, or grid (search.space.GRID)
    pruner: str = "asha"  # asha (successive halving), median (with warm-up), hyperband or none
    patience: int | None = None  # stop after this many finished trials without a new best
    seed: int = 0  # seeds the sampler, the train/val split, shuffles and weight init
    accelerator: str = "auto"  # auto (GPU when present), cpu or gpu
    # The final model's longest schedule, validated on the 55k/5k split before the retrain on 60k
    # (fmnist_tuning.final.schedule), as far as --timeout, or without one the search's size,
    # allows (fmnist_tuning.search.deadline); --max-epochs or less: the trial's own schedule
    final_epochs: int = 150
    # A deployment budget (fmnist_tuning.search.budget): Optuna constraints; over-budget trials stop early
    max_params: int | None = None  # parameters at most
    max_latency_ms: float | None = None  # CPU milliseconds per image (batch 1) at most
    # accuracy (with pruning), or a Pareto front: accuracy,params or accuracy,latency (no pruning)
    objectives: str = "accuracy"
    early_stopping: int = 4  # in-trial patience, in epochs without a better val accuracy
    val_size: int = 5_000  # images of the official training set held out for validation
    progress: bool = False  # per-epoch progress bars (off: one log line per trial)
    warm_start: bool = True  # a new study's first trial is search.space.DEFAULT_PARAMS
    retrain: bool = True  # final model: the best configuration retrained on all 60k images
    test: bool = True  # make and score the final model; False: no final model, no test pass
    workers: int = 1  # worker processes on this machine sharing the study (1: run in this process)
    heartbeat_interval: int = 10  # seconds between a running trial's heartbeats (SQL storages)
    grace_period: int | None = None  # seconds without one before a trial is FAIL; None: 3 beats
    # Where model files go so that any machine can fetch them: a folder, s3://BUCKET or gs://BUCKET;
    # None = <output_dir>/artifacts
    artifact_store: str | None = None
    storage_timeout: int = 120  # seconds a database server may stay unreachable; then exit 2
    started_at: float | None = None  # time.time() at the job's start (--timeout counts from it)

    @property
    def budgeted(self) -> bool:
        """Whether a deployment budget holds."""
        return self.max_params is not None or self.max_latency_ms is not None

    @property
    def small_widths(self) -> bool:
        """Whether the search reaches small widths: under a budget, and in a front (whose cost
        axis would otherwise start at 100k parameters)."""
        return self.budgeted or self.objectives != "accuracy"

    @property
    def storage_url(self) -> str:
        """The storage URL actually used."""
        return self.storage or f"sqlite:///{self.output_dir / 'study.db'}"
