"""The MLP and the LightningModule around it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fmnist_tuning.runtime import optimizer_options
from fmnist_tuning.training.model import MLP, OPTIMIZERS, FashionMNISTClassifier


@pytest.mark.parametrize("hidden", [(), (32,), (64, 32), (128, 64, 32)])
def test_output_shape_for_several_depths(hidden: tuple[int, ...]) -> None:
    net = MLP(hidden, dropout=0.1, batch_norm=True)
    assert net(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    widths = [m.out_features for m in net.modules() if isinstance(m, nn.Linear)]
    assert widths == [*hidden, 10]


def test_batch_norm_and_dropout_are_optional() -> None:
    plain = MLP((16,), dropout=0.0, batch_norm=False)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.Dropout)) for m in plain.modules())
    full = MLP((16, 16), dropout=0.3, batch_norm=True)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in full.modules()) == 2
    assert sum(isinstance(m, nn.Dropout) for m in full.modules()) == 2


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("sgd", torch.optim.SGD),
        ("rmsprop", torch.optim.RMSprop),
    ],
)
def test_optimizer_pair_is_built_as_configured(name: str, cls: type) -> None:
    module = FashionMNISTClassifier((8,), optimizer=name, lr=0.0123, weight_decay=1e-4)
    opt = module.configure_optimizers()
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.0123 and group["weight_decay"] == 1e-4
    if name == "sgd":
        assert group["nesterov"] and group["momentum"] == 0.9
    # The speed measure "fused optimizers" reaches the optimizer a trial trains with (RMSprop has
    # no fused kernel).
    assert bool(group.get("fused")) == (name != "rmsprop")


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_optimizer_steps_match_torchs_reference_implementation(name: str) -> None:
    """The fused kernels (where used) take the same steps as torch's plain for-loop version."""
    torch.manual_seed(0)
    fast, slow = MLP((16,), batch_norm=True), MLP((16,), batch_norm=True)
    slow.load_state_dict(fast.state_dict())
    opt = OPTIMIZERS[name](fast.parameters(), lr=0.01, weight_decay=1e-3, **optimizer_options(name))
    group = {k: v for k, v in opt.param_groups[0].items() if k in opt.defaults}
    group.pop("decoupled_weight_decay", None)  # implied by AdamW, refused by its constructor
    group.update(foreach=False, **({"fused": False} if "fused" in group else {}))
    ref = type(opt)(slow.parameters(), **group)
    x, y = torch.randn(32, 784), torch.randint(0, 10, (32,))
    for _ in range(3):
        for net, o in ((fast, opt), (slow, ref)):
            o.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            o.step()
    for a, b in zip(fast.parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_unknown_optimizer_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown optimizer"):
        FashionMNISTClassifier(optimizer="lbfgs")


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
@pytest.mark.parametrize(("optimizer", "scheduler"), [("adamw", "onecycle"), ("sgd", "none")])
def test_lightning_training_takes_the_same_steps_as_a_plain_torch_loop(
    optimizer: str, scheduler: str
) -> None:
    """training_step's manual optimization: zero_grad, backward, step and schedule, every batch."""
    import lightning.pytorch as pl
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x, y = torch.randn(96, 784), torch.randint(0, 10, (96,))
    batches = DataLoader(TensorDataset(x, y), batch_size=32)  # 3 batches, fixed order
    kwargs = {"optimizer": optimizer, "lr": 0.01, "weight_decay": 1e-3, "label_smoothing": 0.1}
    module = FashionMNISTClassifier((16,), batch_norm=True, scheduler=scheduler, **kwargs)
    reference = MLP((16,), batch_norm=True)
    reference.load_state_dict(module.model.state_dict())
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=batches)

    opt = OPTIMIZERS[optimizer](reference.parameters(), lr=0.01, weight_decay=1e-3)
    onecycle = scheduler == "onecycle"  # (OneCycleLR sets the rate as soon as it is built)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.01, total_steps=6) if onecycle else None
    total = torch.zeros(())
    for _ in range(2):
        total.zero_()
        for xb, yb in batches:
            loss = F.cross_entropy(reference(xb), yb, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += loss.detach() * len(yb)
    assert trainer.global_step == 6  # one optimizer step per batch
    for ours, theirs in zip(module.model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(trainer.callback_metrics["train/loss"], total / 96)
