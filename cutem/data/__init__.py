"""Data shipped with cutem (scattering-factor table, the embedded TMV example)."""
