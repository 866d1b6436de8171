"""Memory plan: the peak memory of a run, estimated before it starts, and the refusal.

A run keeps one tilt in flight (:func:`cutem.pipeline.simulate`); its peak is the largest of
three phases, each a sum of terms in the atom count ``n`` and the simulation-grid pixel
count ``P`` (padded, oversampled), with ``S`` slices (1 for the phase object):

1. *atom potential* (:func:`cutem.potential.projected_potential`): the tilt's atom arrays
   plus the scatter's per-atom temporaries (float64 B and weights, slice/group indices,
   corner indices and weights, the float64 weights ``bincount`` converts to) —
   ``ATOM_BYTES`` per atom — and the Fourier accumulation (float64 scatter grid, its
   float32 copy, half-spectrum, kernel, accumulator, output: ``POTENTIAL_GRID_BYTES`` per
   pixel), one more scatter grid (4 bytes per pixel) per extra CPU thread, plus the output
   slices, 4·S bytes per pixel (float32);
2. *ice* (:class:`cutem.potential.IcePotentialStage`): the tilted layer's per-pixel geometry
   and one slice's float64 temporaries (``ICE_GRID_BYTES``) plus the slices in the run's
   precision (``ICE_SLICE_BYTES`` per pixel and slice), while the atoms' slices (4·S) and
   atoms (``RETAINED_ATOM_BYTES``) are alive;
3. *image* (exit wave, optics, binning, detector): the slices, complex waves, CTF and
   envelope grids, the intensity and the detector's noise and MTF grids:
   ``IMAGE_GRID_BYTES`` per pixel plus the slices (4·S) and, in multislice,
   ``MULTISLICE_SLICE_BYTES`` per pixel and slice,

plus the scene (``SCENE_ATOM_BYTES`` per atom: static element/B/occupancy arrays) and the
result stack (8 bytes per detector pixel and tilt). float64 doubles every array term.

A gradient (:func:`cutem.pipeline.value_and_grad_image`, ``gradient=`` the parameters) adds a
fourth phase, 4. *backward*: the tape holds every stage's context (spectra, transfer, waves,
counts) while the backward's cotangents and spectra are alive: ``GRAD_GRID_BYTES`` per pixel,
plus, when an atom parameter (positions, B-factors, scale) is watched, the potential stage's
per-atom arrays and the gathers (``GRAD_ATOM_BYTES`` per atom) and per slice its saved slices
and the multislice's saved waves (``GRAD_SLICE_BYTES`` per pixel and slice). Atoms are not
chunked in a gradient (the stage needs them all), so a gradient that does not fit is refused.
The coefficients are tracemalloc peaks of value_and_grad_image on TMV scenes (512², 1024²,
projection and multislice), rounded up (tests/test_memory.py checks a run against them).
The coefficients were read off the code and checked against tracemalloc peaks
(validation/bench.py writes estimate vs measured for every benchmark scene).

Atoms are processed in chunks when the atom term alone would not fit
(:class:`cutem.imaging.ImageModel` with ``atom_chunk``: the potential is linear in the
atoms, so the chunks' potentials add up exactly); tilts are computed one at a time. When even the grid terms
exceed the free memory (on the CPU ``MemAvailable`` of /proc/meminfo; on a GPU the
device's free memory plus CuPy's pool), :func:`check` raises a one-line
:class:`cutem.errors.InputError` naming the setting that would fit. ``CUTEM_MEMORY_LIMIT``
(bytes, or with a K/M/G suffix) overrides the free memory (for tests and shared machines).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .grid import Grid
from .imaging import slice_count

#: bytes per atom at the start of the atom potential (positions, sorting, per-atom scatter
#: arrays of every atom at once; the taps are made per block of atoms, not for all) ...
ATOM_BYTES = 150
#: ... and while the (element, B pivot) groups are scattered one by one (their Fourier kernels
#: are made row block by row block from separable factors, cutem.potential._Plan.apply: no
#: kernel grids are kept)
ATOM_LOOP_BYTES = 46
#: bytes per atom alive after the potential (the tilt's positions and what is left of them)
RETAINED_ATOM_BYTES = 40
#: bytes per atom held by the scene for the whole run (element, B, occupancy, particle copies)
SCENE_ATOM_BYTES = 12
#: bytes per pixel of the Fourier accumulation of the atom potential (float32 run)
POTENTIAL_GRID_BYTES = 25
#: bytes per pixel that the first image of a grid leaves in caches (plans, frequency grids)
FIRST_USE_GRID_BYTES = 10
#: bytes per pixel of the ice geometry (ρ², the hole mask, the film; ≈ 17) with one slice's float64
#: temporaries (≈ 35), and per pixel and slice (the float32 slices; measured with tracemalloc at
#: 512² and 1024², 1–40 slices, 0° and 60°: 4 plus temporaries)
ICE_GRID_BYTES = 56
ICE_SLICE_BYTES = 6
#: bytes per pixel of exit wave + optics + detector, and per pixel and slice in multislice
IMAGE_GRID_BYTES = 72
MULTISLICE_SLICE_BYTES = 1
#: bytes per pixel of a gradient's backward phase (float32 run; measured 138–140 for a defocus
#: gradient at 512² and 1024²) ...
GRAD_GRID_BYTES = 150
#: ... per atom when an atom parameter is watched (measured ≈ 100) ...
GRAD_ATOM_BYTES = 120
#: ... and per pixel and slice then (measured ≈ 11–17)
GRAD_SLICE_BYTES = 16
#: the parameters whose gradient puts the atoms on the tape (cutem.imaging)
ATOM_PARAMS = ("positions", "b_factors", "potential_scale")
#: what the model leaves out (Python objects, small arrays)
FIXED_BYTES = 4 * 2 ** 20

LIMIT_ENV = "CUTEM_MEMORY_LIMIT"


@dataclass
class Estimate:
    """Peak memory of a run on one device, with its parts (bytes)."""

    peak: int
    phases: dict            #: phase name -> bytes at that phase's peak
    n_atoms: int
    grid_shape: tuple
    n_slices: int
    device: str
    atom_chunk: int         #: atoms per potential chunk (n_atoms: no chunking)

    def gb(self) -> float:
        return self.peak / 1e9

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in self.phases.items())
        return (f"{self.peak / 1e9:.2f} GB on {self.device} ({self.n_atoms} atoms, grid "
                f"{self.grid_shape[0]}x{self.grid_shape[1]}, {self.n_slices} slice(s); {parts} GB)")


def parse_bytes(text) -> int:
    """``"200M"`` → 200·2²⁰; plain numbers are bytes."""
    s = str(text).strip().upper().rstrip("B")
    mult = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
    try:
        if s and s[-1] in mult:
            return int(float(s[:-1]) * mult[s[-1]])
        return int(float(s))
    except ValueError:
        raise InputError(f"{LIMIT_ENV}={text!r} is not a size (bytes or a number with K, M, G)") from None


def available_bytes(device="cpu") -> int:
    """Free memory of ``device`` (``"cpu"`` or ``"gpu"``), or ``$CUTEM_MEMORY_LIMIT``."""
    env = os.environ.get(LIMIT_ENV)
    if env:
        return parse_bytes(env)
    if device == "gpu":
        import cupy as cp

        free, _ = cp.cuda.runtime.memGetInfo()
        return int(free + cp.get_default_memory_pool().free_bytes())
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def n_slices(cfg, scene=None, z_extent_A=None) -> int:
    """Slices of the run's thickest tilt, counted as its image models slice
    (:func:`cutem.imaging.slice_count`): 1 for the phase object; multislice: the particles (of
    ``scene`` at each tilt, or ``z_extent_A``) and the tilted ice slab over the field."""
    if cfg.simulation.method != "multislice":
        return 1
    grid = Grid.from_config(cfg)
    axis = cfg.geometry.tilt_axis_deg
    out = 1
    for a in cfg.geometry.tilt_angles_deg or (0.0,):
        pz = scene.z_extent(a, axis) if scene is not None and len(scene) else z_extent_A
        out = max(out, slice_count(cfg, grid, a, pz))
    return out


def _threads() -> int:
    import adjoints.backend as B

    return B.threads()


def _device_name(device) -> str:
    import adjoints.backend as B

    return B.resolve_device(device)


def kernel_groups(scene, cfg) -> int:
    """(element, B pivot) groups of a scene's atoms (:func:`cutem.potential.group_count` on the
    run's simulation grid): one Fourier kernel each in the potential."""
    from .potential import group_count

    species, el, b, _ = scene._static_arrays()
    if len(el) == 0:
        return 0
    g = Grid.from_config(cfg)
    return group_count(species, el, b.astype(np.float64) + cfg.simulation.b_factor_A2, g.pixel_size_A, g.shape)


def _counts(n_atoms):
    """(atom count, kernel groups or None) from an int or a :class:`cutem.specimen.Scene`."""
    if hasattr(n_atoms, "n_atoms"):
        return int(n_atoms.n_atoms), n_atoms
    return int(n_atoms), None


def estimate(cfg, n_atoms, device=None, *, z_extent_A=None, atom_chunk=None, groups=None, gradient=None) -> Estimate:
    """Peak memory of simulating ``cfg`` (module docstring), or with ``gradient`` (the names of
    the parameters differentiated) of one loss-and-gradient of an image.

    ``n_atoms``: the atom count, or the run's :class:`cutem.specimen.Scene`. ``groups`` (the
    (element, B pivot) groups) no longer changes the estimate: no Fourier kernels are cached.
    """
    dev = device if device in ("cpu", "gpu") else _device_name(device)
    n, scene = _counts(n_atoms)
    g = Grid.from_config(cfg)
    P = int(g.shape[0]) * int(g.shape[1])
    S = n_slices(cfg, scene, z_extent_A)
    k = 2 if cfg.simulation.dtype == "float64" else 1
    chunk = n if atom_chunk is None else max(1, min(int(atom_chunk), n))
    ny, nx = g.detector_shape
    n_tilts = max(1, len(cfg.geometry.tilt_angles_deg))
    fixed = FIXED_BYTES + SCENE_ATOM_BYTES * n + 8 * ny * nx * n_tilts
    slices = 4 * k * S * P
    # chunked: the running sum of the slices is alive beside the chunk's output
    acc = slices if chunk < n else 0
    # on the CPU each extra scatter thread fills its own grid (cutem.potential._spread)
    spare = 4 * k * P * (_threads() - 1) if dev == "cpu" else 0
    phases = {"potential": fixed + k * POTENTIAL_GRID_BYTES * P + slices + acc + spare
              + max(ATOM_BYTES * chunk, ATOM_LOOP_BYTES * chunk)}
    retained = fixed + RETAINED_ATOM_BYTES * n + k * FIRST_USE_GRID_BYTES * P + slices
    if cfg.sample.ice:
        phases["ice"] = retained + k * (ICE_GRID_BYTES + ICE_SLICE_BYTES * S) * P
    img = k * IMAGE_GRID_BYTES * P
    if cfg.simulation.method == "multislice":
        img += k * MULTISLICE_SLICE_BYTES * S * P
    phases["image"] = retained + img
    if gradient:
        back = k * GRAD_GRID_BYTES * P
        if any(p in ATOM_PARAMS for p in gradient):
            back += GRAD_ATOM_BYTES * n + k * GRAD_SLICE_BYTES * S * P
        phases["backward"] = retained + back
    return Estimate(int(max(phases.values())), {p: int(v) for p, v in phases.items()}, n, tuple(g.shape), S,
                    dev, chunk)


def atom_chunk(cfg, n_atoms, budget: int, device=None, z_extent_A=None) -> int:
    """Largest atom chunk whose potential phase fits in ``budget`` bytes (at least 10⁴ atoms)."""
    n, _ = _counts(n_atoms)
    full = estimate(cfg, n_atoms, device, z_extent_A=z_extent_A)
    if full.phases["potential"] <= budget:
        return n
    one = estimate(cfg, n_atoms, device, z_extent_A=z_extent_A, atom_chunk=1).phases["potential"]
    room = budget - (one - ATOM_BYTES)
    return int(max(10_000, min(n, room // ATOM_BYTES)))


def _alternatives(cfg):
    """(setting text, config) pairs that lower the grid terms, most useful first."""
    sim, det = cfg.simulation, cfg.detector
    out = []
    for o in range(sim.oversampling - 1, 0, -1):
        out.append((f"simulation.oversampling = {o}", cfg.replace(simulation=sim.replace(oversampling=o))))
    if sim.method == "multislice":
        for f in (2, 4, 8):
            dz = sim.slice_thickness_A * f
            out.append((f"simulation.slice_thickness_A = {dz:g}", cfg.replace(simulation=sim.replace(slice_thickness_A=dz))))
        out.append(("simulation.method = \"projection\"", cfg.replace(simulation=sim.replace(method="projection"))))
    if sim.dtype == "float64":
        out.append(("simulation.dtype = \"float32\"", cfg.replace(simulation=sim.replace(dtype="float32"))))
    if sim.padding_A > 0:
        out.append(("simulation.padding_A = 0", cfg.replace(simulation=sim.replace(padding_A=0.0))))
    for f in (2, 4, 8):
        if det.nx // f >= 16 and det.ny // f >= 16:
            out.append((f"detector nx, ny = {det.nx // f}, {det.ny // f}",
                        cfg.replace(detector=det.replace(nx=det.nx // f, ny=det.ny // f))))
    return out


def check(cfg, n_atoms, device=None, *, z_extent_A=None, available=None, gradient=None) -> Estimate:
    """Estimate the peak and refuse (InputError, one line) when it cannot fit.

    Atoms are chunked as needed (the returned estimate's ``atom_chunk``); if the smallest
    chunk still does not fit, the message names the first setting of
    :func:`_alternatives` whose estimate does. ``gradient``: the parameters of a
    loss-and-gradient (no chunking when the atoms are on the tape).
    """
    dev = device if device in ("cpu", "gpu") else _device_name(device)
    avail = available_bytes(dev) if available is None else int(available)
    gradient = tuple(gradient or ())
    whole = any(p in ATOM_PARAMS for p in gradient)   # the potential stage takes every atom
    est = estimate(cfg, n_atoms, dev, z_extent_A=z_extent_A, gradient=gradient)
    if est.peak <= avail:
        return est

    def fitted(c):
        ch = None if whole else atom_chunk(c, n_atoms, avail, dev, z_extent_A)
        return estimate(c, n_atoms, dev, z_extent_A=z_extent_A, atom_chunk=ch, gradient=gradient)

    est = fitted(cfg)
    if est.peak <= avail:
        return est
    hint = "a smaller detector or fewer atoms"
    spare = 4 * (2 if cfg.simulation.dtype == "float64" else 1) * est.grid_shape[0] * est.grid_shape[1]
    if dev == "cpu" and _threads() > 1 and est.peak - spare * (_threads() - 1) <= avail:
        # the threads' own scatter grids are what does not fit (CUTEM_THREADS), not the detector
        fit = 1 + int((avail - (est.peak - spare * (_threads() - 1))) // spare)
        hint = f"CUTEM_THREADS = {max(1, min(fit, _threads() - 1))} would fit (now {_threads()})"
    for text, alt in ([] if hint.startswith("CUTEM_THREADS") else _alternatives(cfg)):
        e = fitted(alt)
        if e.peak <= avail:
            hint = f"{text} would fit ({e.peak / 1e9:.2f} GB)"
            break
    what = f"a gradient for {', '.join(gradient)}" if gradient else "the run"
    raise InputError(f"estimated peak memory of {what} {est.peak / 1e9:.2f} GB ({est.n_atoms} atoms, grid "
                     f"{est.grid_shape[0]}x{est.grid_shape[1]}, {est.n_slices} slice(s)) exceeds the "
                     f"{avail / 1e9:.2f} GB free on {dev}; {hint}")


# ------------------------------------------------------------ the other commands' plans
# Each is a sum of terms in the sizes that drive the command, with coefficients read off the
# code's arrays and fitted to tracemalloc peaks (tests/test_memory_commands.py checks each
# against a measured peak); the refusal names the option that drives the estimate.

def check_bytes(need, what, setting, device="cpu", available=None):
    """Refuse (InputError, one line) when ``need`` bytes exceed the free memory of ``device``;
    ``what`` says what needs them and ``setting`` what to change."""
    dev = device if device in ("cpu", "gpu") else _device_name(device)
    avail = available_bytes(dev) if available is None else int(available)
    if need > avail:
        raise InputError(f"{what} needs an estimated {need / 1e9:.2f} GB, over the {avail / 1e9:.2f} GB free on "
                         f"{dev}; {setting}")
    return int(need)


def reconstruct_bytes(n_tilts, ny, nx, nz, method="wbp") -> int:
    """Peak of :func:`cutem.tomo.reconstruct` (float32 stack ``(n_tilts, ny, nx)`` into
    ``(nz, ny, nx)``): the volume ``V`` (WBP: the float32 result and a slab; SIRT: the CG
    vectors u, r, p, q in float32 and their float64 reductions; fit: L-BFGS's float64 history,
    an estimate not yet checked against a measured peak), the sparse projector per slab
    (``n_tilts·nx·nz`` entries of value and index) and the filtered/weighted stack
    (``n_tilts·ny·nx`` in float64 and its copies)."""
    v, a, st = nz * ny * nx, n_tilts * nx * nz, n_tilts * ny * nx
    # fit: L-BFGS keeps 2 × 10 history vectors in float64, plus the tape's gradient and prior terms
    per_v = {"sirt": 32, "fit": 220}.get(method, 8)
    return int(2 * 2 ** 20 + per_v * v + 40 * a + 40 * st)


def denoise_halves_bytes(nz, ny, nx, splits=2) -> int:
    """Peak of :func:`cutem.tomo_denoise.denoise_halves` beyond the reconstruction: the
    ``2·splits`` float32 half tomograms, their single-precision transforms (8 bytes per voxel
    each) and, measured by tracemalloc on a 66×200×200 volume (2 splits: 162 bytes per voxel in
    all), the spectra, gains and the TV's dual field."""
    v = nz * ny * nx
    return int(2 * 2 ** 20 + (24 * splits + 140) * v)


def render_bytes(shape, mode="dvr", max_size=256) -> int:
    """Peak of :func:`cutem.render.render` on a volume of ``shape`` binned so that no side
    exceeds ``max_size`` (0: no binning): the normalised, padded volume (``V``) and the ray
    marching of a frame of about ``side²`` pixels in chunks (sample positions, trilinear
    weights and colours per ray and step)."""
    f = 1 if not max_size else max(1, int(math.ceil(max(shape) / max_size)))
    sh = [max(1, n // f) for n in shape]
    v, frame = int(np.prod(sh)), max(sh) ** 2
    return int(8 * 2 ** 20 + 60 * v + (2100 if mode == "dvr" else 1700) * frame)


def unet_bytes(batch, side, width, depth, convs, train=False) -> int:
    """U-Net activations of ``batch`` float32 tiles ``side²``: per level ``2·convs + 2`` maps
    of ``width·2ˡ`` channels at ``(side/2ˡ)²`` (a geometric sum below 2× the top level);
    training keeps them for the backward pass and their cotangents (×3)."""
    top = batch * side * side * width * 4 * (2 * convs + 2)
    return int(top * 2 * (3 if train else 1))


def denoise_bytes(shape, tile, overlap, width=16, depth=3, convs=1, batch=4) -> int:
    """Peak of :func:`cutem.denoise.denoise_stack` on a float32 ``shape`` (2D or a stack):
    the input and result stacks (8 bytes per voxel), one section's float64 padded image,
    accumulator and weights (24 bytes per pixel) and the network on ``batch`` tiles."""
    ny, nx = shape[-2:]
    return int(4 * 2 ** 20 + 8 * int(np.prod(shape)) + 24 * (ny + tile) * (nx + tile)
               + unet_bytes(batch, tile, width, depth, convs))


def train_bytes(cfg, image_size, pool, batch, patch, width, depth, convs, atoms=200_000, device=None) -> int:
    """Peak of ``cutem train-denoiser``: one simulation of ``image_size²`` (:func:`estimate`
    with ``atoms`` atoms), the image pool (noisy and target float32, ``pool`` of them) and the
    training step on ``batch`` patches ``patch²``."""
    det = cfg.detector.replace(nx=int(image_size), ny=int(image_size))
    sim = estimate(cfg.replace(detector=det, geometry=cfg.geometry.replace(
        tilt_angles_deg=(0.0,), dose_weights=None, defocus_offsets_A=None)), atoms, device).peak
    return int(sim + 8 * pool * image_size ** 2 + unet_bytes(batch, patch, width, depth, convs, train=True))


def volume_bytes(nz, ny, nx) -> int:
    """``cutem potential --volume``: the float64 potential map, its float32 copy and the ice
    slab (float64 slices), 24 bytes per voxel."""
    return int(24 * nz * ny * nx)


# ------------------------------------------------------------------------------ measuring
def measure_peak(fn, device="cpu"):
    """(result, peak bytes allocated while ``fn()`` runs): tracemalloc on the CPU (NumPy
    reports its array buffers to it), the CuPy pool's high-water mark on a GPU."""
    if device == "gpu":
        import cupy as cp

        pool = cp.get_default_memory_pool()
        pool.free_all_blocks()
        base = pool.used_bytes()
        peak = [base]
        hook = _PoolPeak(peak)
        with hook:
            out = fn()
        cp.cuda.Stream.null.synchronize()
        return out, int(peak[0] - base)
    import tracemalloc

    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        out = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()
    return out, int(peak)


class _PoolPeak:
    """CuPy memory hook recording the pool's largest used bytes."""

    def __init__(self, box):
        from cupy.cuda import memory_hook

        class Hook(memory_hook.MemoryHook):
            name = "cutem_peak"

            def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
                import cupy as cp

                box[0] = max(box[0], cp.get_default_memory_pool().used_bytes())

        self._hook = Hook()

    def __enter__(self):
        self._hook.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hook.__exit__(*exc)


def max_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


__all__ = ["check_bytes", "reconstruct_bytes", "render_bytes", "denoise_bytes", "train_bytes", "unet_bytes",
           "volume_bytes", "Estimate", "estimate", "check", "atom_chunk", "available_bytes", "measure_peak", "max_rss_bytes",
           "n_slices", "parse_bytes"]
