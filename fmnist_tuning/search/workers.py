"""Worker processes: ``--workers N`` runs N trial loops on this machine against one study.

The parent creates (or resumes) the study, numbers the workers, starts each as a new process
(``python -m fmnist_tuning.search.workers``, its :class:`Job` arriving as JSON on stdin so that no storage
password shows in ``ps``), forwards SIGINT/SIGTERM to them, and waits. Each worker runs
:func:`fmnist_tuning.search.loop.optimize` with its own sampler seed and ``cores // N`` torch threads;
that function keeps the study-wide trial count exact. Workers run in their own sessions, so a
Ctrl-C in the terminal reaches the parent only, and reaches each worker exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import optuna

from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import SettingsError, StudyError
from fmnist_tuning.faults import (
    Interrupted,
    catch_signals,
    defer_interrupts,
    exit_on_signals,
    raise_if_interrupted,
    received_signal,
)

log = logging.getLogger(__name__)

WORKER_COMMAND = [sys.executable, "-m", "fmnist_tuning.search.workers"]


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Job:
    """What a worker process receives on stdin."""

    config: RunConfig
    slot: int  # this worker's number in the study: its sampler seed is config.seed + slot
    workers: int  # worker processes started together on this machine
    parent: int  # pid of the parent; the worker stops once it is gone

    def to_json(self) -> str:
        """For the worker's stdin (paths as strings)."""
        config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()}
        return json.dumps({**asdict(self), "config": config})

    @classmethod
    def from_json(cls, text: str) -> Job:
        """Inverse of :meth:`to_json`."""
        raw = json.loads(text)
        paths = {f.name for f in fields(RunConfig) if f.type in ("Path", Path)}
        values: dict[str, Any] = {
            k: Path(v) if k in paths and v is not None else v for k, v in raw.pop("config").items()
        }
        return cls(config=RunConfig(**values), **raw)


def work(job: Job) -> int:
    """The body of a worker process; returns its exit code.

    0 when the study is done, 128 + the signal number when interrupted, 2 when the storage or the
    artifact store cannot be used.
    """
    # After runtime.setup_process (main): both import Lightning.
    from fmnist_tuning.search.loop import optimize
    from fmnist_tuning.search.study import load_or_create

    with catch_signals():
        try:
            study = load_or_create(job.config, slot=job.slot)
            optimize(study, job.config, parent_pid=job.parent)
        except Interrupted as err:
            log.info("%s", err.reason)
            return err.exit_code
        except (StudyError, SettingsError) as err:  # the storage, or the artifact store
            log.error("%s", err)
            return 2
    return 0


class Workers:
    """The worker processes of this run, and the forwarding of signals to them.

    Args:
        command: Runs one worker: reads a :class:`Job` as JSON on stdin, exits with its code.
    """

    def __init__(self, command: list[str] | None = None) -> None:
        self.command = command or WORKER_COMMAND
        self.procs: list[subprocess.Popen[bytes]] = []
        self._signalled: set[int] = set()  # pids that got the first forwarded signal

    def forward(self, signum: int) -> None:
        """Passes a signal on to every worker still running (safe inside a signal handler)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)
                self._signalled.add(proc.pid)

    def start(self, job: Job) -> subprocess.Popen[bytes]:
        """Starts one worker process for ``job`` (in its own session: no terminal signals)."""
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, env=env, start_new_session=True
        )
        self.procs.append(proc)
        assert proc.stdin is not None
        proc.stdin.write(job.to_json().encode())
        proc.stdin.close()
        return proc

    def run(self, study: optuna.Study, config: RunConfig, first: int) -> list[int]:
        """Runs the study's trials in ``config.workers`` new processes, numbered from ``first``.

        Call inside :func:`fmnist_tuning.faults.catch_signals` with ``on_signal=self.forward``.

        Returns:
            The exit code of each worker process (``-9``: killed by SIGKILL).

        Raises:
            Interrupted: This process received SIGINT or SIGTERM (after the workers ended).
        """
        log.info("starting %d worker processes (sampler seeds %d…)", config.workers, first)
        with defer_interrupts():  # a signal is forwarded; the workers fail their trials, then end
            for slot in range(first, first + config.workers):
                if received_signal() is not None:
                    break  # interrupted while starting: start no more
                self.start(Job(config, slot, config.workers, os.getpid()))
            if (signum := received_signal()) is not None:  # arrived while a worker was starting
                for proc in self.procs:
                    if proc.pid not in self._signalled and proc.poll() is None:
                        proc.send_signal(signum)
            while any(proc.poll() is None for proc in self.procs):
                time.sleep(0.1)
        codes = [proc.returncode for proc in self.procs]
        for slot, code in enumerate(codes, start=first):
            if code != 0 and received_signal() is None:  # else they stopped as they were told
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                log.warning("worker %d ended abnormally (%s)", slot, how)
        raise_if_interrupted()
        return codes


def main() -> int:
    """Entry point of one worker process: ``python -m fmnist_tuning.search.workers``."""
    with exit_on_signals():  # until the study loop takes over (the imports take seconds)
        from fmnist_tuning import runtime
        from fmnist_tuning.search.progress import configure_logging

        runtime.setup_process()
        job = Job.from_json(sys.stdin.read())
        import torch

        torch.set_num_threads(max(1, cpu_cores() // job.workers))
        configure_logging(prefix=f"[worker {job.slot}] ")
        return work(job)


if __name__ == "__main__":
    from fmnist_tuning.faults import exit_at_second_signal

    exit_at_second_signal()
    code = main()
    from fmnist_tuning.runtime import exit_without_teardown

    exit_without_teardown(code)
