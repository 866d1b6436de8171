"""Denoising: a learned U-Net trained on simulated pairs, and the model-based denoiser.

Learned (:func:`train`, :func:`denoise_image`)
    A :class:`adjoints.nn.UNet` is trained with Adam on random patches cut from a small
    pool of full images produced by a *pair source*: a callable ``source(rng) -> (noisy,
    target)`` returning two 2D host arrays. :class:`SimulatorPairs` makes them with the
    simulator (noisy micrograph and its noise-free twin, or two independent noisy draws of
    the same scene for Noise2Noise, Lehtinen et al., ICML 2018, arXiv:1803.04189); tests
    use a tiny synthetic source. One pool image is replaced every ``refresh_every`` steps,
    so expensive simulations are shared by many steps while the data keep changing.
    Inputs are normalised per image with robust statistics, z = (x − median(x)) / (1.4826 ·
    MAD(x)) (:func:`image_stats`), and the target is mapped with the *same* affine map, so the
    network works for any dose and gain, its output maps back to counts, and a contaminant
    does not set the scale (a model file records its normalisation, and inference uses it:
    :func:`inference_options`). Patches are augmented by the 8 symmetries of the square and, with
    ``TrainConfig.negate`` (particle boxes: RELION's stacks are contrast-inverted), by negation
    (z → −z for input and target). Micrographs and tilt series come in one convention (protein
    dark), and a network trained on both gives up that prior: on
    ``validation/denoise_benchmark.py``'s fields the same 3 Å training scored 0.2 dB lower with
    negation (``validation/results/denoiser_training.txt``). Checkpoints (HDF5) hold the network with its configuration, the
    optimiser's moments, the RNG state, the step, the loss history and the pool, so a
    resumed run continues exactly where the interrupted one stopped; :func:`export_model`
    (``cutem train-denoiser --export``) writes the small inference-only file.

    Inference tiles an image of any size with overlapping tiles (reflect-padded to a
    multiple of 2**depth), blends them with linear ramps over the overlap, and works on
    single images and tilt-series stacks. The outer half of each overlap is dropped
    (the tile's zero padding reaches in there) and the inner half blended, so with an
    overlap of twice the network's receptive-field radius the tiled result equals a
    single pass over the whole image.

Model-based (:func:`model_denoise`)
    The paper's approach (PHYSICS.md, "The paper's applications"): optimise the latent
    noise-free intensity λ (electrons per pixel, λ = exp(u) > 0) so that its simulated
    noisy images y_k = gain · MTF ⊛ N_k, N_k ~ Poisson(λ), match the observation y, with
    a smoothness (Charbonnier total-variation) prior:

        L(u) = E_N[ mean((y_k − y)²) ] / (gain² · mean(λ)) + β · mean(sqrt(|∇λ|² + ε²)) / sqrt(mean(λ))

    Gradients of the expectation either pathwise (N = λ + sqrt(λ) ε with fixed standard
    normal draws ε; PHYSICS.md "Gradients of the random stages") or by the score function
    ∇_λ E[L] = E[(L − b)(N/λ − 1)], Rao-Blackwellised per pixel: pixel i's weight uses
    only the loss of the window around i that its count can reach, with a leave-one-out
    baseline b over the K draws. Optimised with Adam. The result is the noise-free
    observation gain · MTF ⊛ λ. The expected squared error also holds the simulated
    images' own noise variance, gain² Σ_j K_ij² λ_i / dqe (K the MTF kernel), whose gradient
    (a constant per unit λ) would bias λ low; it is subtracted exactly. Both terms are O(1) for an image at the noise level
    (a pixel's shot noise is sqrt(mean λ) electrons), so ``beta`` of a few balances
    them at any dose.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

import adjoints.backend as B
from adjoints import ops
from adjoints.nn import UNet, UNetConfig, load_params, save_params, save_unet
from adjoints.optim import Adam
from adjoints.stage import Tape, unwrap

from .errors import InputError

CHECKPOINT_KIND = "cutem-denoiser"

#: the default network of ``cutem train-denoiser``: three levels below the top give a
#: receptive field of ~60 pixels (a whole protein and its CTF fringes at 3 Å/px)
DEFAULT_NET = UNetConfig(depth=3, width=16, convs=1)


# ---------------------------------------------------------------------- normalising
def _median_mad(a):
    m = float(np.median(a))
    s = 1.4826 * float(np.median(np.abs(a - m)))
    return m, (s if s > 0 else float(a.std()))


def _mean_std(a):
    return float(a.mean()), float(a.std())


#: per-image normalisations: ``median-mad``, the median and 1.4826 × the median absolute
#: deviation (the standard deviation for Gaussian data; Hampel, JASA 69:383, 1974), robust, so
#: that an ice contaminant or a carbon edge covering part of a micrograph moves neither (with
#: the mean and standard deviation a dark contaminant set the scale and the particles were
#: squeezed into a fraction of the network's range); ``mean-std``, what models trained before
#: 2026-12-02 were trained with (a model must be run with its own: run with median/MAD the
#: benchmark's ``validation/results/denoiser_default.h5`` lost 0.23 dB at 10 e⁻/Å²).
NORMALISATIONS = {"median-mad": _median_mad, "mean-std": _mean_std}


def image_stats(image, normalisation="median-mad"):
    """(offset, scale) of an image for the network by one of :data:`NORMALISATIONS`. The
    median/MAD falls back to the standard deviation where the MAD is zero (an image of a few
    count levels); the scale is floored so that a flat image does not divide by zero."""
    if normalisation not in NORMALISATIONS:
        raise InputError(f"normalisation must be one of {sorted(NORMALISATIONS)}, not {normalisation!r}")
    a = np.asarray(B.to_numpy(image), dtype=np.float64)
    m, s = NORMALISATIONS[normalisation](a)
    return m, max(s, 1e-6 * max(abs(m), 1.0), 1e-12)


def normalise(image, stats):
    m, s = stats
    return (image - m) / s


def denormalise(z, stats):
    m, s = stats
    return z * s + m


# ------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainConfig:
    """How to train (everything a resumed run must repeat)."""

    steps: int = 1200                 #: Adam steps
    batch: int = 4                    #: patches per step
    patch: int = 96                   #: patch side (a multiple of 2**depth)
    lr: float = 2e-3                  #: Adam learning rate after the warm-up
    lr_final: float = 5e-5            #: cosine decay to this at the last step
    warmup: int = 50                  #: steps of linear learning-rate warm-up
    loss: str = "l2"                  #: l2 | l1
    pool: int = 16                    #: full images kept for patch sampling
    refresh_every: int = 10           #: replace one pool image every this many steps
    checkpoint_every: int = 250       #: steps between checkpoints
    seed: int = 0
    noise2noise: bool = False         #: targets are independent noisy draws
    negate: bool = False              #: also negated pairs (inputs of either contrast convention)
    normalisation: str = "median-mad"  #: per-image normalisation (:data:`NORMALISATIONS`)

    def __post_init__(self):
        for name in ("steps", "batch", "patch", "pool", "refresh_every", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"TrainConfig.{name} = {v!r} must be an integer >= 1")
        if not isinstance(self.warmup, int) or isinstance(self.warmup, bool) or self.warmup < 0:
            raise InputError(f"TrainConfig.warmup = {self.warmup!r} must be an integer >= 0")
        if not (0 < self.lr <= 1) or not (0 < self.lr_final <= 1):
            raise InputError("TrainConfig.lr and lr_final must lie in (0, 1]")
        if self.loss not in ("l2", "l1"):
            raise InputError(f"TrainConfig.loss must be l2 or l1, not {self.loss!r}")
        if self.normalisation not in NORMALISATIONS:
            raise InputError(f"TrainConfig.normalisation must be one of {sorted(NORMALISATIONS)}, "
                             f"not {self.normalisation!r}")

    def lr_at(self, step):
        """Linear warm-up over ``warmup`` steps (no large Adam steps while the moment
        estimates are young), then cosine decay from ``lr`` to ``lr_final`` (Loshchilov &
        Hutter, arXiv:1608.03983)."""
        if step < self.warmup:
            return self.lr * (step + 1) / (self.warmup + 1)
        t = min((step - self.warmup) / max(self.steps - self.warmup - 1, 1), 1.0)
        return self.lr_final + 0.5 * (self.lr - self.lr_final) * (1 + math.cos(math.pi * t))


def _rng_state_json(rng):
    return json.dumps(rng.bit_generator.state)


def _rng_from_json(text):
    state = json.loads(text)
    bg = getattr(np.random, state["bit_generator"])()
    bg.state = state
    return np.random.Generator(bg)


class Trainer:
    """Adam on random patches of a pool of (noisy, target) images from ``source``.

    ``source(rng) -> (noisy, target)`` (2D arrays of the same shape, at least ``patch``
    on each side). ``xp`` is the array module the network runs on.
    """

    def __init__(self, net: UNet, source, cfg: TrainConfig, xp=np, params=None, source_info=None):
        if cfg.patch % net.config.multiple:
            raise InputError(f"patch {cfg.patch} must be a multiple of {net.config.multiple} "
                             f"(2**depth for depth {net.config.depth})")
        self.net, self.source, self.cfg, self.xp = net, source, cfg, xp
        self.source_info = source_info or {}
        self.rng = np.random.default_rng(cfg.seed)
        self.params = params if params is not None else net.init(cfg.seed, xp=xp)
        self.opt = Adam(lr=cfg.lr)
        self.step_count = 0
        self.history: list[float] = []
        self.pool_noisy: list[np.ndarray] = []
        self.pool_target: list[np.ndarray] = []
        self.pool_stats: list[tuple[float, float]] = []
        self.next_refresh = 0

    # -- data -------------------------------------------------------------------------
    def _draw(self):
        noisy, target = self.source(self.rng)
        noisy = np.asarray(B.to_numpy(noisy), dtype=np.float32)
        target = np.asarray(B.to_numpy(target), dtype=np.float32)
        if noisy.shape != target.shape or noisy.ndim != 2:
            raise ValueError(f"pair source gave shapes {noisy.shape} and {target.shape}; need equal 2D")
        if min(noisy.shape) < self.cfg.patch:
            raise InputError(f"simulated images {noisy.shape} are smaller than the patch {self.cfg.patch}")
        return noisy, target

    def _fill(self):
        while len(self.pool_noisy) < self.cfg.pool:
            n, t = self._draw()
            self.pool_noisy.append(n)
            self.pool_target.append(t)
            self.pool_stats.append(image_stats(n, self.cfg.normalisation))

    def _refresh(self):
        i = self.next_refresh % self.cfg.pool
        n, t = self._draw()
        self.pool_noisy[i], self.pool_target[i], self.pool_stats[i] = n, t, image_stats(n, self.cfg.normalisation)
        self.next_refresh += 1

    def batch(self):
        """One batch of normalised (input, target) patches, NCHW, on ``xp``."""
        p, rng = self.cfg.patch, self.rng
        xs, ts = [], []
        for _ in range(self.cfg.batch):
            i = int(rng.integers(len(self.pool_noisy)))
            n, t, st = self.pool_noisy[i], self.pool_target[i], self.pool_stats[i]
            y0 = int(rng.integers(n.shape[0] - p + 1))
            x0 = int(rng.integers(n.shape[1] - p + 1))
            a = normalise(n[y0:y0 + p, x0:x0 + p], st)
            b = normalise(t[y0:y0 + p, x0:x0 + p], st)
            k, flip = int(rng.integers(4)), bool(rng.integers(2))  # the 8 symmetries of the square
            a, b = np.rot90(a, k), np.rot90(b, k)
            if flip:
                a, b = a[:, ::-1], b[:, ::-1]
            # contrast convention (protein dark or, as RELION stores it, white); the coin is drawn
            # either way, so that the patches are the same with and without negation
            if rng.integers(2) and self.cfg.negate:
                a, b = -a, -b
            xs.append(a)
            ts.append(b)
        x = np.ascontiguousarray(np.stack(xs)[:, None], dtype=np.float32)
        t = np.ascontiguousarray(np.stack(ts)[:, None], dtype=np.float32)
        return self.xp.asarray(x), self.xp.asarray(t)

    # -- optimisation -----------------------------------------------------------------
    def step(self):
        self._fill()
        if self.step_count and self.step_count % self.cfg.refresh_every == 0:
            self._refresh()
        x, t = self.batch()
        loss, grads = self.net.loss_and_grad(self.params, x, t, self.cfg.loss)
        self.opt.lr = self.cfg.lr_at(self.step_count)
        self.params = self.opt.step(self.params, grads)
        self.step_count += 1
        val = float(B.to_numpy(loss))
        if not math.isfinite(val):
            raise RuntimeError(f"training diverged at step {self.step_count} (loss {val}); lower --lr")
        self.history.append(val)
        return val

    def run(self, checkpoint=None, progress=True, callback=None, until=None):
        """Train until ``cfg.steps`` (or step ``until``); checkpoints every
        ``checkpoint_every`` and at the end."""
        from tqdm import tqdm

        end = self.cfg.steps if until is None else min(int(until), self.cfg.steps)
        bar = tqdm(total=self.cfg.steps, initial=self.step_count, disable=not progress,
                   desc="train", unit="step", dynamic_ncols=True)
        try:
            while self.step_count < end:
                val = self.step()
                bar.update(1)
                if self.step_count % 10 == 0 or self.step_count == self.cfg.steps:
                    recent = self.history[-50:]
                    bar.set_postfix(loss=f"{np.mean(recent):.4f}", lr=f"{self.opt.lr:.1e}")
                if checkpoint and (self.step_count % self.cfg.checkpoint_every == 0
                                   or self.step_count == end):
                    self.save(checkpoint)
                if callback:
                    callback(self, val)
        finally:
            bar.close()
        return self.params

    # -- checkpoints ------------------------------------------------------------------
    def save(self, path):
        """Write the checkpoint atomically (HDF5)."""
        import h5py

        from .io import atomic_path

        # a checkpoint: renamed at once, also inside a command's output transaction (resume needs it)
        with atomic_path(path, suffix=".h5", immediate=True) as tmp:
            with h5py.File(tmp, "w") as f:
                save_unet(f, self.net, self.params)
                f.attrs["kind"] = CHECKPOINT_KIND
                f.attrs["train_config"] = json.dumps(asdict(self.cfg))
                f.attrs["source"] = json.dumps(self.source_info)
                f.attrs["step"] = self.step_count
                f.attrs["next_refresh"] = self.next_refresh
                f.attrs["rng_state"] = _rng_state_json(self.rng)
                st = self.opt.state_dict()
                g = f.create_group("adam")
                g.attrs["t"], g.attrs["lr"] = st["t"], st["lr"]
                save_params(g.create_group("m"), st["m"])
                save_params(g.create_group("v"), st["v"])
                f.create_dataset("history/loss", data=np.asarray(self.history, dtype=np.float64))
                if self.pool_noisy:
                    f.create_dataset("pool/noisy", data=np.stack(self.pool_noisy))
                    f.create_dataset("pool/target", data=np.stack(self.pool_target))
                    f.create_dataset("pool/stats", data=np.asarray(self.pool_stats, dtype=np.float64))

    @classmethod
    def resume(cls, path, source, xp=np, steps=None):
        """A trainer restored from a checkpoint (``steps`` may extend the run)."""
        import h5py

        net, params, f = None, None, None
        with h5py.File(path, "r") as f:
            _check_kind(f, path)
            if "adam" not in f:
                raise InputError(f"checkpoint {path}: an exported model without the optimiser state; "
                                 "training cannot resume from it (resume from the full checkpoint)")
            net = UNet(UNetConfig(**json.loads(f.attrs["unet_config"])))
            params = load_params(f["weights"], xp)
            cfg_d = json.loads(f.attrs["train_config"])
            cfg_d.update({k: v for k, v in LEGACY_TRAINING.items() if k not in cfg_d})
            if steps is not None:
                cfg_d["steps"] = int(steps)
            cfg = TrainConfig(**cfg_d)
            tr = cls(net, source, cfg, xp=xp, params=params, source_info=json.loads(f.attrs["source"]))
            tr.step_count = int(f.attrs["step"])
            tr.next_refresh = int(f.attrs["next_refresh"])
            tr.rng = _rng_from_json(f.attrs["rng_state"])
            tr.opt.load_state_dict({"t": int(f["adam"].attrs["t"]), "lr": float(f["adam"].attrs["lr"]),
                                    "m": load_params(f["adam/m"], xp), "v": load_params(f["adam/v"], xp)})
            tr.history = [float(v) for v in f["history/loss"][...]]
            if "pool" in f:
                tr.pool_noisy = list(np.asarray(f["pool/noisy"]))
                tr.pool_target = list(np.asarray(f["pool/target"]))
                tr.pool_stats = [tuple(map(float, s)) for s in np.asarray(f["pool/stats"])]
        return tr


def export_model(checkpoint, out):
    """Write the inference part of a checkpoint to ``out``: the network's configuration and
    float32 weights, the training and simulation settings, the step and the loss history,
    without the optimiser's moments or the image pool (a small file for distribution;
    :func:`load_denoiser` reads it, training cannot resume from it)."""
    import h5py

    from .io import atomic_path

    net, params, info = load_denoiser(checkpoint)
    with h5py.File(checkpoint, "r") as src:
        history = np.asarray(src["history/loss"]) if "history/loss" in src else None
    with atomic_path(out, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            save_unet(f, net, {k: np.asarray(B.to_numpy(v), np.float32) for k, v in params.items()})
            for k in ("train_config", "source", "step"):
                if k in info:
                    f.attrs[k] = info[k]
            f.attrs["kind"] = CHECKPOINT_KIND + "-model"
            if history is not None:
                f.create_dataset("history/loss", data=history.astype(np.float32), compression="gzip")


def _check_kind(f, path):
    if "unet_config" not in f.attrs or "weights" not in f:
        raise InputError(f"checkpoint {path}: not a cutem denoiser file (no network inside)")


def default_model_path(particles=False):
    """A packaged denoiser, trained by ``validation/train_default_denoiser.py`` on simulations
    only (no real data): ``cutem/data/denoiser.h5`` for micrographs and tilt series
    (:class:`InstrumentPairs`), ``denoiser_particles.h5`` for stacks of boxed particles
    (:class:`ParticleBoxPairs`, whole 64² boxes)."""
    from importlib.resources import files

    return files("cutem.data") / ("denoiser_particles.h5" if particles else "denoiser.h5")


def load_denoiser(path, xp=np):
    """``(net, params, info)`` from a checkpoint or a final model file."""
    import h5py

    from pathlib import Path

    if not Path(path).is_file():
        raise InputError(f"model {path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            _check_kind(f, path)
            net = UNet(UNetConfig(**json.loads(f.attrs["unet_config"])))
            params = load_params(f["weights"], xp, np.float32)
            info = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"model {path}: not a readable HDF5 file ({exc})") from None
    return net, params, info


def train(source, net_config: UNetConfig | None = None, cfg: TrainConfig | None = None, checkpoint=None,
          resume=False, xp=np, progress=True, source_info=None):
    """Train a denoiser; returns the :class:`Trainer` (``.net``, ``.params``, ``.history``).

    With ``resume`` and an existing ``checkpoint`` the run continues from it (its
    configuration wins; ``cfg.steps`` may extend it).
    """
    from pathlib import Path

    if resume and checkpoint and Path(checkpoint).is_file():
        tr = Trainer.resume(checkpoint, source, xp=xp, steps=cfg.steps if cfg else None)
    else:
        tr = Trainer(UNet(net_config or DEFAULT_NET), source, cfg or TrainConfig(), xp=xp,
                     source_info=source_info)
    tr.run(checkpoint=checkpoint, progress=progress)
    return tr


# ------------------------------------------------------------------ simulated pairs
def default_structures():
    """The packaged particle: TEM-simulator's TMV fragment (2OM3 × 49 transforms)."""
    from importlib.resources import files

    d = files("cutem.data") / "tmv"
    return [(str(d / "2OM3_model1.pdb"), str(d / "2OM3_transf.txt"))]


class SimulatorPairs:
    """Training pairs from the simulator: ``pairs(rng) -> (noisy, target)``.

    Each call draws a new scene and imaging condition: n particles (random structures
    from ``structures``, random positions whose bounding spheres do not overlap in 3D,
    uniformly random orientations) in ice of a random thickness, a random defocus (with up to
    ``astigmatism_A`` of astigmatism at a random angle), a random dose and, when
    ``tilt_range`` is not (0, 0), a random tilt. Optics, sample and simulation settings
    come from ``base`` (a :class:`cutem.config.RunConfig`; default: cutem's embedded TMV
    configuration); the detector from ``detector`` (e.g. a ``cutem fit-mtf`` result)
    or ``base``. The target is the noise-free twin (gain · MTF ⊛ expected counts) or,
    with ``noise2noise``, a second independent noisy draw of the same scene.

    ``structures``: paths, or ``(structure, transforms)`` pairs for TEM-simulator
    transform files.

    The default ``particles_range`` (40, 80) makes crowded fields, as collected for high
    particle counts: on the default 192² field at 3 Å/px (576 Å) with TMV fragments and
    small proteins the placement stops when the field is full (typically 40-60 placed) and
    the bounding discs cover 80-90% of the image, so most pixels hold particle signal
    rather than empty ice (a flat image is then a poor estimate; in sparse fields of 2-8
    particles it had scored within 0.2 dB PSNR of the learned network at 20 e⁻/Å²).
    """

    def __init__(self, base=None, image_size=192, pixel_size_A=None, dose_range=(5.0, 60.0),
                 defocus_range=(5000.0, 30000.0), ice_range=(150.0, 500.0), particles_range=(40, 80),
                 structures=None, detector=None, noise2noise=False, tilt_range=(0.0, 0.0),
                 astigmatism_A=500.0, padding_A=100.0, ice_in_target=True, xp=np):
        from .config import default_config

        self.base = base or default_config()
        self.image_size = int(image_size)
        if self.image_size < 16:
            raise InputError(f"image size {image_size} must be >= 16 pixels")
        self.pixel_size_A = float(pixel_size_A or (base.detector.pixel_size_A if base else 3.0))
        self.dose_range, self.defocus_range, self.ice_range = dose_range, defocus_range, ice_range
        self.particles_range, self.tilt_range = particles_range, tilt_range
        self.astigmatism_A, self.padding_A = float(astigmatism_A), float(padding_A)
        self.structures = [s if isinstance(s, (tuple, list)) else (str(s), None)
                           for s in (structures or default_structures())]
        self.detector = detector or self.base.detector
        self.noise2noise, self.xp = bool(noise2noise), xp
        self.ice_in_target = bool(ice_in_target)
        self._cache = {}

    def describe(self):
        """JSON-able record of the ranges (stored in checkpoints)."""
        return {"image_size": self.image_size, "pixel_size_A": self.pixel_size_A,
                "dose_range": list(self.dose_range), "defocus_range": list(self.defocus_range),
                "ice_range": list(self.ice_range), "particles_range": list(self.particles_range),
                "tilt_range": list(self.tilt_range), "structures": [list(map(str, s)) for s in self.structures],
                "noise2noise": self.noise2noise, "ice_in_target": self.ice_in_target,
                "detector": self.detector.to_dict()}

    def config(self, rng):
        """A random :class:`~cutem.config.RunConfig` for one training image."""
        from .config import ParticleSpec
        from .params import Geometry

        b = self.base
        n = int(rng.integers(self.particles_range[0], self.particles_range[1] + 1))
        picks = rng.integers(len(self.structures), size=n)
        particles = []
        for i, (path, transforms) in enumerate(self.structures):
            count = int(np.sum(picks == i))
            if count:
                particles.append(ParticleSpec(name=f"p{i}", structure=str(path), transforms=transforms,
                                              placement="random", count=count))
        df = float(rng.uniform(*self.defocus_range))
        da = float(rng.uniform(0, self.astigmatism_A))
        optics = b.optics.replace(defocus_u_A=df + da / 2, defocus_v_A=df - da / 2,
                                  astigmatism_angle_deg=float(rng.uniform(-90, 90)))
        t = float(rng.uniform(*self.ice_range))
        sample = b.sample.replace(thickness_center_A=t, thickness_edge_A=t, offset_x_A=0.0, offset_y_A=0.0)
        detector = self.detector.replace(nx=self.image_size, ny=self.image_size, pixel_size_A=self.pixel_size_A,
                                         dose_e_per_A2=float(rng.uniform(*self.dose_range)))
        tilt = float(rng.uniform(*self.tilt_range))
        sim = b.simulation.replace(padding_A=max(b.simulation.padding_A, self.padding_A))
        return b.replace(optics=optics, sample=sample, detector=detector, simulation=sim,
                         geometry=Geometry(tilt_angles_deg=(tilt,)), particles=tuple(particles),
                         seed=int(rng.integers(2**31)))

    def _atoms(self, i):
        from .structure import load_particle

        if i not in self._cache:
            path, transforms = self.structures[i]
            self._cache[i] = load_particle(path, transforms, infer_elements=True)
        return self._cache[i]

    def scene(self, cfg, rng):
        """The particles of ``cfg`` at random positions in the field where their bounding
        spheres do not overlap in 3D (particles at different heights in the ice may overlap
        in projection, as in a crowded field of thick ice), with uniformly random
        orientations, inside the ice where they fit (centred in z otherwise). When no free
        place is found in 200 random tries the field is full and the particle is skipped.
        ``self.last_placed`` holds (centres in Å, radii) of the particles placed."""
        from .specimen import Scene, random_rotations

        det = cfg.detector
        w, h = det.nx * det.pixel_size_A, det.ny * det.pixel_size_A
        thick = cfg.sample.thickness_center_A
        sc = Scene(sample=cfg.sample)
        centres, radii = np.zeros((0, 3)), np.zeros(0)
        for i, c in self.fixed_particles(cfg, rng):
            atoms = self._atoms(i)
            centres = np.vstack([centres, c])
            radii = np.append(radii, float(atoms.radius()))
            sc.add(atoms, random_rotations(1, rng)[0], c, f"p{i}")
        for spec in cfg.particles:
            i = int(spec.name[1:])
            atoms = self._atoms(i)
            r = float(atoms.radius())
            room = thick / 2 - r
            for _ in range(spec.count):
                cand = rng.uniform((-w / 2, -h / 2, -1.0), (w / 2, h / 2, 1.0), size=(200, 3))
                cand[:, 2] = cand[:, 2] * room if room > 0 else 0.0
                d2 = np.sum((cand[:, None, :] - centres[None]) ** 2, axis=-1)
                free = np.all(d2 >= (r + radii[None]) ** 2, axis=1)
                if not free.any():
                    continue  # the field is full: fewer particles this time
                c = cand[int(np.argmax(free))]
                centres = np.vstack([centres, c])
                radii = np.append(radii, r)
                sc.add(atoms, random_rotations(1, rng)[0], c, spec.name)
        self.last_placed = (centres, radii)
        return sc

    def fixed_particles(self, cfg, rng):
        """(structure index, centre in Å) of particles placed before the random ones: none here."""
        return []

    def __call__(self, rng):
        from .imaging import ImageModel

        cfg = self.config(rng)
        scene = self.scene(cfg, rng)
        model = ImageModel.from_config(cfg, 0, scene=scene, xp=self.xp)
        self.last_atoms = model.atoms  # the projected particles, for masks in the validation
        seeds = rng.integers(2**31, size=2)
        d = model.render(rng=B.default_rng(int(seeds[0]), self.xp))
        noisy = B.to_numpy(unwrap(d.image))
        if self.noise2noise:
            # the second draw reuses the model's potential: only the noise is new
            d2 = model.render(rng=B.default_rng(int(seeds[1]), self.xp))
            return noisy, B.to_numpy(unwrap(d2.image))
        if not self.ice_in_target and cfg.sample.ice_model != "continuum":
            # the target without the ice's density fluctuations: they are a fixed texture of
            # this one exposure, not the specimen a user wants to see, so they are noise to learn
            clean = cfg.replace(sample=cfg.sample.replace(ice_model="continuum"))
            target = B.to_numpy(unwrap(ImageModel.from_config(clean, 0, scene=scene, xp=self.xp).noise_free()))
            # the fluctuations also scatter electrons out of the aperture (1-12 % of the mean):
            # that loss stays in the target, or the network must guess a level it cannot see
            level = float(np.mean(B.to_numpy(unwrap(d.noise_free)))) / float(np.mean(target))
            return noisy, (target * level).astype(np.float32)
        return noisy, B.to_numpy(unwrap(d.noise_free))


#: detectors of the training span: the TEM-simulator MTF form fitted to the MTFs that RELION
#: ships (mtf_*.star, 300 kV; validation/fit_real_detectors.py, p,q form) with DQE(0) read off
#: McMullan et al., Ultramicroscopy 147:156 (2014), Fig. 5 (K2 0.80, Falcon II 0.51, DE-20
#: 0.44; Falcon 3EC in counting mode, not in that paper, is given K2's)
REAL_DETECTORS = {
    "k2": dict(mtf_a=0.929, mtf_b=0.071, mtf_c=0.0, mtf_alpha=3.79, mtf_beta=10000.0, mtf_p=1.92, mtf_q=0.58,
               dqe=0.80),
    "falcon2": dict(mtf_a=0.828, mtf_b=0.172, mtf_c=0.0, mtf_alpha=38.85, mtf_beta=1311.04, mtf_p=1.20,
                    mtf_q=0.82, dqe=0.51),
    "falcon3EC": dict(mtf_a=0.717, mtf_b=0.233, mtf_c=0.050, mtf_alpha=14.06, mtf_beta=6.66, mtf_p=1.82,
                      mtf_q=7.19, dqe=0.80),
    "de20": dict(mtf_a=0.768, mtf_b=0.0, mtf_c=0.232, mtf_alpha=391.41, mtf_beta=6.11, mtf_p=0.43, mtf_q=2.29,
                 dqe=0.44),
}


def binned_detector(detector, factor):
    """The detector seen through ``factor``-fold binning (Fourier cropping, as motion-correction
    programs bin): the MTF at x cycles per binned pixel is the camera's MTF at x / factor. x
    enters TEM-simulator's form only as y = 1 + α x² (and 1 + β x²; p and q act on y), so
    α → α / factor², β → β / factor². The noise stays white (no aliasing)."""
    f2 = float(factor) ** 2
    return detector.replace(mtf_alpha=detector.mtf_alpha / f2, mtf_beta=detector.mtf_beta / f2)


class InstrumentPairs(SimulatorPairs):
    """Training pairs that span the instruments a denoiser meets in practice, one draw per image.

    Pixel size log-uniform in ``pixel_range`` (Å), reached by binning a camera pixel of
    0.8–1.2 Å (:func:`binned_detector`); 200 or 300 kV; Cs 1.4–2.7 mm; one of
    :data:`REAL_DETECTORS` or ``"base"``, the base configuration's own detector (cutem's default:
    TEM-simulator's example detector) with its MTF per image pixel, as ``cutem simulate``
    applies it, so that the packaged model denoises cutem's own default output (a blurrier
    MTF, more strongly correlated noise than any binned real camera); dose log-uniform in
    ``dose_range``, defocus (0.5–4 µm) and ice thickness uniform; in half of the images
    radiation damage of the summed exposure (Grant & Grigorieff 2015: a real micrograph's
    high frequencies fade with dose; cutem's default simulation has none, and a network that
    has only seen faded particles smooths undamaged ones, 0.2-1 dB PSNR lost on
    ``validation/denoise_benchmark.py``); amorphous ice in the input, whose
    density fluctuations are part of every real background, and the target without them
    (``ice_in_target=False``: the network learns them as noise); the inelastic background
    of unfiltered imaging in half of the images;
    in ``edge_fraction`` of the images the rim of the hole, with a carbon film of 100–300 Å,
    crosses the field; in ``contaminant_fraction`` of them 1-3 balls of ice
    (:func:`cutem.specimen.random_contaminants`, radii 5-40 % of the field) lie on the layer,
    in input and target alike (a real object the network must keep, without ringing). The
    defaults are the span of the packaged model
    (``cutem train-denoiser`` without a configuration).
    """

    def __init__(self, pixel_range=(0.8, 4.0), voltages=(200.0, 300.0), cs_range=(1.4, 2.7),
                 detectors=(*REAL_DETECTORS, "base"), edge_fraction=0.25, dose_range=(5.0, 60.0),
                 defocus_range=(5000.0, 40000.0), ice_range=(150.0, 600.0), ice_in_target=False,
                 contaminant_fraction=0.25, **kw):
        super().__init__(dose_range=dose_range, defocus_range=defocus_range, ice_range=ice_range,
                         ice_in_target=ice_in_target, **kw)
        self.pixel_range, self.voltages, self.cs_range = tuple(pixel_range), tuple(voltages), tuple(cs_range)
        self.detectors, self.edge_fraction = tuple(detectors), float(edge_fraction)
        self.contaminant_fraction = float(contaminant_fraction)
        unknown = set(self.detectors) - set(REAL_DETECTORS) - {"base"}
        if unknown:
            raise InputError(f"unknown detectors {sorted(unknown)}; known: {sorted(REAL_DETECTORS)} and 'base'")

    def describe(self):
        d = super().describe()
        d.update(span={"pixel_range": list(self.pixel_range), "voltages": list(self.voltages),
                       "cs_range": list(self.cs_range), "detectors": list(self.detectors),
                       "edge_fraction": self.edge_fraction, "contaminant_fraction": self.contaminant_fraction})
        return d

    def pixel_size(self, rng):
        lo, hi = np.log(self.pixel_range)
        return float(np.exp(rng.uniform(lo, hi)))

    def config(self, rng):
        cfg = super().config(rng)
        px = self.pixel_size(rng)
        camera_px = float(rng.uniform(0.8, 1.2))
        name = self.detectors[int(rng.integers(len(self.detectors)))]
        if name == "base":
            det = cfg.detector.replace(pixel_size_A=px)
        else:
            det = cfg.detector.replace(pixel_size_A=px, dqe_curve=None, readout_noise=0.0, **REAL_DETECTORS[name])
            det = binned_detector(det, max(px / camera_px, 1.0))
        optics = cfg.optics.replace(voltage_kV=float(self.voltages[int(rng.integers(len(self.voltages)))]),
                                    cs_mm=float(rng.uniform(*self.cs_range)))
        lo, hi = np.log(self.dose_range)
        det = det.replace(dose_e_per_A2=float(np.exp(rng.uniform(lo, hi))))  # low doses as often as high
        sample = cfg.sample.replace(ice_model="amorphous", damage=bool(rng.integers(2)))
        if rng.uniform() < self.edge_fraction:
            # the rim at a random place in the field: hole centre one radius beyond it
            d = 10000.0
            w = det.nx * px
            ang = rng.uniform(0, 2 * np.pi)
            r = d / 2 + rng.uniform(-0.4, 0.4) * w
            sample = sample.replace(diameter_A=d, offset_x_A=float(r * np.cos(ang)), offset_y_A=float(r * np.sin(ang)),
                                    support_film="carbon", support_thickness_A=float(rng.uniform(100, 300)))
        if rng.uniform() < self.contaminant_fraction:
            from .specimen import random_contaminants

            w = det.nx * px
            balls = random_contaminants(sample, int(rng.integers(1, 4)), (0.05 * w, 0.4 * w), (w, w),
                                        int(rng.integers(2**31)), side="both")
            sample = sample.replace(contaminants=balls)
        sim = cfg.simulation.replace(inelastic_background=bool(rng.integers(2)))
        return cfg.replace(optics=optics, detector=det, sample=sample, simulation=sim)


class ParticleBoxPairs(InstrumentPairs):
    """Boxed particles, as extracted for 2D classification: one particle at the centre of a
    ``box``² image whose diameter fills ``fill_range`` of the box (the pixel size follows,
    within ``pixel_range``), 0-6 neighbours around it, the instruments of
    :class:`InstrumentPairs`. A network trained on whole boxes learns that the particle sits
    at the centre (a support prior a micrograph patch cannot give); ``cutem denoise`` uses it
    for particle stacks (.mrcs)."""

    def __init__(self, box=64, fill_range=(0.5, 0.85), neighbours=(0, 6), edge_fraction=0.05,
                 contaminant_fraction=0.05, detectors=tuple(REAL_DETECTORS), **kw):
        # boxed particles come from real cameras' micrographs: the packaged particle model's span
        super().__init__(image_size=box, particles_range=neighbours, edge_fraction=edge_fraction,
                         contaminant_fraction=contaminant_fraction, detectors=detectors, **kw)
        self.fill_range = tuple(fill_range)
        self._centre = 0

    def describe(self):
        d = super().describe()
        d["span"].update(box=self.image_size, fill_range=list(self.fill_range))
        return d

    def pixel_size(self, rng):
        self._centre = int(rng.integers(len(self.structures)))
        diameter = 2.0 * float(self._atoms(self._centre).radius())
        px = diameter / (float(rng.uniform(*self.fill_range)) * self.image_size)
        return float(np.clip(px, *self.pixel_range))

    def fixed_particles(self, cfg, rng):
        r = float(self._atoms(self._centre).radius())
        room = max(cfg.sample.thickness_center_A / 2 - r, 0.0)
        return [(self._centre, np.array([0.0, 0.0, float(rng.uniform(-room, room))]))]


# ------------------------------------------------------------------------ inference
def _starts(n, tile, step):
    if n <= tile:
        return [0]
    s = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(s))


def _ramp(n, overlap):
    """Tile weights along one axis: ~0 over the outer half of the overlap (where the
    tile's zero padding reaches in), then a linear ramp to 1 over the inner half. Where a
    tile edge is the image edge only that tile covers the pixel, so its small weight
    divides out."""
    t = np.arange(n, dtype=np.float64)
    if overlap <= 1:
        return np.ones(n)
    half = overlap / 2.0
    d = np.minimum(t + 0.5, n - t - 0.5)
    return np.clip((d - half) / half, 1e-6, 1.0)


def denoise_image(net: UNet, params, image, tile=256, overlap=64, batch=4, xp=None,
                  normalisation="median-mad"):
    """Denoise one 2D image of any size with overlapping, blended tiles; returns a host
    float32 array in the units of the input. ``normalisation`` must be the model's own
    (:func:`inference_options`)."""
    img = np.asarray(B.to_numpy(image), dtype=np.float32)
    if img.ndim != 2:
        raise InputError(f"denoise_image needs a 2D image, got shape {img.shape}")
    xp = xp or B.array_module(next(iter(params.values())))
    m = net.config.multiple
    tile = max(m, int(math.ceil(tile / m)) * m)
    overlap = min(int(overlap), tile // 2)
    st = image_stats(img, normalisation)
    z = normalise(img, st)
    h, w = z.shape
    th, tw = min(tile, int(math.ceil(h / m)) * m), min(tile, int(math.ceil(w / m)) * m)
    ph, pw = max(th - h, 0), max(tw - w, 0)
    zp = np.pad(z, ((0, ph), (0, pw)), mode="reflect" if (ph < h and pw < w) else "edge")
    H, W = zp.shape
    out = np.zeros((H, W), dtype=np.float64)
    wsum = np.zeros((H, W), dtype=np.float64)
    wt = np.outer(_ramp(th, overlap), _ramp(tw, overlap))
    coords = [(y, x) for y in _starts(H, th, th - overlap) for x in _starts(W, tw, tw - overlap)]
    for i in range(0, len(coords), batch):
        chunk = coords[i:i + batch]
        tiles = np.stack([zp[y:y + th, x:x + tw] for y, x in chunk])[:, None]
        pred = B.to_numpy(net.apply(params, xp.asarray(np.ascontiguousarray(tiles, dtype=np.float32))))
        for (y, x), p in zip(chunk, pred[:, 0]):
            out[y:y + th, x:x + tw] += p * wt
            wsum[y:y + th, x:x + tw] += wt
    return denormalise(out / wsum, st)[:h, :w].astype(np.float32)


#: the symmetries averaged at inference: 2 = the image and its negation (for a network trained
#: on both contrasts, which is not exactly odd; their mean is); 8 = the 8 symmetries of the
#: square; 16 = both (for small particle boxes, where 16 passes cost little).
SYMMETRIES = (1, 2, 8, 16)


#: the settings of a model file whose ``train_config`` lacks them: every such file predates
#: both (cutem before 2026-12-02 normalised by mean/std and never negated pairs)
LEGACY_TRAINING = {"negate": False, "normalisation": "mean-std"}


def inference_options(info, boxes=False):
    """How ``cutem denoise`` runs a model (``info`` of :func:`load_denoiser`), as keywords of
    :func:`denoise_stack`: the normalisation it was trained with, and the :data:`SYMMETRIES`
    averaged: the negation only if it was trained with negated pairs (``TrainConfig.negate``),
    the square's symmetries for particle ``boxes``. Settings a file lacks are
    :data:`LEGACY_TRAINING`'s."""
    tc = {**LEGACY_TRAINING, **json.loads(info.get("train_config") or "{}")}
    negated = bool(tc["negate"])
    return {"symmetries": (16 if negated else 8) if boxes else (2 if negated else 1),
            "normalisation": tc["normalisation"]}


def denoise_symmetric(net, params, image, symmetries=2, **kw):
    """:func:`denoise_image` averaged over ``symmetries`` (:data:`SYMMETRIES`) transforms of
    the input, each undone on the output."""
    if symmetries not in SYMMETRIES:
        raise InputError(f"symmetries must be one of {SYMMETRIES}, not {symmetries!r}")
    img = np.asarray(B.to_numpy(image), dtype=np.float32)
    acc, n = np.zeros(img.shape, np.float64), 0
    square = symmetries >= 8
    for k in range(4 if square else 1):
        for flip in ((False, True) if square else (False,)):
            for sign in ((1.0, -1.0) if symmetries in (2, 16) else (1.0,)):
                t = np.rot90(img, k)
                t = t[:, ::-1] if flip else t
                d = sign * denoise_image(net, params, sign * np.ascontiguousarray(t), **kw)
                d = d[:, ::-1] if flip else d
                acc += np.rot90(d, -k)
                n += 1
    return (acc / n).astype(np.float32)


def denoise_stack(net, params, data, tile=256, overlap=64, batch=4, progress=False, symmetries=2,
                  normalisation="median-mad"):
    """Denoise a 2D image or each section of a (n, ny, nx) stack (:func:`denoise_symmetric`);
    ``symmetries`` and ``normalisation`` as :func:`inference_options` gives them for a model."""
    from tqdm import tqdm

    arr = np.asarray(data)
    kw = dict(symmetries=symmetries, tile=tile, overlap=overlap, batch=batch, normalisation=normalisation)
    if arr.ndim == 2:
        return denoise_symmetric(net, params, arr, **kw)
    return np.stack([denoise_symmetric(net, params, s, **kw)
                     for s in tqdm(arr, disable=not progress, desc="denoise", unit="image")])



#: Gaussian σ (px) of the low-pass after the particle model (:func:`denoise_particles`)
PARTICLE_LOWPASS_PX = 1.5


def particle_envelope(stack, smooth_px=1.5):
    """The radial amplitude envelope of a stack of centred particle boxes, from the stack itself.

    Boxed particles share one centre, so the signal's variance across the stack depends on the
    radius: V(r) = S(r) + N, the particle's variance S(r) above the background's N. N is the
    profile's minimum over the outer half of the box's radius (n/4 ≤ r ≤ n/2, where a boxed
    particle has ended; RELION normalises the background there); S(r) = V(r) − N, made
    non-increasing outwards (the running maximum from the edge: a particle fills a disc), and
    the envelope is sqrt(S(r)/max S) ∈ [0, 1], the ratio of signal amplitudes (the ring profile
    smoothed by a Gaussian of ``smooth_px``). Weighting a denoised particle by it keeps the
    centre and fades out the box's outer ring, where a single particle image is mostly noise.
    Returns (ny, nx) float64, or None for fewer than 8 particles or no variance excess
    (nothing to estimate from)."""
    a = np.asarray(stack, dtype=np.float64)
    if a.ndim != 3 or len(a) < 8:
        return None
    n, ny, nx = a.shape
    yy, xx = np.mgrid[:ny, :nx]
    r = np.hypot(yy - ny // 2, xx - nx // 2)
    rb = np.rint(r).astype(int)
    v = np.bincount(rb.ravel(), a.var(axis=0).ravel()) / np.maximum(np.bincount(rb.ravel()), 1)
    rr = np.arange(len(v), dtype=np.float64)
    k = np.exp(-0.5 * ((rr[:, None] - rr[None, :]) / smooth_px) ** 2)
    v = k @ v / k.sum(axis=1)
    half = min(ny, nx) // 2
    floor = v[half // 2:half + 1].min()
    s = np.maximum.accumulate(np.maximum(v - floor, 0.0)[::-1])[::-1]
    if not s.max() > 0:
        return None
    return np.interp(r, rr, np.sqrt(s / s.max()))


def fourier_lowpass(stack, sigma_px):
    """A periodic Gaussian low-pass of σ = ``sigma_px`` over the last two axes, as a Fourier
    multiplier exp(−2π²σ²|k|²) (k in cycles per pixel), in float64."""
    a = np.asarray(stack, dtype=np.float64)
    fy = np.fft.fftfreq(a.shape[-2])[:, None]
    fx = np.fft.fftfreq(a.shape[-1])[None, :]
    return np.fft.ifft2(np.fft.fft2(a) * np.exp(-2 * (math.pi * sigma_px) ** 2 * (fy * fy + fx * fx))).real


def denoise_particles(net, params, stack, progress=False, symmetries=16, normalisation="median-mad"):
    """A stack of centred particle boxes (RELION .mrcs) denoised as ``cutem denoise`` does it:
    the particle model over ``symmetries`` with its ``normalisation`` (:func:`denoise_stack`,
    :func:`inference_options`), a Gaussian low-pass of
    :data:`PARTICLE_LOWPASS_PX`, then the stack's radial envelope (:func:`particle_envelope`).

    Measured on the real β-galactosidase particles (``validation/real_particles.py``): the
    network alone is no better than a Gaussian there; the stack's envelope is what a per-image
    denoiser cannot know, and the low-pass removes the network's residual high-frequency
    texture, which the class averages the particles are scored against do not have."""
    arr = np.asarray(stack, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    out = fourier_lowpass(denoise_stack(net, params, arr, progress=progress, symmetries=symmetries,
                                        normalisation=normalisation),
                          PARTICLE_LOWPASS_PX)
    env = particle_envelope(arr)
    if env is not None:
        out = out * env
    return out.astype(np.float32).reshape(np.shape(stack))


# ------------------------------------------------------------------ model-based
def mtf_transfer(shape, detector=None, xp=np, dtype=np.float32):
    """Real MTF / gain on the FFT grid of ``shape`` (from :func:`cutem.detector.mtf`);
    ``detector`` None means an ideal detector (MTF = 1)."""
    if detector is None:
        return xp.ones(shape, dtype=dtype)
    from .detector import mtf

    return (mtf(shape, detector, xp, np.float64) / float(detector.gain)).astype(dtype)


@dataclass
class ModelDenoiseResult:
    image: np.ndarray          #: gain · MTF ⊛ λ, the noise-free observation (counts)
    intensity: np.ndarray      #: λ, expected electrons per pixel before the detector
    losses: list = field(default_factory=list)


def _box_sum(a, r):
    """Periodic (2r+1)² box sum over the last two axes (cumulative sums; any backend)."""
    xp = B.array_module(a)
    if r <= 0:
        return a
    for ax in (-2, -1):
        n = a.shape[ax]
        pad = xp.concatenate([xp.take(a, xp.arange(n - r - 1, n), axis=ax), a,
                              xp.take(a, xp.arange(0, r), axis=ax)], axis=ax)
        c = xp.cumsum(pad, axis=ax)
        a = xp.take(c, xp.arange(2 * r + 1, n + 2 * r + 1), axis=ax) - xp.take(c, xp.arange(0, n), axis=ax)
    return a


def _ideal_detector(shape, gain):
    from .params import Detector

    return Detector(nx=int(shape[1]), ny=int(shape[0]), pixel_size_A=1.0, dose_e_per_A2=1.0,
                    mtf_a=0.0, mtf_b=0.0, mtf_c=1.0, gain=float(gain), dqe=1.0)


def model_denoise(observed, detector=None, gain=1.0, beta=16.0, iterations=300, lr=0.01, draws=4,
                  estimator="pathwise", eps=None, seed=0, window=2, xp=None, progress=False):
    """The model-based denoiser (module docstring), on :func:`cutem.detector.detect`.

    Parameters
    ----------
    observed : 2D array, detector counts (gain × MTF-blurred electrons).
    detector : :class:`cutem.params.Detector` (pixel size, dose, DQE, MTF, gain, readout);
        None: an ideal counting detector with the given ``gain``.
    beta : weight of the Charbonnier TV prior (relative to the data term).
    draws : simulated noisy images per iteration.
    estimator : "pathwise" or "score".
    window : score estimator: half-width of the window whose loss weights a pixel's score
        (the MTF's reach; the estimate is unbiased up to the PSF beyond it).
    """
    from tqdm import tqdm

    from .detector import detect

    y_host = np.asarray(B.to_numpy(observed), dtype=np.float64)
    if y_host.ndim != 2:
        raise InputError(f"model_denoise needs a 2D image, got shape {y_host.shape}")
    if estimator not in ("pathwise", "score"):
        raise InputError(f"estimator must be pathwise or score, not {estimator!r}")
    det = detector if detector is not None else _ideal_detector(y_host.shape, gain)
    det = det.replace(nx=int(y_host.shape[1]), ny=int(y_host.shape[0]))
    gain = float(det.gain)
    xp = xp or np
    y = xp.asarray(y_host)
    scale = det.dose_e_per_A2 * det.pixel_size_A ** 2  # electrons per pixel at I = 1
    mean_e = max(float(y_host.mean()) / gain, 1e-6)
    # start from a mildly smoothed copy (relative intensity), clipped positive
    i0 = np.clip(_lowpass_host(y_host / (gain * scale), 1.0), 0.05 * mean_e / scale, None)
    u = xp.asarray(np.log(i0))
    eps = eps if eps is not None else 0.05 * math.sqrt(mean_e)
    rng = B.default_rng(seed, xp)
    opt = Adam(lr=lr)
    norm = gain * gain * mean_e
    T = mtf_transfer(y.shape, det, xp, np.float64)
    var_grad = gain * gain * float(B.to_numpy((T * T).mean())) / float(det.dqe) / (norm * y.size)
    losses = []

    def prior(lam):
        dx = lam[:, 1:] - lam[:, :-1]
        dy = lam[1:, :] - lam[:-1, :]
        tv = ops.sqrt(dx[:-1, :] ** 2 + dy[:, :-1] ** 2 + eps * eps)
        return beta * ops.mean(tv) / math.sqrt(mean_e)

    for it in tqdm(range(iterations), disable=not progress, desc="model denoise", unit="it"):
        with Tape() as tape:
            uv = tape.watch(u)
            intensity = ops.exp(uv)
            total = prior(intensity * scale)
            if estimator == "pathwise":
                for _k in range(draws):
                    sim = detect(intensity, det, rng=rng, estimator="pathwise").image
                    total = total + ops.mean((sim - y) ** 2) / (norm * draws)
        (g,) = tape.gradient(total, [uv])
        # E(y_k − y)² = (E y_k − y)² + Var y_k; the variance gain²·Σ_j K_ij² λ_i/dqe (Poisson then
        # Wald, blurred by the MTF kernel K) has the constant gradient gain²·mean(MTF²)/dqe per
        # unit λ, which would pull λ below the data: it is removed exactly (chain rule to u).
        g = g - var_grad * (xp.exp(u) * scale)
        val = float(B.to_numpy(unwrap(total)))
        if estimator == "score":
            i_val = xp.exp(u)
            Ls, scores = [], []
            for _k in range(draws):
                d = detect(i_val, det, rng=rng, estimator="score")
                r = (d.image - y) ** 2 / (norm * y.size)
                Ls.append(_box_sum(r, window))
                scores.append(d.draws["counts"] / d.expected_counts - 1.0)  # ∂log p/∂N̄
            Lsum = sum(Ls)
            gdata = 0
            for Lk, sk in zip(Ls, scores):
                base = (Lsum - Lk) / max(draws - 1, 1)  # leave-one-out baseline
                gdata = gdata + (Lk - base) * sk
            g = g + gdata / draws * (i_val * scale)  # N̄ = scale · exp(u)
            val += float(B.to_numpy(sum(L.sum() for L in Ls))) / draws / (2 * window + 1) ** 2
        losses.append(val)
        # cosine decay to lr/100: a fixed log-space step of lr would leave λ jittering by ~lr
        opt.lr = lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * it / max(iterations - 1, 1))))
        u = opt.step({"u": u}, {"u": g})["u"]
    d = detect(xp.exp(u), det, estimator="pathwise", noise_free=True, rng=0)
    return ModelDenoiseResult(B.to_numpy(d.noise_free).astype(np.float32),
                              B.to_numpy(d.expected_counts).astype(np.float32), losses)


def detector_from_toml(path, base=None):
    """A :class:`cutem.params.Detector` from a TOML file: a ``cutem fit-mtf`` result or a run
    configuration. Detector fields are read from a ``[detector]`` table (or the top level);
    other keys (uncertainties, fit statistics) are ignored. ``base`` supplies the rest."""
    import tomllib
    from dataclasses import fields as dc_fields
    from pathlib import Path

    from .params import Detector

    p = Path(path)
    try:
        d = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"detector file {path}: no such file") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"detector file {path}: not readable TOML ({exc})") from None
    table = d.get("detector", d)
    if not isinstance(table, dict):
        raise InputError(f"detector file {path}: [detector] is not a table")
    names = {f.name for f in dc_fields(Detector)}
    vals = {k: v for k, v in table.items() if k in names}
    if not any(k.startswith("mtf_") or k == "gain" for k in vals):
        raise InputError(f"detector file {path}: no MTF parameters (mtf_a, ..., gain) in [detector]")
    return (base or Detector()).replace(**vals)


def _lowpass_host(a, sigma):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(a, sigma, mode="wrap")


__all__ = ["default_model_path", "TrainConfig", "Trainer", "train", "load_denoiser", "export_model", "DEFAULT_NET", "denoise_image", "denoise_stack", "denoise_symmetric", "SYMMETRIES",
           "inference_options", "NORMALISATIONS", "LEGACY_TRAINING",
           "denoise_particles", "particle_envelope", "fourier_lowpass", "PARTICLE_LOWPASS_PX",
           "model_denoise", "ModelDenoiseResult", "mtf_transfer", "image_stats", "normalise",
           "denormalise", "CHECKPOINT_KIND", "detector_from_toml", "SimulatorPairs",
           "default_structures", "InstrumentPairs", "ParticleBoxPairs", "REAL_DETECTORS", "binned_detector"]
