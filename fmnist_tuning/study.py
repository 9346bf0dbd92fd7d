"""Create or resume the study, run it, and turn its best trial into ``best.json``.

Several processes, on this machine or others, may run :func:`optimize` on one study at once: the
study-wide ``n_trials`` is claimed trial by trial, heartbeats mark the trials of killed workers
FAIL and queue them again, and a signal ends the running trial as FAIL instead of leaving it
RUNNING.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from fmnist_tuning.config import RunConfig
from fmnist_tuning.faults import (
    Interrupted,
    NonFiniteLoss,
    defer_interrupts,
    raise_if_interrupted,
)
from fmnist_tuning.files import write_atomic
from fmnist_tuning.objective import (
    CHECKPOINT_DIR,
    FINAL_CHECKPOINT,
    Objective,
    evaluate_test,
    release_memory,
    retrain_full,
    spare_long_lived_objects,
    trial_name,
)
from fmnist_tuning.search_space import (
    DEFAULT_PARAMS,
    GRID,
    LR_RANGES,
    MAX_LAYERS,
    suggest_config,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the total may then overshoot by a few trials
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
DIRECTION = optuna.study.StudyDirection.MAXIMIZE
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
JOURNAL_PREFIX = "journal:"  # journal:PATH, an Optuna JournalFileBackend log on a shared disk
SEARCH_SPACE_ATTR = "search_space"  # study user attribute: fingerprint of the search space
SPLIT_ATTR = "validation_split"  # study user attribute: the --seed and --val-size it was tuned on
WORKER_ATTR = "worker"  # trial user attribute: host:pid of the process that ran it
WORKER_SLOTS_ATTR = "worker_slots"  # study user attribute: worker processes started so far
MAX_RETRY = 3  # times the trial of a killed worker is queued again
CLAIM_LOCK = ".claim.lock"  # in the output dir: serialises "count, then ask" between processes

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class StudyError(ValueError):
    """The storage or the stored study cannot be used as asked; the message says how to fix it."""


def redact(url: str) -> str:
    """The storage URL with any password masked, safe for logs and reports."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (e.g. a journal file path): nothing to hide
        return url


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (Bayesian), random, or the small documented grid, all seeded."""
    if name == "tpe":
        # multivariate TPE models the joint distribution (e.g. optimizer x learning rate); group
        # splits the conditional space (n_units_l2 exists only with 3 layers); constant_liar keeps
        # parallel workers from sampling the same point.
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=8, multivariate=True, group=True, constant_liar=True
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(GRID, seed=seed)
    raise StudyError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """Median pruning after a warm-up, or none.

    Without the warm-up the median of epoch-0 accuracies prunes nearly every trial at its first
    epoch, before slow starters (small learning rates, SGD) show what they can do.
    """
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise StudyError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


def journal_path(url: str) -> Path | None:
    """The log file of a ``journal:PATH`` (or ``journal://PATH``) storage; None for SQL URLs."""
    if not url.startswith(JOURNAL_PREFIX):
        return None
    rest = url[len(JOURNAL_PREFIX) :]
    return Path(rest[2:] if rest.startswith("//") else rest)


def open_storage(
    url: str, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> optuna.storages.BaseStorage:
    """Opens an Optuna storage, turning every failure into one clear error.

    Args:
        url: An SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg://…``, …) or
            ``journal:PATH`` for a journal file on a filesystem all workers share.
        heartbeat_interval: Seconds between heartbeats of a running trial (SQL storages only);
            None disables heartbeats.
        grace_period: Seconds without a heartbeat after which a running trial is FAIL and queued
            again; None means three heartbeats.

    Raises:
        StudyError: The storage cannot be opened.
    """
    journal = journal_path(url)
    try:
        if journal is not None:
            if not journal.parent.is_dir():
                raise FileNotFoundError(f"no folder {journal.parent}")
            if journal.is_dir() or not journal.name:
                raise IsADirectoryError(f"{journal} is a folder; name a file, e.g. study.log")
            backend = JournalFileBackend(str(journal))
            return optuna.storages.JournalStorage(backend)
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 60}  # wait for other writers, do not fail
        heartbeat: dict[str, Any] = {}
        if heartbeat_interval is not None:
            heartbeat = {
                "heartbeat_interval": heartbeat_interval,
                "grace_period": grace_period or 3 * heartbeat_interval,
                "heartbeat_stale_trial_callback": (
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
                ),
            }
        for attempt in range(3):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, **heartbeat)
            except sqlalchemy.exc.DatabaseError as err:
                # Another process (a worker, another machine) created the tables just now.
                duplicate = isinstance(err, sqlalchemy.exc.IntegrityError)
                if attempt == 2 or not (duplicate or "already exists" in str(err)):
                    raise
                time.sleep(1.0)
        raise AssertionError("unreachable")
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StudyError(
            f"cannot open storage {redact(url)} ({reason[:200]}); check the URL (an SQLAlchemy "
            "URL such as postgresql+psycopg://user@host/db, or journal:PATH), that the server "
            "is running and reachable, and that its driver is installed"
        ) from None


def search_space() -> dict[str, BaseDistribution]:
    """Every distribution :func:`suggest_config` can ask for, over all of its branches."""
    distributions: dict[str, BaseDistribution] = {}
    values = {name: choices[0] for name, choices in GRID.items()}  # GRID names every parameter
    for optimizer in LR_RANGES:  # each optimizer's rate; the deepest net has every width
        trial = optuna.trial.FixedTrial({**values, "n_layers": MAX_LAYERS, "optimizer": optimizer})
        suggest_config(trial)
        distributions.update(trial.distributions)
    return distributions


def search_space_fingerprint() -> str:
    """A short hash of :func:`search_space`.

    Stored in a new study and compared on resume, so that a study is never continued with other
    ranges or choices than its trials were sampled from.
    """
    text = json.dumps(
        {k: distribution_to_json(d) for k, d in search_space().items()}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_split(study: optuna.Study, run: RunConfig) -> None:
    """Refuses to resume a study on another validation split: its values would not compare."""
    where = f"study {study.study_name!r} in {redact(run.storage_url)}"
    split = {"seed": run.seed, "val_size": run.val_size}
    stored = study.user_attrs.get(SPLIT_ATTR)
    if stored is None:  # a new study, or one from before this check: it is tuned on this one now
        study.set_user_attr(SPLIT_ATTR, split)
    elif stored != split:
        raise StudyError(
            f"{where} was tuned on the validation split of --seed {stored['seed']} --val-size "
            f"{stored['val_size']}; resume it with those flags or use another --study-name"
        )


def _check_compatible(study: optuna.Study, url: str) -> None:
    """Refuses a stored study that another direction or search space created."""
    where = f"study {study.study_name!r} in {redact(url)}"
    if study.directions != [DIRECTION]:
        stored = "/".join(d.name.lower() for d in study.directions)
        raise StudyError(
            f"{where} was created to {stored}, but this tool maximizes validation accuracy; "
            "use another --study-name or storage"
        )
    fingerprint = search_space_fingerprint()
    stored_fingerprint = study.user_attrs.get(SEARCH_SPACE_ATTR)
    if stored_fingerprint is None:  # created by an older version, or by hand: check its trials
        current = search_space()
        for t in study.get_trials(deepcopy=False):
            for name, distribution in t.distributions.items():
                if current.get(name) != distribution:
                    stored_fingerprint = f"trial {t.number}: {name}"
                    break
            if stored_fingerprint is not None:
                break
        else:
            study.set_user_attr(SEARCH_SPACE_ATTR, fingerprint)
            return
    if stored_fingerprint != fingerprint:
        raise StudyError(
            f"{where} was sampled from another search space ({stored_fingerprint}, now "
            f"{fingerprint}); its trials cannot guide this one: use another --study-name"
        )


def load_or_create(run: RunConfig, slot: int = 0) -> optuna.Study:
    """Creates the study, or resumes it when it already exists in the storage.

    Args:
        run: The study-wide settings.
        slot: This worker's number (see :func:`reserve_worker_slots`); seeds its sampler.

    Raises:
        StudyError: The storage cannot be opened, or holds a study of this name with another
            direction, search space or validation split (``--seed``, ``--val-size``).
    """
    if run.storage is None:
        run.output_dir.mkdir(parents=True, exist_ok=True)  # the default SQLite file lives there
    storage = open_storage(run.storage_url, run.heartbeat_interval, run.grace_period)
    study = optuna.create_study(
        storage=storage,
        study_name=run.study_name,
        direction=DIRECTION,
        sampler=make_sampler(run.sampler, run.seed + slot),
        pruner=make_pruner(run.pruner),
        load_if_exists=True,
    )
    _check_compatible(study, run.storage_url)
    _check_split(study, run)
    if run.warm_start and run.sampler != "grid" and not study.trials:
        study.enqueue_trial(DEFAULT_PARAMS)  # a new study starts from the documented default
    return study


def reserve_worker_slots(study: optuna.Study, n: int) -> int:
    """Numbers ``n`` new workers of the study; returns the first number.

    Worker ``k`` seeds its sampler with ``seed + k``: the workers of one run, of a resumed run and
    of other machines draw different trials, yet a run is reproducible from its seed. (Two
    machines starting at the same instant may share numbers: their first random trials repeat.)
    """
    first = int(study.user_attrs.get(WORKER_SLOTS_ATTR, 0))
    study.set_user_attr(WORKER_SLOTS_ATTR, first + n)
    return first


def worker_id() -> str:
    """``host:pid`` of this process, recorded on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def reached_total(study: optuna.Study, run: RunConfig) -> bool:
    """Whether the study holds its ``n_trials`` finished trials."""
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    return run.n_trials is not None and finished >= run.n_trials


def summarize(study: optuna.Study) -> str:
    """One line on the study so far: trials per state and the best value."""
    counts = Counter(t.state for t in study.get_trials(deepcopy=False))
    finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    states = ", ".join(f"{counts[s]} {s.name.lower()}" for s in TrialState if counts[s])
    try:
        best = f"best val_acc={study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = "no complete trial yet"
    return f"study {study.study_name!r}: {finished} finished trials ({states or 'none'}); {best}"


def _describe(trial: FrozenTrial) -> str:
    params = " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    return (
        f"trial {trial.number} {trial.state.name} val_acc={value} "
        f"epochs={trial.user_attrs.get('epochs', 0)} {seconds:.1f}s {params}"
    )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(max(round(seconds), 0), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def log_trial(
    study: optuna.Study,
    trial: FrozenTrial,
    *,
    n_trials: int | None = None,
    deadline: float | None = None,
) -> None:
    """One line per finished trial: study progress, the trial, the best so far, pruned, time left.

    A plain log line (no carriage returns), so a terminal, a log file and CI all get one line per
    trial, e.g. ``[7/50] trial 6 PRUNED val_acc=- … | best=0.8912 (trial 3) | pruned 2 | ~4m10s
    left``.

    Args:
        study: The study (all workers' trials count).
        trial: The trial that just finished.
        n_trials: The study's total of finished trials (``--n-trials``), for "i/N" and the estimate.
        deadline: ``time.monotonic()`` after which no new trial starts (``--timeout``).
    """
    counts = Counter(t.state for t in study.get_trials(deepcopy=False))
    finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    progress = f"[{finished}/{n_trials}]" if n_trials else f"[{finished}]"
    try:
        best = f"best={study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = "best=-"
    tally = f"pruned {counts[TrialState.PRUNED]}"
    if counts[TrialState.FAIL]:
        tally += f", failed {counts[TrialState.FAIL]}"
    left: list[float] = []
    if n_trials:
        durations = [
            t.duration.total_seconds()
            for t in study.get_trials(deepcopy=False, states=FINISHED)
            if t.duration
        ]
        if durations:  # the mean trial so far, shared among the trials running in parallel
            per_trial = sum(durations) / len(durations) / (1 + counts[TrialState.RUNNING])
            left.append(max(n_trials - finished, 0) * per_trial)
    if deadline is not None:
        left.append(deadline - time.monotonic())
    eta = f" | ~{_clock(min(left))} left" if left else ""
    log.info("%s %s | %s | %s%s", progress, _describe(trial), best, tally, eta)


def trials_since_best(study: optuna.Study) -> int:
    """Finished trials, in the order they finished, since the last new best value."""
    finished = sorted(
        study.get_trials(deepcopy=False, states=FINISHED),
        key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number),
    )
    best, since = -math.inf, 0
    for t in finished:
        if t.state == TrialState.COMPLETE and t.value is not None and t.value > best:
            best, since = t.value, 0
        else:
            since += 1
    return since


class _ClaimLock:
    """An advisory file lock: one process at a time counts the study's trials and starts one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def __enter__(self) -> _ClaimLock:
        if fcntl is not None:
            self._file = open(self.path, "a")  # held until release(), not a with-block
            fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Lets the next process claim a trial (idempotent)."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class _Runner:
    """What Optuna calls per trial: frees the claim, marks the trial with this worker, trains."""

    def __init__(self, objective: Objective, claim: _ClaimLock) -> None:
        self.objective = objective
        self.claim = claim

    def __call__(self, trial: optuna.Trial) -> float:
        self.claim.release()  # the trial is RUNNING in the storage now: the others count it
        trial.set_user_attr(WORKER_ATTR, worker_id())
        return self.objective(trial)


def _fail_own_running_trials(study: optuna.Study) -> None:
    """After an interrupt: no trial of this process may stay RUNNING (best effort)."""
    me = worker_id()
    with contextlib.suppress(Exception):  # the storage may be unusable after a hard interrupt
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get(WORKER_ATTR) == me:
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)


def _fail_dead_local_trials(study: optuna.Study) -> None:
    """Fails and queues again the RUNNING trials of this machine's processes that are gone.

    For storages without heartbeats (journal files); other machines' dead trials stay RUNNING.
    """
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(trial.user_attrs.get(WORKER_ATTR, ""))
        name, _, pid = owner.rpartition(":")
        if name != host or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or, rarely, its number was reused: then it waits)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        log.warning("trial %d: its worker %s is gone; FAIL, queued again", trial.number, owner)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        retry(study, study.get_trials(deepcopy=False)[trial.number])


def _wait(seconds: float) -> None:
    """Sleeps, but wakes up for a signal."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        raise_if_interrupted()
        time.sleep(min(0.2, seconds))


def optimize(study: optuna.Study, run: RunConfig, parent_pid: int | None = None) -> None:
    """Runs trials until the study holds ``n_trials`` finished ones, the timeout, or patience.

    Every worker process, here or on other machines, may run this on the same study. Before each
    trial it counts the finished and running trials of the whole study (the processes of one
    output dir take turns under a file lock), so ``n_trials`` is the study's exact total: Optuna's
    ``MaxTrialsCallback`` alone would let every other worker finish one trial more. A trial
    whose loss turns NaN fails and is replaced; a killed worker's trial turns FAIL after the grace
    period and is queued again; while others still run trials this worker waits, in case one
    fails and needs a replacement.

    Args:
        study: The study, with this worker's sampler.
        run: The study-wide settings.
        parent_pid: For a worker process: stop when the parent that started it is gone.

    Raises:
        Interrupted: SIGINT or SIGTERM arrived (under :func:`fmnist_tuning.faults.catch_signals`);
            the running trial is FAIL in the storage by then.
    """
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    if done and parent_pid is None:
        log.info("resuming study %r: %d finished trials already", run.study_name, done)
    deadline = None if run.timeout is None else time.monotonic() + run.timeout
    callbacks = [
        lambda s, t: log_trial(s, t, n_trials=run.n_trials, deadline=deadline),
        lambda s, _: prune_checkpoints(s, run.output_dir / CHECKPOINT_DIR),
        release_memory,
    ]
    claim = _ClaimLock(run.output_dir / CLAIM_LOCK)
    runner = _Runner(Objective(run), claim)
    heartbeats = journal_path(run.storage_url) is None
    total = math.inf if run.n_trials is None else run.n_trials
    with defer_interrupts(), spare_long_lived_objects():
        try:
            while True:
                raise_if_interrupted()
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if run.patience and (since := trials_since_best(study)) >= run.patience:
                    log.info(
                        "no new best value in %d finished trials: stopping (--patience)", since
                    )
                    break
                sampler = study.sampler
                if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study):
                    log.info("every point of the grid has been tried: stopping")
                    break
                if parent_pid is not None and os.getppid() != parent_pid:
                    log.warning("the process that started this worker is gone: stopping")
                    break
                with claim:
                    if heartbeats:
                        optuna.storages.fail_stale_trials(study)  # killed workers' trials
                    else:
                        _fail_dead_local_trials(study)
                    states = Counter(t.state for t in study.get_trials(deepcopy=False))
                    finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
                    running = states[TrialState.RUNNING]
                    if finished + running < total:
                        try:
                            study.optimize(
                                runner,
                                n_trials=1,
                                catch=(NonFiniteLoss,),
                                callbacks=callbacks,
                                gc_after_trial=True,
                            )
                        except optuna.exceptions.UpdateFinishedTrialError:
                            log.warning("a trial here missed its heartbeats and was failed")
                        continue
                if finished >= total or not running or not heartbeats:
                    break
                _wait(1.0)  # the others' last trials may still fail and need a replacement
        except Interrupted:
            _fail_own_running_trials(study)
            raise


def finalize(study: optuna.Study, run: RunConfig) -> dict[str, Any] | None:
    """Evaluates the best trial once on the test set and writes ``best.json``.

    Returns:
        The ``best.json`` content, or ``None`` when the study has no complete trial yet.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = study.best_trial
    config = suggest_config(optuna.trial.FixedTrial(best.params))
    checkpoint = Path(best.user_attrs.get("checkpoint", ""))
    cached = study.user_attrs.get("test_acc", {})
    final = run.output_dir / CHECKPOINT_DIR / FINAL_CHECKPOINT.format(name=trial_name(best.number))
    epochs = int(best.user_attrs.get("epochs") or run.max_epochs)
    if cached.get("trial") == best.number and cached.get("retrained") == run.retrain:
        test_acc = float(cached["test_acc"])  # this trial was already evaluated: never twice
        model = Path(cached.get("model", checkpoint))
    else:
        if not checkpoint.is_file():
            host = str(best.user_attrs.get(WORKER_ATTR, "")).rpartition(":")[0]
            where = f" (host {host})" if host and host != socket.gethostname() else ""
            raise StudyError(
                f"the best trial's checkpoint {checkpoint} is missing; run the same command on the "
                f"machine{where} and output dir that trained it, or give all machines one shared "
                "--output-dir"
            )
        if run.retrain:
            log.info("retraining trial %d's configuration on all 60k images", best.number)
        model = retrain_full(config, run, epochs, final) if run.retrain else checkpoint
        test_acc = evaluate_test(model, config, run)
        study.set_user_attr(
            "test_acc",
            {
                "trial": best.number,
                "test_acc": test_acc,
                "retrained": run.retrain,
                "model": str(model.resolve()),
            },
        )
    prune_checkpoints(study, run.output_dir / CHECKPOINT_DIR, keep=best.number)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    result = {
        "study_name": study.study_name,
        "storage": redact(run.storage_url),
        "trial": best.number,
        "params": best.params,
        "config": config.flat(),
        "val_acc": best.value,
        "test_acc": test_acc,
        "epochs": best.user_attrs.get("epochs"),
        "checkpoint": str(model.resolve()),  # the model test_acc was measured on
        "trial_checkpoint": str(checkpoint),  # the trial's own weights at its best epoch
        "retrained_on_full_train": run.retrain,
        "trials": {s.name.lower(): states.count(s) for s in TrialState if states.count(s)},
    }
    path = run.output_dir / "best.json"
    write_atomic(path, json.dumps(result, indent=2) + "\n")
    return result


def prune_checkpoints(study: optuna.Study, folder: Path, keep: int | None = None) -> None:
    """Deletes the checkpoints of finished trials other than the best; running ones may still win.

    Args:
        study: The study.
        folder: Where the checkpoints are.
        keep: The trial whose checkpoint alone stays (once no worker runs). By default, one
            snapshot of the trials decides, so that a best trial another worker just finished is
            never taken for a beaten one, and trials tied for the best value all keep theirs.
    """
    trials = study.get_trials(deepcopy=False)
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(values, default=math.inf)
    for trial in trials:
        if trial.state.is_finished() and (
            trial.number != keep if keep is not None else trial.value != best
        ):
            (folder / f"{trial_name(trial.number)}.ckpt").unlink(missing_ok=True)
