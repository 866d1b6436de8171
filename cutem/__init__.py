"""cutem: a differentiable transmission-electron-microscopy simulator (NumPy/CuPy).

Modules are named after the physics they hold; every differentiable step is an
:class:`adjoints.Stage` with a hand-derived VJP.

Importing cutem configures the engine from the environment (:func:`configure_engine`):
``CUTEM_THREADS`` (CPU threads; default all usable cores), ``CUTEM_DEVICE``
(``auto|cpu|gpu``; default auto) and ``CUTEM_KEEP_MEMORY`` (``1``: glibc keeps freed memory
in the heap, the default; ``0``: the allocator is left alone).
"""
from __future__ import annotations

import importlib
import os
import pkgutil

import adjoints  # only its settings: NumPy and the rest of the engine load on first use

from .errors import InputError

__version__ = "0.1.0"


def configure_engine(environ=os.environ):
    """Set the engine's threads, default device and allocator from the ``CUTEM_*`` variables.

    Raises :class:`~cutem.errors.InputError` (one line) for a value that is not one of the
    documented ones; an empty variable counts as unset.
    """
    threads = environ.get("CUTEM_THREADS", "").strip()
    device = environ.get("CUTEM_DEVICE", "").strip().lower()
    keep = environ.get("CUTEM_KEEP_MEMORY", "").strip()
    if threads and not (threads.isascii() and threads.isdigit() and int(threads) >= 1):
        raise InputError(f"CUTEM_THREADS must be a positive integer, not {threads!r}")
    if device and device not in ("auto", "cpu", "gpu"):
        raise InputError(f"CUTEM_DEVICE must be auto, cpu or gpu, not {device!r}")
    if keep not in ("", "0", "1"):
        raise InputError(f"CUTEM_KEEP_MEMORY must be 0 or 1, not {keep!r}")
    adjoints.set_threads(int(threads) if threads else None)
    adjoints.set_default_device(device or "auto")
    adjoints.keep_freed_memory(keep != "0")


#: the error of a bad ``CUTEM_*`` variable at import (the engine keeps its defaults meanwhile):
#: raised by the first use of the public API, and by the CLI as bad input (exit 2, one line)
ENVIRONMENT_ERROR = None
try:
    configure_engine()
except InputError as _exc:
    ENVIRONMENT_ERROR = _exc


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
         "Simulation": ("cutem.params", "Simulation")}


def __getattr__(name):
    """Public API, imported on first use (keeps ``import cutem`` and the CLI quick)."""
    if name in _LAZY:
        if ENVIRONMENT_ERROR is not None:
            raise ENVIRONMENT_ERROR
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'cutem' has no attribute {name!r}")


__all__ = list(_LAZY) + ["InputError", "configure_engine", "load_all", "__version__"]
