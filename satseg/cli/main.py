"""The ``satseg`` command line.

``satseg SCAN -p PROMPT -o OUT`` segments a scan (the default command); the sub-commands are
``batch``, ``terms``, ``weights``, ``train`` and ``info``. Commands are thin: they parse options and call
the library. Every :class:`~satseg.errors.SatsegError` becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import logging
import re
import sys

import typer
import typer.core

from satseg import __version__
from satseg.errors import EXIT_RUNTIME, SatsegError

DEFAULT_COMMAND = "segment"
_ROOT_FLAG = re.compile(r"^(-q|--quiet|-v+|--verbose)$")


class _DefaultCommandGroup(typer.core.TyperGroup):
    """A group that runs ``segment`` when the first argument is not a sub-command (``satseg scan.nii.gz``)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        first = next((a for a in args if not a.startswith("-")), None)
        wants_group_help = not args or args[0] in ("--help", "-h", "--version", "--install-completion",
                                                   "--show-completion")
        if not wants_group_help and (
            (first is not None and first not in self.commands)
            or (first is None and any(a in ("-p", "--prompt") for a in args))
        ):
            # the group's own options (-q, -v) may come first: `satseg -q scan.nii.gz -p liver -o out`
            lead = 0
            while lead < len(args) and _ROOT_FLAG.match(args[lead]):
                lead += 1
            args = [*args[:lead], DEFAULT_COMMAND, *args[lead:]]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_DefaultCommandGroup,
    name="satseg",
    help="Segment anatomy and lesions in CT, MRI and PET scans from text prompts (SAT-Nano / SAT-Pro).\n\n"
    "  satseg scan.nii.gz -p 'left kidney' -p liver -o out/",
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"satseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv for debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors."),
) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    from satseg.cli._console import setup_logging

    setup_logging(level)


def _register() -> None:
    from satseg.cli import batch, info, segment, terms, train, weights

    app.command("segment", help=segment.HELP)(segment.segment)
    app.command("batch", help=batch.HELP)(batch.batch)
    app.command("terms", help=terms.HELP)(terms.terms)
    app.command("info", help=info.HELP)(info.info)
    app.add_typer(weights.app, name="weights")
    app.add_typer(train.app, name="train")


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code.

    Typer runs in its standalone mode, so usage errors (an unknown option, a missing argument, a value out of
    range) get Typer's own usage box and exit code 2 whatever click Typer uses (newer releases bundle their
    own copy, whose exceptions are not ``click``'s). satseg's own errors become one line and their exit code.
    """
    try:
        app(args=argv, prog_name="satseg", standalone_mode=True)
    except SystemExit as exc:  # how standalone mode ends: usage errors (2), typer.Exit(code), --help (0)
        return _exit_code(exc.code)
    except SatsegError as exc:
        from satseg.cli._console import error_line

        error_line(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        error_line_plain("interrupted")
        return 130
    except MemoryError:
        error_line_plain("out of memory (try --precision bf16 or a machine with more RAM)")
        return EXIT_RUNTIME
    except OSError as exc:  # disk full, permission denied, ... -> one line, no traceback
        error_line_plain(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        return EXIT_RUNTIME
    return 0


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    error_line_plain(str(code))  # sys.exit("message")
    return EXIT_RUNTIME


def error_line_plain(message: str) -> None:
    sys.stderr.write(f"satseg: error: {message}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
