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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser("bench", help="benchmark tables (optimizer-side time and memory)")
    bench.add_argument("target", choices=["optim"], help="what to benchmark")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of the target (--help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``blr`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "bench":
        from blr import bench  # lazily: the benchmark code is only needed here

        return bench.main(args.rest)
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
