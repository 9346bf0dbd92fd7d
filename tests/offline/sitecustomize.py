"""The tests' network guard, in every Python process they run (this folder is on PYTHONPATH).

With ``FMNIST_TEST_OFFLINE=1`` (set by ``tests/conftest.py``, which also installs the guard in the
pytest process itself):

- sockets reach loopback only (PostgreSQL, the fault proxy, the dashboard, Jupyter's kernel); any
  other address or host name fails at once, loudly;
- ``fmnist_tuning.training.raw.download`` may not fetch anything. A call that would (no dataset in the
  folder) is recorded in the file ``FMNIST_TEST_DOWNLOADS`` names, where the test session finds
  it and fails. ``FMNIST_TEST_DOWNLOAD=fake`` simulates a network that works: such a call writes a
  tiny dataset at once and goes on (it is still recorded); by default it raises.
  ``FMNIST_TEST_MIRROR=http://127.0.0.1:PORT/`` lets torchvision download for real, from a test's
  own server on loopback (the files' checksums are those of the test's files, so not checked).
"""

from __future__ import annotations

import gzip
import importlib.abc
import importlib.machinery
import ipaddress
import os
import socket
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

LOCAL_NAMES = ("localhost", "localhost.localdomain", "")
FAKE_FILES = {  # name: (IDX magic, shape)
    "train-images-idx3-ubyte.gz": (0x803, (20, 28, 28)),
    "train-labels-idx1-ubyte.gz": (0x801, (20,)),
    "t10k-images-idx3-ubyte.gz": (0x803, (10, 28, 28)),
    "t10k-labels-idx1-ubyte.gz": (0x801, (10,)),
}


class NetworkBlocked(OSError):
    """A test reached for a host other than this one."""


def _local(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host is None or host in LOCAL_NAMES:
        return True
    if not isinstance(host, str):
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _guard_sockets() -> None:
    connect, connect_ex, getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            raise NetworkBlocked(f"tests may not reach {address[0]!r}: the network is blocked")

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        check(sock, address)
        connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
        check(sock, address)
        return connect_ex(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _local(host):
            raise NetworkBlocked(f"tests may not look up {host!r}: the network is blocked")
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = guarded_getaddrinfo


def _write_fake(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (magic, shape) in FAKE_FILES.items():
        payload = bytes(i % 10 for i in range(shape[0] * (784 if len(shape) == 3 else 1)))
        with gzip.open(folder / name, "wb") as f:
            f.write(struct.pack(f">I{len(shape)}I", magic, *shape) + payload)


def guard_download(raw: ModuleType) -> None:
    """Replaces ``raw.download`` (module ``fmnist_tuning.training.raw``) with the guarded one."""
    download = raw.download

    def guarded(data_dir: Any) -> None:
        if raw.find_files(data_dir) is not None:
            return download(data_dir)  # the files are there: nothing is fetched
        with open(os.environ["FMNIST_TEST_DOWNLOADS"], "a") as record:
            record.write(f"pid {os.getpid()}: download into {Path(data_dir).resolve()}\n")
        if mirror := os.environ.get("FMNIST_TEST_MIRROR"):
            from torchvision.datasets import FashionMNIST

            FashionMNIST.mirrors = [mirror]
            FashionMNIST.resources = [(name, None) for name, _ in FashionMNIST.resources]
            return download(data_dir)
        if os.environ.get("FMNIST_TEST_DOWNLOAD") != "fake":
            raise RuntimeError(f"a test tried to download Fashion-MNIST into {data_dir}")
        _write_fake(Path(data_dir) / "FashionMNIST" / "raw")
        return None

    guarded.__wrapped__ = download  # type: ignore[attr-defined]  # for a test that fakes torchvision
    raw.download = guarded


class _RawLoader(importlib.abc.Loader):
    """Loads ``fmnist_tuning.training.raw`` as usual, then guards its download."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        guard_download(module)


class _RawFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "fmnist_tuning.training.raw":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RawLoader(spec.loader)
        return spec


def install() -> None:
    """The guard, in this process (once)."""
    if getattr(socket, "_fmnist_guarded", False):
        return
    socket._fmnist_guarded = True  # type: ignore[attr-defined]
    _guard_sockets()
    if "fmnist_tuning.training.raw" in sys.modules:
        guard_download(sys.modules["fmnist_tuning.training.raw"])
    else:
        sys.meta_path.insert(0, _RawFinder())


if os.environ.get("FMNIST_TEST_OFFLINE") == "1":
    install()
