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
