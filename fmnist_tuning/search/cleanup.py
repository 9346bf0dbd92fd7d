"""Deletes the checkpoints of beaten trials, each once: its local file and its stored copy.

After every trial (and once more when the final model is made), the finished trials that can no
longer be chosen lose their checkpoints. Each stored copy is deleted once per study, across
machines: the deletion is recorded as a study attribute (``checkpoint_removed <trial>``), which
every machine reads before it asks the store. A store that raises on a key deleted meanwhile by
another machine counts as done (:func:`fmnist_tuning.cluster.artifacts.remove`), so two machines that
race to delete one file cost one extra request, never a crash.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from fmnist_tuning.cluster import artifacts
from fmnist_tuning.keys import CHECKPOINT_ARTIFACT, CHECKPOINT_REMOVED
from fmnist_tuning.search.objective import checkpoint_path


class Cleanup:
    """Deletes beaten trials' checkpoints for one process, remembering what it deleted.

    Args:
        output_dir: The run's output folder (the local checkpoints live below it).
        store: The artifact store, whose copies of those checkpoints go too (None: local only).
    """

    def __init__(self, output_dir: Path, store: Any = None) -> None:
        self.output_dir = output_dir
        self.store = store
        self._done: set[int] = set()  # trials whose checkpoints this process saw go

    def prune(self, study: optuna.Study, keep: int | None = None) -> None:
        """Deletes the checkpoints of finished trials other than the best; running ones may still
        win. An Optuna study callback.

        Args:
            study: The study.
            keep: A trial whose checkpoint stays too (the one the final model is made of). One
                snapshot of the trials decides the rest, so that a best trial another worker just
                finished is never taken for a beaten one: trials tied for the best value keep
                theirs, and in a front every trial on it does.
        """
        trials = study.get_trials(deepcopy=False)
        # Never a trial as good as the best of this snapshot: another machine may have finished
        # a better one while the caller's ``keep`` was being decided.
        kept = _best(study, trials) | ({keep} if keep is not None else set())
        recorded: set[str] | None = None  # the study's record, read when first needed
        for trial in trials:
            number = trial.number
            if not trial.state.is_finished() or number in kept or number in self._done:
                continue
            checkpoint_path(self.output_dir, number).unlink(missing_ok=True)
            artifact = trial.user_attrs.get(CHECKPOINT_ARTIFACT)
            if self.store is not None and artifact:
                if recorded is None:
                    recorded = {k for k in study.user_attrs if k.startswith(CHECKPOINT_REMOVED)}
                key = f"{CHECKPOINT_REMOVED}{number}"
                if key not in recorded:
                    if not artifacts.remove(self.store, artifact):
                        continue  # the store failed: try again after the next trial
                    study.set_user_attr(key, artifact)
            self._done.add(number)


def _best(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """The trials that may still be chosen: those tied for the best value, or a front's."""
    if len(study.directions) > 1:
        return {t.number for t in study.best_trials}
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(values, default=math.inf)
    return {t.number for t in trials if t.value == best}
