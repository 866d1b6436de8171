"""The simulation grid: the detector grid refined and padded, and the way back to it.

The wave is computed on the detector grid refined ``Simulation.oversampling`` times (so the
phase grating is sampled finer than the detector) and padded by ``Simulation.padding_A`` on
every side (so the periodic FFT field does not wrap particles at the edge into the image).
The intensity is cropped back to the field and each detector pixel averages its
``oversampling²`` sub-pixels. Pixel convention: :mod:`cutem.potential` (pixel (i, j) of an
(ny, nx) grid at x = (j − nx/2)·px, y = (i − ny/2)·px; scene (0, 0) is the field centre, so
the padded grid and the detector grid share their centre).

Origin (``Simulation.grid_origin``): with ``"fft"`` (cutem's own) the scene's x = y = 0 lies on
the simulation grid's pixel (ny/2, nx/2) as above. With ``"middle"`` (TEM-simulator's detector,
whose pixel i is centred at (i − (n−1)/2)·pixel, DiffTEM ``detector.py``) the scene is moved by
:attr:`Grid.scene_shift_A` = −½ simulation pixel in x and y before it is projected — the atoms,
the particle maps of ``solvent_model = "clamp"``, the ice's hole and tilt, the contaminants: every
microscope-frame (x, y) that meets the grid — so that simulation pixel k shows the scene at
(k − (n−1)/2)·px and, averaging its o sub-pixels k = o·j … o·j + o − 1, detector pixel j at
(j − (n_det − 1)/2)·pixel. The ``positions`` inputs of the image model stay in the microscope
frame and get the shift added on the way to the stages (:meth:`cutem.imaging.ImageModel`): a
translation, so their cotangent passes through unchanged. ``"fft"`` adds nothing anywhere (TOML
images are bit for bit those of before the option, tests/test_grid_origin.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from adjoints import ops
from adjoints.stage import unwrap


def detector_shift_A(cfg) -> float:
    """The scene's shift in x and y (Å) as the detector sees it: −½ detector pixel with
    ``Simulation.grid_origin = "middle"`` (detector pixel j then shows x = (j − (n−1)/2)·pixel),
    else 0 (module docstring, Origin). For coordinates written beside an image (ground truth)."""
    return -0.5 * cfg.detector.pixel_size_A if cfg.simulation.grid_origin == "middle" else 0.0


@dataclass(frozen=True)
class Grid:
    """The simulation grid of a run."""

    shape: tuple            #: (ny, nx) of the padded, oversampled grid
    pixel_size_A: float     #: its pixel size (Å)
    pad: int                #: padding pixels on each side (of the fine grid)
    oversampling: int
    detector_shape: tuple   #: (ny, nx) of the detector
    #: added to the scene's microscope-frame x and y before projection (Å; module docstring, Origin)
    scene_shift_A: float = 0.0

    @classmethod
    def from_config(cls, cfg):
        """The grid of a :class:`cutem.config.RunConfig` (its detector and simulation settings)."""
        det, sim = cfg.detector, cfg.simulation
        os_ = sim.oversampling
        px = det.pixel_size_A / os_
        pad = int(math.ceil(sim.padding_A / px)) if sim.padding_A > 0 else 0
        shape = (det.ny * os_ + 2 * pad, det.nx * os_ + 2 * pad)
        shift = -0.5 * px if sim.grid_origin == "middle" else 0.0
        return cls(shape, px, pad, os_, (det.ny, det.nx), shift)

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
