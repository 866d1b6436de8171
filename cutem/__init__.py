"""cutem: a differentiable transmission-electron-microscopy simulator (NumPy/CuPy).

Modules are named after the physics they hold; every differentiable step is an
:class:`adjoints.Stage` with a hand-derived VJP.
"""
from __future__ import annotations

import importlib
import pkgutil

__version__ = "0.1.0"


def load_all():
    """Import every cutem module so that all stages are registered (for gradcheck)."""
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "cli" and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_LAZY = {"load_config": ("cutem.config", "load_config"), "default_config": ("cutem.config", "default_config"),
         "simulate": ("cutem.pipeline", "simulate"), "value_and_grad_image": ("cutem.pipeline", "value_and_grad_image"),
         "run_simulation": ("cutem.run", "run_simulation"), "ImageModel": ("cutem.imaging", "ImageModel"),
         "Optics": ("cutem.params", "Optics"), "Detector": ("cutem.params", "Detector"),
         "Sample": ("cutem.params", "Sample"), "Geometry": ("cutem.params", "Geometry"),
         "Simulation": ("cutem.params", "Simulation"), "InputError": ("cutem.errors", "InputError")}


def __getattr__(name):
    """Public API, imported on first use (keeps ``import cutem`` and the CLI quick)."""
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'cutem' has no attribute {name!r}")


__all__ = list(_LAZY) + ["load_all", "__version__"]
