"""The ``blr`` command line: ``blr table`` (the paper's table, derived and verified), ``blr demo``
(IVON vs AdamW vs SGD: accuracy and calibration), ``blr bench optim`` (optimizer time and memory:
AdamW, IVON, VOGN and the generic BLROptimizer) and ``blr bench uci --data DIR`` (the UCI
regression protocol); without a subcommand, ``blr`` prints its help.

The console script ``blr`` and ``python -m blr`` both call :func:`main`. The subcommands load
their modules lazily: :mod:`derivations` and the benchmarks only when asked for.

Example:
    >>> main(["table", "--list"])   # doctest: +ELLIPSIS
    gradient_descent
    newton
    ...
    bsam
    0
"""

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
    table = sub.add_parser(
        "table",
        help="the paper's table: every row derived (sympy) and checked against its algorithm",
        description=(
            "Run every row of the BLR paper's table (Khan & Rue 2023, Table 1, plus IVON, VON, "
            "Vadam and bSAM): the sympy derivation and the check of the BLR instance against "
            "the classical algorithm. Exits with status 1 if any row fails."
        ),
    )
    table.add_argument(
        "--row", action="append", metavar="NAME", help="run only this row (repeatable)"
    )
    table.add_argument("--markdown", action="store_true", help="print a Markdown table")
    table.add_argument("--json", action="store_true", help="print JSON (one object per row)")
    table.add_argument(
        "--device",
        default="cpu",
        help="device of the batched kernel checks (cpu, cuda, cuda:1, ...); default cpu",
    )
    table.add_argument(
        "--no-symbolic",
        action="store_true",
        help="skip the sympy derivations (numeric checks only)",
    )
    table.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="also print every comparison (value, tolerance, kind), the row's assumptions and "
        "the statements its derivation proved",
    )
    table.add_argument(
        "--mutations",
        action="store_true",
        help="run the mutation test instead: deliberate bugs in each row's source, each of "
        "which must make the row fail; prints the margins (value/tolerance)",
    )
    table.add_argument("--list", action="store_true", help="list the rows' names and exit")
    from blr.apps import demo  # numpy and torch only at module level; the extras load lazily

    sub.add_parser(
        "demo",
        parents=[demo.build_parser(add_help=False)],
        help="IVON vs AdamW vs SGD on digits/Fashion-MNIST: accuracy, NLL, ECE, Brier, a "
        "reliability diagram",
        description=demo.DESCRIPTION,
    )
    bench = sub.add_parser(
        "bench",
        help="benchmark tables: optimizer-side time and memory of AdamW, IVON, VOGN and the "
        "generic BLROptimizer (optim), the UCI regression protocol (uci), continual learning "
        "on split digits / Fashion-MNIST (continual), model merging (merge)",
        description="Benchmark tables. optim: optimizer-side time per step and memory held "
        "(AdamW, IVON and the generic BLROptimizer with a diagonal Gaussian, with its ratio to "
        "IVON; whole training steps add VOGN and OGN); uci: the UCI regression protocol; "
        "continual: naive fine-tuning, online EWC, VCL with IVON, FROMP, K-priors and joint "
        "training on split digits or split Fashion-MNIST; merge: merging fine-tuned models by "
        "averaging, task arithmetic, Fisher averaging and uncertainty-based gradient matching. "
        "'blr bench TARGET --help' lists the target's options.",
    )
    bench.add_argument(
        "target", choices=["optim", "uci", "continual", "merge"], help="what to benchmark"
    )
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of the target (--help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``blr`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "table":
        return _table(args)
    if args.command == "demo":
        from blr.apps import demo

        return demo.run_cli(args)
    if args.command == "bench" and args.target == "uci":
        from blr.apps import uci

        return uci.main(args.rest)
    if args.command == "bench" and args.target == "continual":
        from blr.apps import continual

        return continual.main(args.rest)
    if args.command == "bench" and args.target == "merge":
        from blr.apps import merging

        return merging.main(args.rest)
    if args.command == "bench":
        from blr.apps import bench  # lazily: the benchmark code is only needed here

        return bench.main(args.rest)
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover


def _table(args: argparse.Namespace) -> int:
    # lazily: derivations (and sympy) load only for `blr table`
    from blr.apps.table import format_table, to_json
    from derivations import ROWS, table

    if args.list:
        print("\n".join(ROWS))
        return 0
    if args.mutations:
        return _mutations(args)
    try:
        results = table.run_table(args.row, device=args.device, symbolic=not args.no_symbolic)
    except ValueError as exc:
        print(f"blr table: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(to_json(results))
    else:
        print(format_table(results, markdown=args.markdown, verbose=args.verbose))
    return 0 if all(r.passed for r in results) else 1


def _mutations(args: argparse.Namespace) -> int:
    from blr.apps.table import format_margins
    from derivations import mutations

    try:
        results = mutations.run_mutations(args.row, device=args.device)
    except ValueError as exc:
        print(f"blr table: error: {exc}", file=sys.stderr)
        return 2
    print(format_margins(results, markdown=args.markdown))
    weak = [r for r in results if not (r.caught and r.margin >= mutations.MIN_MARGIN)]
    print(
        f"\n{len(results) - len(weak)}/{len(results)} mutations caught with a margin of at least "
        f"{mutations.MIN_MARGIN:.0f}× the tolerance"
    )
    return 0 if not weak else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
