"""Chaos soak: worker processes on one PostgreSQL study, a random one SIGKILLed every few seconds.

    python benchmarks/chaos.py --storage postgresql+psycopg://postgres@127.0.0.1:5432/test \
        --data-dir ../shared/data/fashion-mnist --trials 100 --kill-every 5

Starts ``--workers`` worker processes, exactly as ``scripts/tune.py --workers N`` does (``python -m
fmnist_tuning.search.workers``), on a new study of ``--trials`` trials (``--max-epochs`` epochs each, 1 s
heartbeats, 3 s grace). Every ``--kill-every`` seconds (±50 %, seeded) it SIGKILLs a random
worker that is running a trial and starts a replacement with the next worker number, until the
study holds its total; then it waits for the workers to end and checks:

- finished trials (COMPLETE + PRUNED) == the total, exactly; none RUNNING;
- every trial that was running in a killed worker is FAIL with a ``fail_reason``, and exactly one
  trial retries it, with the same parameters (those it had drawn when it was killed), unless it
  was itself the third retry in a row (``cluster.storage.MAX_RETRY``);
- every finished trial has its TensorBoard run, and the best trial its checkpoint and its copy in
  the artifact store (beaten trials' checkpoints are deleted by design).

Prints the figures (trials, kills, retries, wall time) and the checks as JSON, also written to
``<output-dir>/chaos.json``; exits 1 when a check fails. The study is deleted at the end unless
``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from fmnist_tuning.cluster.storage import MAX_RETRY
from fmnist_tuning.config import RunConfig
from fmnist_tuning.files import write_atomic
from fmnist_tuning.keys import (
    CHECKPOINT,
    CHECKPOINT_ARTIFACT,
    FAIL_REASON,
    TENSORBOARD_DIR,
    WORKER,
    trial_name,
)
from fmnist_tuning.search.states import FINISHED
from fmnist_tuning.search.study import load_or_create, reserve_worker_slots
from fmnist_tuning.search.workers import Job, Workers

RETRY_HISTORY = optuna.storages.RetryFailedTrialCallback.retry_history


def retry_of(trial: optuna.trial.FrozenTrial) -> int | None:
    """The trial this one retries (its direct predecessor in a chain of retries), if any."""
    history = RETRY_HISTORY(trial)
    return history[-1] if history else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", required=True, help="SQLAlchemy URL of a PostgreSQL database")
    p.add_argument("--data-dir", type=Path, help="default $FMNIST_DATA_DIR, else ./data")
    p.add_argument("--output-dir", type=Path, default=Path("runs/chaos"))
    p.add_argument("--trials", type=int, default=40, help="the study's total (default 40)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--kill-every", type=float, default=4.0, help="seconds between kills (mean)")
    p.add_argument("--max-epochs", type=int, default=1)
    p.add_argument("--val-size", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=0, help="seeds the sampler and the kills")
    p.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the study in the database")
    return p.parse_args(argv)


def running_trial(study: optuna.Study, pid: int) -> optuna.trial.FrozenTrial | None:
    """The trial that worker ``pid`` is running now, if any."""
    me = f"{socket.gethostname()}:{pid}"
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(WORKER) == me:
            return trial
    return None


def soak(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the study under kills; returns the figures (see the module docstring)."""
    run = RunConfig(
        study_name=f"chaos-{uuid.uuid4().hex[:8]}",
        output_dir=args.output_dir,
        storage=args.storage,
        **({"data_dir": args.data_dir} if args.data_dir else {}),
        n_trials=args.trials,
        max_epochs=args.max_epochs,
        val_size=args.val_size,
        seed=args.seed,
        accelerator="cpu",
        warm_start=False,
        workers=args.workers,
        heartbeat_interval=1,
        grace_period=3,
    )
    run.output_dir.mkdir(parents=True, exist_ok=True)
    study = load_or_create(run)
    workers = Workers()
    procs: list[subprocess.Popen[bytes]] = []

    def start(n: int) -> None:
        first = reserve_worker_slots(study, run, n)
        for slot in range(first, first + n):
            procs.append(workers.start(Job(run, slot, args.workers, os.getpid())))

    rng = random.Random(args.seed)
    killed: list[int] = []  # trial numbers running in a killed worker
    begin = time.monotonic()
    start(args.workers)
    try:
        next_kill = begin + rng.uniform(0.5, 1.5) * args.kill_every
        while any(p.poll() is None for p in procs):
            if time.monotonic() - begin > args.timeout:
                raise TimeoutError(f"not done after {args.timeout:.0f} s")
            done = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
            if time.monotonic() >= next_kill and done < run.n_trials:
                # A worker in a trial (a starting one has nothing to lose yet); none: try again.
                busy = [p for p in procs if p.poll() is None and running_trial(study, p.pid)]
                if busy:
                    proc = rng.choice(busy)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    if (trial := running_trial(study, proc.pid)) is not None:  # now, not before
                        killed.append(trial.number)
                    start(1)
                    next_kill = time.monotonic() + rng.uniform(0.5, 1.5) * args.kill_every
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = time.monotonic() - begin
    figures = {
        "study": run.study_name,
        "total": run.n_trials,
        "workers": args.workers,
        "kills": len(killed),
        "wall_s": round(wall, 1),
        **check(study, run, killed),
    }
    if not args.keep:
        optuna.delete_study(study_name=run.study_name, storage=args.storage)
    return figures


def check(study: optuna.Study, run: RunConfig, killed: list[int]) -> dict[str, Any]:
    """The soak's checks on the finished study; ``ok`` is whether they all hold."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    finished = [t for t in trials if t.state in FINISHED]
    retries = {n: [t for t in trials if retry_of(t) == n] for n in killed}
    problems = []
    if len(finished) != run.n_trials:
        problems.append(f"{len(finished)} finished trials, not {run.n_trials}")
    if TrialState.RUNNING in states:
        problems.append(f"{states.count(TrialState.RUNNING)} trials still RUNNING")
    for n in killed:
        trial = trials[n]
        if trial.state != TrialState.FAIL or not trial.user_attrs.get(FAIL_REASON):
            problems.append(f"killed trial {n} is {trial.state.name} without a fail_reason")
        # A trial killed while it was still drawing its parameters is retried with those it had;
        # one that was itself the MAX_RETRY-th retry is not retried again.
        expected = 0 if len(RETRY_HISTORY(trial)) >= MAX_RETRY else 1
        same = [r for r in retries[n] if {k: r.params.get(k) for k in trial.params} == trial.params]
        if len(retries[n]) != expected or len(same) != expected:
            problems.append(
                f"killed trial {n} ({trial.params}) has {len(retries[n])} retries, "
                f"{len(same)} with its parameters"
            )
    for t in finished:
        if not (run.output_dir / TENSORBOARD_DIR / trial_name(t.number)).is_dir():
            problems.append(f"trial {t.number} has no TensorBoard run")
    best = study.best_trial
    store = Path(run.output_dir / "artifacts")
    if not Path(best.user_attrs.get(CHECKPOINT, "")).is_file():
        problems.append(f"the best trial {best.number} has no checkpoint")
    if not (store / best.user_attrs.get(CHECKPOINT_ARTIFACT, "-")).is_file():
        problems.append(f"the best trial {best.number} has no copy in the artifact store")
    return {
        "finished": len(finished),
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
        "retries": sum(retry_of(t) is not None for t in trials),
        "retry_limit_reached": sum(len(RETRY_HISTORY(trials[n])) >= MAX_RETRY for n in killed),
        "killed_trials": killed,
        "problems": problems,
        "ok": not problems,
    }


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    args = parse_args(argv)
    figures = soak(args)
    text = json.dumps(figures, indent=2)
    write_atomic(args.output_dir / "chaos.json", text + "\n")
    print(text)
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
