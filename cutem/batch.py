"""Batch generation: many micrographs or tilt series over a base config, one Dask task each.

An item is the base :class:`cutem.config.RunConfig` with some values replaced — from a
parameter table (CSV, one row per item) or drawn at random from ranges — and its own seed.
Each item runs :func:`cutem.run.run_simulation` (atomic outputs ``NAME_#####.mrc``, ...,
``_params.toml``) as one task on Dask: the local threaded, process or synchronous
scheduler, or a ``dask.distributed`` cluster given its scheduler address (the output folder
must then be shared with the workers).

Seeds: item ``i`` of a batch with seed ``s`` simulates with ``SeedSequence([s, i, 0])`` and
draws its random parameters from ``SeedSequence([s, i, 1])``, so an item does not depend on
the other items, on the order they run in, or on the scheduler.

Manifest ``manifest.csv`` in the output folder: one row per item (item, status, output
file, seed, seconds, every varied parameter), rewritten atomically (temporary file +
rename) by the driver as items finish (at most every :data:`MANIFEST_INTERVAL_S`) and at the
end. Re-running the same batch skips the complete items and (re)computes the rest. An item
is complete when all its output files exist and its ``NAME_params.toml`` (written last)
holds its resolved parameters (:func:`is_complete`), so an item that a worker finished is
not redone even when the driver was killed before it could record it. An interrupted batch
(Ctrl-C, SIGTERM, SIGKILL) leaves only complete files under final names (every file is
written atomically), so resuming neither redoes finished items nor trusts half-written ones.

Varied parameters (table columns or range options), besides any ``section.field`` of the
config (e.g. ``optics.cs_mm``, ``detector.dose_e_per_A2``):

``particles``       count of every particle kind, placed at random (orientations uniformly random)
``defocus_A``       ``optics.defocus_u_A`` and ``defocus_v_A`` (astigmatism of the base kept)
``dose_e_per_A2``   ``detector.dose_e_per_A2``
``ice_thickness_A`` ``sample.thickness_center_A``; the edge keeps the base's edge/centre ratio
``seed``            (table only) the item's simulation seed
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from adjoints import settings

from . import io
from .config import RunConfig
from .params import field_type
from .errors import InputError

MANIFEST = "manifest.csv"
#: seconds between manifest rewrites while items finish (and one at the end): a rewrite of a
#: 200-row manifest took 2-5 ms (temporary file + rename), once per 256² item 3-7 % of a
#: serial batch; resuming does not depend on it (:func:`is_complete`)
MANIFEST_INTERVAL_S = 1.0
SHORT = ("particles", "defocus_A", "dose_e_per_A2", "ice_thickness_A")
_SECTIONS = ("optics", "detector", "sample", "simulation")


@dataclass(frozen=True)
class Item:
    index: int
    seed: int
    params: dict          #: name -> value (the varied parameters, in column order)
    config: RunConfig


def item_seed(batch_seed: int, index: int) -> int:
    """Simulation seed of item ``index`` (independent of every other item)."""
    return int(np.random.SeedSequence([int(batch_seed), int(index), 0]).generate_state(1, np.uint64)[0] >> 1)


def _param_rng(batch_seed, index):
    return np.random.default_rng(np.random.SeedSequence([int(batch_seed), int(index), 1]))


def _field_type(section, name, where):
    """The declared type of ``section.name`` (its annotation: a field that may be none, like
    ``optics.aperture_diameter_um``, is typed by its value type)."""
    cls = type(getattr(RunConfig(), section))
    if name not in {f.name for f in fields(cls)}:
        raise InputError(f"{where}: {section} has no field {name!r}")
    return field_type(cls, name)[0]


def _cell_number(name, value, where):
    """A table cell or range end as a finite float, or a one-line InputError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {name} = {value!r} is not a number") from None
    if not math.isfinite(v):
        raise InputError(f"{where}: {name} = {value!r} must be a finite number")
    return v


def _coerce(name, value, where):
    """Value of a table cell or a range draw, typed like the field it sets."""
    if name == "particles":
        v = _cell_number(name, value, where)
        if v != int(v) or v < 1:
            raise InputError(f"{where}: particles = {value!r} must be an integer >= 1")
        return int(v)
    if name in SHORT:
        return _cell_number(name, value, where)
    if name == "seed":
        v = _cell_number(name, value, where)
        if v != int(v) or not 0 <= v < 2 ** 63:
            raise InputError(f"{where}: seed = {value!r} must be a non-negative integer")
        return int(v)
    if "." not in name:
        raise InputError(f"{where}: unknown parameter {name!r} (known: {', '.join(SHORT)}, seed, or section.field "
                         f"with section in {', '.join(_SECTIONS)})")
    section, key = name.split(".", 1)
    if section not in _SECTIONS:
        raise InputError(f"{where}: unknown section {section!r} in {name!r} (known: {', '.join(_SECTIONS)})")
    t = _field_type(section, key, where)
    try:
        if t is bool:
            text = str(value).strip().lower()
            if text not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError
            return text in ("1", "true", "yes")
        if t is int:
            f = _cell_number(name, value, where)
            if f != int(f):
                raise ValueError
            return int(f)
        if t is float:
            return _cell_number(name, value, where)
        return str(value)
    except ValueError:
        raise InputError(f"{where}: {name} = {value!r} is not a {t.__name__}") from None


def apply_params(cfg: RunConfig, params: dict) -> RunConfig:
    """``cfg`` with the varied parameters set (see the module docstring)."""
    for name, v in params.items():
        if name == "seed":
            continue
        if name == "particles":
            if not cfg.particles:
                raise InputError("particles: the base config has no [[particles]] to place")
            cfg = cfg.replace(particles=tuple(replace(p, placement="random", count=int(v)) for p in cfg.particles))
        elif name == "defocus_A":
            o = cfg.optics
            half = 0.5 * (o.defocus_u_A - o.defocus_v_A)
            cfg = cfg.replace(optics=o.replace(defocus_u_A=v + half, defocus_v_A=v - half))
        elif name == "dose_e_per_A2":
            cfg = cfg.replace(detector=cfg.detector.replace(dose_e_per_A2=v))
        elif name == "ice_thickness_A":
            s = cfg.sample
            ratio = s.thickness_edge_A / s.thickness_center_A if s.thickness_center_A > 0 else 1.0
            cfg = cfg.replace(sample=s.replace(thickness_center_A=v, thickness_edge_A=v * ratio))
        else:
            section, key = name.split(".", 1)
            cfg = cfg.replace(**{section: getattr(cfg, section).replace(**{key: v})})
    return cfg


def parse_range(text, name, integer=False):
    """``"a:b"`` (or one number) → (lo, hi) with lo ≤ hi."""
    parts = str(text).split(":")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"--{name} {text!r}: give LO:HI or one number") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or not all(math.isfinite(v) for v in vals) or vals[0] > vals[1]:
        raise InputError(f"--{name} {text!r}: give LO:HI with LO <= HI")
    if integer and any(v != int(v) or v < 1 for v in vals):
        raise InputError(f"--{name} {text!r}: integers >= 1")
    return tuple(vals)


def items_from_ranges(cfg: RunConfig, count: int, seed: int, ranges: dict, name=None):
    """``count`` items, each parameter drawn uniformly from its (lo, hi) range (integers for
    ``particles``, inclusive) with the item's own generator."""
    if count < 1:
        raise InputError(f"--count {count} must be >= 1")
    for k in ranges:
        _coerce(k, ranges[k][0], "ranges")
    base = name or cfg.output
    out = []
    for i in range(count):
        rng = _param_rng(seed, i)
        params = {}
        for k in sorted(ranges):  # fixed draw order: the item does not depend on option order
            lo, hi = ranges[k]
            v = int(rng.integers(int(lo), int(hi) + 1)) if k == "particles" else float(rng.uniform(lo, hi))
            params[k] = _coerce(k, v, f"range {k}")
        s = item_seed(seed, i)
        out.append(Item(i, s, params, apply_params(cfg, params).replace(seed=s, output=f"{base}_{i:05d}")))
    return out


def items_from_table(cfg: RunConfig, path, seed: int, name=None):
    """One item per row of a CSV table whose header names the varied parameters."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as e:
        raise InputError(f"{path}: cannot read the parameter table ({e.strerror})") from None
    if not rows:
        raise InputError(f"{path}: the parameter table has no rows")
    base = name or cfg.output
    out = []
    for r, row in enumerate(rows):
        where = f"{path}:{r + 2}"
        params = {}
        for k, v in row.items():
            if k is None:
                raise InputError(f"{where}: more cells than header columns")
            k = k.strip()
            if k in ("", "item"):
                continue
            if v is None or str(v).strip() == "":
                raise InputError(f"{where}: empty cell in column {k!r}")
            params[k] = _coerce(k, v.strip(), where)
        s = params.get("seed", item_seed(seed, r))
        try:
            c = apply_params(cfg, params)
        except InputError as e:
            raise InputError(f"{where}: {e}") from None
        out.append(Item(r, int(s), params, c.replace(seed=int(s), output=f"{base}_{r:05d}")))
    return out


# ------------------------------------------------------------------------------ manifest
def _outputs(out_dir, item: Item):
    from .run import output_paths

    return output_paths(out_dir, item.config.output)


def _columns(items):
    cols = []
    for it in items:
        for k in it.params:
            if k not in cols and k != "seed":
                cols.append(k)
    return ["item", "status", "output", "seed", "seconds"] + cols


def read_manifest(out_dir) -> dict:
    """item index → row (dict of strings); {} when there is none."""
    f = Path(out_dir) / MANIFEST
    if not f.is_file():
        return {}
    with open(f, newline="") as fh:
        return {int(r["item"]): r for r in csv.DictReader(fh) if r.get("item", "").strip().isdigit()}


def _row(item: Item, status, seconds=""):
    r = {"item": str(item.index), "status": status, "output": item.config.output + ".mrc", "seed": str(item.seed),
         "seconds": seconds}
    for k, v in item.params.items():
        if k != "seed":
            r[k] = repr(v) if isinstance(v, float) else str(v)
    return r


def write_manifest(out_dir, items, rows):
    cols = _columns(items)
    # a progress record: renamed at once, also inside a command's output transaction
    with io.atomic_path(Path(out_dir) / MANIFEST, suffix=".csv", immediate=True) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for it in items:
                w.writerow(rows[it.index])


def _resolved_text(text):
    return "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))


def is_complete(out_dir, item: Item, row=None) -> bool:
    """Every output of the item exists and its ``NAME_params.toml`` holds the item's resolved
    parameters (seed included; comment lines aside).

    :func:`cutem.run.run_simulation` writes that file after all the other outputs, each file
    atomically, so it is the item's own proof of completion: an item finished by a worker is
    recognised even when the batch was killed before the driver recorded it in the manifest
    (the manifest ``row`` is not needed), and a base config changed in a field that is not a
    varied parameter makes the item stale.
    """
    from .config import to_toml

    paths = _outputs(out_dir, item)
    if not all(p.is_file() for p in paths.values()):
        return False
    try:
        have = paths["params"].read_text()
    except (OSError, UnicodeDecodeError):
        return False
    return _resolved_text(have) == _resolved_text(to_toml(item.config))


# ------------------------------------------------------------------------- threads per task
_BLAS_PREFIXES = ("openblas", "scipy_openblas")
_BLAS_SUFFIXES = ("", "64_", "_64_")


_BLAS_LIBS = (None, [])  # ((pid, modules imported), libraries) of the last look-up


def _openblas_libraries():
    """``(set_num_threads, get_num_threads)`` of every OpenBLAS loaded in this process
    (looked up again only in a new process or after imports: 2 ms, 3 % of a 256² item).

    NumPy's and SciPy's wheels each bundle their own OpenBLAS (symbols prefixed
    ``scipy_openblas`` and suffixed ``64_`` for the 64-bit-integer build). Found through
    ``/proc/self/maps``, so Linux only; elsewhere (or with another BLAS) nothing is found and
    nothing is changed.
    """
    import ctypes

    global _BLAS_LIBS
    key = (os.getpid(), len(sys.modules))
    if _BLAS_LIBS[0] == key:
        return _BLAS_LIBS[1]
    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({ln.split()[-1] for ln in fh if "openblas" in ln.rsplit("/", 1)[-1].lower()
                            and ".so" in ln})
    except OSError:
        return []
    out = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)  # already loaded: the same handle, no new copy
        except OSError:
            continue
        for pre in _BLAS_PREFIXES:
            for suf in _BLAS_SUFFIXES:
                set_ = getattr(lib, f"{pre}_set_num_threads{suf}", None)
                get = getattr(lib, f"{pre}_get_num_threads{suf}", None)
                if set_ is not None and get is not None:
                    set_.argtypes, set_.restype, get.restype = [ctypes.c_int], None, ctypes.c_int
                    out.append((set_, get))
                    break
            else:
                continue
            break
    _BLAS_LIBS = (key, out)
    return out


def blas_threads():
    """Threads of each loaded OpenBLAS (a list; empty when none was found)."""
    return [int(get()) for _, get in _openblas_libraries()]


def set_blas_threads(n):
    """Set every loaded OpenBLAS to ``n`` threads (or to the counts of a list from
    :func:`blas_threads`); returns the previous counts.

    Why a batch runs its tasks with one BLAS thread: cutem's BLAS calls are tiny (atoms (n, 3)
    times a 3×3 rotation, separable-kernel outer products) and gain nothing from threads, but
    after each call OpenBLAS's worker threads keep spinning on the CPU for a while (~65 ms)
    before they sleep. While :meth:`cutem.specimen.Scene.atoms` rotated the atoms with a
    matmul, a 256² TMV micrograph took 128 ms of CPU with the default (all cores) instead of
    65 ms with one BLAS thread (measured, 2-core VM): the spinning thread occupied the other
    core, and two process workers spun on each other's core, so an item took 1.9× as long
    beside another as alone. The rotation is elementwise now; one BLAS thread per task keeps
    any remaining or future small BLAS call (here or in user code run by the workers) from
    doing that again. The results are the same bit for bit (such products are split over
    rows, never over the sum).
    """
    libs = _openblas_libraries()
    old = [int(get()) for _, get in libs]
    counts = list(n) if isinstance(n, (list, tuple)) else [int(n)] * len(libs)
    for (set_, _), k in zip(libs, counts):
        set_(max(1, int(k)))
    return old


# ---------------------------------------------------------------------------------- tasks
def run_item(cfg: RunConfig, out_dir, device=None, threads=None):
    """One task: simulate an item's config to its files.

    ``threads``: the task's share of the cores (process workers): FFT threads and the thread
    pool (:func:`adjoints.settings.set_threads`, unless the user set ``CUTEM_THREADS``). BLAS
    runs one thread in every task (:func:`set_blas_threads` says why); a worker process keeps
    that setting. Returns
    ``(output name, seconds, info)``; ``info`` says where and how the task ran: ``pid``,
    ``fft_threads`` (:func:`adjoints.backend.threads`), ``blas_threads``, ``cpu_seconds``
    (CPU time of the worker process over the task, all its threads).
    """
    import adjoints.backend as B

    from .run import run_simulation

    if threads and settings.thread_setting() is None:
        settings.set_threads(int(threads))
    if any(b != 1 for b in blas_threads()):
        set_blas_threads(1)  # see set_blas_threads; the driver's own count is restored by _run_local
    t0, c0 = time.perf_counter(), time.process_time()
    run_simulation(cfg, out_dir, device=device, progress=False, resume=True)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return cfg.output, secs, {"pid": os.getpid(), "fft_threads": B.threads(), "blas_threads": blas_threads(),
                              "cpu_seconds": cpu}


def _cores() -> int:
    """Cores this process may use (its CPU affinity: ``taskset``, containers), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _local_get(scheduler):
    if scheduler in ("threads", "threaded"):
        from dask.threaded import get
    elif scheduler in ("processes", "multiprocessing"):
        from dask.multiprocessing import get
    elif scheduler in ("sync", "synchronous", "single-threaded"):
        from dask.local import get_sync as get
    else:
        return None
    return get


@dataclass
class BatchResult:
    done: int          #: items computed in this run
    skipped: int       #: items already complete
    total: int
    seconds: float
    manifest: Path
    #: item index -> how its task ran (:func:`run_item`'s info and ``seconds``), this run's items
    tasks: dict = field(default_factory=dict)

    @property
    def workers(self) -> dict:
        """pid -> (FFT threads, BLAS threads) of each process that ran tasks."""
        return {t["pid"]: (t["fft_threads"], tuple(t["blas_threads"])) for t in self.tasks.values()}


def run_batch(items, out_dir, *, scheduler="processes", workers=None, device=None, progress=True,
              log=None) -> BatchResult:
    """Run the items not yet complete, one Dask task each; keep the manifest up to date.

    ``scheduler``: ``"processes"`` (default), ``"threads"``, ``"sync"`` (serial) or the
    address of a ``dask.distributed`` scheduler (``tcp://host:8786``). ``workers``: local
    worker count (default: all cores this process may use); each task gets cores/workers
    FFT, pool and BLAS threads (:func:`run_item`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for stale in io.stale_temporaries(out_dir / MANIFEST):  # of a killed batch
        stale.unlink(missing_ok=True)
    old = read_manifest(out_dir)
    rows, todo = {}, []
    for it in items:
        if is_complete(out_dir, it):
            row, want = old.get(it.index) or {}, _row(it, "done")
            same = all(row.get(k, "") == v for k, v in want.items() if k != "seconds")
            rows[it.index] = row if same else want  # keep the recorded seconds
        else:
            rows[it.index] = _row(it, "pending")
            todo.append(it)
    skipped = len(items) - len(todo)
    if todo and "://" not in str(scheduler):
        _check_memory(todo, 1 if scheduler == "sync" else min(len(todo), workers or _cores()), device)
    write_manifest(out_dir, items, rows)
    if log and skipped:
        log(f"{skipped} of {len(items)} items already complete in {out_dir}; skipping them")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), initial=skipped, desc="micrographs", unit="item")
    by_name = {it.config.output: it for it in todo}
    tasks = {}  # item index -> run_item's info (BatchResult.tasks)

    last_write = [time.monotonic()]

    def finished(result):
        name, secs, info = result
        it = by_name[name]
        tasks[it.index] = dict(info, seconds=secs)
        rows[it.index] = _row(it, "done", f"{secs:.3f}")
        now = time.monotonic()
        if now - last_write[0] >= MANIFEST_INTERVAL_S:
            write_manifest(out_dir, items, rows)
            last_write[0] = now
        if bar is not None:
            bar.update(1)

    ncpu = _cores()
    try:
        if todo:
            get = _local_get(scheduler)
            if get is not None:
                nw = workers or (1 if get.__module__ == "dask.local" else ncpu)
                threads = max(1, ncpu // nw)
                _run_local(get, todo, out_dir, device, threads, nw, finished, scheduler)
            else:
                _run_distributed(scheduler, todo, out_dir, device, finished)
    finally:
        if todo:
            write_manifest(out_dir, items, rows)  # also after an error or Ctrl-C: what finished
        if bar is not None:
            bar.close()
    return BatchResult(len(todo), skipped, len(items), time.perf_counter() - t0, out_dir / MANIFEST, tasks)


def _check_memory(todo, concurrent, device):
    """Refuse before any task when ``concurrent`` items at once would not fit: the item of the
    largest simulation grid is planned (:func:`cutem.memory.estimate` with its scene) and
    counted once per worker (each holds one item)."""
    from . import memory
    from .grid import Grid
    from .validate import preflight

    big = max(todo, key=lambda it: int(np.prod(Grid.from_config(it.config).shape)))
    one = memory.check(big.config, preflight(big.config).scene, device)
    memory.check_bytes(one.peak * concurrent, f"{concurrent} concurrent items of {one.describe()}",
                       "fewer --workers" if concurrent > 1 else "a smaller item", device)


def _run_local(get, todo, out_dir, device, threads, workers, finished, scheduler):
    from dask.callbacks import Callback

    # FFT threads per task: set in each worker process; threads share the driver's setting
    # (set below); a synchronous run leaves the user's setting alone
    per_task = threads if scheduler in ("processes", "multiprocessing") else None
    dsk = {("cutem-item", it.index): (run_item, it.config, str(out_dir), device, per_task) for it in todo}
    keys = list(dsk)

    class Done(Callback):
        # local schedulers call _posttask in the driver thread, so the manifest has one writer
        def _posttask(self, key, result, dsk_, state, id_):
            if key in dsk:
                finished(result)

    kw = {} if scheduler in ("sync", "synchronous", "single-threaded") else {"num_workers": workers}
    if scheduler in ("processes", "multiprocessing"):
        # one item per round trip (Dask's process default is 6): each finished item reaches the
        # manifest at once, and the last items of a batch spread over all the workers
        kw["chunksize"] = 1
    own_threads = scheduler in ("threads", "threaded") and settings.thread_setting() is None
    if own_threads:
        settings.set_threads(threads)  # the tasks share this process's setting
    # tasks in this process (sync, threads) run BLAS on one thread, like process workers; the
    # driver's own setting comes back afterwards
    blas_before = set_blas_threads(1) if scheduler not in ("processes", "multiprocessing") else None
    import dask

    # fork (Linux): workers start with the driver's modules already imported (spawn would
    # re-import NumPy/SciPy/cutem in every worker: seconds of a short batch)
    ctx = {"multiprocessing.context": "fork"} if (scheduler in ("processes", "multiprocessing") and
                                                  sys.platform.startswith("linux") and
                                                  dask.config.get("multiprocessing.context", None) in (None, "spawn")) else {}
    try:
        with dask.config.set(ctx), Done():
            get(dsk, keys, **kw)
    finally:
        if own_threads:
            settings.set_threads(None)
        if blas_before is not None:
            set_blas_threads(blas_before)


def _run_distributed(address, todo, out_dir, device, finished):
    try:
        from distributed import Client, as_completed
    except ImportError:  # pragma: no cover - dask[distributed] is a dependency of the scale extra
        raise InputError("--scheduler ADDRESS needs dask.distributed (pip install 'cutem[scale]')") from None
    try:
        client = Client(address, timeout="20s")
    except OSError as e:
        raise InputError(f"--scheduler {address}: cannot connect to a dask.distributed scheduler ({e})") from None
    try:
        futs = [client.submit(run_item, it.config, str(out_dir), device, None, key=f"cutem-item-{it.index}",
                              pure=False) for it in todo]
        for fut in as_completed(futs):
            finished(fut.result())
    finally:
        client.close()


__all__ = ["Item", "item_seed", "items_from_ranges", "items_from_table", "apply_params", "parse_range",
           "run_batch", "run_item", "read_manifest", "is_complete", "BatchResult", "MANIFEST"]
