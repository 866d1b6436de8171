"""What every command shares: the device option, quiet flag, and exit codes.

Bad input (a :class:`cutem.errors.InputError` or click usage error) exits 2 with one line;
an internal failure exits 1 with the traceback.
"""
from __future__ import annotations

import signal
import sys
import traceback

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
        rc = group.main(standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("cutem: aborted", err=True)
        return 130
    except click.ClickException as exc:  # usage errors are bad input
        exc.show()
        return 2
    except (BadInput, DeviceError) as exc:  # an unusable --device is bad input too
        click.echo(f"cutem: error: {exc}", err=True)
        return 2
    except Terminated:
        click.echo("cutem: terminated", err=True)
        return 143
    except KeyboardInterrupt:
        click.echo("cutem: interrupted", err=True)
        return 130
    except Exception:
        traceback.print_exc()
        click.echo("cutem: internal error (the traceback above); please report it", err=True)
        return 1


def fail(message: str):
    raise BadInput(message)


__all__ = ["device_option", "quiet_option", "set_option", "apply_settings", "is_structure", "STRUCTURE_SUFFIXES",
           "run_guarded", "fail", "BadInput", "sys"]
