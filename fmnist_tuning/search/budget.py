"""A trial's size and CPU latency, and whether it fits the deployment budget (its constraints).

Every trial records its parameter count (known before it trains) and its CPU latency (measured
once, after its first epoch). With ``--max-params`` or ``--max-latency-ms`` each becomes an Optuna
constraint (``trial.set_constraint``: the excess over the budget as a fraction of it, feasible
when zero or less): TPE
learns from infeasible trials, pruned ones included, and ``study.best_trial`` is the best feasible
one. A configuration over the parameter budget is stopped before it trains; one over the latency
budget right after its measurement.
"""

from __future__ import annotations

import copy
import statistics
import time

import lightning.pytorch as pl
import optuna
import torch

from fmnist_tuning.config import RunConfig
from fmnist_tuning.keys import FAIL_REASON, LATENCY_MS, PARAMS
from fmnist_tuning.training.recipe import TrialConfig
from fmnist_tuning.training.trainer import build_module

LATENCY_REPEATS = 50  # timed forward passes of one image; their median is the latency
LATENCY_WARMUP = 10  # untimed passes first (allocations, caches)
IMAGE_SHAPE = (1, 1, 28, 28)  # one Fashion-MNIST image: batch 1


def count_params(module: torch.nn.Module) -> int:
    """The module's number of parameters (weights and biases; buffers such as BN statistics not)."""
    return sum(p.numel() for p in module.parameters())


def cpu_latency_ms(module: torch.nn.Module) -> float:
    """The median time of one forward pass of one image on the CPU, in milliseconds.

    In eval mode without autograd, on one thread (the same basis whatever else runs and however
    many workers share the cores), as the model would serve; a model on a GPU is measured on a
    CPU copy of its network. The module's own mode and the thread count are left as they were;
    no random numbers are drawn (the trial's own stream stays as it was).
    """
    on_cpu = all(p.device.type == "cpu" for p in module.parameters())
    model = module if on_cpu else copy.deepcopy(getattr(module, "model", module)).cpu()
    was_training, threads = model.training, torch.get_num_threads()
    model.eval()
    torch.set_num_threads(1)
    image = torch.zeros(IMAGE_SHAPE)
    times = []
    try:
        with torch.inference_mode():
            for i in range(LATENCY_WARMUP + LATENCY_REPEATS):
                start = time.perf_counter()
                model(image)
                if i >= LATENCY_WARMUP:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)
    return 1000 * statistics.median(times)


def _record(
    trial: optuna.Trial, key: str, value: float, limit: float | None, flag: str, text: str
) -> str:
    """Stores ``value`` on the trial, and its constraint under a ``limit`` (the ``flag``'s).

    Returns:
        Why the trial is over budget (also its ``fail_reason``), or "" when it fits.
    """
    trial.set_user_attr(key, value)
    if limit is None:
        return ""
    # The excess relative to the budget: TPE and NSGA-II add the violations of both budgets up.
    trial.set_constraint(key, (value - limit) / limit)
    if value <= limit:
        return ""
    why = f"{text}, over {flag} {limit:g}"
    trial.set_user_attr(FAIL_REASON, why)
    return why


def record_params(trial: optuna.Trial, params: int, run: RunConfig) -> str:
    """Stores the trial's size; under ``--max-params``, why it is over budget ("" if it fits)."""
    return _record(trial, PARAMS, params, run.max_params, "--max-params", f"{params:,} parameters")


def record_latency(trial: optuna.Trial, latency_ms: float, run: RunConfig) -> str:
    """Stores the trial's latency; under ``--max-latency-ms``, why it is over budget ("" if not)."""
    text = f"{latency_ms:.4f} ms per image"
    return _record(trial, LATENCY_MS, latency_ms, run.max_latency_ms, "--max-latency-ms", text)


def start_fits(run: RunConfig) -> bool:
    """Whether the starting configuration (a new study's first trial) fits ``--max-params``."""
    return run.max_params is None or count_params(build_module(TrialConfig())) <= run.max_params


def budget_text(run: RunConfig) -> str:
    """The budget in words, e.g. ``≤ 100000 parameters``; empty without one."""
    parts = []
    if run.max_params is not None:
        parts.append(f"≤ {run.max_params} parameters")
    if run.max_latency_ms is not None:
        parts.append(f"≤ {run.max_latency_ms:g} ms per image on the CPU")
    return ", ".join(parts)


class LatencyProbe(pl.Callback):
    """Measures the trial's CPU latency once, after its first validation; stops it when over the
    latency budget (pruned, with its constraint set: TPE learns from it)."""

    def __init__(self, trial: optuna.Trial, run: RunConfig) -> None:
        self.trial = trial
        self.run = run
        self.latency_ms: float | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.latency_ms is not None:
            return
        self.latency_ms = round(cpu_latency_ms(pl_module), 4)
        if trainer.logger is not None:
            trainer.logger.log_metrics({LATENCY_MS: self.latency_ms}, step=trainer.current_epoch)
        if over := record_latency(self.trial, self.latency_ms, self.run):
            raise optuna.TrialPruned(over)
