"""The ``firelet`` command: one sub-command per module in this package.

Each sub-command module exposes ``register(subparsers)``, which adds its parser
and sets ``func`` (called with the parsed namespace, returning an exit code).
Modules import their heavy dependencies inside ``func`` so that ``firelet
--help`` and the VMM stay fast to start.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from firelet import __version__
from firelet.errors import FireletError
from firelet.log import DEBUG, INFO, get_logger

# Sub-command modules, in the order --help lists them.
_COMMANDS = ("run", "demo", "build", "nested", "net", "launcher", "fleet")

log = get_logger("firelet")


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized with ``os.get_terminal_size``.

    The stock one imports :mod:`shutil` (and with it bz2 and lzma) for every
    parser built, help or not; the VMM's start pays for that.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def terminal_columns() -> int:
    """$COLUMNS, else the width of stdout's terminal, else 80 (what shutil.get_terminal_size does)."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    stdout = sys.__stdout__
    if stdout is None:
        return 80
    try:
        return os.get_terminal_size(stdout.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose help (and sub-parsers' help) uses :class:`HelpFormatter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with ``only`` just that sub-command (imports one module, not all)."""
    parser = ArgumentParser(
        prog="firelet",
        description="A microVM monitor in Python on Linux KVM.",
    )
    parser.add_argument("--version", action="version", version=f"firelet {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="more log output on stderr (-v info, -vv debug with tracebacks)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS if only is None else (only,):
        module = importlib.import_module(f"firelet.cli.{name}")
        module.register(sub)
    return parser


def requested_command(argv: list[str]) -> str | None:
    """The sub-command named on the command line, if it is a known one."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg if arg in _COMMANDS else None
    return None


def setup_logging(verbosity: int) -> None:
    """Log to stderr at INFO (-v) or DEBUG (-vv, or FIRELET_LOG=info|debug).

    Without either, ``logging`` is not even imported: warnings and errors still
    reach stderr through its last-resort handler if something logs them.
    """
    level = None
    if verbosity == 1 or os.environ.get("FIRELET_LOG") == "info":
        level = INFO
    if verbosity >= 2 or os.environ.get("FIRELET_LOG") == "debug":
        level = DEBUG
    if level is not None:
        import logging

        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def console() -> int:
    """The ``firelet`` command's entry point, when firelet is the whole process."""
    from firelet.cli import lean

    if requested_command(sys.argv[1:]) in lean.VMM_COMMANDS:
        lean.hide_typing_extensions()
        lean.skip_message_catalog_search()
        lean.defer_gc()
        lean.dump_stacks_on_signal()
    return main()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(requested_command(argv))
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return run_command(args.func, args)


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a sub-command, turning failures into one line on stderr and an exit code."""
    try:
        return int(func(args) or 0)
    except FireletError as exc:
        log.debug("command failed", exc_info=True)
        print(f"firelet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("firelet: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in firelet: one line for people, the trace for the log
        log.debug("unexpected failure", exc_info=True)
        print(
            f"firelet: internal error: {type(exc).__name__}: {exc} "
            "(run with -vv for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console())
