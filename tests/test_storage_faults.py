"""Dropped database connections: a loopback proxy in front of the real PostgreSQL server cuts every
connection while trials run, or refuses them past ``--storage-timeout``."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.processes import FINISHED, Tune, pg_study, started, tune_args, wait_for
from tests.proxy import Proxy

pytestmark = pytest.mark.integration

PG_SERVER = ("127.0.0.1", 5432)


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials; none before the run under test created it."""
    try:
        return optuna.load_study(study_name=name, storage=url).trials
    except KeyError:
        return []


def test_cut_connections_lose_no_trial(fake_data_dir: Path, tmp_path: Path) -> None:
    total = 8
    with pg_study() as (url, name), Proxy(PG_SERVER) as proxy:
        args = tune_args(
            fake_data_dir, tmp_path / "out", "--workers", "2", "--n-trials", str(total)
        )
        # Trials of 6 epochs (no early stop, no pruning): long enough for cuts to land in them
        # on a fast host too.
        args += ["--storage", proxy.url(url), "--study-name", name, "--pruner", "none"]
        args += ["--max-epochs", "6", "--early-stopping", "6"]
        args += ["--heartbeat-interval", "1", "--grace-period", "5", "--storage-timeout", "60"]
        with Tune(args, tmp_path / "cut.log") as tune:
            wait_for(lambda: started(url, name), 120, "a running trial")
            cuts_during_trials = 0
            while tune.proc.poll() is None:
                if started(url, name) and proxy.cut():
                    cuts_during_trials += 1
                time.sleep(0.5)
            code = tune.wait()
        log = tune.stderr
        trials = _trials(url, name)
    assert code == 0, log
    assert cuts_during_trials >= 3, f"only {cuts_during_trials} cuts landed during trials"
    states = [t.state for t in trials]
    assert sum(s in FINISHED for s in states) == total, states
    assert TrialState.RUNNING not in states, states
    assert len({t.number for t in trials}) == len(trials)
    # A trial failed by a cut is retried with its parameters: no configuration is lost.
    failed = [t for t in trials if t.state == TrialState.FAIL]
    for t in failed:
        retries = [
            r
            for r in trials
            if optuna.storages.RetryFailedTrialCallback.retried_trial_number(r) == t.number
        ]
        assert retries and retries[0].params == t.params, t.number
    assert "Traceback" not in log, log
    assert (tmp_path / "out" / "best.json").is_file()


def test_database_away_past_the_bound_ends_the_run_with_one_line(
    fake_data_dir: Path, tmp_path: Path
) -> None:
    with pg_study() as (url, name), Proxy(PG_SERVER) as proxy:
        args = tune_args(fake_data_dir, tmp_path / "out", "--n-trials", "200")
        args += ["--storage", proxy.url(url), "--study-name", name, "--max-epochs", "3"]
        args += ["--heartbeat-interval", "1", "--storage-timeout", "4"]
        with Tune(args, tmp_path / "down.log") as tune:
            wait_for(
                lambda: sum(t.state in FINISHED for t in _trials(url, name)) >= 2,
                120,
                "two finished trials",
            )
            proxy.down()
            went_down = time.monotonic()
            before = {t.number: t for t in _trials(url, name) if t.state in FINISHED}
            code = tune.wait(timeout=120)
            waited = time.monotonic() - went_down
        log = tune.stderr
        after = _trials(url, name)
    assert code == 2, log
    assert 4 <= waited < 60, waited
    errors = [line for line in log.splitlines() if "error:" in line]
    assert len(errors) == 1 and "unreachable" in errors[0], log
    assert f"127.0.0.1:{proxy.port}/" in errors[0] and "Traceback" not in log, log
    for number, trial in before.items():  # finished trials intact
        assert after[number].state == trial.state and after[number].value == trial.value
