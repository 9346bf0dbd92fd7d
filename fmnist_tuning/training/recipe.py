"""One training run's settings (:class:`TrialConfig`) and the fixed recipe every trial shares.

Fixed for every trial (not searched, so that trials go to the network itself): a one-cycle
learning-rate schedule over ``--max-epochs`` (warm-up, then annealing: a short budget ends on a low
rate instead of mid-noise), label smoothing 0.1, and random horizontal flips of training images on
the device (garments are left-right symmetric). Each was kept because the starting configuration
lost validation accuracy without it (``benchmarks/ablate.py``; figures in docs/benchmarks.md, "The
fixed recipe, decided on validation").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

LABEL_SMOOTHING = 0.1
SCHEDULER = "onecycle"
FLIP = True


@dataclass(frozen=True)
class TrialConfig:
    """One fully specified training run.

    The defaults are the documented starting configuration,
    :data:`fmnist_tuning.search.space.DEFAULT_PARAMS`, with the fixed
    recipe every trial shares: ``TrialConfig()`` trains exactly what a new study's first trial does.
    """

    hidden_sizes: tuple[int, ...] = (1024, 640)  # width of each hidden layer
    dropout: float = 0.13  # dropout after every hidden activation
    batch_norm: bool = True  # BatchNorm1d after every hidden Linear
    optimizer: str = "adamw"  # key of fmnist_tuning.training.model.OPTIMIZERS
    lr: float = 8.5e-3  # learning rate of that optimizer (the peak of the one-cycle schedule)
    weight_decay: float = 5e-5  # L2 penalty (decoupled for AdamW)
    batch_size: int = 256  # training batch size
    label_smoothing: float = LABEL_SMOOTHING  # fixed, not searched: see the module docstring
    scheduler: str = SCHEDULER  # learning-rate schedule over the planned epochs (none, onecycle)
    flip: bool = FLIP  # random horizontal flips of training images
    shift: int = 0  # random shifts of training images by up to this many pixels (0: none)

    def model_kwargs(self) -> dict[str, Any]:
        """Arguments of :class:`fmnist_tuning.training.model.FashionMNISTClassifier`."""
        kwargs = asdict(self)
        for data_only in ("batch_size", "flip", "shift"):
            kwargs.pop(data_only)
        kwargs["hidden_sizes"] = list(self.hidden_sizes)
        return kwargs

    def flat(self) -> dict[str, Any]:
        """Scalar view for loggers (TensorBoard's HParams tab takes no lists)."""
        flat = asdict(self)
        flat["hidden_sizes"] = "-".join(map(str, self.hidden_sizes))
        flat["n_layers"] = len(self.hidden_sizes)
        return flat


def recipe() -> dict[str, Any]:
    """The fixed recipe every trial shares (not searched): bound to a study, like its ranges."""
    return {"label_smoothing": LABEL_SMOOTHING, "scheduler": SCHEDULER, "flip": FLIP}
