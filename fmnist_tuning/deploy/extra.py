"""The ``deploy`` extra (onnx, onnxruntime): imported on demand, with a one-line fix when absent."""

from __future__ import annotations

import importlib
from types import ModuleType

from fmnist_tuning.errors import SettingsError

INSTALL = "pip install 'fmnist-tuning[deploy]'"  # or, in a checkout: pip install -e ".[deploy]"


def require(module: str, what: str) -> ModuleType:
    """The module ``module`` of the deploy extra.

    Raises:
        SettingsError: It is not installed; the message names ``what`` needs it and the fix.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SettingsError(f"{what} needs {module}, which is not installed: {INSTALL}") from None
