"""The image model: the microscope of one image, composed once and rendered by every caller.

One image (PHYSICS.md; TEM-simulator, Rullgård et al., J. Microsc. 243:234, 2011) is the
composition of five pieces, each the module of its physics:

1. **grid** (:class:`cutem.grid.Grid`): the detector grid refined ``oversampling`` times and
   padded; the intensity is binned back to the detector at the end; with
   ``Simulation.grid_origin = "middle"`` (TEM-simulator's pixel centres) every piece of the
   specimen below is moved by ``Grid.scene_shift_A`` in x and y as it meets the grid, while the
   ``positions`` inputs stay in the microscope frame;
2. **specimen**: the scene's atoms rotated for the tilt (:meth:`cutem.specimen.Scene.atoms`)
   → projected potential per slice in V·Å (:mod:`cutem.potential`, global B included), plus
   the ice layer (each atom subtracts the ice it displaces), plus the absorptive part
   V_abs = ``absorption``·V_atoms + ``ice_absorption``·V_ice (or, with
   ``Simulation.absorption_model = "cross_section"``, TEM-simulator's imaginary potential from
   each atom's elastic + inelastic cross sections, :mod:`cutem.absorption`);
   with ``Sample.damage`` the atoms' slices are first filtered for the image's accumulated
   exposure (:mod:`cutem.damage`, Grant & Grigorieff 2015; :meth:`ImageModel.exposure`);
3. **exit wave**: phase object exp(iσV − σV_abs) or multislice (:mod:`cutem.propagation`),
   referred to the scene's z = 0; multislice with thick slices is the projection with
   height-dependent defocus (each slab at the defocus of its height); with
   ``Optics.energy_filter_slit_eV`` the zero-loss filter exp(−t/(2λ_in)) over the ice path
   (:mod:`cutem.energyfilter`);
4. **transfer**: the lens (:mod:`cutem.optics`: CTF with defocus at the specimen centre
   plane, astigmatism, Cs, envelopes, aperture), then |ψ|² binned to the detector; with
   ``Simulation.inelastic_background`` the scattered electrons come back as a blurred
   incoherent background (:mod:`cutem.inelastic`) unless a zero-loss filter removed them;
5. **detector** (:mod:`cutem.detector`): dose × pixel area × I, shot noise and DQE, MTF,
   gain, readout.

:class:`ImageModel` holds the pieces of one tilt of a :class:`cutem.config.RunConfig`
(immutable, like cryoJAX's ``ImagingPipeline``: a caller builds it once and renders it
many times). :meth:`ImageModel.render` maps (parameters, noise draws) to a
:class:`cutem.detector.Detection`; it is one code path with or without an active
:class:`adjoints.Tape`: any parameter given as a watched Var gets its gradient.
``cutem.simulate``, ``cutem.value_and_grad_image``, the specimen fit
(:class:`cutem.fitting.SpecimenModel`), the denoiser's training pairs, ``cutem potential``
and the memory plan all render or measure this one object.

Parameters (:meth:`ImageModel.inputs`): the optics inputs (:data:`cutem.optics.PARAM_NAMES`),
the detector inputs (:data:`cutem.detector.PARAM_NAMES`) and :data:`SPECIMEN_PARAMS`
(``positions`` (n, 3) Å in the microscope frame of the tilt, ``b_factors`` (n,) Å²,
``potential_scale``, ``thickness_center_A``, ``thickness_edge_A``, and ``potential``: the
slices themselves). The potential at the config's own specimen values is computed once per
model and reused (a fitting loop over optics or detector parameters pays for it once).

Slicing: the projection approximation has one slice that holds every atom and the whole ice
layer along the beam (no z box, so a thicker layer is a thicker layer, and its derivative is
exact at any thickness); multislice cuts the particles and the tilted ice slab over the field
into the slices of a fixed lattice, boundaries at z = k·``slice_thickness_A`` (:func:`stack_z_range`),
so that the box is no parameter of the image and the ice thickness acts only through its path
length in each slice, on the tape.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

import adjoints.backend as B
from adjoints import ops
from adjoints.stage import unwrap

from . import detector as D
from . import optics as O
from .damage import DamageFilter, mid_exposure
from .energyfilter import ZeroLossFilter, inelastic_mfp_A
from .errors import InputError
from .grid import Grid
from .ice import AmorphousIceStage, ice_layer_rng, ice_rng, particle_field, particle_rng, unit_field
from .potential import (IcePotentialStage, ProjectedPotentialStage, ice_potential_V, n_slices, projected_potential,
                        slab_z_range)
from .propagation import exit_wave
from .absorption import AbsorptionPotentialStage
from .electron import interaction_constant, wavenumber_per_A
from .inelastic import IceScattering, InelasticBlur, aperture_angle_rad
from .solvent_map import clamped_particle_potential
from .specimen import scene_from_config, tilt_matrix

#: specimen parameters an image can be differentiated for, besides the optics and detector inputs
SPECIMEN_PARAMS = ("potential", "positions", "b_factors", "potential_scale", "thickness_center_A",
                   "thickness_edge_A")
_ATOM_PARAMS = ("positions", "b_factors", "potential_scale")
_ICE_PARAMS = ("thickness_center_A", "thickness_edge_A")


def tilt_seed(seed: int, k: int) -> int:
    """The noise seed of tilt ``k`` in a run with ``seed`` (independent streams per tilt)."""
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def tilt_settings(cfg, k: int):
    """(tilt angle in degrees, Optics, Detector) of tilt ``k``: defocus offset and dose per tilt."""
    g = cfg.geometry
    angle = float(g.tilt_angles_deg[k])
    optics = cfg.optics
    if g.defocus_offsets_A is not None:
        off = float(g.defocus_offsets_A[k])
        optics = optics.replace(defocus_u_A=optics.defocus_u_A + off, defocus_v_A=optics.defocus_v_A + off)
    detector = cfg.detector
    if g.dose_weights is not None:
        w = np.asarray(g.dose_weights, dtype=float)
        if np.any(w < 0) or w.sum() <= 0:
            raise InputError("geometry.dose_weights must be non-negative with a positive sum")
        detector = detector.replace(dose_e_per_A2=detector.dose_e_per_A2 * w[k] / w.mean())
    return angle, optics, detector


def tilt_doses(cfg):
    """Dose (e⁻/Å²) of every tilt of ``cfg``, in acquisition order (:func:`tilt_settings`)."""
    return np.array([tilt_settings(cfg, k)[2].dose_e_per_A2 for k in range(len(cfg.geometry.tilt_angles_deg))])


def specimen_z_extent(cfg, grid: Grid, tilt_deg, particles_z=None, pad_A=1.0):
    """(z0, z1) in the microscope frame holding the particles (``particles_z`` = (zmin, zmax) of
    their bounding spheres, :meth:`cutem.specimen.Scene.z_extent`) and, with ice, the tilted slab
    over the whole field (:func:`cutem.potential.slab_z_range`), each padded by ``pad_A`` so that
    no surface lies on the extent's ends."""
    lo, hi = (particles_z[0] - pad_A, particles_z[1] + pad_A) if particles_z is not None else (math.inf, -math.inf)
    if cfg.sample.ice:
        s0, s1 = slab_z_range(cfg.sample, grid.shape, grid.pixel_size_A, tilt_deg, cfg.geometry.tilt_axis_deg,
                              grid.scene_shift_A)
        lo, hi = min(lo, s0 - pad_A), max(hi, s1 + pad_A)
    if not lo < hi:
        lo, hi = -pad_A, pad_A
    return lo, hi


def stack_z_range(cfg, grid: Grid, tilt_deg, particles_z=None):
    """The multislice stack of one tilt, or None for the projection approximation (one slice,
    unbounded along the beam).

    The slices lie on a fixed lattice, boundaries at z = k·Δz (k integer) from the scene's
    z = 0 (the ice's mid-plane), and the stack is the run of lattice slices that covers
    :func:`specimen_z_extent`. So the box is no parameter of the image: a thicker ice layer (or
    a particle moved along z) only ever adds empty slices at the ends of the stack — a plane
    wave crosses an empty entrance slice unchanged, and an empty exit slice's propagation is
    taken back by the reference plane (:meth:`ImageModel.exit_wave`) — and never shifts the
    slice boundaries under the atoms and the ice, nor the defocus reference. The ice's
    thickness then acts on the image only through its path length in the slices
    (:class:`cutem.potential.IcePotentialStage`), which the tape differentiates; a box that
    followed max(thickness_center_A, thickness_edge_A) (the former rule) moved every slice
    boundary with that maximum outside the tape (issue 19)."""
    if cfg.simulation.method != "multislice":
        return None
    lo, hi = specimen_z_extent(cfg, grid, tilt_deg, particles_z)
    dz = float(cfg.simulation.slice_thickness_A)
    if not dz > 0:
        raise InputError(f"slice_thickness_A = {dz} must be > 0")
    k0, k1 = math.floor(lo / dz), math.ceil(hi / dz)
    return k0 * dz, max(k1, k0 + 1) * dz


def slice_count(cfg, grid: Grid, tilt_deg, particles_z=None) -> int:
    """Slices of one tilt's potential (1 for the projection approximation)."""
    zr = stack_z_range(cfg, grid, tilt_deg, particles_z)
    return 1 if zr is None else n_slices(zr, cfg.simulation.slice_thickness_A)


@dataclass(frozen=True)
class ImageModel:
    """The microscope of one tilt of a run (module docstring). Build with :meth:`from_config`."""

    config: object                  #: the :class:`cutem.config.RunConfig`
    tilt: int                       #: tilt index in ``config.geometry.tilt_angles_deg``
    grid: Grid
    angle_deg: float
    optics: object                  #: :class:`cutem.params.Optics` of this tilt
    detector: object                #: :class:`cutem.params.Detector` of this tilt
    atoms: object                   #: :class:`cutem.structure.Atoms` in the microscope frame
    z_range_A: tuple | None         #: the slice stack's extent (None: one unbounded slice)
    xp: object
    dtype: np.dtype
    atom_chunk: int | None = None   #: atoms per potential call (:mod:`cutem.memory`; None: all)
    #: accumulated exposure (e⁻/Å²) the damage sees (None: the tilt's mid-exposure, :mod:`cutem.damage`)
    exposure_e_per_A2: float | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)
    #: with ``Sample.ice_model = "amorphous"``: the ice's unit-slab fluctuation per slice (:mod:`cutem.ice`;
    #: None: drawn from the tilt's seed)
    ice_field: object = None
    #: with ``Sample.particle_continuum_power``: its field (V·Å, (ny, nx); None: drawn from the tilt's seed)
    particle_field: object = None
    #: the run's :class:`cutem.specimen.Scene` (its particles one by one: ``Simulation.solvent_model = "clamp"``)
    scene: object = field(default=None, compare=False, repr=False)

    @classmethod
    def from_config(cls, cfg, tilt: int = 0, *, scene=None, device=None, xp=None, dtype=None, atom_chunk=None,
                    z_range_A=None):
        """The model of tilt ``tilt`` of ``cfg``.

        ``scene``: the run's :class:`cutem.specimen.Scene` if already built (else built from
        ``cfg``); ``device``/``xp``: where to compute; ``dtype``: float32/float64 (default the
        config's); ``z_range_A``: a multislice stack extent to use instead of the scene's
        (:func:`stack_z_range`), e.g. one that holds the thickest ice a fit may try.
        """
        xp = xp or B.get_xp(device)
        scene = scene if scene is not None else scene_from_config(cfg)
        grid = Grid.from_config(cfg)
        angle, optics, detector = tilt_settings(cfg, tilt)
        axis = cfg.geometry.tilt_axis_deg
        atoms = scene.atoms(angle, axis)
        if cfg.simulation.b_factor_floor_A2 > 0:  # TEM-simulator's map blur (Simulation.b_factor_floor_A2)
            atoms = dataclasses.replace(atoms, b_factors=np.maximum(atoms.b_factors, cfg.simulation.b_factor_floor_A2))
        if cfg.simulation.method != "multislice":
            z_range_A = None   # one slice, unbounded along the beam (the particles' extent is not needed)
        elif z_range_A is None:
            z_range_A = stack_z_range(cfg, grid, angle, scene.z_extent(angle, axis) if len(scene) else None)
        dtype = np.dtype(dtype or cfg.simulation.dtype)
        return cls(cfg, int(tilt), grid, angle, optics, detector, atoms, z_range_A, xp, dtype, atom_chunk,
                   scene=scene)

    # ------------------------------------------------------------------ parameters
    @property
    def slice_thickness_A(self):
        sim = self.config.simulation
        return sim.slice_thickness_A if sim.method == "multislice" else None

    @property
    def n_slices(self) -> int:
        return 1 if self.z_range_A is None else n_slices(self.z_range_A, self.slice_thickness_A)

    def inputs(self) -> dict:
        """Every differentiable input of the image at this tilt's values (arrays on ``xp``)."""
        xp, dt, s = self.xp, self.dtype, self.config.sample
        out = {**O.optics_inputs(self.optics, xp, dt), **D.detector_inputs(self.detector, xp, dt)}
        out.update(positions=xp.asarray(self.atoms.positions, dtype=dt),
                   b_factors=xp.asarray(self.atoms.b_factors, dtype=dt),
                   potential_scale=xp.asarray(1.0, dtype=dt),
                   thickness_center_A=xp.asarray(s.thickness_center_A, dtype=dt),
                   thickness_edge_A=xp.asarray(s.thickness_edge_A, dtype=dt))
        return out

    @staticmethod
    def check_names(names):
        """Raise KeyError naming the first parameter the model does not know."""
        known = set(O.PARAM_NAMES) | set(D.PARAM_NAMES) | set(SPECIMEN_PARAMS)
        for name in names:
            if name not in known:
                raise KeyError(f"cannot differentiate with respect to {name!r}; known: "
                               f"{sorted(set(O.PARAM_NAMES) | set(D.PARAM_NAMES)) + list(SPECIMEN_PARAMS)}")

    # ------------------------------------------------------------------ specimen
    def _solvent_V(self):
        return ice_potential_V() if self.config.sample.ice else 0.0

    def _atom_potential(self, params):
        """Atoms' slices (V·Å): the stage when a specimen input is given, else the cached plain sum."""
        sim = self.config.simulation
        kw = dict(slice_thickness_A=self.slice_thickness_A, z_range_A=self.z_range_A, b_factor_A2=sim.b_factor_A2,
                  solvent_V=self._solvent_V())
        if self._clamp_on():
            return self._clamped_potential(params)
        if any(k in params for k in _ATOM_PARAMS):
            st = ProjectedPotentialStage(self.atoms, self.grid.shape, self.grid.pixel_size_A, **kw)
            d = self.inputs() if not all(k in params for k in _ATOM_PARAMS) else {}
            a = [params[k] if k in params else d[k] for k in _ATOM_PARAMS]
            return st(self._on_grid(a[0]), *a[1:])
        if "atoms" not in self._cache:
            self._cache["atoms"] = self._chunked_potential(kw)
        return self._cache["atoms"]

    def _on_grid(self, positions):
        """Microscope-frame positions (array or Var) moved by the grid's scene shift in x and y
        (:attr:`cutem.grid.Grid.scene_shift_A`; the same object when there is none)."""
        s = self.grid.scene_shift_A
        if not s:
            return positions
        dt = B.real_dtype(unwrap(positions).dtype)
        return positions + self.xp.asarray(np.array([s, s, 0.0], dtype=dt))

    def _grid_atoms(self, atoms):
        """:meth:`_on_grid` of an :class:`cutem.structure.Atoms`."""
        if not self.grid.scene_shift_A:
            return atoms
        s, pos = self.grid.scene_shift_A, atoms.positions
        return dataclasses.replace(atoms, positions=pos + np.array([s, s, 0.0], dtype=pos.dtype))

    def _clamp_on(self):
        """TEM-simulator's particle maps in place of the atoms' own potential (``solvent_model = "clamp"``
        with ice around the particles)."""
        return (self.config.simulation.solvent_model == "clamp" and self._solvent_V() > 0
                and self.scene is not None)

    def _clamped_potential(self, params, imaginary=False):
        """TEM-simulator's particle maps, clamped from below by the ice and projected
        (``Simulation.solvent_model = "clamp"``, :mod:`cutem.solvent_map`): the real part, or with
        ``imaginary`` the cross-section absorption maps clamped by the ice's absorption."""
        if any(k in params for k in _ATOM_PARAMS):
            raise InputError(f"solvent_model = 'clamp' (TEM-simulator's particle map) has no derivative with respect "
                             f"to {[k for k in _ATOM_PARAMS if k in params]}; use solvent_model = 'displaced'")
        if "atoms" not in self._cache:
            sim = self.config.simulation
            slice_of, n = None, self.n_slices
            if self.z_range_A is not None:
                z0, dz = self.z_range_A[0], self.slice_thickness_A
                slice_of = lambda z: int(math.floor((z - z0) / dz))  # noqa: E731
            cs = sim.absorption_model == "cross_section"
            v = clamped_particle_potential(
                self.scene, tilt_matrix(self.angle_deg, self.config.geometry.tilt_axis_deg), self.grid.shape,
                self.grid.pixel_size_A, sim.solvent_map_voxel_A, self._solvent_V(),
                b_factor_floor_A2=sim.b_factor_floor_A2, b_factor_A2=sim.b_factor_A2, slice_of=slice_of,
                n_slices=n, voltage_kV=self.optics.voltage_kV if cs else None,
                defocus_corrected={p.name for p in self.config.particles if p.defocus_correction},
                wave_number_per_A=wavenumber_per_A(self.optics.voltage_kV), shift_A=self.grid.scene_shift_A)
            v, va = v if cs else (v, None)
            self._cache["atoms"] = self.xp.asarray(v.astype(self.dtype))
            if va is not None:
                self._cache["abs"] = self.xp.asarray(va.astype(self.dtype))
        return self._cache["abs" if imaginary else "atoms"]

    def _chunked_potential(self, kw):
        # the potential is a sum over atoms: chunks of atom_chunk atoms add up to the one-call
        # result, with the atom terms of the memory peak cut to one chunk's
        n = len(self.atoms)
        step = n if self.atom_chunk is None or self.atom_chunk >= n else int(self.atom_chunk)
        v = None
        for s in range(0, max(n, 1), max(step, 1)):
            part = self.atoms if step >= n else self.atoms.select(slice(s, s + step))
            vk = projected_potential(self._grid_atoms(part), self.grid.shape, self.grid.pixel_size_A, xp=self.xp,
                                     dtype=self.dtype, **kw)
            if v is None:
                v = vk
            else:
                v += vk
            del vk, part
        return v

    def _ice_potential(self, params):
        cfg = self.config

        def stage():   # built only when used: its per-pixel geometry costs as much as a forward FFT pair
            return IcePotentialStage(cfg.sample, self.grid.shape, self.grid.pixel_size_A,
                                     slice_thickness_A=self.slice_thickness_A, z_range_A=self.z_range_A,
                                     tilt_deg=self.angle_deg, tilt_axis_deg=cfg.geometry.tilt_axis_deg,
                                     shift_A=self.grid.scene_shift_A)

        if any(k in params for k in _ICE_PARAMS):
            d = self.inputs()
            return stage()(*(params[k] if k in params else d[k] for k in _ICE_PARAMS))
        if "ice" not in self._cache:
            xp, dt, s = self.xp, self.dtype, cfg.sample
            self._cache["ice"] = stage()(xp.asarray(s.thickness_center_A, dtype=dt),
                                         xp.asarray(s.thickness_edge_A, dtype=dt))
        return self._cache["ice"]

    def _cross_section_absorption(self, params):
        """The atoms' V′ from their cross sections (:class:`cutem.absorption.AbsorptionPotentialStage`)."""
        if "abs_stage" not in self._cache:
            sim = self.config.simulation
            self._cache["abs_stage"] = AbsorptionPotentialStage(
                self.atoms, self.grid.shape, self.grid.pixel_size_A, self.optics.voltage_kV,
                slice_thickness_A=self.slice_thickness_A, z_range_A=self.z_range_A, global_b_A2=sim.b_factor_A2,
                solvent=self.config.sample.ice)
        st = self._cache["abs_stage"]
        if "positions" in params or "b_factors" in params:
            d = self.inputs()
            return st(self._on_grid(params.get("positions", d["positions"])), params.get("b_factors", d["b_factors"]))
        if "abs" not in self._cache:
            d = self.inputs()
            self._cache["abs"] = st(self._on_grid(d["positions"]), d["b_factors"])
        return self._cache["abs"]

    def potential(self, params=None):
        """(V, V_abs) per slice in V·Å on the simulation grid; V_abs is None without absorption.

        ``params``: specimen inputs (arrays or Vars) to use instead of the config's; a
        ``"potential"`` entry replaces V itself.
        """
        params = params or {}
        cfg = self.config
        s, absorption = cfg.sample, cfg.simulation.absorption
        v_atoms = self._damaged(self._atom_potential(params))
        if cfg.simulation.absorption_model == "cross_section":
            v_abs = (self._clamped_potential(params, imaginary=True) if self._clamp_on()
                     else self._cross_section_absorption(params))
        else:
            v_abs = v_atoms * absorption if absorption > 0 else None
        v = v_atoms
        if s.ice:
            vi = self._ice_potential(params)
            v = v + self._amorphous_ice(vi)
            if s.ice_absorption > 0:
                v_abs = vi * s.ice_absorption if v_abs is None else v_abs + vi * s.ice_absorption
        if s.particle_continuum_power > 0 or self.particle_field is not None:
            v = v + self._particle_continuum(unwrap(v).shape)
        if "potential" in params:
            v = params["potential"]
        return v, v_abs

    def _particle_continuum(self, shape):
        """The particles' continuum (``Sample.particle_continuum_power``, :func:`cutem.ice.particle_field`)
        in the middle slice, zero elsewhere: a fixed field, like the ice's draw."""
        if "particle_field" not in self._cache:
            g = self.particle_field
            if g is None:
                cfg = self.config
                g = particle_field(shape[1:], self.grid.pixel_size_A, particle_rng(cfg.seed, self.tilt),
                                   cfg.sample.particle_continuum_power, cfg.simulation.b_factor_A2)
            full = np.zeros(shape)
            full[shape[0] // 2] = B.to_numpy(g)
            self._cache["particle_field"] = self.xp.asarray(full.astype(self.dtype))
        return self._cache["particle_field"]

    def _amorphous_ice(self, vi):
        """The ice's density fluctuations added to its continuum slices (``Sample.ice_model``,
        :class:`cutem.ice.AmorphousIceStage`); the path lengths and absorption keep the continuum."""
        if self.config.sample.ice_model != "amorphous":
            return vi
        g = self.ice_field
        if g is None:
            if "ice_field" not in self._cache:
                shape = unwrap(vi).shape
                px, b, seed = self.grid.pixel_size_A, self.config.simulation.b_factor_A2, self.config.seed
                if self.z_range_A is None:
                    g = unit_field(shape[0], shape[1:], px, ice_rng(seed, self.tilt), b)
                else:   # one stream per lattice slice: empty slices added to the stack change no draw
                    k0 = int(math.floor(self.z_range_A[0] / self.slice_thickness_A + 0.5))
                    g = np.concatenate([unit_field(1, shape[1:], px, ice_layer_rng(seed, self.tilt, k0 + k), b)
                                        for k in range(shape[0])])
                self._cache["ice_field"] = self.xp.asarray(g.astype(self.dtype))
            g = self._cache["ice_field"]
        return AmorphousIceStage(g)(vi)

    def exposure(self) -> float:
        """Accumulated exposure (e⁻/Å²) of this image: the tilt's mid-exposure unless set."""
        if self.exposure_e_per_A2 is not None:
            return self.exposure_e_per_A2
        return mid_exposure(tilt_doses(self.config), self.tilt)

    def _damaged(self, v_atoms):
        """Radiation damage of the atoms' slices at :meth:`exposure` (:mod:`cutem.damage`)."""
        s = self.config.sample
        if not s.damage:
            return v_atoms
        st = DamageFilter(self.grid.shape, self.grid.pixel_size_A, self.exposure(), s.damage_b_per_exposure_A2)
        if self.exposure_e_per_A2 is None or unwrap(v_atoms) is not v_atoms or v_atoms.shape[0] != 1:
            return st(v_atoms)
        # a movie's frames (cutem.movie: exposure set, the cache shared) filter the same plain
        # potential at N exposures: its spectrum is taken once. Only for one slice (67 MB at
        # 4096²): a multislice stack's spectrum would double the run's largest array
        hit = self._cache.get("atoms_spectrum")
        if hit is None or hit[0] is not v_atoms:
            hit = self._cache["atoms_spectrum"] = (v_atoms, B.rfft2(v_atoms))
        return st.from_spectrum(hit[1])

    def energy_filter(self, wave, params=None):
        """Zero-loss filtering of the exit wave over the ice path (:mod:`cutem.energyfilter`)."""
        o = self.optics
        if o.energy_filter_slit_eV is None or not self.config.sample.ice:
            return wave
        path = ops.sum(self._ice_potential(params or {}), axis=0) * (1.0 / ice_potential_V())
        return ZeroLossFilter(inelastic_mfp_A(o.voltage_kV, o.inelastic_mfp_A))(wave, path)

    # ------------------------------------------------------------------ image
    def render(self, params=None, *, rng=None, draws=None, estimator="score"):
        """The detector image of this tilt: a :class:`cutem.detector.Detection`.

        ``params``: any of :meth:`inputs` (arrays or watched Vars) instead of the config's.
        ``estimator``: ``"score"`` draws integer Poisson (and Wald) counts as a real detector
        does (the noise-free image when the detector is not quantized); ``"pathwise"`` the
        Gaussian reparametrisation; ``"none"`` no noise. ``rng``: a seeded generator or int;
        ``draws``: the ``draws`` of an earlier Detection, to reuse the same noise.
        """
        params = dict(params or {})
        self.check_names(params)
        return self.detect(self.image_intensity(params), params, rng=rng, draws=draws, estimator=estimator)

    def image_intensity(self, params=None):
        """Specimen → exit wave → energy filter → lens → |ψ|² on the detector grid (before the detector)."""
        v, v_abs = self.potential(params)
        return self.intensity(self.energy_filter(self.exit_wave(v, v_abs), params), params, v_abs=v_abs)

    def exit_wave(self, v, v_abs=None):
        """Exit wave of the slices (phase object for one slice, else multislice)."""
        method = "projection" if unwrap(v).shape[0] == 1 else "multislice"
        # the optics measure defocus at the scene's z = 0; a stack need not be centred on it
        # (particles above the ice, no ice), so the wave is referred back to z = 0 itself
        ref = 0.0 if self.z_range_A is None else -(self.z_range_A[0] + 0.5 * self.n_slices * self.slice_thickness_A)
        return exit_wave(v, self.optics.voltage_kV, self.grid.pixel_size_A, method=method,
                         slice_thickness_A=self.slice_thickness_A, v_abs_slices=v_abs, reference=ref)

    def intensity(self, wave, params=None, v_abs=None):
        """|image wave|² through the lens (optics inputs of ``params``), binned to the detector;
        with ``Simulation.inelastic_background`` plus the scattered electrons (:meth:`scattered`)."""
        op = {k: p for k, p in (params or {}).items() if k in O.PARAM_NAMES}
        i = ops.abs2(O.apply_optics(wave, self.optics, self.grid.pixel_size_A, params=op))
        # a zero-loss filter (energy_filter) removes the inelastically scattered electrons that the
        # background would return: the two are exclusive, or the ice's loss would count twice
        if self.config.simulation.inelastic_background and self.optics.energy_filter_slit_eV is None:
            i = self.scattered(i, v_abs, params or {})
        return self.grid.bin(i)

    def scattered(self, i, v_abs, params):
        """TEM-simulator's incoherent background (:mod:`cutem.inelastic`): the atoms' absorbed
        intensity 1 − exp(−2σ ΣV′) returned blurred at the defocus of the centre plane, then the
        whole image filtered by the ice's scattering along its path length L = V_ice-slices / V_ice."""
        c, g, op = self._cache, self.grid, self.optics
        df = 0.5 * (op.defocus_u_A + op.defocus_v_A)
        theta = aperture_angle_rad(op, g.pixel_size_A)
        if v_abs is not None:
            if "inel" not in c:
                c["inel"] = InelasticBlur(g.shape, g.pixel_size_A, op.voltage_kV, df, theta)
            va = ops.sum(v_abs, axis=0) if unwrap(v_abs).shape[0] > 1 else ops.reshape(v_abs, g.shape)
            absorbed = 1.0 - ops.exp(va * (-2.0 * interaction_constant(op.voltage_kV)))
            i = i + c["inel"](absorbed)
        if self.config.sample.ice:
            vi = self._ice_potential(params)
            L = (ops.sum(vi, axis=0) if unwrap(vi).shape[0] > 1 else ops.reshape(vi, g.shape)) * (1.0 / ice_potential_V())
            if "ice_scatter" not in c:
                c["ice_scatter"] = IceScattering(g.shape, g.pixel_size_A, op.voltage_kV, df, theta)
            i = c["ice_scatter"](i, L)
        return i

    def detect(self, intensity, params=None, *, rng=None, draws=None, estimator="score", noise_free=True):
        """The detector's response to ``intensity`` (:func:`cutem.detector.detect`; ``noise_free``:
        with its noise-free twin, one more MTF)."""
        dp = {k: p for k, p in (params or {}).items() if k in D.PARAM_NAMES}
        if estimator == "score" and not self.detector.quantized:
            estimator = "none"
        return D.detect(intensity, self.detector, rng=rng, estimator=estimator, params=dp, draws=draws,
                        noise_free=noise_free)

    def noise_free(self, params=None):
        """gain · MTF ⊛ N̄ of this tilt (array or Var, detector grid)."""
        return self.render(params, estimator="none").noise_free

    def watch(self, tape, wrt):
        """``{name: watched Var}`` of the inputs named in ``wrt`` (``"potential"``: the slices)."""
        self.check_names(wrt)
        base = self.inputs()
        out = {}
        for name in wrt:
            if name == "potential":
                out[name] = tape.watch(unwrap(self.potential()[0]))
            else:
                out[name] = tape.watch(base[name])
        return out


__all__ = ["ImageModel", "Grid", "SPECIMEN_PARAMS", "tilt_seed", "tilt_settings", "tilt_doses", "specimen_z_extent",
           "stack_z_range", "slice_count"]
