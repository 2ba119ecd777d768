"""Errors a user can act on, and the one exit-code rule of every realign CLI.

- exit 2: the user's input or request is wrong (a file, row, field, option or name); nothing was written.
- exit 1: the environment or a dependency failed (disk, permissions, network, a server, a corrupted store).
- exit 130: interrupted (Ctrl-C).

Every error is one line on stderr. ``--debug`` anywhere on the command line (or ``REALIGN_DEBUG=1``) shows the
full traceback instead, with the root cause that the one-line message summarizes.

Logging is quiet by default (warnings only). ``--verbose`` (or ``REALIGN_LOG=info``) logs what a person debugging a
run needs on stderr: which engine and model, which files were read and written, cache hits, retries and their
reasons; ``--debug`` (or ``REALIGN_LOG=debug``) adds the details.
"""

from __future__ import annotations

import errno
import logging
import os
import sys


class RealignError(Exception):
    """A failure of the environment or of a dependency (disk, network, server): exit code 1."""

    exit_code = 1


class InputError(RealignError):
    """Bad input (file, row, field, manifest key, option, name): exit code 2, nothing written."""

    exit_code = 2


class IntegrityError(RealignError):
    """A stored artifact no longer matches its recorded sizes or hashes: exit code 1."""

    exit_code = 1


OS_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOENT: "no such file or directory",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system failure: what happened, and to which file."""
    known = OS_REASONS.get(exc.errno) if exc.errno is not None else None
    reason = known or exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename if exc.filename is not None else None
    return f"{where}: {reason}" if where else reason


def one_line(text: object) -> str:
    """Collapse a message onto one line (library messages often span several)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("REALIGN_DEBUG", "").strip() not in ("", "0", "false", "no")


PACKAGES = ("realign_data", "trainers", "evaluation")  # the loggers this toolkit owns (logging.getLogger(__name__))


def configure_logging(argv: list[str]) -> None:
    """Set realign's log level from ``--verbose`` / ``--debug`` / ``$REALIGN_LOG``; other libraries stay at
    warnings. Log lines go to stderr, so piped ``--format json`` output stays clean."""
    wanted = os.environ.get("REALIGN_LOG", "").strip().upper()
    if debug_requested(argv):
        wanted = "DEBUG"
    elif "--verbose" in argv and wanted != "DEBUG":
        wanted = "INFO"
    level = logging.getLevelNamesMapping().get(wanted or "WARNING", logging.WARNING)
    if not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logging.getLogger().addHandler(handler)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)


def _show_root_cause(exc: BaseException) -> None:
    """Print the traceback with every cause, even those a one-line error hid with ``from None``."""
    import traceback

    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        node.__suppress_context__ = False
        node = node.__cause__ or node.__context__
    traceback.print_exception(exc, file=sys.stderr)


def main_with_errors(app) -> None:
    """Run a Typer app under the exit-code rule; ``--debug`` and ``--verbose`` are accepted after any command."""
    from typer import Abort, Exit
    from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer's own click

    argv = sys.argv[1:]
    debug = debug_requested(argv)
    configure_logging(argv)
    args = [arg for arg in argv if arg not in ("--debug", "--verbose")]
    prog = os.path.basename(sys.argv[0])
    try:
        code = app(args=args, prog_name=prog, standalone_mode=False)
    except NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else exc.format_message())
        sys.exit(exc.exit_code)
    except Exit as exc:
        sys.exit(exc.exit_code)
    except (Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except ClickException as exc:
        ctx = getattr(exc, "ctx", None)  # only UsageError and its subclasses carry a context
        command = ctx.command_path if ctx else prog
        print(f"error: {one_line(exc.format_message())} (see {command} --help)", file=sys.stderr)
        sys.exit(exc.exit_code)
    except BaseException as exc:  # noqa: BLE001 - every failure ends as one line, or a traceback under --debug
        if isinstance(exc, SystemExit):
            raise
        if debug:
            _show_root_cause(exc)
        if isinstance(exc, RealignError):
            message, code = str(exc), exc.exit_code
        elif isinstance(exc, OSError):
            message, code = describe_os_error(exc), 1
        elif isinstance(exc, MemoryError):
            message, code = "out of memory", 1
        else:
            message, code = (
                (
                    f"unexpected {type(exc).__name__}: {exc} (this is a bug in realign; rerun with "
                    "--debug and report the traceback)"
                ),
                1,
            )
        print(f"error: {one_line(message)}", file=sys.stderr)
        sys.exit(code)
    if code == 130:
        print("error: interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
