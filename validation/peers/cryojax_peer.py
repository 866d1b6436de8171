"""cryoJAX side of validation/peers/run_peer.py (runs in the peers environment only).

Atoms → ``GaussianMixtureVolume.from_tabulated_parameters`` (Peng et al. 1996 five-Gaussian
tables) → ``GaussianMixtureProjection`` (projected potential on the image grid), Gaussians
spread over windows of ``suggest_n_spread`` pixels (4σ); ``AstigmaticCTF`` (defocus, Cs, no
amplitude contrast). Two image models, both jitted with ``equinox.filter_jit``:

- phase object (the timing compared with cutem): ``RytovScatteringTheory`` (exit wave
  exp(iσV) of the projected potential) with ``WaveTransferTheory`` (the CTF applied to the
  wave) in an ``IntensityImageModel`` (|ψ|²), the same physics as cutem's projection method;
- weak-phase (reported beside it): ``make_image_model`` with ``ContrastTransferTheory``, the
  linear image 2σ·(sin χ ⊛ V) that skips the exit wave, the wave FFTs and |ψ|².

cryoJAX's coordinates have the field centre at the origin like cutem's.
"""
from __future__ import annotations

import time

import numpy as np


def render(d, repeats, version):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import cryojax.simulator as cs
    from cryojax.constants import PengScatteringFactorParameters

    n = int(d["n"])
    px = float(d["px"])
    pos = jnp.asarray(d["positions"], dtype=jnp.float32)
    params = PengScatteringFactorParameters(np.asarray(d["numbers"], dtype=int))
    config = cs.BasicImageConfig((n, n), px, float(d["voltage_kV"]))
    pose = cs.EulerAnglePose()
    # spread each Gaussian over a window sized to its width (cryoJAX's suggestion, 4σ) instead
    # of whole grid lines: the default needs n_atoms × n × 5 floats per axis (308 GB here)
    vol0 = cs.GaussianMixtureVolume.from_tabulated_parameters(pos, params)
    n_spread = cs.suggest_n_spread(vol0, px)
    integrator = cs.GaussianMixtureProjection(n_spread=n_spread)
    ctf = cs.AstigmaticCTF(defocus_in_angstroms=float(d["defocus_A"]), astigmatism_in_angstroms=0.0,
                           spherical_aberration_in_mm=float(d["cs_A"]) * 1e-7)
    theory = cs.ContrastTransferTheory(ctf, amplitude_contrast_ratio=0.0)

    wave_theory = cs.RytovScatteringTheory(integrator, cs.WaveTransferTheory(ctf), amplitude_contrast_ratio=0.0)

    @eqx.filter_jit
    def simulate(pos):
        vol = cs.GaussianMixtureVolume.from_tabulated_parameters(pos, params)
        return cs.IntensityImageModel(vol, cs.EulerAnglePose(), config, wave_theory).simulate()

    @eqx.filter_jit
    def simulate_weak(pos):
        vol = cs.GaussianMixtureVolume.from_tabulated_parameters(pos, params)
        model = cs.make_image_model(vol, config, cs.EulerAnglePose(), transfer_theory=theory,
                                     volume_integrator=integrator)
        return model.simulate()

    @eqx.filter_jit
    def project(pos):
        vol = cs.GaussianMixtureVolume.from_tabulated_parameters(pos, params)
        return integrator.integrate(vol, config, outputs_real_space=True)

    def timed(fn):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(pos))
        first = time.perf_counter() - t0
        warm = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(pos))
            warm.append(time.perf_counter() - t0)
        return first, (min(warm) if warm else None), out

    first, warm, img = timed(simulate)
    first_w, warm_w, _ = timed(simulate_weak)
    proj = np.asarray(project(pos))
    return {"first_s": first, "warm_s": warm, "weak_phase_first_s": first_w, "weak_phase_warm_s": warm_w,
            "model": "phase object (Rytov exit wave + WaveTransferTheory, IntensityImageModel)",
            "version": version, "jax": jax.__version__, "n_spread": str(n_spread)}, proj, np.asarray(img)


def gradients(d, repeats, version):
    """cryoJAX's loss+gradient over its forward for defocus and positions (issue 18's table).

    The phase-object image model of :func:`render` as a function of (positions, defocus); the
    loss is the mean squared difference to the image at the given values; each of
    ``jax.value_and_grad`` w.r.t. defocus and w.r.t. positions is jitted, and its best warm
    time is divided by the best warm forward time.
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import cryojax.simulator as cs
    from cryojax.constants import PengScatteringFactorParameters

    n, px = int(d["n"]), float(d["px"])
    pos0 = jnp.asarray(d["positions"], dtype=jnp.float32)
    df0 = jnp.asarray(float(d["defocus_A"]), dtype=jnp.float32)
    params = PengScatteringFactorParameters(np.asarray(d["numbers"], dtype=int))
    integrator = cs.GaussianMixtureProjection(
        n_spread=cs.suggest_n_spread(cs.GaussianMixtureVolume.from_tabulated_parameters(pos0, params), px))

    def image(pos, df):
        # the config is made inside the traced function: it caches its frequency grid on first
        # use, and a config shared by several jitted functions leaks that cached tracer from
        # one trace into the next (jax.errors.UnexpectedTracerError with jax 0.10)
        config = cs.BasicImageConfig((n, n), px, float(d["voltage_kV"]))
        ctf = cs.AstigmaticCTF(defocus_in_angstroms=df, astigmatism_in_angstroms=0.0,
                               spherical_aberration_in_mm=float(d["cs_A"]) * 1e-7)
        theory = cs.RytovScatteringTheory(integrator, cs.WaveTransferTheory(ctf), amplitude_contrast_ratio=0.0)
        vol = cs.GaussianMixtureVolume.from_tabulated_parameters(pos, params)
        return cs.IntensityImageModel(vol, cs.EulerAnglePose(), config, theory).simulate()

    forward = eqx.filter_jit(image)
    target = jax.block_until_ready(forward(pos0, df0))

    def loss(pos, df):
        return jnp.mean((image(pos, df) - target) ** 2)

    by_df = eqx.filter_jit(jax.value_and_grad(loss, argnums=1))
    by_pos = eqx.filter_jit(jax.value_and_grad(loss, argnums=0))

    def best(fn):
        jax.block_until_ready(fn(pos0, df0))   # compile
        out = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(pos0, df0))
            out.append(time.perf_counter() - t0)
        return min(out)

    f = best(forward)
    return {"forward_s": f, "defocus": best(by_df) / f, "positions": best(by_pos) / f, "repeats": repeats,
            "version": version, "jax": jax.__version__,
            "model": "phase object (Rytov + WaveTransferTheory), jax.value_and_grad, jitted"}
