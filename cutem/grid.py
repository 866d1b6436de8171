"""The simulation grid: the detector grid refined and padded, and the way back to it.

The wave is computed on the detector grid refined ``Simulation.oversampling`` times (so the
phase grating is sampled finer than the detector) and padded by ``Simulation.padding_A`` on
every side (so the periodic FFT field does not wrap particles at the edge into the image).
The intensity is cropped back to the field and each detector pixel averages its
``oversampling²`` sub-pixels. Pixel convention: :mod:`cutem.potential` (pixel (i, j) of an
(ny, nx) grid at x = (j − nx/2)·px, y = (i − ny/2)·px; scene (0, 0) is the field centre, so
the padded grid and the detector grid share their centre).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from adjoints import ops
from adjoints.stage import unwrap


@dataclass(frozen=True)
class Grid:
    """The simulation grid of a run."""

    shape: tuple            #: (ny, nx) of the padded, oversampled grid
    pixel_size_A: float     #: its pixel size (Å)
    pad: int                #: padding pixels on each side (of the fine grid)
    oversampling: int
    detector_shape: tuple   #: (ny, nx) of the detector

    @classmethod
    def from_config(cls, cfg):
        """The grid of a :class:`cutem.config.RunConfig` (its detector and simulation settings)."""
        det, sim = cfg.detector, cfg.simulation
        os_ = sim.oversampling
        px = det.pixel_size_A / os_
        pad = int(math.ceil(sim.padding_A / px)) if sim.padding_A > 0 else 0
        shape = (det.ny * os_ + 2 * pad, det.nx * os_ + 2 * pad)
        return cls(shape, px, pad, os_, (det.ny, det.nx))

    @property
    def field_shape(self) -> tuple:
        """(ny, nx) of the fine grid over the detector's field (padding removed)."""
        ny, nx = self.detector_shape
        return ny * self.oversampling, nx * self.oversampling

    def crop(self, x):
        """``x`` (array or Var, (..., ny, nx) on this grid) without the padding."""
        return ops.crop(x, self.field_shape) if self.pad else x

    def bin(self, intensity):
        """Crop the padding and average each detector pixel's oversampling² sub-pixels."""
        intensity = self.crop(intensity)
        o = self.oversampling
        if o == 1:
            return intensity
        ny, nx = self.detector_shape
        lead = unwrap(intensity).shape[:-2]
        r = ops.reshape(intensity, lead + (ny, o, nx, o))
        nd = len(lead)
        return ops.mean(r, axis=(nd + 1, nd + 3))
