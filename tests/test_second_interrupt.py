"""A second Ctrl-C stops ``scripts/tune.py`` at once, when the first one's orderly stop hangs.

The first SIGINT ends the running trial as FAIL (or the final retrain) and records it; here the
database stops answering (a loopback proxy holds every byte), so that record never comes back. The
second SIGINT must end the process then, during a trial and during the final retrain: Lightning
ignores SIGINT after the first one unless the project puts its handler back. Real signals.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.conftest import write_fake_fmnist
from tests.processes import Tune, pg_study, started, tune_args, wait_for
from tests.proxy import Proxy
from tests.test_storage_faults import PG_SERVER, _trials

pytestmark = pytest.mark.integration


def _interrupt_twice(tune: Tune, proxy: Proxy) -> float:
    """Hangs the database, sends SIGINT, checks the process waits, sends SIGINT again.

    Returns:
        Seconds from the second SIGINT to the end of the process.
    """
    proxy.stall()
    time.sleep(0.5)  # the next storage call is on its way: it will not come back
    tune.proc.send_signal(signal.SIGINT)
    time.sleep(3.0)
    assert tune.proc.poll() is None, "the first SIGINT should wait for the database"
    tune.proc.send_signal(signal.SIGINT)
    second = time.monotonic()
    assert tune.wait(timeout=30) == 128 + signal.SIGINT, tune.stderr
    return time.monotonic() - second


def test_second_sigint_stops_a_trial_at_once(fake_data_dir: Path, tmp_path: Path) -> None:
    with pg_study() as (url, name), Proxy(PG_SERVER) as proxy:
        args = tune_args(fake_data_dir, tmp_path / "out", "--n-trials", "3", "--pruner", "none")
        args += ["--max-epochs", "300", "--early-stopping", "300"]
        args += ["--storage", proxy.url(url), "--study-name", name]
        with Tune(args, tmp_path / "trial.log") as tune:
            wait_for(lambda: started(url, name, min_epochs=1), 240, "a trial in training")
            seconds = _interrupt_twice(tune, proxy)
        proxy.flow()
        states = [t.state for t in _trials(url, name)]
    assert seconds < 5, seconds
    assert "SIGINT again: stopping at once" in tune.stderr and "Traceback" not in tune.stderr
    # The trial could not be recorded: it stays RUNNING until its heartbeat lapses (a resume
    # then fails it and queues it again).
    assert states == [TrialState.RUNNING], states


def test_second_sigint_stops_the_final_retrain_at_once(tmp_path: Path) -> None:
    data = write_fake_fmnist(tmp_path / "data", n_train=10_000)  # a retrain of some seconds
    with pg_study() as (url, name), Proxy(PG_SERVER) as proxy:
        args = tune_args(data, tmp_path / "out", "--n-trials", "1", "--max-epochs", "4")
        args += ["--storage", proxy.url(url), "--study-name", name]
        with Tune(args, tmp_path / "retrain.log") as tune:
            wait_for(lambda: "retraining trial 0" in tune.stderr, 240, "the final retrain")
            seconds = _interrupt_twice(tune, proxy)
        proxy.flow()
        states = [t.state for t in _trials(url, name)]
    assert seconds < 5, seconds
    assert "SIGINT again: stopping at once" in tune.stderr and "Traceback" not in tune.stderr
    assert states == [TrialState.COMPLETE]  # a rerun retrains it
