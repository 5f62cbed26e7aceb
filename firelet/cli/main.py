"""The ``firelet`` command: one sub-command per module in this package.

Each sub-command module exposes ``register(subparsers)``, which adds its parser
and sets ``func`` (called with the parsed namespace, returning an exit code).
Modules import their heavy dependencies inside ``func`` so that ``firelet
--help`` and the VMM stay fast to start.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from firelet import __version__
from firelet.errors import FireletError

# Sub-command modules, in the order --help lists them.
_COMMANDS = ("run", "demo", "build", "nested")

log = logging.getLogger("firelet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="firelet",
        description="A microVM monitor in Python on Linux KVM.",
    )
    parser.add_argument("--version", action="version", version=f"firelet {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="more log output on stderr (-v info, -vv debug with tracebacks)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        module = importlib.import_module(f"firelet.cli.{name}")
        module.register(sub)
    return parser


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING
    if verbosity == 1 or os.environ.get("FIRELET_LOG") == "info":
        level = logging.INFO
    if verbosity >= 2 or os.environ.get("FIRELET_LOG") == "debug":
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return run_command(args.func, args)


def run_command(func, args) -> int:  # noqa: ANN001 - argparse callables
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
    sys.exit(main())
