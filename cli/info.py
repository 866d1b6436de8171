"""``cutem info`` and ``cutem gradcheck``."""
from __future__ import annotations

import platform
import sys

import click
import numpy as np

from .common import device_option


@click.command()
@device_option
def info(device):
    """Versions, the device found, the FFT backend and threads."""
    import scipy

    import adjoints.backend as B
    import cutem

    xp = B.get_xp(device)
    lines = [f"cutem {cutem.__version__}", f"python {platform.python_version()} ({sys.platform})",
             f"numpy {np.__version__}", f"scipy {scipy.__version__}"]
    for mod in ("cupy", "gemmi", "mrcfile", "h5py", "skimage", "dask"):
        try:
            m = __import__(mod)
            lines.append(f"{mod} {getattr(m, '__version__', '?')}")
        except Exception:
            lines.append(f"{mod} not installed")
    lines.append(f"CUDA device usable: {B.cuda_available()}")
    if xp is not np:
        props = xp.cuda.runtime.getDeviceProperties(0)
        lines.append(f"device: gpu ({props['name'].decode()}, "
                     f"{props['totalGlobalMem'] / 2**30:.1f} GiB)")
    else:
        lines.append("device: cpu")
    lines.append(f"FFT backend: {B.fft_backend_name(xp)}")
    lines.append(f"threads: {B.threads()} (set CUTEM_THREADS to change)")
    click.echo("\n".join(lines))


@click.command()
@click.option("--backend", "backends", multiple=True, type=click.Choice(["numpy", "cupy"]),
              help="Backends to check (default: numpy, and cupy when a GPU is usable).")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(["float64", "float32"]),
              help="Precisions (default: float64).")
@click.option("--stage", "names", multiple=True, help="Only stages whose name contains this.")
def gradcheck(backends, dtypes, names):
    """Dot test and finite-difference VJP check of every registered stage."""
    import adjoints.backend as B
    import cutem
    from adjoints.gradcheck import format_table, run

    cutem.load_all()
    if not backends:
        backends = ("numpy", "cupy") if B.cuda_available() else ("numpy",)
    from adjoints.stage import REGISTRY

    for n in names:  # a name that matches nothing would check nothing and pass
        if not any(n in s for s in REGISTRY):
            raise click.BadParameter(f"{n!r} matches no registered stage (known: {', '.join(sorted(REGISTRY))})",
                                     param_hint="--stage")
    rows = run(backends, tuple(np.dtype(d) for d in (dtypes or ("float64",))), names)
    click.echo(format_table(rows))
    if not all(r.passed for r in rows):
        raise click.exceptions.Exit(1)


COMMANDS = [info, gradcheck]
