"""Fuzz every option of every ``cutem`` command with hostile values, from the CLI's own
click declarations (a new option is fuzzed without anyone writing a case).

For each command of ``cutem --help`` a fast valid invocation (:data:`BASELINE`) is the
starting point; each case replaces ONE option or argument by a hostile value chosen from the
option's declared type (:mod:`cli.common`: Number, NumberList, InFile, OutPath, BaseName,
click.Choice, text) -- nan, inf, negative, zero, huge, not a number, missing / empty / binary
file, a folder, a symlink loop, an output below a regular file or over the input, a name too
long for the filesystem -- or sets a hostile ``CUTEM_*`` variable. Each case runs the installed
console script in a subprocess with a timeout and ``CUTEM_MEMORY_LIMIT``; it is

- *refused*: exit 2 with one line on stderr and nothing written in its output folder;
- *accepted*: exit 0 (a hostile-looking value that is valid, e.g. ``--seed 0``);
- a *failure*: anything else (a traceback, several lines, a timeout, a file written by a
  refused run, or any input file changed: every fixture file is hashed before and after).

``python -m validation.fuzz_cli`` runs every case and rewrites the fuzz section of
``docs/bad_inputs.md`` and the counts in ``README.md``; ``--per-command N`` keeps the first N
cases per command, spread over its list (tests/test_fuzz_cli.py runs two).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180
MEMORY_LIMIT = "2G"
MARK_BEGIN, MARK_END = "<!-- fuzz:begin -->", "<!-- fuzz:end -->"

#: a fast valid invocation per command; {D} is the fixture folder, {O} the case's output folder
BASELINE = {
    "simulate": ["{D}/cfg.toml", "--out", "{O}", "-q"],
    "potential": ["{D}/cfg.toml", "--out", "{O}/p.mrc", "-q"],
    "render": ["{D}/vol.mrc", "--out", "{O}/r.png", "--max-size", "16"],
    "simulate-batch": ["{D}/cfg.toml", "--out", "{O}", "--count", "1", "--scheduler", "sync", "-q"],
    "bench": ["--cases", "tmv1_32_projection", "--csv", "{O}/b.csv"],
    "info": [],
    "gradcheck": ["--stage", "adjoints.ops.Add"],
    "reconstruct": ["{D}/stack.mrc", "--out", "{O}/v.mrc", "-q"],
    "train-denoiser": ["--steps", "2", "--batch", "1", "--patch", "16", "--image-size", "32", "--pool", "1",
                       "--particles", "1,1", "--depth", "1", "--width", "2", "-o", "{O}/d.h5", "-q"],
    "denoise": ["{D}/img.mrc", "--model", "{D}/model.h5", "--tile", "32", "--overlap", "8", "-o", "{O}/dn.mrc",
                "-q"],
    "fit-mtf": ["{D}/img.mrc", "--maxiter", "3", "-o", "{O}/m"],
    "fit-ctf": ["{D}/spec.mrc", "-o", "{O}/c.star", "-q"],
    "fit-twin": ["{D}/spec.mrc", "--voltage", "300", "--cs", "2.7", "--pixel-size", "1.0", "--maxiter", "2",
                 "--images", "1", "--out", "{O}/t.toml", "-q"],
}
#: hostile environments, each run once per command
ENVIRONMENTS = [{"CUTEM_THREADS": "abc"}, {"CUTEM_THREADS": "-3"}, {"CUTEM_DEVICE": "tpu"},
                {"CUTEM_MEMORY_LIMIT": "lots"}]


def pdb_text(n=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x, y, z = rng.uniform(-5, 5, 3)
        e = "CNOS"[i % 4]
        out.append(f"ATOM  {i + 1:5d} {e:<4s} ALA A{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00 20.00          {e:>2s}")
    return "\n".join(out) + "\nEND\n"


CONFIG = """seed = 1
output = "fz"
[detector]
nx = 32
ny = 32
pixel_size_A = 2.0
dose_e_per_A2 = 10.0
[sample]
thickness_center_A = 100.0
thickness_edge_A = 100.0
[[particles]]
structure = "tiny.pdb"
placement = "list"
positions_A = [[0.0, 0.0, 0.0]]
"""


def make_fixtures(d: Path):
    """The valid inputs of the baselines and the hostile files."""
    import mrcfile

    rng = np.random.default_rng(0)
    (d / "tiny.pdb").write_text(pdb_text())
    (d / "cfg.toml").write_text(CONFIG)
    for name, arr in (("img", rng.poisson(20, (64, 64))), ("spec", rng.gamma(2.0, 1.0, (64, 64))),
                      ("vol", rng.normal(size=(16, 16, 16))), ("stack", rng.normal(size=(5, 32, 32)))):
        with mrcfile.new(d / f"{name}.mrc", overwrite=True) as m:
            m.set_data(np.asarray(arr, np.float32))
            m.voxel_size = 2.0
    (d / "stack.tlt").write_text("-20\n-10\n0\n10\n20\n")
    (d / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (d / "empty.txt").write_bytes(b"")
    (d / "text.txt").write_text("not the kind of file this option reads\n")
    (d / "folder").mkdir()
    (d / "loop").symlink_to("loop")
    (d / "a_file").write_text("x\n")
    ro = d / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    r = subprocess.run(_cutem() + ["train-denoiser", *expand(BASELINE["train-denoiser"], d, d)[:-3],
                                   "-o", str(d / "model.h5"), "-q"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"fixture model: {r.stderr[-500:]}")


def _cutem():
    exe = shutil.which("cutem")
    return [exe] if exe else [sys.executable, "-m", "cli"]


def expand(args, d, o):
    return [a.replace("{D}", str(d)).replace("{O}", str(o)) for a in args]


def hostile_values(param, d: Path):
    """(label, value or None to drop it, setup) per hostile value of ``param``'s declared type."""
    from cli.common import BaseName, InFile, Number, NumberList, OutPath

    t = param.type
    if isinstance(t, Number):
        vals = ["nan", "inf", "-1", "0", "1e300", "abc"] + (["2.5"] if t.integer else [])
    elif isinstance(t, NumberList):
        vals = ["5,nan", "9,1", "a,b", "1,2,3", "-1e300,0"]
    elif isinstance(t, InFile):
        vals = [f"{d}/missing.mrc", f"{d}/folder", f"{d}/empty.txt", f"{d}/binary.bin", f"{d}/loop"]
        if t.kind in ("mrc", "h5", "toml"):
            vals.append(f"{d}/text.txt")
    elif isinstance(t, OutPath):
        if t.kind == "dir":
            vals = [f"{d}/a_file", f"{d}/a_file/below", f"{d}/readonly/x", "o" * 300]
        else:
            vals = [f"{d}/folder", f"{d}/a_file/below.mrc", f"{d}/readonly/x.mrc", "o" * 300 + ".mrc",
                    "{INPUT}"]
    elif isinstance(t, BaseName):
        vals = ["", "a/b", "n" * 300]
    elif isinstance(t, click.Choice):
        vals = ["", "no-such-choice"]
    elif isinstance(t, click.types.BoolParamType) or getattr(param, "is_flag", False):
        vals = []
    else:  # free text
        vals = ["", "nan", "zz" * 200]
    return vals


@dataclass
class Case:
    command: str
    option: str
    value: str
    args: list
    env: dict


def _replace(args, param, value):
    """``args`` with ``param``'s value replaced by ``value`` (or the option added)."""
    out = list(args)
    if isinstance(param, click.Argument):  # the baselines give their argument first
        if out and out[0].startswith("{D}/"):
            out[0] = value
        else:
            out.insert(0, value)
        return out
    for opt in param.opts:
        if opt in out:
            i = out.index(opt)
            n = param.nargs if param.nargs > 0 else 1
            out[i + 1:i + 1 + n] = value if isinstance(value, list) else [value]
            return out
    return out + [param.opts[-1]] + (value if isinstance(value, list) else [value])


def cases(d: Path, per_command=None):
    from cli import main

    out = []
    for name in sorted(main.commands):
        cmd = main.commands[name]
        base = BASELINE.get(name)
        if base is None:
            raise SystemExit(f"fuzz: no baseline invocation for the new command {name!r}; add it to BASELINE")
        mine = []
        for env in ENVIRONMENTS:
            k, v = next(iter(env.items()))
            mine.append(Case(name, k, v, list(base), env))
        for p in cmd.params:
            if p.name in ("help", "device", "quiet") or getattr(p, "is_flag", False):
                continue
            for v in hostile_values(p, d):
                if v == "{INPUT}":
                    first = next((a for a in base if a.startswith("{D}/")), None)
                    if first is None:
                        continue
                    v = first
                val = [v, v] if isinstance(p, click.Option) and p.nargs == 2 else v
                label = max(p.opts, key=len) if isinstance(p, click.Option) else p.human_readable_name
                mine.append(Case(name, label, str(v)[:60], _replace(base, p, val), {}))
        # a subset spread over the list: environment, arguments and options alike
        out += mine[::max(1, len(mine) // per_command)][:per_command] if per_command else mine
    return out


def _hash_tree(d: Path):
    h = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and not p.is_symlink():
            h[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return h


def run_case(case: Case, d: Path, work: Path, i: int):
    o = work / f"case{i:05d}"
    o.mkdir()
    args = expand(case.args, d, o)
    env = {**os.environ, "CUTEM_MEMORY_LIMIT": MEMORY_LIMIT, "CUTEM_THREADS": "1", **case.env}
    t0 = time.perf_counter()
    try:
        r = subprocess.run(_cutem() + [case.command, *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                           env=env, cwd=o)
        rc, err = r.returncode, r.stderr
    except subprocess.TimeoutExpired:
        rc, err = "timeout", ""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    written = sorted(str(p.relative_to(o)) for p in o.rglob("*"))
    if rc == 2 and len(lines) == 1 and not written:
        kind = "refused"
    elif rc == 0:
        kind = "accepted"
    else:
        kind = "failure"
    shutil.rmtree(o, ignore_errors=True)
    return kind, rc, (lines[-1] if lines else "")[:160], time.perf_counter() - t0


def run(per_command=None, jobs=2, log=print):
    with tempfile.TemporaryDirectory() as tmp:
        d, work = Path(tmp) / "in", Path(tmp) / "work"
        d.mkdir()
        work.mkdir()
        make_fixtures(d)
        before = _hash_tree(d)
        todo = cases(d, per_command)
        log(f"{len(todo)} cases")
        with ThreadPoolExecutor(jobs) as ex:
            results = list(ex.map(lambda ic: run_case(ic[1], d, work, ic[0]), enumerate(todo)))
        after = _hash_tree(d)
        (d / "readonly").chmod(0o755)
    changed = sorted(k for k in before if before[k] != after.get(k))
    return todo, results, changed


def table(todo, results, changed):
    by = {}
    for c, (kind, rc, msg, secs) in zip(todo, results):
        row = by.setdefault(c.command, {"cases": 0, "refused": 0, "accepted": 0, "failure": 0})
        row["cases"] += 1
        row[kind] += 1
    lines = [MARK_BEGIN, "", "## Fuzzed options (validation/fuzz_cli.py)", "",
             "Generated from the click declarations of every command: one hostile value per case (nan, inf, "
             "negative, zero, huge, not a number, missing/empty/binary file, folder, symlink loop, output below a "
             "file, read-only, over the input, too long a name; hostile CUTEM_* variables). Refused = exit 2 with "
             "one line and nothing written; accepted = exit 0 (the value is valid); failure = anything else. "
             f"Input files changed by any case: {len(changed)}.", "",
             "| command | cases | refused (exit 2, one line) | accepted (exit 0) | failures |",
             "|---|---:|---:|---:|---:|"]
    for name in sorted(by):
        r = by[name]
        lines.append(f"| `{name}` | {r['cases']} | {r['refused']} | {r['accepted']} | {r['failure']} |")
    fails = [(c, res) for c, res in zip(todo, results) if res[0] == "failure"]
    if fails:
        lines += ["", "Failures:", ""]
        lines += [f"- `{c.command} {c.option} {c.value}` -> {res[1]}: {res[2]}" for c, res in fails]
    lines += ["", MARK_END]
    return "\n".join(lines), by


def _splice(path: Path, block: str):
    text = path.read_text() if path.exists() else ""
    if MARK_BEGIN in text:
        a, b = text.index(MARK_BEGIN), text.index(MARK_END) + len(MARK_END)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-command", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    todo, results, changed = run(a.per_command, a.jobs)
    block, by = table(todo, results, changed)
    print(block)
    if not a.no_write:
        _splice(ROOT / "docs" / "bad_inputs.md", block)
        counts = ", ".join(f"`{k}` {v['cases']}" for k, v in sorted(by.items()))
        total = sum(v["cases"] for v in by.values())
        fails = sum(v["failure"] for v in by.values())
        _splice(ROOT / "README.md", f"{MARK_BEGIN}\nFuzzed cases per command (validation/fuzz_cli.py, "
                f"{total} in all, {fails} failures): {counts}.\n{MARK_END}")
    return 1 if changed or any(r[0] == "failure" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
