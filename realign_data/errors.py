"""Errors a user can act on: the CLIs print their message on one line and exit non-zero."""


class RealignError(Exception):
    """A failure with a message meant for the person running the command."""

    exit_code = 1


class InputError(RealignError):
    """Bad input (file, row, field, manifest key): exit code 2, nothing written."""

    exit_code = 2


class IntegrityError(RealignError):
    """A stored artifact no longer matches its recorded hashes."""

    exit_code = 1


def main_with_errors(app) -> None:
    """Run a Typer app; errors a person can act on become one line on stderr and a non-zero exit."""
    import sys

    try:
        app()
    except RealignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
