"""The ``cutem`` command line: thin click commands over the library.

Each module of this package defines click commands and lists them in ``COMMANDS``; the
group below collects them, so adding a command never edits this file.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from .common import BadInput, guard, run_guarded


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cutem")
def main():
    """cutem: differentiable TEM simulation (micrographs, tilt series, fitting, denoising)."""


for _mod in pkgutil.iter_modules(__path__):
    if _mod.name in ("common",) or _mod.name.startswith("_"):
        continue
    for _cmd in getattr(importlib.import_module(f"{__name__}.{_mod.name}"), "COMMANDS", []):
        main.add_command(guard(_cmd))  # inputs vs outputs checked, outputs one transaction


def entry():
    """Console-script entry: bad input exits 2, internal failure 1."""
    sys.exit(run_guarded(main))


__all__ = ["main", "entry", "BadInput"]
