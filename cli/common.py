"""What every command shares: the input-validation layer, the device option, quiet flag and
exit codes.

Every option and argument of every command is declared with one of the parameter types below,
so its value is checked when click parses it, before the command does any work:

- :class:`Number` -- finite, of the right type, inside a range with its unit; for an option
  that sets a declared parameter the range comes from that parameter's declaration
  (:meth:`Number.of`, :mod:`cutem.params`);
- :class:`NumberList` -- ``LO,HI`` ranges and lists (``--dose 5,60``), each item a Number;
- :class:`InFile` -- an input file: it exists, is no symlink loop, is a regular readable file,
  is not empty, and its content is of the kind the command reads (text that decodes, TOML that
  parses, an MRC whose header is sane and whose data fit the file and the memory plan, HDF5,
  gzip);
- :class:`OutPath` -- an output file, folder or prefix: the folder it goes in can be made and
  written, no regular file stands in its way, its name fits the filesystem with the
  temporary's extra characters;
- :class:`BaseName` -- a base name of output files (no folder, no NUL, fits the filesystem).

After parsing, :func:`guard` checks that no output of the command is one of its input files,
then runs the command inside one :func:`cutem.io.transaction` (its outputs are renamed
together at the end). Bad input (a :class:`cutem.errors.InputError` or click usage error)
exits 2 with one line; an internal failure exits 1 with the traceback.
"""
from __future__ import annotations

import errno
import functools
import gzip
import math
import os
import signal
import sys
import traceback
from pathlib import Path

import click

from adjoints.backend import DeviceError
from cutem.errors import InputError as BadInput

device_option = click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default=None,
                             help="Array backend (default: $CUTEM_DEVICE or auto).")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
set_option = click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE",
                          help="Override a config key (repeatable); VALUE is a TOML literal "
                               "(20000, true, [0.0, 30.0], \"carbon\"; a bare word is a string). "
                               "particles.KEY sets KEY on every [[particles]].")

#: file name endings ``cutem simulate`` / ``cutem potential`` take as a structure, not a config
STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".cif.gz", ".ent.gz")


def is_structure(path) -> bool:
    return str(path).lower().endswith(STRUCTURE_SUFFIXES)


def _toml_literal(text):
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word (multislice, carbon) is meant as a string


def apply_settings(cfg, settings):
    """``cfg`` with each ``SECTION.KEY=VALUE`` of ``--set`` applied (checked as a config file is)."""
    import tomllib

    from cutem.config import from_dict, to_toml

    if not settings:
        return cfg
    d = tomllib.loads(to_toml(cfg))
    for item in settings:
        name, eq, text = item.partition("=")
        name = name.strip()
        if not eq or not name:
            raise BadInput(f"--set {item!r}: give SECTION.KEY=VALUE")
        value = _toml_literal(text.strip())
        section, dot, key = name.partition(".")
        if not dot:
            d[section] = value  # a top-level key (seed, output); from_dict refuses unknown ones
        elif section == "particles":
            if not d.get("particles"):
                raise BadInput(f"--set {item!r}: the config has no [[particles]]")
            for p in d["particles"]:
                p[key] = value
        elif section in ("optics", "detector", "sample", "simulation", "geometry"):
            if section == "geometry" and key.startswith("tilt_") and key != "tilt_axis_deg":
                d[section].pop("tilt_angles_deg", None)  # a new series replaces the resolved angle list
            old = d.setdefault(section, {}).get(key)
            # 20000 for a float key stays a float in the resolved TOML
            d[section][key] = float(value) if isinstance(old, float) and type(value) is int else value
        else:
            raise BadInput(f"--set {item!r}: unknown section {section!r} (optics, detector, sample, "
                           f"simulation, geometry, particles)")
    try:
        return from_dict(d, source=cfg.source).replace(ignored=cfg.ignored)
    except BadInput as exc:
        raise BadInput(f"--set: {exc}") from None


# ------------------------------------------------------------------ the validation layer
class Number(click.ParamType):
    """A finite int or float inside ``[lo, hi]`` (``open``: ``"lo"``, ``"hi"``, ``"both"`` ends
    excluded) with ``unit`` in the message."""

    def __init__(self, lo=None, hi=None, unit="", integer=False, open=None):
        self.meta = {"range": (lo, hi), "open": open, "unit": unit}
        self.integer = integer
        self.name = "integer" if integer else "number"

    @classmethod
    def of(cls, params_cls, field, integer=None):
        """The declared range, unit and type of ``params_cls.field`` (:mod:`cutem.params`)."""
        from cutem.params import field_type

        m = params_cls.__dataclass_fields__[field].metadata
        lo, hi = m["range"] or (None, None)
        return cls(lo, hi, m["unit"], field_type(params_cls, field)[0] is int if integer is None else integer,
                   m["open"])

    def get_metavar(self, param, *args, **kwargs):
        return "INTEGER" if self.integer else "FLOAT"

    def range_text(self):
        from cutem.params import range_text

        return range_text(self.meta, self.integer)

    def check(self, value, label):
        """``value`` (text or number) as an int/float in range, or InputError naming ``label``."""
        from cutem.params import _inside

        text = str(value).strip()
        try:
            if isinstance(value, bool):
                raise ValueError
            v = int(text) if self.integer else float(text)
        except (TypeError, ValueError):
            raise BadInput(f"{label}: {text!r} is not {'an integer' if self.integer else 'a number'} "
                           f"(allowed {self.range_text()})") from None
        if not math.isfinite(v):
            raise BadInput(f"{label}: {text!r} must be a finite number in {self.range_text()}")
        if not _inside(v, self.meta):
            raise BadInput(f"{label}: {text} is outside the allowed range {self.range_text()}")
        return v

    def convert(self, value, param, ctx):
        try:
            return self.check(value, _label(param))
        except BadInput as exc:
            raise InputUsage(str(exc)) from None


class NumberList(click.ParamType):
    """``a,b`` (or one number, meaning ``a,a``): items checked as :class:`Number`; ``count``
    items (one number is repeated), ``ordered``: non-decreasing."""

    name = "list"

    def __init__(self, item: Number, count=2, ordered=True, sep=","):
        self.item, self.count, self.ordered, self.sep = item, count, ordered, sep

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        label = _label(param)
        parts = [t for t in str(value).split(self.sep)]
        if len(parts) == 1 and self.count:
            parts = parts * self.count
        if self.count and len(parts) != self.count:
            raise InputUsage(f"{label}: {value!r} must be {self.count} numbers separated by {self.sep!r}")
        try:
            vals = tuple(self.item.check(t, f"{label} {value!r}") for t in parts)
        except BadInput as exc:
            raise InputUsage(str(exc)) from None
        if self.ordered and any(b < a for a, b in zip(vals, vals[1:])):
            raise InputUsage(f"{label}: {value!r} must be LOW{self.sep}HIGH with LOW <= HIGH")
        return vals


def ordered(descending=False):
    """Callback for an ``nargs=2`` option of :class:`Number`: the two in order (low, high)."""

    def check(ctx, param, value):
        if value is not None and len(value) == 2:
            a, b = value
            if (a <= b) if descending else (a > b):
                raise InputUsage(f"{_label(param)}: {a:g} {b:g} must be "
                                 + ("high then low (first > second)" if descending else "low then high"))
        return value

    return check


def _label(param):
    if param is None:
        return "value"
    if isinstance(param, click.Argument):
        return param.human_readable_name
    return max(param.opts, key=len)


class InputUsage(click.BadParameter):
    """A bad value found by this layer: its message already names the option."""

    def format_message(self):
        return self.message


#: bytes of a temporary's name beyond its final name: ``.NAME.PID.RANDOM.SUFFIX`` (cutem.io)
TEMP_NAME_EXTRA = 40
MRC_MODES = {0: 1, 1: 2, 2: 4, 6: 2, 12: 2, 101: 0.5}


def _name_max(folder) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _existing_ancestor(path: Path):
    p = path
    while not os.path.lexists(p):
        if p.parent == p:
            break
        p = p.parent
    return p


def _registry(ctx, key):
    return ctx.find_root().meta.setdefault(key, []) if ctx is not None else []


class InFile(click.ParamType):
    """An input file of ``kind``: ``"text"`` (decodes as UTF-8, no NUL; ``.gz`` is opened as
    gzip), ``"toml"`` (text that parses as TOML), ``"config"`` (a TOML, TEM-simulator or structure
    file: text), ``"data"`` (MRC, or text for a ``.star``), ``"mrc"`` (header sane, data fit the file and the free memory), ``"h5"``
    (HDF5 signature) or ``"any"``."""

    name = "file"

    def __init__(self, kind="any", min_side=1):
        self.kind, self.min_side = kind, min_side  #: MRC: fewest pixels along x and y the command can use

    def get_metavar(self, param, *args, **kwargs):
        return "FILE"

    def check(self, value, label):
        path = Path(str(value))
        if not str(value) or "\0" in str(value):
            raise BadInput(f"{label}: empty or invalid file name {str(value)!r}")
        try:
            st = os.stat(path)
        except OSError as exc:
            why = "a symlink loop" if exc.errno == errno.ELOOP else (
                "no such file" if exc.errno == errno.ENOENT else exc.strerror)
            raise BadInput(f"{label} {path}: {why}") from None
        import stat

        if stat.S_ISDIR(st.st_mode):
            raise BadInput(f"{label} {path}: is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{label} {path}: not a regular file")
        if st.st_size == 0:
            raise BadInput(f"{label} {path}: is empty")
        try:
            with open(path, "rb") as fh:
                head = fh.read(1 << 16)
        except OSError as exc:
            raise BadInput(f"{label} {path}: cannot read ({exc.strerror})") from None
        getattr(self, f"_sniff_{self.kind}", lambda *a: None)(path, head, st.st_size, label)
        return path

    def _sniff_text(self, path, head, size, label):
        if path.name.lower().endswith(".gz"):
            try:
                with gzip.open(path, "rb") as fh:
                    head = fh.read(1 << 16)
            except (OSError, EOFError) as exc:
                raise BadInput(f"{label} {path}: not a readable gzip file ({exc})") from None
        if b"\0" in head:
            raise BadInput(f"{label} {path}: not a text file (binary content)")
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # a cut multi-byte character at the end is fine
                raise BadInput(f"{label} {path}: not UTF-8 text (byte {exc.start})") from None

    _sniff_config = _sniff_text

    def _sniff_toml(self, path, head, size, label):
        import tomllib

        self._sniff_text(path, head, size, label)
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise BadInput(f"{label} {path}: not valid TOML ({' '.join(str(exc).split())})") from None

    def _sniff_data(self, path, head, size, label):
        """An MRC image, or a STAR table (by its name)."""
        if path.name.lower().endswith(".star"):
            self._sniff_text(path, head, size, label)
        else:
            self._sniff_mrc(path, head, size, label)

    def _sniff_h5(self, path, head, size, label):
        if not head.startswith(b"\x89HDF\r\n\x1a\n"):
            raise BadInput(f"{label} {path}: not an HDF5 file")

    def _sniff_mrc(self, path, head, size, label):
        import numpy as np

        if len(head) < 1024:
            raise BadInput(f"{label} {path}: {size} bytes, shorter than an MRC header (1024)")
        for order in "<>":
            nx, ny, nz, mode = (int(v) for v in np.frombuffer(head[:16], f"{order}i4"))
            ext = int(np.frombuffer(head[92:96], f"{order}i4")[0])
            if mode in MRC_MODES and min(nx, ny, nz) >= 1 and max(nx, ny, nz) < 2 ** 24 and 0 <= ext < 2 ** 31:
                break
        else:
            raise BadInput(f"{label} {path}: not an MRC file with a real image mode (header sizes "
                           f"{nx}x{ny}x{nz}, mode {mode})")
        if min(nx, ny) < self.min_side:
            raise BadInput(f"{label} {path}: {nx}x{ny} pixels; this command needs at least "
                           f"{self.min_side}x{self.min_side}")
        voxels = nx * ny * nz
        need = 1024 + ext + int(math.ceil(voxels * MRC_MODES[mode]))
        if need > size:
            raise BadInput(f"{label} {path}: header claims {nx}x{ny}x{nz} voxels (mode {mode}, {need} bytes) "
                           f"but the file has {size} bytes")
        from cutem import memory

        memory.check_bytes(8 * voxels, f"reading {path.name} ({nx}x{ny}x{nz} voxels)",
                           "a smaller input (bin or crop it)")

    def convert(self, value, param, ctx):
        try:
            path = self.check(value, _label(param))
        except BadInput as exc:
            raise InputUsage(str(exc)) from None
        _registry(ctx, "cutem_inputs").append(path)
        return str(path)


class OutPath(click.ParamType):
    """An output: ``"file"``, ``"dir"`` (a folder the command fills) or ``"prefix"`` (the
    command writes PREFIX plus each of ``suffixes``); a file also writes ``suffixes`` beside
    it (``out.with_suffix(s)``)."""

    name = "path"

    def __init__(self, kind="file", suffixes=()):
        self.kind, self.suffixes = kind, tuple(suffixes)

    def get_metavar(self, param, *args, **kwargs):
        return "DIR" if self.kind == "dir" else "PATH"

    def writes(self, path):
        """The files this output may write (for the input-collision check)."""
        p = Path(path)
        if self.kind == "dir":
            return []
        return ([p] if self.kind == "file" else []) + [p.with_suffix(s) for s in self.suffixes]

    def check(self, value, label):
        text = str(value)
        if not text.strip() or "\0" in text:
            raise BadInput(f"{label}: empty or invalid path {text!r}")
        p = Path(text)
        # name lengths first: a too long name makes every later look-up fail
        limit = _name_max(_existing_ancestor(p.parent)) - TEMP_NAME_EXTRA
        longest = max([len(p.with_suffix(s).name.encode()) for s in self.suffixes if p.suffix or p.name], default=0)
        for part in p.parts:
            n = max(len(part.encode()), longest if part == p.name else 0)
            if n > limit:
                raise BadInput(f"{label}: the name {part[:24]}... is {n} bytes; this filesystem takes {limit} "
                               f"for an output")
        if self.kind == "dir":
            if os.path.lexists(p) and not p.is_dir():
                raise BadInput(f"{label} {p}: exists and is not a folder")
        elif p.is_dir() or text.endswith(os.sep):
            raise BadInput(f"{label} {p}: is a folder; give a file name")
        base = _existing_ancestor(p if self.kind == "dir" else p.parent)
        if not base.is_dir():
            raise BadInput(f"{label} {p}: {base} is a file, not a folder")
        if not os.access(base, os.W_OK | os.X_OK):
            raise BadInput(f"{label} {p}: folder {base} is not writable")
        return p

    def convert(self, value, param, ctx):
        try:
            p = self.check(value, _label(param))
        except BadInput as exc:
            raise InputUsage(str(exc)) from None
        _registry(ctx, "cutem_outputs").append((p, self, _label(param)))
        return str(p)


class BaseName(click.ParamType):
    """A base name of output files: no folder separator, no NUL, fits the filesystem."""

    name = "name"

    def convert(self, value, param, ctx):
        text = str(value)
        if not text.strip() or "/" in text or "\0" in text or text in (".", ".."):
            raise InputUsage(f"{_label(param)}: {text!r} is not a file base name (no '/', not empty)")
        if len(text.encode()) + 40 + TEMP_NAME_EXTRA > 255:
            raise InputUsage(f"{_label(param)}: the name is {len(text.encode())} bytes; at most "
                             f"{255 - 40 - TEMP_NAME_EXTRA} for a base name")
        return text


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.abspath(a) == os.path.abspath(b)


def guard(cmd):
    """Wrap ``cmd``'s callback: no output may be one of the inputs, then the command's outputs
    are one transaction (:func:`cutem.io.transaction`)."""
    callback = cmd.callback

    @functools.wraps(callback)
    def run(*args, **kwargs):
        from cutem import io

        ctx = click.get_current_context()
        inputs = _registry(ctx, "cutem_inputs")
        for out, typ, label in _registry(ctx, "cutem_outputs"):
            for f in typ.writes(out):
                for i in inputs:
                    if _same(f, Path(i)):
                        raise BadInput(f"{label} {out}: would overwrite the input {i}")
        with io.protected(inputs), io.transaction():
            return callback(*args, **kwargs)

    cmd.callback = run
    return cmd


#: OSError numbers that say the output location cannot take the outputs (one line, exit 2)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
                errno.ENOTDIR, errno.EISDIR, errno.ELOOP}


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so that every ``finally``/atomic write cleans up (a
    BaseException, as KeyboardInterrupt is, but not one: click turns those into Abort)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def run_guarded(group) -> int:
    try:
        # SIGTERM (kill, batch schedulers) unwinds like SIGINT: temporaries are removed
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (embedded use): leave the handler alone
        pass
    try:
        import cutem

        if cutem.ENVIRONMENT_ERROR is not None:
            raise cutem.ENVIRONMENT_ERROR
        if os.environ.get("CUTEM_MEMORY_LIMIT", "").strip():  # checked by every command, not only the planned
            from cutem.memory import parse_bytes

            if parse_bytes(os.environ["CUTEM_MEMORY_LIMIT"]) <= 0:
                raise BadInput(f"CUTEM_MEMORY_LIMIT={os.environ['CUTEM_MEMORY_LIMIT']!r} must be a positive size")
        rc = group.main(standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("cutem: aborted", err=True)
        return 130
    except click.ClickException as exc:  # usage errors are bad input: one line, no usage block
        where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) is not None else ""
        click.echo(f"cutem: error: {where}{' '.join(exc.format_message().split())}", err=True)
        return 2
    except (BadInput, DeviceError) as exc:  # an unusable --device is bad input too
        click.echo(f"cutem: error: {exc}", err=True)
        return 2
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            return _internal_error()
        # the output location cannot take the outputs (full, read-only, ...): nothing was renamed
        click.echo(f"cutem: error: cannot write{' ' + str(exc.filename) if exc.filename else ''}: {exc.strerror}",
                   err=True)
        return 2
    except Terminated:
        click.echo("cutem: terminated", err=True)
        return 143
    except KeyboardInterrupt:
        click.echo("cutem: interrupted", err=True)
        return 130
    except Exception:
        return _internal_error()


def _internal_error():
    traceback.print_exc()
    click.echo("cutem: internal error (the traceback above); please report it", err=True)
    return 1


def fail(message: str):
    raise BadInput(message)


__all__ = ["Number", "NumberList", "InFile", "OutPath", "BaseName", "ordered", "guard", "device_option", "quiet_option", "set_option", "apply_settings", "is_structure", "STRUCTURE_SUFFIXES",
           "run_guarded", "fail", "BadInput", "sys"]
