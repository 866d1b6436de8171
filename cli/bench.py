"""``cutem bench``: the benchmark suite (validation/bench.py) from the command line.

The suite runs as a child process of a source checkout's validation/bench.py: cutem never
imports validation/ (tests/test_import_graph.py).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click

from .common import BadInput, Number, OutPath, device_option


@click.command()
@click.option("--cases", default=None, help="Comma-separated SCENE_N_METHOD, e.g. tmv30_4096_projection "
                                            "(scenes tmv1 tmv3 tmv30 rymv1 rymv20; methods projection, multislice).")
@click.option("--quick", is_flag=True, help="Two small cases.")
@click.option("--repeats", type=Number(1, 1000, integer=True), default=1, show_default=True, help="Warm calls per case (best kept).")
@click.option("--process", is_flag=True, help="Also time a cold `cutem simulate` of the 30-fragment 4096² scene.")
@click.option("--peers", is_flag=True, help="Also run abTEM and cryoJAX (environment of validation/peers/setup.sh).")
@click.option("--grad", is_flag=True, help="Loss+gradient time over one forward micrograph per parameter family "
                                           "(defocus; MTF a, b, gain, dqe; positions; B-factors).")
@click.option("--peers-python", default=None, help="Python of the peers environment (default /tmp/peers-venv).")
@click.option("--csv", "csv_path", default=None, type=OutPath(suffixes=(".txt",)),
              help="Output CSV (default ./cutem_bench.csv; a .txt is written beside it).")
@device_option
def bench(cases, quick, repeats, process, peers, grad, peers_python, csv_path, device):
    """Time every stage and the whole pipeline on TMV and RYMV scenes; print and write the table."""
    if cases is not None and not cases.strip(",").strip():
        raise BadInput("--cases: empty; give SCENE_N_METHOD names (or leave the option out for the default suite)")
    for case in (cases or "").split(","):
        _check_case(case.strip(), device) if cases else None
    script = Path(__file__).resolve().parents[1] / "validation" / "bench.py"
    if not script.is_file():
        raise click.ClickException("validation/bench.py is not beside this cutem (run from a source checkout)")
    argv = []
    if cases:
        argv += ["--cases", cases]
    if quick:
        argv.append("--quick")
    if device:
        argv += ["--device", device]
    argv += ["--repeats", str(repeats)]
    if process:
        argv.append("--process")
    if peers:
        argv.append("--peers")
    if grad:
        argv.append("--grad")
    if peers_python:
        argv += ["--peers-python", peers_python]
    # the working directory, not the checkout's validation/results (the recorded results)
    argv += ["--csv", str(Path(csv_path or ("cutem_bench_grad.csv" if grad else "cutem_bench.csv")).resolve())]
    rc = subprocess.run([sys.executable, str(script), *argv]).returncode
    if rc:
        raise click.exceptions.Exit(rc)  # the suite has printed why (an unknown case, a failure)


_CASE = re.compile(r"^(tmv1|tmv3|tmv30|rymv1|rymv20)_(\d+)_(projection|multislice|slabs)(_[a-z0-9-]+)?$")


def _check_case(case, device):
    """A case name of the suite's form whose grid fits the memory plan (before the suite starts)."""
    m = _CASE.match(case)
    if not m:
        raise BadInput(f"--cases: {case!r} is not SCENE_N_METHOD[_OPTIONS] (scenes tmv1 tmv3 tmv30 rymv1 rymv20; "
                       f"methods projection, multislice, slabs)")
    from cutem import memory
    from cutem.config import default_config
    from cutem.params import Detector, check_value

    n = check_value(Detector, "nx", int(m.group(2)), f"--cases {case}: N")
    cfg = default_config()
    cfg = cfg.replace(detector=cfg.detector.replace(nx=n, ny=n, pixel_size_A=1.0),
                      simulation=cfg.simulation.replace(oversampling=1, padding_A=0.0,
                                                        method="projection" if m.group(3) == "projection"
                                                        else "multislice"))
    need = memory.estimate(cfg, 0, device).peak  # the grid terms alone: a lower bound of the case's peak
    memory.check_bytes(need, f"bench case {case} ({n}x{n} grid)", "a smaller N in --cases", device)


COMMANDS = [bench]
