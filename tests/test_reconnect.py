"""The storage wrapper's own judgement of stale trials: times from this host's clock only."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from fmnist_tuning.cluster import reconnect
from fmnist_tuning.cluster.reconnect import Outage, ReconnectingStorage
from fmnist_tuning.keys import FAIL_REASON, WORKER
from tests.conftest import FakeClock

GRACE = 3


def _running(storage: ReconnectingStorage, study_id: int, **user_attrs: str) -> int:
    """A RUNNING trial whose start another host wrote ten hours ago by its clock (another time
    zone); returns its id."""
    trial = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=user_attrs)
    trial.datetime_start = dt.datetime.now() - dt.timedelta(hours=10)
    return storage.create_new_trial(study_id, template_trial=trial)


def test_a_trial_nobody_took_up_fails_a_grace_period_after_this_host_first_saw_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(1_000.0)
    monkeypatch.setattr(reconnect, "time", clock)
    inner = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=1, grace_period=GRACE
    )
    storage = ReconnectingStorage(inner, Outage("study.db", give_up_after=60))
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    orphan = _running(storage, study_id)
    _running(storage, study_id, **{WORKER: "elsewhere:1"})  # taken up: its heartbeats judge it

    assert storage._get_stale_trial_ids(study_id) == []  # just seen, whatever its start says
    clock.now += GRACE + 59
    assert storage._get_stale_trial_ids(study_id) == []
    clock.now += 2
    assert storage._get_stale_trial_ids(study_id) == [orphan]
    assert "no worker took it up" in storage.get_trial(orphan).user_attrs[FAIL_REASON]
