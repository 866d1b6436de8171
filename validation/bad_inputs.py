"""Every bad input we know of, run through the real ``cutem`` console script.

Writes ``docs/bad_inputs.md``: a table of input tried → exit code → the one-line message
(the last line cutem prints on stderr). Bad input must exit 2 with one line naming the file,
line or key and the allowed range; a few rows show the accepted fix (exit 0) and an internal
failure (exit 1, with the traceback). ``tests/test_reliability.py`` runs the same cases and
checks each exit code and message.

Usage: ``python -m validation.bad_inputs [--out docs/bad_inputs.md]``
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def pdb_line(i, name, x, y, z, element, res="ALA", occ=1.0, b=20.0):
    """A fixed-column PDB ATOM record (columns as in the PDB format v3.3)."""
    return (f"ATOM  {i:5d} {name:<4s} {res:3s} A{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}{occ:6.2f}{b:6.2f}"
            f"          {element:>2s}")


def tiny_pdb(n=12, seed=0, elements="CNOS"):
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        x, y, z = rng.uniform(-6, 6, 3)
        e = elements[i % len(elements)]
        lines.append(pdb_line(i + 1, e, x, y, z, e))
    return "\n".join(lines) + "\nEND\n"


def config(structure="tiny.pdb", *, extra="", det="", positions="[[0.0, 0.0, 0.0]]", particles=True,
           sim="", geometry="", optics="", sample=""):
    parts = (f'\n[[particles]]\nstructure = "{structure}"\nplacement = "list"\npositions_A = {positions}\n'
             if particles else "")
    return (f'seed = 1\noutput = "bad"\n{extra}\n'
            f"[optics]\nvoltage_kV = 300.0\ndefocus_u_A = 10000.0\ndefocus_v_A = 10000.0\n{optics}\n"
            f"[detector]\nnx = 32\nny = 32\npixel_size_A = 2.0\ndose_e_per_A2 = 10.0\n{det}\n"
            f"[sample]\nthickness_center_A = 100.0\nthickness_edge_A = 100.0\n{sample}\n"
            f"[simulation]\n{sim}\n"
            f"[geometry]\n{geometry}\n" + parts)


def write_mrc_raw(path, data, mode=None):
    import mrcfile

    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = 2.0


@dataclass
class Case:
    """One bad input: ``files`` to write (name → str/bytes or a callable(path)), the argv after
    ``cutem``, the expected exit code and a substring the message must contain."""

    what: str
    argv: list
    rc: int
    expect: str
    files: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)


TEMSIM_OK = """=== simulation ===
rand_seed = 1
=== sample ===
diameter = 1000
thickness_center = 10
thickness_edge = 10
=== electronbeam ===
acc_voltage = 300
dose_per_im = 1000
=== optics ===
magnification = 30000
defocus_nominal = 1
=== detector ===
det_pix_x = 32
det_pix_y = 32
pixel_size = 6
"""


def _nan_pdb():
    lines = tiny_pdb(4).splitlines()
    lines[1] = lines[1][:30] + "     nan" + lines[1][38:]
    return "\n".join(lines) + "\n"


def _truncated_pdb():
    text = tiny_pdb(6)
    return text[: text.index("\n", 200) + 20]  # stops in the middle of an ATOM record


def _unknown_element_pdb():
    lines = tiny_pdb(4).splitlines()
    lines[2] = lines[2][:76] + "Xx"
    return "\n".join(lines) + "\n"


def _no_element_pdb():
    # element columns (77-78) empty, as in old or hand-edited files: names CA, N, O, SD
    rows = [(" CA ", 1.0, 0.0, 0.0), (" N  ", -1.0, 0.5, 0.0), (" O  ", 0.0, 1.2, 0.3), (" SD ", 0.5, -1.0, 1.0)]
    return "\n".join(pdb_line(i + 1, nm, x, y, z, "")[:66] for i, (nm, x, y, z) in enumerate(rows)) + "\nEND\n"


def _cif_truncated():
    return ("data_x\nloop_\n_atom_site.group_PDB\n_atom_site.id\n_atom_site.type_symbol\n"
            "_atom_site.label_atom_id\n_atom_site.label_comp_id\n_atom_site.label_asym_id\n"
            "_atom_site.label_seq_id\n_atom_site.Cartn_x\n_atom_site.Cartn_y\n_atom_site.Cartn_z\n"
            "_atom_site.occupancy\n_atom_site.B_iso_or_equiv\n"
            "ATOM 1 C CA ALA A 1 0.0 0.0 0.0 1.0 20.0\nATOM 2 N N ALA A 1 1.4")


def _mrc2d(p):
    write_mrc_raw(p, np.ones((16, 16), np.float32))


def _mrc_complex(p):
    write_mrc_raw(p, np.ones((4, 16, 16), np.complex64))


def _mrc_nan(p):
    a = np.ones((4, 16, 16), np.float32)
    a[1, 2, 3] = np.nan
    write_mrc_raw(p, a)


def _mrc_nan_free(p):
    write_mrc_raw(p, np.ones((4, 16, 16), np.float32))


def _mrc_truncated(p):
    write_mrc_raw(p, np.ones((4, 32, 32), np.float32))
    data = Path(p).read_bytes()
    Path(p).write_bytes(data[: 1024 + 1000])


# a deliberately broken library function, patched in at interpreter start: the CLI must
# call that an internal failure (exit 1, traceback), not bad input
_BREAK = """
import cutem.pipeline as _p
def _broken(*a, **k):
    raise RuntimeError("deliberate internal failure (sitecustomize test hook)")
_p.simulate_tilt = _broken
"""


def cases():
    P = tiny_pdb()
    C = [
        Case("config file does not exist", ["simulate", "missing.toml"], 2, "no such file"),
        Case("config is not valid TOML", ["simulate", "c.toml"], 2, "not valid TOML",
             {"c.toml": "[optics\nvoltage_kV = 300\n"}),
        Case("config is binary garbage", ["simulate", "c.toml"], 2, "not a text file",
             {"c.toml": bytes(range(256)) * 4}),
        Case("unknown TOML key in a table", ["simulate", "c.toml"], 2, "unknown key 'defocus_um' in [optics]",
             {"c.toml": config(optics="defocus_um = 1.0"), "tiny.pdb": P}),
        Case("unknown TOML key at the top level", ["simulate", "c.toml"], 2, "unknown key 'sead'",
             {"c.toml": config(extra="sead = 3"), "tiny.pdb": P}),
        Case("unknown key in [[particles]]", ["simulate", "c.toml"], 2, "unknown key 'pdb'",
             {"c.toml": config() + 'pdb = "x.pdb"\n', "tiny.pdb": P}),
        Case("wrong type: tilt_angles_deg = \"abc\"", ["simulate", "c.toml"], 2, "tilt_angles_deg = 'abc' must be a list",
             {"c.toml": config(geometry='tilt_angles_deg = "abc"'), "tiny.pdb": P}),
        Case("wrong type: nx = \"64\"", ["simulate", "c.toml"], 2, "Detector.nx",
             {"c.toml": config().replace("nx = 32", 'nx = "64"'), "tiny.pdb": P}),
        Case("unknown TEM-simulator key", ["simulate", "in.txt"], 2, "in.txt:12: unknown key 'defocus_nominl'",
             {"in.txt": TEMSIM_OK.replace("defocus_nominal", "defocus_nominl")}),
        Case("unknown TEM-simulator component", ["simulate", "in.txt"], 2, "unknown component",
             {"in.txt": TEMSIM_OK + "=== camera ===\nx = 1\n"}),
        Case("TEM-simulator value not a number", ["simulate", "in.txt"], 2, "in.txt:8: acc_voltage = 'fast'",
             {"in.txt": TEMSIM_OK.replace("acc_voltage = 300", "acc_voltage = fast")}),
        Case("TEM-simulator option cutem does not model (gen_defocus = no: defocus from a file)", ["simulate", "in.txt"], 2,
             "optics.gen_defocus = no is not supported",
             {"in.txt": TEMSIM_OK.replace("defocus_nominal = 1", "defocus_nominal = 1\ngen_defocus = no")}),
        Case("TEM-simulator ntilts = 0", ["simulate", "in.txt"], 2, "at least one angle",
             {"in.txt": TEMSIM_OK + "=== geometry ===\nntilts = 0\n"}),
        Case("negative dose", ["simulate", "c.toml"], 2, "Detector.dose_e_per_A2 = -1.0 is outside the allowed range",
             {"c.toml": config().replace("dose_e_per_A2 = 10.0", "dose_e_per_A2 = -1.0"), "tiny.pdb": P}),
        Case("negative pixel size", ["simulate", "c.toml"], 2, "Detector.pixel_size_A = -2.0 is outside",
             {"c.toml": config().replace("pixel_size_A = 2.0", "pixel_size_A = -2.0"), "tiny.pdb": P}),
        Case("negative ice thickness", ["simulate", "c.toml"], 2, "Sample.thickness_center_A = -5.0",
             {"c.toml": config().replace("thickness_center_A = 100.0", "thickness_center_A = -5.0"),
              "tiny.pdb": P}),
        Case("NaN voltage", ["simulate", "c.toml"], 2, "Optics.voltage_kV must be finite",
             {"c.toml": config().replace("voltage_kV = 300.0", "voltage_kV = nan"), "tiny.pdb": P}),
        Case("infinite defocus", ["simulate", "c.toml"], 2, "Optics.defocus_u_A must be finite",
             {"c.toml": config().replace("defocus_u_A = 10000.0", "defocus_u_A = inf"), "tiny.pdb": P}),
        Case("defocus 30 µm (outside ±20 µm)", ["simulate", "c.toml"], 2, "Optics.defocus_v_A = 300000.0",
             {"c.toml": config().replace("defocus_v_A = 10000.0", "defocus_v_A = 300000.0"), "tiny.pdb": P}),
        Case("aperture of 0 µm", ["simulate", "c.toml"], 2, "Optics.aperture_diameter_um = 0.0",
             {"c.toml": config(optics="aperture_diameter_um = 0.0"), "tiny.pdb": P}),
        Case("aperture of 5 mm", ["simulate", "c.toml"], 2, "Optics.aperture_diameter_um = 5000.0",
             {"c.toml": config(optics="aperture_diameter_um = 5000.0"), "tiny.pdb": P}),
        Case("MTF a = 1.5 (TEM-simulator: [0, 1])", ["simulate", "c.toml"], 2, "Detector.mtf_a = 1.5",
             {"c.toml": config(det="mtf_a = 1.5"), "tiny.pdb": P}),
        Case("MTF p = 12 (TEM-simulator: [0, 10])", ["simulate", "c.toml"], 2, "Detector.mtf_p = 12.0",
             {"c.toml": config(det="mtf_p = 12.0"), "tiny.pdb": P}),
        Case("MTF a = b = c = 0", ["simulate", "c.toml"], 2, "mtf_a + mtf_b + mtf_c must be > 0",
             {"c.toml": config(det="mtf_c = 0.0"), "tiny.pdb": P}),
        Case("DQE 0", ["simulate", "c.toml"], 2, "Detector.dqe = 0.0",
             {"c.toml": config(det="dqe = 0.0"), "tiny.pdb": P}),
        Case("multislice slice thickness 0", ["simulate", "c.toml"], 2, "Simulation.slice_thickness_A = 0.0",
             {"c.toml": config(sim='method = "multislice"\nslice_thickness_A = 0.0'), "tiny.pdb": P}),
        Case("detector 4x4 px", ["simulate", "c.toml"], 2, "Detector.nx = 4 must be an integer in [8, 65536]",
             {"c.toml": config().replace("nx = 32", "nx = 4"), "tiny.pdb": P}),
        Case("tilt angle 95°", ["simulate", "c.toml"], 2, "tilt_angles_deg[1] = 95.0 is outside the allowed range [-90.0, 90.0] deg",
             {"c.toml": config(geometry="tilt_angles_deg = [0.0, 95.0]"), "tiny.pdb": P}),
        Case("negative dose weight", ["simulate", "c.toml"], 2, "dose_weights[1] = -0.5 is outside the allowed range [0.0, inf)",
             {"c.toml": config(geometry="tilt_angles_deg = [0.0, 10.0]\ndose_weights = [1.0, -0.5]"),
              "tiny.pdb": P}),
        Case("NaN defocus offset", ["simulate", "c.toml"], 2, "defocus_offsets_A[1] must be finite, got nan",
             {"c.toml": config(geometry="tilt_angles_deg = [0.0, 10.0]\ndefocus_offsets_A = [0.0, nan]"),
              "tiny.pdb": P}),
        Case("seed -1 on the command line", ["simulate", "c.toml", "--seed", "-1"], 2, "--seed",
             {"c.toml": config(), "tiny.pdb": P}),
        Case("output name with a folder", ["simulate", "c.toml", "--name", "../x"], 2, "not a file base name",
             {"c.toml": config(), "tiny.pdb": P}),
        Case("structure file missing", ["simulate", "c.toml"], 2, "structure file",
             {"c.toml": config(structure="nothere.pdb")}),
        Case("structure file empty", ["simulate", "c.toml"], 2, "the file is empty",
             {"c.toml": config(), "tiny.pdb": ""}),
        Case("structure is binary garbage", ["simulate", "c.toml"], 2, "tiny.pdb",
             {"c.toml": config(), "tiny.pdb": bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8))}),
        Case("PDB truncated mid-record", ["simulate", "c.toml"], 2, "truncated ATOM/HETATM record",
             {"c.toml": config(), "tiny.pdb": _truncated_pdb()}),
        Case("mmCIF truncated", ["simulate", "c.toml"], 2, "t.cif",
             {"c.toml": config(structure="t.cif"), "t.cif": _cif_truncated()}),
        Case("PDB with a non-UTF-8 byte in a residue name", ["simulate", "c.toml"], 2, "cannot read as PDB or mmCIF",
             {"c.toml": config(), "tiny.pdb": P.encode().replace(b"ALA A   2", b"\x80LA A   2")}),
        Case("PDB without atoms", ["simulate", "c.toml"], 2, "no atoms",
             {"c.toml": config(), "tiny.pdb": "HEADER    EMPTY\nEND\n"}),
        Case("PDB with a NaN coordinate", ["simulate", "c.toml"], 2, "non-finite coordinates",
             {"c.toml": config(), "tiny.pdb": _nan_pdb()}),
        Case("PDB with unknown element Xx", ["simulate", "c.toml"], 2, "unknown element",
             {"c.toml": config(), "tiny.pdb": _unknown_element_pdb()}),
        Case("... the same with --infer-elements (element X from atom name O)",
             ["simulate", "c.toml", "--infer-elements", "-q"], 0, "",
             {"c.toml": config(), "tiny.pdb": _unknown_element_pdb()}),
        Case("PDB without element columns (accepted: gemmi takes CA, N, O, SD from the atom names)",
             ["simulate", "c.toml", "-q"], 0, "", {"c.toml": config(), "tiny.pdb": _no_element_pdb()}),
        Case("particle outside the field of view", ["simulate", "c.toml"], 2, "lies outside the field of view",
             {"c.toml": config(positions="[[500.0, 0.0, 0.0]]"), "tiny.pdb": P}),
        Case("particle larger than the field (grid too small)", ["simulate", "c.toml"], 2,
             "the grid is too small for the scene",
             {"c.toml": config().replace("nx = 32", "nx = 8").replace("ny = 32", "ny = 8")
              .replace("pixel_size_A = 2.0", "pixel_size_A = 1.0"), "tiny.pdb": P}),
        Case("random placement: more particles than fit", ["simulate", "c.toml"], 2, "could place only",
             {"c.toml": config(particles=False) + '[[particles]]\nstructure = "tiny.pdb"\nplacement = "random"\n'
                                                  "count = 500\n", "tiny.pdb": P}),
        Case("coordinate file missing", ["simulate", "c.toml"], 2, "coordinate file",
             {"c.toml": config(particles=False) + '[[particles]]\nstructure = "tiny.pdb"\nplacement = "file"\n'
                                                  'coords_file = "none.txt"\n', "tiny.pdb": P}),
        Case("DQE curve with quantised counts", ["simulate", "c.toml"], 2, "needs quantized = false",
             {"c.toml": config(det='dqe_curve = "dqe.csv"'), "tiny.pdb": P, "dqe.csv": "x,dqe\n0,0.8\n1,0.3\n"}),
        Case("reconstruct: 2D MRC instead of a stack", ["reconstruct", "s.mrc", "--out", "v.mrc"], 2,
             "expected 3D", {"s.mrc": _mrc2d, "s.tlt": "0\n"}),
        Case("reconstruct: 3 tilt angles for a 4-image stack", ["reconstruct", "s.mrc", "--out", "v.mrc"], 2,
             "3 angles for 4 images", {"s.mrc": _mrc_nan_free, "s.tlt": "0\n1\n2\n"}),
        Case("reconstruct: complex MRC (mode 4)", ["reconstruct", "s.mrc", "--out", "v.mrc"], 2,
             "real image mode", {"s.mrc": _mrc_complex, "s.tlt": "0\n1\n2\n3\n"}),
        Case("reconstruct: MRC with NaN", ["reconstruct", "s.mrc", "--out", "v.mrc"], 2, "NaN",
             {"s.mrc": _mrc_nan, "s.tlt": "0\n1\n2\n3\n"}),
        Case("reconstruct: truncated MRC", ["reconstruct", "s.mrc", "--out", "v.mrc"], 2, "but the file has",
             {"s.mrc": _mrc_truncated, "s.tlt": "0\n1\n2\n3\n"}),
        Case("render: 2D MRC instead of a volume", ["render", "s.mrc", "--out", "r.png"], 2, "expected 3D",
             {"s.mrc": _mrc2d}),
        Case("denoise: not an MRC at all", ["denoise", "s.mrc"], 2, "not an MRC file",
             {"s.mrc": b"this is not an MRC file" * 50}),
        Case("internal failure (a library function broken on purpose)", ["simulate", "c.toml", "-q"], 1,
             "internal error", {"c.toml": config(), "tiny.pdb": P, "hook/sitecustomize.py": _BREAK},
             env={"PYTHONPATH": "hook"}),
    ]
    return C


def cutem_exe():
    exe = shutil.which("cutem")
    if exe is None:
        raise SystemExit("the cutem console script is not installed (pip install -e .)")
    return exe


def write_case_files(case: Case, workdir: Path):
    """Write the case's input files (text, bytes, or a writer function) into ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, content in case.files.items():
        p = workdir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(p)
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)


def run_case(case: Case, workdir: Path, timeout=300):
    """Write the case's files into ``workdir`` and run it; returns (rc, last stderr line, stderr)."""
    write_case_files(case, workdir)
    env = dict(os.environ)
    for k, v in case.env.items():
        env[k] = str(workdir / v) if k == "PYTHONPATH" else v
    r = subprocess.run([cutem_exe(), *case.argv], cwd=workdir, capture_output=True, text=True, env=env,
                       timeout=timeout)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "it/s" not in ln and "tilt/s" not in ln]
    return r.returncode, (lines[-1].strip() if lines else ""), r.stderr


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "bad_inputs.md"))
    args = ap.parse_args(argv)
    rows, bad = [], 0
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases()):
            rc, msg, err = run_case(case, Path(tmp) / f"case{i:02d}")
            ok = rc == case.rc and case.expect in (msg if rc != 1 else err)
            bad += not ok
            shown = msg.replace(tmp, "TMP").replace(f"TMP/case{i:02d}/", "")
            rows.append((case.what, " ".join(case.argv), rc, shown, ok))
            print(f"{'ok ' if ok else 'BAD'} rc={rc} {case.what}: {shown}")
    lines = ["# Bad inputs and what cutem says", "",
             f"Produced by `python -m validation.bad_inputs` ({len(rows)} cases, {time.time() - t0:.0f} s on "
             f"{platform.machine()} {os.cpu_count()}-core CPU, no GPU; Python {platform.python_version()}).",
             "Each row runs the real `cutem` console script in a fresh folder holding the files of the case.",
             "Exit codes: 2 = bad input (one line on stderr), 1 = internal failure (traceback), 0 = success.",
             "`tests/test_reliability.py` checks every row's exit code and message.", "",
             "| input tried | command | exit | message (last stderr line) | as expected |",
             "|---|---|---|---|---|"]
    for what, cmd, rc, msg, ok in rows:
        msg = msg.replace("|", "\\|")
        lines.append(f"| {what} | `cutem {cmd}` | {rc} | {msg or '(none)'} | {'yes' if ok else '**NO**'} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    fuzz = ""  # the fuzz section (validation/fuzz_cli.py) is that script's: kept as it is
    if "<!-- fuzz:begin -->" in old:
        fuzz = "\n" + old[old.index("<!-- fuzz:begin -->"):old.index("<!-- fuzz:end -->") + len("<!-- fuzz:end -->")] + "\n"
    out.write_text("\n".join(lines) + "\n" + fuzz)
    print(f"{len(rows)} cases, {bad} not as expected -> {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
