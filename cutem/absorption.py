"""Scattering cross sections of neutral atoms and the absorption potential built from them.

TEM-simulator 1.3 (Rullgård et al., J. Microsc. 243:234, 2011; ported line by line in DiffTEM,
github nanovis/diff-tem-release, ``diff_tem/eletronbeam.py``, ``diff_tem/pdb/pdb_kernel.py``,
``diff_tem/sample.py``) gives every atom, and the ice, an imaginary ("absorption") potential
equal to the loss of electrons from the unscattered wave by elastic *and* inelastic scattering.
The cross sections are the screened-atom models of Reimer & Kohl, *Transmission Electron
Microscopy*, 5th ed. (Springer 2008), sections 5.1.3 and 5.3.1, with

    θ₀ = Z^{1/3} / (k a₀)            (screening angle, a₀ the Bohr radius, k = 2π/λ),
    θ_E = J / (4E),  J = 13.5 eV · Z (characteristic inelastic angle; E the beam energy eV·V),
    γ = 1 + E / (m₀c²):

    dσ_el/dΩ   = 4 Z^{2/3} a₀² γ² / (1 + θ²/θ₀²)²,
    σ_el       = 4π Z^{4/3} γ² / k²                       (its small-angle integral),
    dσ_inel/dΩ = 4 Z γ² / (k⁴ a₀²) · [1 − (1 + θ²/θ₀²)⁻²] / (θ² + θ_E²)²,
    σ_inel     = 4π Z γ² / (k⁴ a₀² (θ₀² − θ_E²)³) · [2θ₀⁴ ln(θ₀²/θ_E²) − 3θ₀⁴ + 4θ₀²θ_E² − θ_E⁴]
                                                          (its small-angle integral).

Absorption potential (TEM-simulator ``add_atomic_abs_pot``): each atom carries an imaginary
potential that is a normalised 3D Gaussian of temperature factor B + 20 Å² with integral
σ_tot(Z) / (2σ), σ the interaction constant (rad V⁻¹ Å⁻¹); projected, the wave's amplitude
falls by exp(−σ V′) = exp(−σ_tot n₂/2) where n₂ is the projected density of atoms, i.e. the
intensity by exp(−σ_tot n₂): Beer–Lambert with the total cross section. TEM-simulator maps the
atoms on a voxel grid and clamps the map from below by the ice's absorption (the particle then
absorbs only in excess of the ice it displaces, ``max(V′, V′_ice) − V′_ice``); here each atom
subtracts the ice absorption of the volume it displaces instead, with the same "dummy atom" of
unit density and volume vⱼ = 1.212 Å³/Da × mass that :mod:`cutem.potential` uses for the real
part (linear, hence differentiable, where max() is not).

Ice: n = 0.0335 molecules Å⁻³ of H₂O, σ_tot,ice = σ_tot(O) + 2 σ_tot(H) per molecule. Its loss
is not put on the wave here: :mod:`cutem.inelastic` attenuates and blurs the image by it.
"""
from __future__ import annotations

import math

import numpy as np

import adjoints.backend as B
from adjoints.ops import linear_corners
from adjoints.stage import Stage, register

from . import elements as E
from .electron import M0C2_EV, interaction_constant, lorentz_gamma, wavenumber_per_A

BOHR_RADIUS_A = 0.529177210903      #: a₀ in Å (CODATA 2018)
MEAN_IONISATION_EV_PER_Z = 13.5     #: J / Z of Reimer's inelastic model (eV)
ABSORPTION_EXTRA_B_A2 = 20.0        #: TEM-simulator widens each atom's absorption by B + 20 Å²
DISPLACED_VOLUME_A3_PER_DA = 1.212  #: protein partial specific volume 0.73 cm³/g (as potential.py)


def _angles(voltage_kV, z):
    k = wavenumber_per_A(voltage_kV)
    theta0_2 = (z ** (1.0 / 3.0) / (k * BOHR_RADIUS_A)) ** 2
    thetaE_2 = (MEAN_IONISATION_EV_PER_Z * z / (4.0 * float(voltage_kV) * 1e3)) ** 2
    return k, theta0_2, thetaE_2


def elastic_cross_section_A2(voltage_kV, z) -> float:
    """σ_el of one neutral atom (Å²), Reimer's screened-Coulomb model (module docstring)."""
    k = wavenumber_per_A(voltage_kV)
    return 4 * math.pi * float(z) ** (4.0 / 3.0) * (lorentz_gamma(voltage_kV) / k) ** 2


def inelastic_cross_section_A2(voltage_kV, z) -> float:
    """σ_inel of one neutral atom (Å²), Reimer's model (module docstring)."""
    z = float(z)
    k, t0, tE = _angles(voltage_kV, z)
    a = t0 - tE
    b = lorentz_gamma(voltage_kV) / (k * k * BOHR_RADIUS_A * a)
    return 4 * math.pi * z * b * b / a * (2 * t0 * t0 * math.log(t0 / tE) - 3 * t0 * t0 + 4 * t0 * tE - tE * tE)


def total_cross_section_A2(voltage_kV, z) -> float:
    """σ_tot = σ_el + σ_inel (Å²): TEM-simulator's loss from the unscattered wave per atom."""
    return elastic_cross_section_A2(voltage_kV, z) + inelastic_cross_section_A2(voltage_kV, z)


def differential_cross_section_A2(voltage_kV, z, theta):
    """dσ/dΩ = dσ_el/dΩ + dσ_inel/dΩ (Å² sr⁻¹) at scattering angles ``theta`` (rad, array)."""
    z = float(z)
    k, t0, tE = _angles(voltage_kV, z)
    g = lorentz_gamma(voltage_kV)
    th2 = np.asarray(theta, dtype=np.float64) ** 2
    a = 1.0 + th2 / t0
    el = 4 * z ** (2.0 / 3.0) * (BOHR_RADIUS_A * g / a) ** 2
    b = g / (k * k * BOHR_RADIUS_A * (th2 + tE))
    inel = 4 * z * b * b * (1.0 - 1.0 / (a * a))
    return el + inel


def ice_cross_section_A2(voltage_kV) -> float:
    """σ_tot of one H₂O molecule (Å²): σ_tot(O) + 2 σ_tot(H)."""
    return total_cross_section_A2(voltage_kV, 8) + 2 * total_cross_section_A2(voltage_kV, 1)


def ice_absorption_V(voltage_kV, density_per_A3=E.ICE_DENSITY_PER_A3) -> float:
    """Imaginary potential of ice (V): n σ_tot,ice / (2σ), so that σ V′_ice L = n σ_tot,ice L / 2."""
    return density_per_A3 * ice_cross_section_A2(voltage_kV) / (2 * interaction_constant(voltage_kV))


def _mass_Da(z):
    from .potential import atomic_mass_Da

    return atomic_mass_Da(z)


def _components(atoms, voltage_kV, solvent):
    """Per atom, the Gaussians of its absorption: [(weight (n,) V·Å³, extra B (n,) Å² or None)].

    First the atom's own (weight oⱼ σ_tot(Zⱼ)/(2σ), width Bⱼ + 20), then, with ``solvent``, the
    ice it displaces (weight −oⱼ vⱼ V′_ice, width of the dummy atom 4π vⱼ^{2/3}, fixed)."""
    sig = interaction_constant(voltage_kV)
    zs = np.asarray(atoms.species, dtype=np.int64)[np.asarray(atoms.elements, dtype=np.int64)]
    occ = np.asarray(atoms.occupancies, dtype=np.float64)
    per_z = {int(z): total_cross_section_A2(voltage_kV, z) / (2 * sig) for z in np.unique(zs)}
    w_atom = occ * np.array([per_z[int(z)] for z in zs]) if len(zs) else np.zeros(0)
    comps = [(w_atom, None)]
    if solvent:
        vol = np.array([DISPLACED_VOLUME_A3_PER_DA * _mass_Da(z) for z in zs]) if len(zs) else np.zeros(0)
        comps.append((-occ * vol * ice_absorption_V(voltage_kV), 4 * math.pi * vol ** (2.0 / 3.0)))
    return comps


@register
class AbsorptionPotentialStage(Stage):
    """The atoms' projected imaginary potential V′ (V·Å) per slice from their cross sections.

    ``forward(ctx, positions (n, 3) Å, b_factors (n,) Å²) -> (n_slices, ny, nx)``:
    V′(r) = Σⱼ wⱼ g(r − rⱼ; βⱼ), g the normalised 2D Gaussian whose transform is exp(−β q²/4),
    wⱼ = oⱼ σ_tot(Zⱼ)/(2σ) with βⱼ = Bⱼ + ``global_b`` + 20 Å², minus (with ``solvent``) the
    displaced ice oⱼ vⱼ V′_ice with the dummy atom's β = 4π vⱼ^{2/3} (module docstring).
    Each atom goes to the slice holding its z (one slice without ``slice_thickness_A``).

    Computed as: weights spread bilinearly onto the periodic grid (pixel (i, j) at
    ((j − nx/2)px, (i − ny/2)px)), per distinct β one rfft2, × exp(−β q²/4)/sinc²(q px) (the
    spreading's own transfer divided out), inverse rfft2, ÷ px². VJP: the filter is real and
    even, so the cotangent map is filtered the same way and interpolated back at the atoms
    (∂/∂x, ∂/∂y from the bilinear weights' slopes; ∂/∂Bⱼ with the filter × (−q²/4)); z moves an
    atom between slices only, so its derivative is 0.
    """

    def __init__(self, atoms, shape, pixel_size_A, voltage_kV, *, slice_thickness_A=None, z_range_A=None,
                 global_b_A2=0.0, solvent=True):
        self.shape = tuple(int(n) for n in shape)
        self.px = float(pixel_size_A)
        self.dz = None if slice_thickness_A is None else float(slice_thickness_A)
        self.z_range = None if z_range_A is None else tuple(float(v) for v in z_range_A)
        self.global_b = float(global_b_A2)
        self.comps = _components(atoms, voltage_kV, solvent)

    @property
    def n_slices(self):
        if self.dz is None or self.z_range is None:
            return 1
        return max(1, int(math.ceil((self.z_range[1] - self.z_range[0]) / self.dz - 1e-9)))

    def _filter_parts(self, xp, dtype):
        ny, nx = self.shape
        qy = np.fft.fftfreq(ny, self.px)[:, None]
        qx = np.fft.rfftfreq(nx, self.px)[None, :]
        q2 = qy * qy + qx * qx
        spread = (np.sinc(qy * self.px) * np.sinc(qx * self.px)) ** 2
        return q2, 1.0 / (spread * self.px * self.px)

    def _slice_of(self, z):
        if self.n_slices == 1:
            return np.zeros(len(z), dtype=np.int64)
        k = np.floor((z - self.z_range[0]) / self.dz).astype(np.int64)
        return np.where((k >= 0) & (k < self.n_slices), k, -1)

    def _groups(self, b):
        """[(component, β value, atom indices)] over the components and their distinct β."""
        out = []
        for c, (w, fixed) in enumerate(self.comps):
            beta = (fixed if fixed is not None else b + self.global_b + ABSORPTION_EXTRA_B_A2)
            for v in np.unique(beta):
                out.append((c, float(v), np.nonzero(beta == v)[0]))
        return out

    def _pix(self, pos):
        ny, nx = self.shape
        return np.stack([pos[:, 1] / self.px + ny / 2, pos[:, 0] / self.px + nx / 2], 1)

    def forward(self, ctx, positions, b_factors):
        xp = B.array_module(positions)
        dtype = B.real_dtype(positions.dtype)
        pos = np.asarray(B.to_numpy(positions), dtype=np.float64)
        b = np.asarray(B.to_numpy(b_factors), dtype=np.float64)
        ny, nx = self.shape
        q2, norm = self._filter_parts(np, np.float64)
        slices = self._slice_of(pos[:, 2])
        flat, w8, dw = linear_corners(self._pix(pos), self.shape)
        out = np.zeros((self.n_slices, ny, nx))
        groups = self._groups(b)
        for s in range(self.n_slices):
            acc = np.zeros((ny, nx // 2 + 1), dtype=np.complex128)
            for c, beta, idx in groups:
                idx = idx[slices[idx] == s]
                if not len(idx):
                    continue
                grid = np.bincount(flat[:, idx].ravel(), weights=(w8[:, idx] * self.comps[c][0][idx]).ravel(),
                                   minlength=ny * nx).reshape(ny, nx)
                acc += np.fft.rfft2(grid) * (np.exp(-beta * q2 / 4) * norm)
            out[s] = np.fft.irfft2(acc, s=(ny, nx))
        ctx.pos, ctx.b, ctx.slices, ctx.groups, ctx.corners = pos, b, slices, groups, (flat, w8, dw)
        ctx.xp, ctx.dtype = xp, dtype
        return xp.asarray(out.astype(dtype))

    def vjp(self, ctx, g):
        ny, nx = self.shape
        gn = np.asarray(B.to_numpy(g), dtype=np.float64).reshape(self.n_slices, ny, nx)
        q2, norm = self._filter_parts(np, np.float64)
        flat, w8, dw = ctx.corners
        n = len(ctx.pos)
        g_pos = np.zeros((n, 3))
        g_b = np.zeros(n)
        for s in range(self.n_slices):
            G = np.fft.rfft2(gn[s])
            for c, beta, idx in ctx.groups:
                idx = idx[ctx.slices[idx] == s]
                if not len(idx):
                    continue
                w = self.comps[c][0][idx]
                h = G * (np.exp(-beta * q2 / 4) * norm)
                hv = np.fft.irfft2(h, s=(ny, nx)).ravel()[flat[:, idx]]  # (4, m)
                # d/d(pixel row, col) → d/dy, d/dx in Å
                g_pos[idx, 1] += w * (dw[:, 0, idx] * hv).sum(0) / self.px
                g_pos[idx, 0] += w * (dw[:, 1, idx] * hv).sum(0) / self.px
                if self.comps[c][1] is None:
                    hb = np.fft.irfft2(h * (-q2 / 4), s=(ny, nx)).ravel()[flat[:, idx]]
                    g_b[idx] += w * (w8[:, idx] * hb).sum(0)
        xp, dt = ctx.xp, ctx.dtype
        return xp.asarray(g_pos.astype(dt)), xp.asarray(g_b.astype(dt))

    @classmethod
    def cases(cls, xp, dtype, rng):
        from .structure import Atoms

        n = 7
        atoms = Atoms(positions=np.c_[rng.uniform(-9, 9, (n, 2)), rng.uniform(-6, 6, n)],
                      elements=rng.integers(0, 3, n), species=(1, 6, 8), b_factors=rng.uniform(10, 40, n),
                      occupancies=rng.uniform(0.5, 1.0, n))
        pos = xp.asarray(atoms.positions.astype(dtype))
        bf = xp.asarray(atoms.b_factors.astype(dtype))
        return [(cls(atoms, (16, 18), 1.5, 200.0), (pos, bf)),
                (cls(atoms, (12, 12), 2.0, 300.0, slice_thickness_A=5.0, z_range_A=(-7.0, 8.0), solvent=False),
                 (pos, bf))]


__all__ = ["AbsorptionPotentialStage", "elastic_cross_section_A2", "inelastic_cross_section_A2",
           "total_cross_section_A2", "differential_cross_section_A2", "ice_cross_section_A2", "ice_absorption_V",
           "BOHR_RADIUS_A"]
