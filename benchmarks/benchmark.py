"""Benchmark what users run, on the real data: epoch time, per-trial overhead, pruning, memory.

    python benchmarks/benchmark.py --data-dir ../shared/data/fashion-mnist --json bench.json
    python benchmarks/benchmark.py --data-dir ../shared/data/fashion-mnist --quick   # a smoke test

Every trial runs through the project's own trial loop (``fmnist_tuning.search.loop.optimize``, as each
worker of ``fmnist-tune`` runs it); the three epoch pipelines are interleaved, and each figure is
the median of several repeats with its range, because ratios measured side by side are what hold
on a noisy shared machine.

1. Epoch time of the 784-128-10 MLP (batch 128, Adam 1e-3, the search space's fixed recipe: one-
   cycle schedule, label smoothing, random flips), train 55k + validate 5k, timed from the start of
   the second epoch to the end of training: everything the Trainer runs in an epoch is in it
   (validation, the checkpoint write, TensorBoard, early stopping, the pruning report). Under
   (a) torchvision ``FashionMNIST`` with ``transforms.Compose([ToTensor(), RandomHorizontalFlip()
       (training only), Normalize((0.2860,), (0.3530,))])`` and ``DataLoader(batch_size=128,
       shuffle=True)`` inside the objective's Trainer: ``num_workers=0`` (a), and ``num_workers``
       = the cores, with ``persistent_workers=True`` (a*),
   (b) this project's objective, exactly as a study runs it,
   (c) a raw PyTorch loop over the same on-device tensors, same recipe (the floor).
2. Per-trial overhead: in the project's loop, the wall time of short trials minus the time inside
   their training (from Lightning's ``on_train_start`` to ``on_train_end``): the claim lock, the
   stale-trial check, counting, Optuna's bookkeeping, building the Trainer, logger and callbacks,
   tearing them down, the collection after each trial and the study callbacks.
3. Pruning: the same seeded study (random sampler, so both see identical configurations) with the
   median pruner and without: epochs trained and best value. Trials as the CLI runs them (its default
   ``--max-epochs`` and ``--early-stopping``), 24 of them, each epoch a twentieth of the training batches
   (and the whole validation split) so the pair runs in minutes; ``--quick``: 10 trials of 6 epochs.
4. Memory: the peak resident memory of the real command, ``fmnist-tune`` run as a child process
   with its defaults (its default trials, the retrain on 60k, the report) for ``--memory-trials``
   trials; and the growth of resident memory from trial 5 to trial 50 of short trials in one
   process.
"""

# ruff: noqa: E402
from __future__ import annotations

import harness

# As fmnist-tune does, before the first Lightning import (hence E402 below): what is measured is
# the process that users run. Quiet: the benchmark prints its table only.
harness.start(quiet=True)

import argparse
import dataclasses
import gzip
import itertools
import json
import math
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, random_split

from fmnist_tuning.config import RunConfig
from fmnist_tuning.runtime import optimizer_options
from fmnist_tuning.search.loop import optimize
from fmnist_tuning.search.objective import Objective
from fmnist_tuning.search.space import BATCH_SIZES, suggest_config
from fmnist_tuning.search.study import load_or_create
from fmnist_tuning.search.workers import cpu_cores
from fmnist_tuning.training import data, raw
from fmnist_tuning.training.model import MLP, OPTIMIZERS
from fmnist_tuning.training.recipe import TrialConfig
from fmnist_tuning.training.trainer import uses_bf16, uses_gpu

ROOT = Path(__file__).resolve().parents[1]
BASELINE_PARAMS = {  # the 784-128-10 MLP, Adam 1e-3, batch 128 (weight decay at its 1e-6 floor)
    "n_layers": 1,
    "n_units_l0": 128,
    "dropout": 0.0,
    "batch_norm": False,
    "optimizer": "adam",
    "lr_adam": 1e-3,
    "weight_decay": 1e-6,
    "batch_size": 128,
}


class EpochTimer(Callback):
    """Wall time from each epoch's start to the next one's (the last: to the end of training).

    So an epoch's time holds every hook the Trainer runs in it. Also keeps when each training
    started and ended (``on_train_start``, ``on_train_end``), for the gaps between trials.
    """

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.trainings: list[tuple[float, float]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train0 = self._epoch0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        if trainer.current_epoch > 0:
            self.epochs.append(now - self._epoch0)
        self._epoch0 = now

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        self.epochs.append(now - self._epoch0)
        self.trainings.append((self._train0, now))


class TorchvisionDataModule(pl.LightningDataModule):
    """The conventional pipeline of most tutorials and of Optuna's Lightning example."""

    def __init__(
        self, root: Path, batch_size: int, seed: int, val_size: int, num_workers: int
    ) -> None:
        super().__init__()
        self.root, self.batch_size, self.seed, self.val_size = root, batch_size, seed, val_size
        self.num_workers = num_workers

    def setup(self, stage: str | None = None) -> None:
        from torchvision import datasets, transforms

        normalize = transforms.Normalize((0.2860,), (0.3530,))
        train_tf = transforms.Compose(
            [transforms.ToTensor(), transforms.RandomHorizontalFlip(), normalize]
        )
        eval_tf = transforms.Compose([transforms.ToTensor(), normalize])
        splits = {}
        for tf in (train_tf, eval_tf):  # one split, two views: flipped for training only
            full = datasets.FashionMNIST(str(self.root), train=True, download=True, transform=tf)
            sizes = [len(full) - self.val_size, self.val_size]  # 55,000 + 5,000 on the real data
            gen = torch.Generator().manual_seed(self.seed)
            splits[tf] = random_split(full, sizes, generator=gen)
        self.train_set, self.val_set = splits[train_tf][0], splits[eval_tf][1]

    def _loader(self, dataset: Any, shuffle: bool) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.val_set, shuffle=False)


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def run_study(
    run: RunConfig,
    n_trials: int,
    *,
    enqueue: dict[str, Any] | None = None,
    objective_kwargs: dict[str, Any] | None = None,
) -> optuna.Study:
    """A fresh study under ``run.output_dir``, its trials run by the project's own loop."""
    run = dataclasses.replace(run, n_trials=n_trials, warm_start=False)
    study = load_or_create(run)
    for _ in range(n_trials if enqueue else 0):
        study.enqueue_trial(enqueue)
    optimize(study, run, objective=Objective(run, **(objective_kwargs or {})))
    return study


def epoch_project(run: RunConfig) -> float:
    """(b): one 2-epoch trial through the real objective; the second (warm) epoch's time."""
    timer = EpochTimer()
    run_study(run, 1, enqueue=BASELINE_PARAMS, objective_kwargs={"extra_callbacks": [timer]})
    return timer.epochs[-1]


def epoch_dataloader(run: RunConfig, root: Path, num_workers: int) -> float:
    """(a): the same objective and Trainer, fed by torchvision + transforms + DataLoader."""
    timer = EpochTimer()

    def factory(config: TrialConfig, run: RunConfig) -> pl.LightningDataModule:
        return TorchvisionDataModule(root, config.batch_size, run.seed, run.val_size, num_workers)

    kwargs = {"extra_callbacks": [timer], "make_datamodule": factory}
    run_study(run, 1, enqueue=BASELINE_PARAMS, objective_kwargs=kwargs)
    return timer.epochs[-1]


def epoch_raw(run: RunConfig) -> float:
    """(c): a hand-written loop over the same on-device tensors; the second epoch's time.

    Same recipe as the objective's trial of ``BASELINE_PARAMS``: the fixed choices of the search
    space (one-cycle schedule stepped per batch, label smoothing, random flips) included, so the
    ratio (b)/(c) is what the framework and the study's bookkeeping cost.
    """
    config = suggest_config(optuna.trial.FixedTrial(BASELINE_PARAMS))
    device = torch.device("cuda" if uses_gpu(run.accelerator) else "cpu")
    # Where the objective's Trainer runs bf16-mixed, the same autocast here.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(run.accelerator))
    s = data.make_splits(raw.load_raw(run.data_dir), run.val_size, run.seed, device)
    torch.manual_seed(0)
    net = MLP(config.hidden_sizes).to(device)
    opt = OPTIMIZERS[config.optimizer](
        net.parameters(),
        lr=config.lr,
        weight_decay=config.weight_decay,
        **optimizer_options(config.optimizer),
    )
    batches = data.TensorBatches(s.images, s.labels, s.train_idx, 128, s.mean, s.std, True)
    val = data.TensorBatches(s.images, s.labels, s.val_idx, 1_000, s.mean, s.std)  # as (b)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=2 * len(batches))
    times = []
    for _ in range(2):
        start = time.perf_counter()
        net.train()
        for x, y in batches:
            x = data.random_flip(x) if config.flip else x
            with autocast:
                loss = F.cross_entropy(net(x), y, label_smoothing=config.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad(), autocast:
            sum(int((net(x).argmax(1) == y).sum()) for x, y in val)
        times.append(time.perf_counter() - start)
    return times[-1]


def trial_overheads(run: RunConfig, n: int) -> list[float]:
    """The gaps between the trainings of ``n`` consecutive short trials in the project's loop.

    From one trial's ``on_train_end`` to the next one's ``on_train_start``: all that a trial costs
    besides training (see the module docstring), as each worker pays it.
    """
    timer = EpochTimer()
    kwargs = {"extra_callbacks": [timer], "trainer_overrides": {"limit_train_batches": 5}}
    short = dataclasses.replace(run, max_epochs=1)
    run_study(short, n, enqueue=BASELINE_PARAMS, objective_kwargs=kwargs)
    spans = timer.trainings
    return [start - end for (_, end), (start, _) in itertools.pairwise(spans)]


def pruning(
    run: RunConfig, n_trials: int, max_epochs: int, train_fraction: float = 1.0
) -> dict[str, float]:
    """Epochs trained and best value of the same seeded random-sampler study, median vs none."""
    out: dict[str, float] = {}
    n_train = len(raw.load_raw(run.data_dir).train_y) - run.val_size
    fewest_batches = math.ceil(n_train / max(BATCH_SIZES))
    fraction = max(train_fraction, 1 / fewest_batches)  # at least one batch (tiny test data)
    kwargs = {"trainer_overrides": {"limit_train_batches": fraction}}
    for pruner in ("median", "none"):
        cfg = dataclasses.replace(
            run,
            sampler="random",
            pruner=pruner,
            max_epochs=max_epochs,
            early_stopping=RunConfig.early_stopping,  # the CLI's default, as in a real study
            output_dir=run.output_dir / pruner,
        )
        study = run_study(cfg, n_trials, objective_kwargs=kwargs)
        out[f"epochs_{pruner}"] = sum(t.user_attrs.get("epochs", 0) for t in study.trials)
        out[f"best_{pruner}"] = study.best_value
        out[f"pruned_{pruner}"] = sum(t.state.name == "PRUNED" for t in study.trials)
    return out


class _RssAtTrainStart(Callback):
    def __init__(self) -> None:
        self.rss: list[float] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rss.append(rss_mb()[0])


def rss_growth(run: RunConfig, n_trials: int) -> float:
    """MB of resident memory added from the 5th to the last of ``n_trials`` short trials.

    Read as each training starts: after the previous trial was torn down, collected and trimmed.
    """
    probe = _RssAtTrainStart()
    kwargs = {"extra_callbacks": [probe], "trainer_overrides": {"limit_train_batches": 20}}
    run_study(dataclasses.replace(run, max_epochs=1), n_trials, objective_kwargs=kwargs)
    return probe.rss[-1] - probe.rss[4]


def command_peak_rss(args: argparse.Namespace, output_dir: Path) -> dict[str, float]:
    """Peak resident memory (MB) and wall time of ``fmnist-tune`` with its defaults, as a child.

    Run first, so that no other child of this process (DataLoader workers) counts in the peak.
    """
    command = [
        sys.executable, str(ROOT / "scripts" / "tune.py"), "--data-dir", str(args.data_dir),
        "--output-dir", str(output_dir), "--n-trials", str(args.memory_trials),
        "--val-size", str(args.val_size), "--accelerator", args.accelerator,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: kilobytes
    return {"peak": peak_kb / 1024, "wall_s": wall, "trials": args.memory_trials}


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.add_argument("--quick", action="store_true", help="reduced version, a smoke test")
    p.add_argument("--accelerator", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--repeats", type=int, help="repeats per pipeline (default 5, quick 2)")
    p.add_argument(
        "--val-size", type=int, default=RunConfig.val_size, help="validation images (default 5000)"
    )
    p.add_argument(
        "--memory-trials", type=int, help="trials of the measured fmnist-tune (default 4, quick 2)"
    )
    args = p.parse_args(argv)
    args.memory_trials = args.memory_trials or (2 if args.quick else 4)
    warnings.filterwarnings("ignore")  # the benchmark's table only
    if not harness.data_ready("benchmark", args.data_dir, args.val_size):
        return 2

    quick = args.quick
    repeats = args.repeats or (2 if quick else 5)
    workers = cpu_cores()
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-") as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        command = command_peak_rss(args, tmp / "command")  # first: see its docstring
        raw_dir = tmp / "tv" / "FashionMNIST" / "raw"  # torchvision reads here, not in data-dir
        raw_dir.mkdir(parents=True)
        for path in (raw.find_files(args.data_dir) or {}).values():
            # Unpacked, as torchvision keeps them: it then neither checks md5 nor downloads.
            unpacked = raw_dir / path.name.removesuffix(".gz")
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as src, unpacked.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        base = RunConfig(
            data_dir=args.data_dir,
            max_epochs=2,
            accelerator=args.accelerator,
            early_stopping=99,
            val_size=args.val_size,
        )
        counter = iter(range(10_000))

        def fresh(**changes: Any) -> RunConfig:
            return dataclasses.replace(base, output_dir=tmp / f"s{next(counter)}", **changes)

        growth = rss_growth(fresh(), 12 if quick else 50)
        pipelines: dict[str, Callable[[], float]] = {
            "dataloader": lambda: epoch_dataloader(fresh(), tmp / "tv", 0),
            "dataloader_workers": lambda: epoch_dataloader(fresh(), tmp / "tv", workers),
            "project": lambda: epoch_project(fresh()),
            "raw": lambda: epoch_raw(fresh()),
        }
        times: dict[str, list[float]] = {k: [] for k in pipelines}
        for _ in range(repeats):  # interleaved: a slow spell hits all of them alike
            for name, pipeline in pipelines.items():
                times[name].append(pipeline())
        overheads = trial_overheads(fresh(), 6 if quick else 16)
        prune = pruning(fresh(), *((10, 6, 0.05) if quick else (24, RunConfig.max_epochs, 0.05)))
        wall = time.perf_counter() - t0

    def ratios(a: str, b: str) -> dict[str, float]:  # per repeat: both of one interleaved round
        return spread([x / y for x, y in zip(times[a], times[b], strict=True)])

    result = {
        "epoch_s": {k: spread(v) for k, v in times.items()},
        "speedup_vs_dataloader": ratios("dataloader", "project"),
        "speedup_vs_dataloader_workers": ratios("dataloader_workers", "project"),
        "overhead_vs_raw": ratios("project", "raw"),
        "trial_overhead_s": spread(overheads),
        "pruning": prune,
        "memory": {"command": command, "growth_5_50_mb": growth},
        "quick": quick,
        "repeats": repeats,
        "dataloader_workers": workers,
        "epoch_samples_s": times,
        "wall_s": wall,
        "hardware": {
            "cpu": platform.processor() or platform.machine(),
            "cores": workers,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if uses_gpu(args.accelerator) else None,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": pl.__version__,
            "optuna": optuna.__version__,
        },
        "date": date.today().isoformat(),
    }
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _s(m: dict[str, float], unit: str = " s", digits: int = 2) -> str:
    return f"{m['median']:.{digits}f}{unit} ({m['min']:.{digits}f}-{m['max']:.{digits}f})"


def format_table(r: dict[str, Any]) -> str:
    """The human-readable table (also pasted into docs/benchmarks.md)."""
    e, p, m = r["epoch_s"], r["pruning"], r["memory"]
    saved = 1 - p["epochs_median"] / p["epochs_none"] if p["epochs_none"] else float("nan")
    n = r["dataloader_workers"]
    lines = [
        f"fmnist-tuning benchmark {r['date']}{' (quick)' if r['quick'] else ''}: "
        f"{r['hardware']['gpu'] or 'CPU'}, {r['hardware']['cores']} cores, "
        f"torch {r['versions']['torch']}, lightning {r['versions']['lightning']}, "
        f"optuna {r['versions']['optuna']}; median (min-max) of {r['repeats']} interleaved repeats",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| epoch (a) torchvision + transforms + DataLoader, 0 workers | {_s(e['dataloader'])} | |",
        f"| epoch (a*) the same, {n} workers | {_s(e['dataloader_workers'])} | |",
        f"| epoch (b) this project (the objective's Trainer, every hook) | {_s(e['project'])} | |",
        f"| epoch (c) raw PyTorch loop, same tensors | {_s(e['raw'])} | |",
        f"| speed-up (a)/(b) | {_s(r['speedup_vs_dataloader'], 'x')} | >= 5x |",
        f"| speed-up (a*)/(b) | {_s(r['speedup_vs_dataloader_workers'], 'x')} | >= 5x |",
        f"| overhead (b)/(c) | {_s(r['overhead_vs_raw'], 'x')} | <= 1.5x |",
        f"| per-trial overhead in the project's loop | {_s(r['trial_overhead_s'], ' s', 3)} "
        "| <= 0.3 s |",
        f"| epochs trained, median pruning / none | {p['epochs_median']:.0f} / "
        f"{p['epochs_none']:.0f} ({saved:.0%} fewer, {p['pruned_median']:.0f} pruned) "
        "| >= 40% fewer |",
        f"| best val acc, median pruning / none | {p['best_median']:.4f} / {p['best_none']:.4f} "
        f"({100 * (p['best_median'] - p['best_none']):+.2f} pt) | within 0.3 pt |",
        f"| peak RSS of `fmnist-tune --n-trials {m['command']['trials']}` (defaults: "
        f"{RunConfig.max_epochs}-epoch trials, retrain, report) | {m['command']['peak']:.0f} MB "
        f"({m['command']['wall_s']:.0f} s) | <= 1000 MB |",
        f"| RSS growth trial 5 -> last (short trials, one process) | "
        f"{m['growth_5_50_mb']:+.1f} MB | < 50 MB |",
        "",
        f"total benchmark wall time {r['wall_s']:.0f} s",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
