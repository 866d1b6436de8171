"""Benchmark suite (issue 8): every stage and the whole pipeline on TMV and RYMV scenes.

Scenes (vacuum, so that the peers simulate exactly the same atoms; B-factors from the files):

- ``tmv1``, ``tmv3``, ``tmv30``: 1, 3, 30 TMV fragments (:func:`cutem.structure.tmv_fragment`,
  62,671 atoms each) at random non-overlapping positions, uniformly random orientations;
- ``rymv1``, ``rymv20``: RYMV capsids (PDB 1F2N, the 60-operator assembly of
  validation/data/1f2n.cif: 283,800 atoms each).

Grids 512², 1024², 4096² at 1 Å; phase object (``projection``), multislice with 20 Å
slices, and ``slabs``: multislice with 100 Å slices, the projection with height-dependent
defocus (1/(4λq²) at ⅔ Nyquist: a quarter-period of the outer ring per slab). An optional
fourth part of the case name lists the realism options, joined by ``-`` (issue 14):
``ice`` (400 Å of ice), ``efilter`` (ice + zero-loss energy filter), ``damage`` (exposure
damage), ``frames10`` (a 10-frame movie with 2 Å/frame drift, 0.5 Å/frame jitter and local
motion; the ``detector`` column then times the whole movie), ``tilt60`` (60° tilt), ``still``
(every option of a still image: ice, efilter, damage, tilt60), ``all`` (every one of them, the
movie too); e.g. ``tmv30_4096_slabs_all``. The default detector, 40 e⁻/Å², 1.5 µm
underfocus, 300 kV. A case is one micrograph
through the pipeline's own functions, each stage timed after a warm-up call of the whole
tilt: ``atoms`` (scene → microscope frame), ``potential``, ``exit_wave``, ``optics`` (CTF),
``detector`` (binning, noise, MTF). ``cold`` is the first call in this process (plans,
caches); ``warm`` the sum of the stages on the second. ``peak`` is the tracemalloc peak of a
whole :func:`cutem.pipeline.simulate` call (scene building included) and ``estimate`` the
memory plan's (:mod:`cutem.memory`) for it. A movie's lower bound (the per-frame Poisson field,
MTF and interpolation that no frame can share) is timed by validation/bench_movie_floor.py.

``--process`` also times ``cutem simulate`` on a TOML of the 30-fragment 4096² scene as a
fresh process (cold start: interpreter, imports, reading the PDB, writing the files) with
its maximum resident set size. ``--peers`` runs abTEM and cryoJAX on the same atoms and grid
from the separate environment made by validation/peers/setup.sh (cutem never imports them).

``--grad`` times gradients instead (issue 18): per case, the scene built once (as a fitting
loop does), one forward micrograph (:func:`cutem.pipeline.simulate`) and
:func:`cutem.pipeline.value_and_grad_image` of the mean squared difference to that micrograph
for each parameter family of ``GRAD_WRT`` (defocus; detector MTF a, b, gain and dqe; atom
positions; B-factors), alternated over ``--repeats`` rounds; the table gives each
loss-and-gradient time over the forward time of the same round (min, median, max). With
``--peers`` cryoJAX's gradients (defocus, positions) of the same atoms run in the same
invocation (validation/peers/cryojax_peer.py ``gradients``).

Run:  python validation/bench.py [--cases tmv30_4096_projection,...] [--quick] [--process] [--peers]
      python validation/bench.py --grad [--cases ...] [--repeats 3] [--peers]
Writes validation/results/bench.csv and bench.txt (the command, the machine, the table), with
``--grad`` bench_grad.csv and bench_grad.txt.
"""
from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RYMV = HERE / "data" / "1f2n.cif"
TMV_DIR = HERE.parent / "cutem" / "data" / "tmv"

SCENES = {"tmv1": ("tmv", 1), "tmv3": ("tmv", 3), "tmv30": ("tmv", 30), "rymv1": ("rymv", 1),
          "rymv20": ("rymv", 20)}
DEFAULT_CASES = [
    "tmv1_512_projection", "tmv1_1024_projection", "tmv1_4096_projection",
    "tmv3_512_projection", "tmv3_1024_projection", "tmv3_4096_projection",
    "tmv30_4096_projection", "rymv1_512_projection", "rymv1_1024_projection", "rymv20_4096_projection",
    "tmv1_512_multislice", "tmv3_1024_multislice", "tmv30_4096_multislice",
]
#: issue 14: each realism option alone, then all of them (compare with tmv30_4096_projection: ≤ 1.5×)
REALISM_CASES = [
    "tmv30_4096_projection_ice", "tmv30_4096_projection_efilter", "tmv30_4096_projection_damage",
    "tmv30_4096_projection_frames10", "tmv30_4096_slabs", "tmv30_4096_slabs_tilt60",
    "tmv30_4096_projection_still", "tmv30_4096_projection_all", "tmv30_4096_slabs_all",
]
DEFAULT_CASES += REALISM_CASES
QUICK_CASES = ["tmv1_512_projection", "tmv1_512_multislice"]
OPTIONS = ("ice", "efilter", "damage", "frames10", "tilt60")
#: names for sets of options (module docstring)
OPTION_SETS = {"all": set(OPTIONS), "still": {"ice", "efilter", "damage", "tilt60"}}
STAGES = ("atoms", "potential", "exit_wave", "optics", "detector")
#: the gradient table's parameter families (issue 18)
GRAD_WRT = {"defocus": ("defocus_u_A",), "mtf": ("mtf_a", "mtf_b", "gain", "dqe"), "positions": ("positions",),
            "b_factors": ("b_factors",)}
GRAD_CASES = ["tmv1_1024_projection", "tmv30_4096_projection", "rymv20_4096_projection", "tmv30_4096_multislice"]


def particle_toml(kind, count, base="."):
    """The [[particles]] table of a scene; paths relative to ``base``."""
    if kind == "tmv":
        s, t = os.path.relpath(TMV_DIR / "2OM3_model1.pdb", base), os.path.relpath(TMV_DIR / "2OM3_transf.txt", base)
        return (f'[[particles]]\nname = "TMV"\nstructure = "{s}"\ntransforms = "{t}"\nplacement = "random"\n'
                f"count = {count}\n")
    s = os.path.relpath(RYMV, base)
    return (f'[[particles]]\nname = "RYMV"\nstructure = "{s}"\nassembly = true\nplacement = "random"\n'
            f"count = {count}\n")


def case_toml(case, base=".", output=None):
    scene, n, method, options = parse_case(case)
    kind, count = SCENES[scene]
    ice = "ice" in options or "efilter" in options
    extra = {"optics": 'energy_filter_slit_eV = 20.0\n' if "efilter" in options else "",
             "detector": ('frames = 10\nmotion_drift_A_per_frame = 2.0\nmotion_jitter_A_per_frame = 0.5\n'
                          'motion_local_A_per_frame = 0.5\n') if "frames10" in options else "",
             "sample": "damage = true\n" if "damage" in options else ""}
    tilt = 60.0 if "tilt60" in options else 0.0
    return f"""# cutem benchmark case {case} (validation/bench.py)
seed = 1
output = "{output or case}"

[optics]
voltage_kV = 300.0
defocus_u_A = 15000.0
defocus_v_A = 15000.0
cs_mm = 2.7
amplitude_contrast = 0.07
{extra["optics"]}
[detector]
nx = {n}
ny = {n}
pixel_size_A = 1.0
dose_e_per_A2 = 40.0
{extra["detector"]}
[sample]
diameter_A = 100000.0
thickness_center_A = 400.0
thickness_edge_A = 400.0
ice = {"true" if ice else "false"}
{extra["sample"]}
[simulation]
method = "{"projection" if method == "projection" else "multislice"}"
slice_thickness_A = {100.0 if method == "slabs" else 20.0}
oversampling = 1

[geometry]
tilt_angles_deg = [{tilt}]

{particle_toml(kind, count, base)}"""


def parse_case(case):
    """(scene, grid, method, options) of SCENE_N_METHOD[_OPTION-OPTION...] (module docstring)."""
    parts = case.split("_")
    scene, n, method = parts[:3] if len(parts) in (3, 4) else ("?", "0", "?")
    options = set(parts[3].split("-")) if len(parts) == 4 else set()
    for name, members in OPTION_SETS.items():
        if name in options:
            options = (options - {name}) | members
    if (scene not in SCENES or method not in ("projection", "multislice", "slabs") or not n.isdigit() or int(n) < 16
            or not options <= set(OPTIONS)):
        raise SystemExit(f"unknown case {case!r}: SCENE_N_METHOD[_OPTIONS] with SCENE in {sorted(SCENES)}, "
                         f"METHOD projection, multislice or slabs, OPTIONS of {OPTIONS + tuple(OPTION_SETS)} joined by -")
    return scene, int(n), method, options


def config_of(case):
    from cutem.config import load_config

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "case.toml"
        p.write_text(case_toml(case, base=d))
        return load_config(p)


def device_name(device):
    import adjoints.backend as B

    xp = B.get_xp(device)
    if xp is not np:
        props = xp.cuda.runtime.getDeviceProperties(0)
        return f"gpu ({props['name'].decode()})"
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu ({os.cpu_count()} cores{', ' + model if model else ''})"


def _sync(xp):
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


def run_stages(scene, cfg, xp):
    """One tilt through the pieces of its image model (:class:`cutem.imaging.ImageModel`); seconds each."""
    import adjoints.backend as B
    from cutem.imaging import ImageModel, tilt_seed

    t = {}
    t0 = time.perf_counter()
    model = ImageModel.from_config(cfg, 0, scene=scene, xp=xp)
    t1 = time.perf_counter()
    t["atoms"] = t1 - t0
    v, v_abs = model.potential()
    _sync(xp)
    t2 = time.perf_counter()
    t["potential"] = t2 - t1
    wave = model.energy_filter(model.exit_wave(v, v_abs))
    _sync(xp)
    t3 = time.perf_counter()
    t["exit_wave"] = t3 - t2
    del v, v_abs
    inten = model.intensity(wave)
    _sync(xp)
    t4 = time.perf_counter()
    t["optics"] = t4 - t3
    del wave
    if cfg.detector.frames > 1:  # the whole movie: per-frame damage, motion and detection
        from cutem.movie import movie_tilt

        img = movie_tilt(model, cfg.seed, twins=False)[0].sum(0)   # as cutem simulate (cutem.movie.simulate_movies)
    else:
        res = model.detect(inten, rng=B.default_rng(tilt_seed(cfg.seed, 0), xp), estimator="score")
        img = B.to_numpy(res.image)
    t["detector"] = time.perf_counter() - t4
    return t, img, int(model.atoms.n)


def bench_case(case, device=None, repeats=1):
    import adjoints.backend as B
    from cutem import memory as M
    from cutem import pipeline as P

    cfg = config_of(case)
    xp = B.get_xp(device)
    t0 = time.perf_counter()
    scene = P.build_scene(cfg)
    t_scene = time.perf_counter() - t0
    cold, _, n = run_stages(scene, cfg, xp)
    warm = None
    for _ in range(max(1, repeats)):
        gc.collect()
        t, img, _ = run_stages(scene, cfg, xp)
        if warm is None or sum(t.values()) < sum(warm.values()):
            warm = t
    est = M.estimate(cfg, scene, "gpu" if xp is not np else "cpu")
    del scene
    gc.collect()
    peak, rss = peak_in_fresh_process(case, device)
    total = sum(warm.values())
    row = {"case": case, "atoms": n, "grid": cfg.detector.nx, "method": cfg.simulation.method,
           "slices": est.n_slices, "scene_s": round(t_scene, 3), "cold_s": round(sum(cold.values()), 3),
           "warm_s": round(total, 3)}
    row.update({f"{k}_s": round(v, 3) for k, v in warm.items()})
    row.update({"atoms_per_s": round(n / warm["potential"]), "peak_GB": round(peak / 1e9, 3),
                "rss_growth_GB": round(rss / 1e9, 3),
                "estimate_GB": round(est.peak / 1e9, 3), "estimate_error": round(est.peak / peak - 1, 3),
                "device": device_name(device)})
    return row


PEAK_CHILD = r"""
import json, sys, resource
sys.path.insert(0, sys.argv[3])
from validation.bench import config_of
from cutem import memory as M, pipeline as P
import adjoints.backend as B
case, device = sys.argv[1], (sys.argv[2] if sys.argv[2] != "-" else None)
cfg = config_of(case)
xp = B.get_xp(device)
dev = "gpu" if xp.__name__ == "cupy" else "cpu"
rss0 = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
_, peak = M.measure_peak(lambda: P.simulate(cfg, device=device), device=dev)
print(json.dumps({"peak": peak, "rss_growth": M.max_rss_bytes() - rss0}))
"""


def peak_in_fresh_process(case, device=None):
    """(tracemalloc or CuPy-pool peak of one whole simulate(), max RSS − RSS after imports) in a
    new interpreter, so that caches filled by earlier cases do not hide allocations."""
    import json

    r = subprocess.run([sys.executable, "-c", PEAK_CHILD, case, device or "-", str(HERE.parent)],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"peak measurement of {case} failed: {r.stderr[-2000:]}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return d["peak"], d["rss_growth"]


def process_run(case="tmv30_4096_projection", device=None):
    """Cold ``cutem simulate`` of a TOML of ``case``: wall seconds and the child's max RSS."""
    d = Path(tempfile.mkdtemp(prefix="cutem-bench-"))
    try:
        toml = d / f"{case}.toml"
        toml.write_text(case_toml(case, base=d))
        exe = shutil.which("cutem")
        cmd = [exe] if exe else [sys.executable, "-m", "cutem.cli"]
        cmd += ["simulate", str(toml), "--out", str(d / "out"), "-q"] + (["--device", device] if device else [])
        # a wrapper whose only child is `cutem simulate`: its RUSAGE_CHILDREN is that process's
        wrap = ("import json, resource, subprocess, sys, time\n"
                "t0 = time.perf_counter(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
                "w = time.perf_counter() - t0\n"
                "print(json.dumps({'rc': r.returncode, 'wall': w, 'err': r.stderr[-2000:],\n"
                "                  'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))\n")
        import json

        r = subprocess.run([sys.executable, "-c", wrap, *cmd], capture_output=True, text=True)
        d = json.loads(r.stdout.strip().splitlines()[-1])
        if d["rc"]:
            raise RuntimeError(f"cutem simulate failed: {d['err']}")
        wall, rss = d["wall"], d["rss"]
        return {"case": case, "process_wall_s": round(wall, 2), "process_max_rss_GB": round(rss / 1e9, 3),
                "command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def grad_case(case, device=None, repeats=3):
    """One row of the gradient table: forward seconds and loss+gradient / forward per family."""
    import adjoints.backend as B
    from adjoints import ops
    from cutem import pipeline as P

    cfg = config_of(case)
    xp = B.get_xp(device)
    scene = P.build_scene(cfg)

    def forward():
        return P.simulate(cfg, scene=scene, device=device).images[0]

    target = xp.asarray(forward())

    def loss(im):
        return ops.mean(ops.square(im - target))

    def grad(wrt):
        val, g, _ = P.value_and_grad_image(cfg, loss, list(wrt), scene=scene, device=device)
        for v in g.values():
            B.to_numpy(v)   # the gradient on the host: the GPU has finished
        return val

    for wrt in GRAD_WRT.values():   # first calls: plans, caches, kernels
        grad(wrt)
    fwd, ratios = [], {k: [] for k in GRAD_WRT}
    for _ in range(max(1, repeats)):
        gc.collect()
        t0 = time.perf_counter()
        forward()
        f = time.perf_counter() - t0
        fwd.append(f)
        for k, wrt in GRAD_WRT.items():
            gc.collect()
            t0 = time.perf_counter()
            grad(wrt)
            ratios[k].append((time.perf_counter() - t0) / f)
    row = {"case": case, "atoms": int(scene.n_atoms), "grid": cfg.detector.nx, "method": cfg.simulation.method,
           "repeats": len(fwd), "forward_s": round(float(np.median(fwd)), 3)}
    for k, r in ratios.items():
        row.update({f"{k}_min": round(min(r), 2), f"{k}_median": round(float(np.median(r)), 2),
                    f"{k}_max": round(max(r), 2)})
    row["device"] = device_name(device)
    return row


GRAD_COLUMNS = ["case", "atoms", "grid", "method", "repeats", "forward_s",
                *[f"{k}_{s}" for k in GRAD_WRT for s in ("min", "median", "max")], "device"]


def format_grad_table(rows):
    head = ["case", "atoms", "forward s", *[f"{k} ×" for k in GRAD_WRT]]
    lines = ["  ".join(f"{h:>18}" if i else f"{h:<24}" for i, h in enumerate(head))]
    for r in rows:
        vals = [r["case"], r["atoms"], r["forward_s"],
                *[f"{r[f'{k}_median']} [{r[f'{k}_min']}, {r[f'{k}_max']}]" for k in GRAD_WRT]]
        lines.append("  ".join(f"{v:>18}" if i else f"{v:<24}" for i, v in enumerate(vals)))
    return "\n".join(lines)


def cryojax_gradients(rows, python, repeats=3):
    """cryoJAX's loss+gradient / forward for defocus and positions on the atoms of the largest
    projection case of ``rows`` (the peers' environment, a separate process)."""
    from validation.peers.compare import run_one, write_atoms

    proj = [r for r in rows if r["method"] == "projection"]
    if not proj:
        return []
    case = max(proj, key=lambda r: r["atoms"] * r["grid"] ** 2)["case"]
    with tempfile.TemporaryDirectory() as d:
        npz = Path(d) / "atoms.npz"
        write_atoms(case, npz)
        info = run_one(python, "cryojax-grad", npz, Path(d) / "out.npz", repeats=repeats)
    if "error" in info:
        return [f"{case} cryojax gradients: NOT RUN: {info['error']}"]
    return [f"{case} cryojax {info.get('version', '')} ({info.get('model', '')}): forward {info['forward_s']:.2f} s; "
            f"loss+gradient / forward: defocus {info['defocus']:.2f}, positions {info['positions']:.2f} "
            f"(best of {info.get('repeats', repeats)})"]


def write_grad_results(rows, extra_lines, argv, csv_path=None, load_start=None):
    note = ("forward s = one cutem.simulate micrograph (scene built once); each family: "
            "value_and_grad_image(mean squared difference to that micrograph) / forward of the same round, "
            "median [min, max] over the rounds; families: " +
            "; ".join(f"{k} = {', '.join(v)}" for k, v in GRAD_WRT.items()))
    return write_results(rows, extra_lines, argv, csv_path or RESULTS / "bench_grad.csv", columns=GRAD_COLUMNS,
                         table=format_grad_table, note=note, load_start=load_start)


COLUMNS = ["case", "atoms", "grid", "method", "slices", "scene_s", "cold_s", "warm_s", *[f"{s}_s" for s in STAGES],
           "atoms_per_s", "peak_GB", "rss_growth_GB", "estimate_GB", "estimate_error", "device"]


def format_table(rows):
    head = ["case", "atoms", "slices", "cold s", "warm s", "atoms", "potent.", "exit", "optics", "detect.",
            "atoms/s", "peak GB", "est. GB", "est/peak-1"]
    lines = ["  ".join(f"{h:>10}" if i else f"{h:<24}" for i, h in enumerate(head))]
    for r in rows:
        vals = [r["case"], r["atoms"], r["slices"], r["cold_s"], r["warm_s"], *[r[f"{s}_s"] for s in STAGES],
                f"{r['atoms_per_s']:.3g}", r["peak_GB"], r["estimate_GB"], f"{100 * r['estimate_error']:+.0f}%"]
        lines.append("  ".join(f"{v:>10}" if i else f"{v:<24}" for i, v in enumerate(vals)))
    return "\n".join(lines)


NOTE = ("times in seconds (warm = sum of the stages on the second call; cold = first call in the process); "
        "atoms/s = atoms / potential time; peak = tracemalloc peak of a whole simulate() in a fresh process "
        "(rss = its max RSS minus the RSS after imports); est. = cutem.memory estimate")


def write_results(rows, extra_lines, argv, csv_path=None, txt_path=None, *, columns=COLUMNS, table=format_table,
                  note=NOTE, load_start=None):
    RESULTS.mkdir(exist_ok=True)
    csv_path = Path(csv_path or RESULTS / "bench.csv")
    txt_path = Path(txt_path or csv_path.with_suffix(".txt"))
    from cutem import io

    with io.atomic_path(csv_path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k) for k in columns})
    start = "" if load_start is None else f"at the start {load_start:.1f}, "
    head = [f"command: {' '.join(argv)}",
            f"machine: {device_name(rows[0]['device'].split()[0] if rows else None)}, {platform.platform()}, "
            f"python {platform.python_version()}, numpy {np.__version__}",
            f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {start}at the end "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other jobs on a shared machine slow every number)",
            note, ""]
    text = "\n".join(head) + table(rows) + ("\n\n" + "\n".join(extra_lines) if extra_lines else "") + "\n"
    with io.atomic_path(txt_path, suffix=".txt") as tmp:
        Path(tmp).write_text(text)
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=None, help="comma-separated SCENE_N_METHOD (default: the suite)")
    ap.add_argument("--quick", action="store_true", help="two small cases (CI)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--process", action="store_true", help="cold `cutem simulate` of the 30-fragment 4096² TOML")
    ap.add_argument("--peers", action="store_true", help="abTEM and cryoJAX from the peers environment")
    ap.add_argument("--peers-python", default=os.environ.get("CUTEM_PEERS_PYTHON", "/tmp/peers-venv/bin/python"))
    ap.add_argument("--csv", default=None, help="output CSV (default validation/results/bench.csv)")
    ap.add_argument("--grad", action="store_true",
                    help="loss+gradient / forward per parameter family (issue 18; default cases GRAD_CASES)")
    ap.add_argument("--peers-only", default=None,
                    help="comma-separated peers (abtem,cryojax) to run against the cases already in --csv; "
                         "their lines are appended to the .txt")
    args = ap.parse_args(argv)
    if args.peers_only:
        from validation.peers.compare import run_peers

        csv_path = Path(args.csv or RESULTS / "bench.csv")
        with open(csv_path, newline="") as fh:
            rows = [{k: (float(v) if k.endswith("_s") else int(v) if k in ("atoms", "grid", "slices") else v)
                     for k, v in r.items()} for r in csv.DictReader(fh)]
        if args.cases:
            rows = [r for r in rows if r["case"] in args.cases.split(",")]
        lines = run_peers(rows, args.peers_python, args.device, only=args.peers_only.split(","))
        txt = csv_path.with_suffix(".txt")
        cmd = " ".join(["python", "validation/bench.py", *(argv if argv is not None else sys.argv[1:])])
        with open(txt, "a") as fh:
            fh.write(f"\nappended {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{cmd}` "
                     f"(cutem times from the table above; load average {os.getloadavg()[0]:.1f}):\n")
            fh.write("\n".join(lines) + "\n")
        print("\n".join(lines))
        return rows
    argv_all = ["python", "validation/bench.py", *(argv if argv is not None else sys.argv[1:])]
    if args.grad:
        load0 = os.getloadavg()[0]
        cases = args.cases.split(",") if args.cases else (QUICK_CASES[:1] if args.quick else GRAD_CASES)
        rows = []
        for c in cases:
            parse_case(c)
            rows.append(grad_case(c, args.device, args.repeats))
            print(format_grad_table(rows[-1:]).splitlines()[1], flush=True)
        extra = cryojax_gradients(rows, args.peers_python, args.repeats) if args.peers else []
        print(write_grad_results(rows, extra, argv_all, args.csv, load0))
        return rows
    cases = args.cases.split(",") if args.cases else (QUICK_CASES if args.quick else DEFAULT_CASES)
    rows, extra = [], []
    for c in cases:
        parse_case(c)
        r = bench_case(c, args.device, args.repeats)
        rows.append(r)
        print(format_table([r]).splitlines()[1], flush=True)
    if args.process:
        p = process_run(device=args.device)
        extra.append(f"cold process: `{p['command']}` on tmv30_4096_projection (TOML written by bench.py): "
                     f"{p['process_wall_s']} s wall, max RSS {p['process_max_rss_GB']} GB")
        print(extra[-1], flush=True)
    if args.peers:
        from validation.peers.compare import run_peers

        extra += run_peers(rows, args.peers_python, args.device)
        for line in extra[-len(extra):]:
            print(line, flush=True)
    text = write_results(rows, extra, ["python", "validation/bench.py", *(argv if argv is not None else sys.argv[1:])],
                         args.csv)
    print(text)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
