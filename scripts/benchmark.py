"""Benchmark the tuning loop on the real data: epoch time, per-trial overhead, pruning, memory.

    python scripts/benchmark.py --data-dir ../shared/data/fashion-mnist --json bench.json
    python scripts/benchmark.py --data-dir ../shared/data/fashion-mnist --quick   # about a minute

Everything runs in one process; the three pipelines are interleaved and each figure is the median
of several repeats, because ratios measured side by side are what hold on a noisy shared machine.

1. Epoch time (train 55k + validate 5k) of the 784-128-10 MLP, batch 128, Adam 1e-3, under
   (a) torchvision ``FashionMNIST`` + ``ToTensor`` + ``DataLoader`` inside the objective's Trainer,
   (b) this project's DataModule + LightningModule + Trainer exactly as the objective builds them,
   (c) a raw PyTorch loop over the same whole-tensor batches (the floor).
2. Per-trial overhead: one objective call minus its training time (build + tear down).
3. Pruning: the same seeded study (random sampler, so both see identical configurations) with the
   median pruner and without: epochs trained and best value. Trials as the CLI runs them (at most
   20 epochs, early stopping after 4, the default pruner), 24 of them, except that each epoch is a
   twentieth of the training batches (and the whole validation split) so the pair runs in minutes;
   ``--quick``: 10 trials of 6 such epochs.
4. Memory: peak RSS and RSS growth from trial 5 to trial 50 of one 50-trial study.
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import logging
import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from fmnist_tuning import runtime

# As fmnist-tune does, before the first Lightning import (hence E402 below): what is measured is
# the process that users run.
runtime.setup_process()

import lightning.pytorch as pl
import optuna
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, random_split

from fmnist_tuning import data, raw
from fmnist_tuning.config import RunConfig
from fmnist_tuning.model import MLP, OPTIMIZERS
from fmnist_tuning.objective import Objective
from fmnist_tuning.runtime import optimizer_options, release_memory, spare_long_lived_objects
from fmnist_tuning.search_space import BATCH_SIZES, TrialConfig, suggest_config
from fmnist_tuning.study import make_pruner, make_sampler
from fmnist_tuning.trainer import uses_bf16, uses_gpu

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
    """Wall time of each epoch (training + validation) and of the whole training."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.train_s = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append(time.perf_counter() - self._epoch0)  # runs after validation

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_s = time.perf_counter() - self._train0


class TorchvisionDataModule(pl.LightningDataModule):
    """The conventional pipeline of most tutorials and of Optuna's Lightning example."""

    def __init__(self, root: Path, batch_size: int, seed: int, val_size: int) -> None:
        super().__init__()
        self.root, self.batch_size, self.seed, self.val_size = root, batch_size, seed, val_size

    def setup(self, stage: str | None = None) -> None:
        from torchvision import datasets, transforms

        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
        full = datasets.FashionMNIST(str(self.root), train=True, download=True, transform=tf)
        gen = torch.Generator().manual_seed(self.seed)
        sizes = [len(full) - self.val_size, self.val_size]  # 55,000 + 5,000 on the real data
        self.train_set, self.val_set = random_split(full, sizes, generator=gen)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.val_set, batch_size=self.batch_size)


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def run_study(
    run: RunConfig,
    n_trials: int,
    *,
    sampler: str = "tpe",
    enqueue: dict[str, Any] | None = None,
    objective_kwargs: dict[str, Any] | None = None,
    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] | None = None,
) -> optuna.Study:
    """A study in a fresh SQLite file under ``run.output_dir``, as the CLI would run it."""
    run.output_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=f"sqlite:///{run.output_dir / 'study.db'}",
        direction="maximize",
        sampler=make_sampler(sampler, run.seed),
        pruner=make_pruner(run.pruner),
    )
    for _ in range(n_trials if enqueue else 0):
        study.enqueue_trial(enqueue)
    with spare_long_lived_objects():  # as fmnist_tuning.study.optimize runs its trials
        study.optimize(
            Objective(run, **(objective_kwargs or {})),
            n_trials=n_trials,
            callbacks=[release_memory, *(callbacks or [])],
            gc_after_trial=True,
        )
    return study


def epoch_project(run: RunConfig) -> float:
    """(b): one 2-epoch trial through the real objective; the second (warm) epoch's time."""
    timer = EpochTimer()
    run_study(run, 1, enqueue=BASELINE_PARAMS, objective_kwargs={"extra_callbacks": [timer]})
    return timer.epochs[-1]


def epoch_dataloader(run: RunConfig, root: Path) -> float:
    """(a): the same objective and Trainer, fed by torchvision + ToTensor + DataLoader."""
    timer = EpochTimer()

    def factory(config: TrialConfig, run: RunConfig) -> pl.LightningDataModule:
        return TorchvisionDataModule(root, config.batch_size, run.seed, run.val_size)

    kwargs = {"extra_callbacks": [timer], "make_datamodule": factory}
    run_study(run, 1, enqueue=BASELINE_PARAMS, objective_kwargs=kwargs)
    return timer.epochs[-1]


def epoch_raw(run: RunConfig) -> float:
    """(c): a hand-written loop over the same on-device tensors; the second epoch's time.

    Same recipe as the objective's trial of ``BASELINE_PARAMS``: the fixed choices of the search
    space (one-cycle schedule stepped per batch, label smoothing, random flips) included, so the
    ratio (b)/(c) is the framework's overhead alone.
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


def trial_overhead(run: RunConfig, n: int) -> float:
    """Median of (objective call time - training time) over ``n`` short trials."""
    timer = EpochTimer()
    overheads: list[float] = []

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        assert trial.duration is not None
        overheads.append(trial.duration.total_seconds() - timer.train_s)

    kwargs = {"extra_callbacks": [timer], "trainer_overrides": {"limit_train_batches": 5}}
    short = dataclasses.replace(run, max_epochs=1)
    run_study(short, n, enqueue=BASELINE_PARAMS, objective_kwargs=kwargs, callbacks=[record])
    return statistics.median(overheads[1:])  # the first trial also builds the data cache


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
            pruner=pruner,
            max_epochs=max_epochs,
            early_stopping=RunConfig.early_stopping,  # the CLI's default, as in a real study
            output_dir=run.output_dir / pruner,
        )
        study = run_study(cfg, n_trials, sampler="random", objective_kwargs=kwargs)
        out[f"epochs_{pruner}"] = sum(t.user_attrs.get("epochs", 0) for t in study.trials)
        out[f"best_{pruner}"] = study.best_value
        out[f"pruned_{pruner}"] = sum(t.state.name == "PRUNED" for t in study.trials)
    return out


def memory(run: RunConfig, n_trials: int) -> dict[str, float]:
    """Peak RSS, RSS growth between trial 5 and the last of an ``n_trials`` study, and the RSS
    before its first trial (imports and the decoded data: what no trial can free)."""
    before = rss_mb()[0]
    rss: dict[int, float] = {}

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        rss[trial.number + 1] = rss_mb()[0]

    short = dataclasses.replace(run, max_epochs=1)
    kwargs = {"trainer_overrides": {"limit_train_batches": 20}}
    run_study(short, n_trials, objective_kwargs=kwargs, callbacks=[record])
    return {"peak": rss_mb()[1], "growth_5_50": rss[n_trials] - rss[5], "before_trials": before}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.add_argument("--quick", action="store_true", help="reduced version, about a minute")
    p.add_argument("--accelerator", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--repeats", type=int, help="repeats per pipeline (default 5, quick 2)")
    p.add_argument(
        "--val-size", type=int, default=RunConfig.val_size, help="validation images (default 5000)"
    )
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")  # the benchmark's table only
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        raw.check_val_size(raw.load_raw(args.data_dir), args.val_size)
    except raw.DataError as err:
        print(f"benchmark: error: {err}", file=sys.stderr)
        return 2

    quick = args.quick
    repeats = args.repeats or (2 if quick else 5)
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-") as tmp_name:
        tmp = Path(tmp_name)
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

        t0 = time.perf_counter()
        # First, so that the peak RSS is the study's own, not that of the DataLoader pipeline.
        mem = memory(fresh(), 12 if quick else 50)
        times: dict[str, list[float]] = {"dataloader": [], "project": [], "raw": []}
        for _ in range(repeats):  # interleaved: a slow spell hits all three alike
            times["dataloader"].append(epoch_dataloader(fresh(), tmp / "tv"))
            times["project"].append(epoch_project(fresh()))
            times["raw"].append(epoch_raw(fresh()))
        epoch_s = {k: statistics.median(v) for k, v in times.items()}
        overhead = trial_overhead(fresh(), 6 if quick else 15)
        prune = pruning(fresh(), *((10, 6, 0.05) if quick else (24, RunConfig.max_epochs, 0.05)))
        wall = time.perf_counter() - t0

    result = {
        "epoch_s": epoch_s,
        "speedup_vs_dataloader": epoch_s["dataloader"] / epoch_s["project"],
        "overhead_vs_raw": epoch_s["project"] / epoch_s["raw"],
        "trial_overhead_s": overhead,
        "pruning": prune,
        "rss_mb": mem,
        "quick": quick,
        "repeats": repeats,
        "epoch_samples_s": times,
        "wall_s": wall,
        "hardware": {
            "cpu": platform.processor() or platform.machine(),
            "cores": torch.get_num_threads(),
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


def format_table(r: dict[str, Any]) -> str:
    """The human-readable table (also pasted into docs/benchmarks.md)."""
    e, p, m = r["epoch_s"], r["pruning"], r["rss_mb"]
    saved = 1 - p["epochs_median"] / p["epochs_none"] if p["epochs_none"] else float("nan")
    lines = [
        f"fmnist-tuning benchmark {r['date']}{' (quick)' if r['quick'] else ''}: "
        f"{r['hardware']['gpu'] or 'CPU'}, {r['hardware']['cores']} torch threads, "
        f"torch {r['versions']['torch']}, lightning {r['versions']['lightning']}, "
        f"optuna {r['versions']['optuna']}; median of {r['repeats']} interleaved repeats",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| epoch (a) torchvision + ToTensor + DataLoader | {e['dataloader']:.2f} s | |",
        f"| epoch (b) this project (objective's Trainer) | {e['project']:.2f} s | |",
        f"| epoch (c) raw PyTorch loop, same tensors | {e['raw']:.2f} s | |",
        f"| speed-up (a)/(b) | {r['speedup_vs_dataloader']:.2f}x | >= 5x |",
        f"| overhead (b)/(c) | {r['overhead_vs_raw']:.2f}x | <= 1.5x |",
        f"| per-trial overhead (build + tear down) | {r['trial_overhead_s']:.3f} s | <= 0.3 s |",
        f"| epochs trained, median pruning / none | {p['epochs_median']:.0f} / "
        f"{p['epochs_none']:.0f} ({saved:.0%} fewer, {p['pruned_median']:.0f} pruned) "
        "| >= 40% fewer |",
        f"| best val acc, median pruning / none | {p['best_median']:.4f} / {p['best_none']:.4f} "
        f"({100 * (p['best_median'] - p['best_none']):+.2f} pt) | within 0.3 pt |",
        f"| peak RSS | {m['peak']:.0f} MB | <= 1000 MB |",
        f"| RSS before the first trial (imports + data) | {m['before_trials']:.0f} MB | |",
        f"| RSS growth trial 5 -> last | {m['growth_5_50']:+.1f} MB | < 50 MB |",
        "",
        f"total benchmark wall time {r['wall_s']:.0f} s",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
