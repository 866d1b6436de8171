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


__all__ = ["device_option", "quiet_option", "run_guarded", "fail", "BadInput", "sys"]
