"""The ``blr`` command line. Subcommands (``table``, ``demo``, ``bench``) are added as they are
built; without one, ``blr`` prints its help."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from blr import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``blr`` (one sub-parser per subcommand)."""
    parser = argparse.ArgumentParser(
        prog="blr",
        description=(
            "The Bayesian Learning Rule (Khan & Rue, JMLR 2023): exponential families, the "
            "generic natural-gradient engine, and drop-in optimizers."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``blr`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0  # pragma: no cover - every subcommand returns from its own handler


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
