"""One tuning job, start to end: data and storage checked, the search, the final model, the report."""

from __future__ import annotations

import logging
from typing import Any

import optuna

from fmnist_tuning import runtime
from fmnist_tuning.cluster.storage import redact
from fmnist_tuning.config import RunConfig
from fmnist_tuning.errors import NoResultError, StudyError
from fmnist_tuning.search.progress import summarize

log = logging.getLogger("fmnist_tuning")


def run_study(config: RunConfig) -> tuple[optuna.Study, dict[str, Any]]:
    """Validates data and storage, runs the study, makes the final model and the report.

    Returns:
        The study and the ``best.json`` content of its final model (whose ``trial`` is the best
        trial when it was made: another machine may finish a better one right after).

    Raises:
        The errors of :func:`tune`; :class:`fmnist_tuning.faults.Interrupted` on a signal.
    """
    # Imported here, after tune's runtime.setup_process: most of them import Lightning.
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from fmnist_tuning.faults import Interrupted, catch_signals, received_signal
    from fmnist_tuning.final.finalize import finalize
    from fmnist_tuning.report.page import write_report
    from fmnist_tuning.search import study
    from fmnist_tuning.search.budget import budget_text
    from fmnist_tuning.search.loop import optimize
    from fmnist_tuning.search.sampling import make_sampler
    from fmnist_tuning.training import raw

    workers = None
    if config.workers > 1:
        from fmnist_tuning.search.workers import Workers

        workers = Workers()
    the_study = None
    with catch_signals(on_signal=workers.forward if workers else None):
        try:
            raw.download(config.data_dir)  # no-op when the files are there
            data = raw.load_raw(config.data_dir)  # decode and validate now, before any output
            raw.check_val_size(data, config.val_size)
            if config.test:
                raw.load_test(config.data_dir)  # the final model's test pass must not fail late
            the_study = study.load_or_create(config)
            config.output_dir.mkdir(parents=True, exist_ok=True)
            first = study.reserve_worker_slots(the_study, config, config.workers)
            if config.budgeted:
                log.info("deployment budget: %s (trials over it stop early)", budget_text(config))
            if workers is None:
                the_study.sampler = make_sampler(config.sampler, config.seed + first)
                optimize(the_study, config)
            else:
                codes = workers.run(the_study, config, first)
                if 2 in codes:  # a worker could not use a store; it said why, in one line
                    raise StudyError(
                        f"a worker could not use storage {redact(config.storage_url)} or the "
                        "artifact store (its message is above); rerun the same command once "
                        "that is fixed"
                    )
                if any(codes) and not study.reached_total(the_study, config):
                    raise NoResultError(f"{summarize(the_study)}; rerun the same command to resume")
            result = finalize(the_study, config)
            if result is not None and config.test:  # a final model: model.onnx and MODEL.md
                from fmnist_tuning.deploy.ship import ship

                result = ship(the_study, config, result)
            runtime.release_memory()  # the retrain's memory, before the report's imports and figures
            write_report(
                the_study, config.output_dir, config.storage_url, config.data_dir, config.test
            )
        except (Interrupted, SystemExit, SIGTERMException) as err:
            # Outside a trial (the final retrain, the test pass) Lightning turns Ctrl-C into
            # sys.exit(1) and SIGTERM into SIGTERMException: raise them as the signal they were.
            signum = err.signum if isinstance(err, Interrupted) else received_signal()
            if signum is None:
                raise
            interrupted = err if isinstance(err, Interrupted) else Interrupted(signum)
            so_far = summarize(the_study) if the_study is not None else "no trial ran"
            log.warning("%s: %s; rerun the same command to resume", interrupted.reason, so_far)
            raise interrupted from None
    if result is None:
        raise NoResultError(
            "no trial completed within the budget: nothing to report; run more trials, relax "
            "pruning or the budget"
            if config.budgeted
            else "no trial completed: nothing to report; run more trials or relax pruning"
        )
    return the_study, result
