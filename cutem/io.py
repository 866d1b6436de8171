"""Files: MRC images/stacks/volumes, .tlt angle lists, PNG previews, STAR tables (``starfile``).

Every writer goes through :func:`atomic_path`: the data is written to a temporary
name in the target folder and renamed over the final name only when complete, so an
interrupted run never leaves a partial file under the final name; inside a
:func:`transaction` the renames of a whole output set happen together at its end.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

from .errors import InputError


#: transactions open in this thread, innermost last (:func:`transaction`)
_OPEN = threading.local()


def _stack():
    if not hasattr(_OPEN, "stack"):
        _OPEN.stack = []
    return _OPEN.stack


def _temporary(path: Path, suffix):
    """A new empty file beside ``path`` named ``.NAME.PID.RANDOMSUFFIX``: the writer's pid in
    the name tells a later run whether the temporary is a live run's or a killed run's
    (:func:`stale_temporaries`)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path, suffix=None, immediate=False):
    """Yield a temporary path beside ``path``; on success rename it to ``path`` -- at once, or,
    inside a :func:`transaction`, together with the transaction's other outputs when it ends.

    ``immediate``: rename at once even inside a transaction (checkpoints, progress records:
    files that must survive the run's failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path, suffix)
    tx = None if immediate or not _stack() else _stack()[-1]
    try:
        yield tmp
        if tx is None:
            check_not_inputs([path])
            os.replace(tmp, path)
        else:
            tx._add(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def stale_temporaries(final):
    """Temporaries of ``final`` (``.NAME.PID.*``) whose writer is no longer running (killed):
    never renamed, safe to remove. A live run's temporaries (another process writing the same
    name right now) are not stale."""
    final = Path(final)
    out = []
    for p in final.parent.glob(f".{final.name}.*"):
        pid = p.name[len(final.name) + 2:].split(".", 1)[0]
        if not (pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))):
            out.append(p)
    return out


@contextlib.contextmanager
def _locked(folders):
    """Exclusive ``flock`` on each folder (sorted: two commits never wait on each other in a
    cycle). The lock is on the folder itself, so no lock file is left among the outputs."""
    fds = []
    try:
        for d in sorted({str(Path(f).resolve()) for f in folders}):
            fd = os.open(d, os.O_RDONLY)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in reversed(fds):
            os.close(fd)  # closing releases the lock


JOURNAL_PREFIX = ".cutem-commit."


def _fsync_dir(folder):
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _apply(journal: Path):
    """Carry out a commit journal: rename every temporary still present to its final name,
    remove the set's files the new set does not have, then the journal. Idempotent, so a
    commit killed half-way is finished by whoever finds its journal (:func:`recover`)."""
    try:
        plan = json.loads(journal.read_text())
    except (OSError, ValueError):  # never written whole (it is renamed into place): nothing began
        journal.unlink(missing_ok=True)
        return
    for tmp, final in plan["rename"]:
        with contextlib.suppress(FileNotFoundError):
            os.replace(tmp, final)
    for gone in plan["remove"]:
        Path(gone).unlink(missing_ok=True)
    for d in {str(Path(f).parent) for _, f in plan["rename"]}:
        _fsync_dir(d)
    journal.unlink(missing_ok=True)


def recover(folder):
    """Finish the commits that a killed run left half-done in ``folder`` (their journals)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    with _locked([folder]):
        journals = sorted(folder.glob(JOURNAL_PREFIX + "*.json"))
        for j in journals:
            _apply(j)
    return len(journals)


class Transaction:
    """An output set being written (:func:`transaction`)."""

    def __init__(self):
        self.pending = []   #: (temporary, final) pairs, in the order written
        self.removals = []  #: finals of the previous set that the new set replaces by nothing

    def _add(self, tmp, final):
        final = Path(final)
        for i, (old, f) in enumerate(self.pending):
            if f == final:  # written twice in one run: the last version wins
                Path(old).unlink(missing_ok=True)
                del self.pending[i]
                break
        self.pending.append((Path(tmp), final))

    def remove(self, path):
        """Remove ``path`` (a member of the previous set) when the set is committed."""
        self.removals.append(Path(path))

    def _commit(self):
        finals = {f for _, f in self.pending}
        removals = [p for p in self.removals if p not in finals]
        if not self.pending and not removals:
            return
        check_not_inputs([f for _, f in self.pending] + removals)
        folders = {f.parent for _, f in self.pending} | {p.parent for p in removals}
        with _locked(folders):
            for d in folders:  # a killed commit on these folders is finished first
                for j in sorted(Path(d).glob(JOURNAL_PREFIX + "*.json")):
                    _apply(j)
            for tmp, final in self.pending:
                if not tmp.is_file():
                    raise RuntimeError(f"the temporary of {final} disappeared before the commit")
            first = sorted(folders)[0]
            plan = {"rename": [[str(t), str(f)] for t, f in self.pending], "remove": [str(p) for p in removals]}
            journal = Path(first) / f"{JOURNAL_PREFIX}{os.getpid()}.{os.urandom(4).hex()}.json"
            part = journal.with_name("." + journal.name + ".part")
            with open(part, "w") as fh:
                json.dump(plan, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(part, journal)
            _fsync_dir(first)
            _apply(journal)

    def _abort(self):
        for tmp, _ in self.pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.pending = []


#: input files of the running command (:func:`protected`): no output may be renamed over one
_PROTECTED = []


@contextlib.contextmanager
def protected(paths):
    """While the block runs, a commit that would rename an output over one of ``paths`` (the
    command's input files) is refused with an :class:`InputError` before any rename."""
    added = [Path(p).resolve() for p in paths]
    _PROTECTED.extend(added)
    try:
        yield
    finally:
        for p in added:
            _PROTECTED.remove(p)


def check_not_inputs(paths):
    """InputError when one of ``paths`` (outputs about to be written) is a protected input."""
    for p in paths:
        rp = Path(p).resolve()
        for i in _PROTECTED:
            if rp == i or (rp.exists() and i.exists() and os.path.samefile(rp, i)):
                raise InputError(f"output {p} would overwrite the input {i}; choose another output name")


@contextlib.contextmanager
def transaction():
    """Write an output set all or nothing: every :func:`atomic_path` inside (any writer of this
    module, :func:`cutem.config.write_resolved`, ...) keeps its temporary until the block ends;
    then, under an ``flock`` of each output folder, a journal of the renames is written and
    carried out, so the final names hold the whole new set or (on any error, Ctrl-C, a full
    disk) the whole previous one. A SIGKILL during the renames leaves the journal, which the
    next commit in that folder (or :func:`recover`) finishes. Concurrent runs on one name
    commit one after the other: the final set is one run's, whole.

    Nested transactions are independent: the inner one commits when it ends.
    """
    tx = Transaction()
    _stack().append(tx)
    try:
        yield tx
    except BaseException:
        _stack().remove(tx)
        tx._abort()
        raise
    _stack().remove(tx)
    try:
        tx._commit()
    except BaseException:
        tx._abort()
        raise


def write_mrc(path, data, pixel_size_A, origin_A=None, label=None):
    """Write a float32 MRC (2D image, 3D stack or volume) with the voxel size in the header.

    A stack (ny, nx) per section is written as an image stack (ispg 0, mz = 1 ... the
    mrcfile convention ``set_image_stack``); pass ``volume=True`` through
    :func:`write_volume` for a volume.
    """
    _write_mrc(path, data, pixel_size_A, stack=np.ndim(data) == 3, origin_A=origin_A, label=label)


def write_volume(path, data, voxel_size_A, origin_A=None, label=None):
    """Write a 3D float32 MRC volume (z, y, x) with the voxel size in the header."""
    _write_mrc(path, data, voxel_size_A, stack=False, origin_A=origin_A, label=label)


def _write_mrc(path, data, pixel_size_A, stack, origin_A=None, label=None):
    import mrcfile

    from adjoints.backend import to_numpy

    arr = np.ascontiguousarray(to_numpy(data), dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise RuntimeError(f"refusing to write non-finite values to {path}")
    with atomic_path(path, suffix=".mrc") as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            # mrcfile stamps label 0 with the creation time; the same run must give
            # bit-identical files, so the labels are cutem's own only
            m.header.label[:] = b""
            m.header.nlabl = 0
            m.set_data(arr)
            if stack and arr.ndim == 3:
                m.set_image_stack()
            elif arr.ndim == 3:
                m.set_volume()
            m.voxel_size = float(pixel_size_A)
            if origin_A is not None:
                m.header.origin = tuple(float(o) for o in origin_A)
            if label:
                m.add_label(str(label)[:80])
            m.update_header_stats()


def read_mrc(path, ndim=None, name="input"):
    """Read an MRC as float32 ``(data, pixel_size_A)``; checks mode and dimensionality.

    ``ndim`` (2, 3 or (2, 3)) states what the command accepts; anything else is an
    :class:`InputError` naming the file.
    """
    import mrcfile

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name} {path}: no such file")
    try:
        with mrcfile.open(path, permissive=True) as m:
            if m.data is None:
                raise InputError(f"{name} {path}: not a readable MRC file")
            if m.data.dtype.kind not in "fiu":
                raise InputError(f"{name} {path}: MRC mode {m.header.mode} ({m.data.dtype}) is not a real image mode")
            data = np.asarray(m.data, dtype=np.float32)
            px = float(m.voxel_size.x)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{name} {path}: not a readable MRC file ({type(exc).__name__}: {exc})") from None
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if allowed and data.ndim not in allowed:
        raise InputError(f"{name} {path}: has {data.ndim} dimensions {data.shape}, expected "
                         f"{' or '.join(str(a) + 'D' for a in allowed)}")
    if not np.all(np.isfinite(data)):
        raise InputError(f"{name} {path}: contains NaN or infinite values")
    return data, (px if np.isfinite(px) and px > 0 else 1.0)  # header without a usable size: 1 Å


def write_tlt(path, angles_deg):
    """IMOD-style .tlt: one tilt angle in degrees per line, in stack order."""
    with atomic_path(path, suffix=".tlt") as tmp:
        Path(tmp).write_text("".join(f"{a:.3f}\n" for a in angles_deg))


def read_tlt(path):
    """Tilt angles of a .tlt/.rawtlt file (first number of each line), each finite."""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"tilt file {path}: unreadable ({exc})") from None
    vals = []
    for i, line in enumerate(lines, 1):
        try:
            v = float(line.split()[0])
        except ValueError:
            raise InputError(f"tilt file {path}:{i}: {line.strip()[:40]!r} is not an angle") from None
        if not np.isfinite(v):
            raise InputError(f"tilt file {path}:{i}: angle {v} is not finite")
        vals.append(v)
    if not vals:
        raise InputError(f"tilt file {path}: no angles")
    return np.array(vals)


def to_uint8(image, lo_pct=0.5, hi_pct=99.5):
    """Contrast-stretched 8-bit copy of an image (percentile window)."""
    from adjoints.backend import to_numpy

    a = np.asarray(to_numpy(image), dtype=np.float64)
    lo, hi = np.percentile(a, [lo_pct, hi_pct])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((a - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


def write_png(path, image, stretch=True):
    """Write an 8-bit grey (2D) or RGB(A) (3D uint8) PNG preview."""
    from PIL import Image

    arr = to_uint8(image) if stretch and np.ndim(image) == 2 else np.asarray(image)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def write_star(path, tables):
    """Write STAR data blocks with ``starfile`` (teamtomo), atomically.

    ``tables``: ``{block: DataFrame or dict}`` (a dict of scalars is a simple block, a
    DataFrame or a dict of equal-length lists a loop); columns are RELION names without
    the leading underscore.
    """
    import pandas as pd
    import starfile

    blocks = {}
    for name, t in tables.items():
        if isinstance(t, dict) and any(isinstance(v, (list, tuple, np.ndarray)) for v in t.values()):
            t = pd.DataFrame(t)
        blocks[name] = t
    with atomic_path(path, suffix=".star") as tmp:
        starfile.write(blocks, tmp, float_format="%.6f")
        # starfile stamps the clock into its header line; the same run must give the same bytes
        lines = Path(tmp).read_text().splitlines(keepends=True)
        if lines and lines[0].startswith("# Created by the starfile"):
            lines[0] = "# written by cutem with starfile (teamtomo)\n"
        Path(tmp).write_text("".join(lines))


def read_star(path, name="STAR file"):
    """Read every data block of a STAR file with ``starfile``: ``{block: DataFrame or dict}``."""
    import starfile

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name} {path}: no such file")
    try:
        tables = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise InputError(f"{name} {path}: not a readable STAR file ({type(exc).__name__}: {exc})") from None
    if not tables:
        raise InputError(f"{name} {path}: no data blocks")
    return tables
