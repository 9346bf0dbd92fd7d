"""The MLP and the LightningModule around it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fmnist_tuning.model import MLP, OPTIMIZERS, FashionMNISTClassifier


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


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_optimizer_steps_match_torchs_reference_implementation(name: str) -> None:
    """The fused kernels (where used) take the same steps as torch's plain for-loop version."""
    torch.manual_seed(0)
    fast, slow = MLP((16,), batch_norm=True), MLP((16,), batch_norm=True)
    slow.load_state_dict(fast.state_dict())
    opt = OPTIMIZERS[name](fast.parameters(), 0.01, 1e-3)
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
