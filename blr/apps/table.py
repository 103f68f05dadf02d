"""What ``blr table`` prints: the results of the paper's table (:func:`derivations.table.run_table`)
as an aligned text table, a Markdown table or JSON, every row's comparisons in detail
(``--verbose``), and the margins of the mutation test (``--mutations``,
:func:`derivations.mutations.run_mutations`).

:mod:`derivations` keeps the row contract and runs the rows; this module only formats what they
return (it imports :mod:`derivations` lazily, for :data:`derivations.table.SYMBOLIC`).

Example:
    >>> from derivations.table import Comparison, RowInfo, RowResult
    >>> r = RowResult(RowInfo("gd", 1, "Gradient descent", "Gaussian", "delta method", "✓"))
    >>> r.comparisons = [Comparison("BLR vs GD", 2e-17, 1e-10)]
    >>> lines = format_table([r], markdown=True).splitlines()
    >>> print(lines[2])
    | 1 | Gradient descent | Gaussian | delta method | ✓ | 2.0e-17 | 0.00 s | pass |
    >>> print(lines[-1])
    1/1 rows pass in 0.0 s
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from blr.apps.report import markdown_table, text_table

if TYPE_CHECKING:  # derivations is imported lazily: only blr.apps may import it
    from derivations.mutations import MutationResult
    from derivations.table import RowResult

__all__ = ["format_details", "format_margins", "format_table", "to_json"]

_COLUMNS = (
    "#",
    "Algorithm",
    "Posterior",
    "Natural-gradient approximation",
    "symbolic",
    "max |Δ|",
    "time",
    "status",
)


def _cells(r: RowResult) -> list[str]:
    symbolic = "✗" if r.symbolic_ok is False else r.info.symbolic
    value = r.max_abs_diff
    return [
        str(r.info.number) if r.info.number is not None else "",
        r.info.algorithm,
        r.info.posterior,
        r.info.approximation,
        symbolic,
        "—" if math.isnan(value) else f"{value:.1e}",
        f"{r.seconds:.2f} s",
        "pass" if r.passed else "FAIL",
    ]


def format_table(results: list[RowResult], *, markdown: bool = False, verbose: bool = False) -> str:
    """The results as an aligned text table (or a Markdown table), one line per row, followed
    by the error or the failing comparisons of any row that did not pass; with ``verbose``,
    followed by every row's comparisons (value, tolerance, kind, margin), its assumptions and
    the statements its derivation proved (:func:`format_details`).

    Example:
        >>> from derivations.table import Comparison, RowInfo, RowResult
        >>> r = RowResult(RowInfo("k", None, "A", "q", "none", "—", ("no closed form",)))
        >>> r.comparisons = [Comparison("BLR vs A", 1e-3, 1e-12)]
        >>> print(format_table([r]))  # doctest: +NORMALIZE_WHITESPACE
        #  Algorithm  Posterior  Natural-gradient approximation  symbolic  max |Δ|  time    status
        -  ---------  ---------  ------------------------------  --------  -------  ------  ------
           A          q          none                            —         1.0e-03  0.00 s  FAIL
        <BLANKLINE>
        k: comparisons out of tolerance
          BLR vs A: 1.000e-03 > 1.0e-12
        <BLANKLINE>
        0/1 rows pass in 0.0 s
    """
    rows = [_cells(r) for r in results]
    if markdown:
        lines = markdown_table(_COLUMNS, rows).split("\n")
    else:  # cells padded to the column width, the last one too
        lines = text_table(_COLUMNS, rows, rstrip=False).split("\n")
    for r in results:
        if r.passed:
            continue
        lines.append("")
        lines.append(f"{r.info.key}: {r.error or 'comparisons out of tolerance'}")
        lines += [
            f"  {c.name}: {c.value:.3e} > {c.tolerance:.1e}" for c in r.comparisons if not c.passed
        ]
    if verbose:
        lines += ["", format_details(results)]
    total = sum(r.seconds for r in results)
    passed = sum(r.passed for r in results)
    lines.append("")
    lines.append(f"{passed}/{len(results)} rows pass in {total:.1f} s")
    return "\n".join(lines)


def format_details(results: list[RowResult]) -> str:
    """Every row's comparisons, one line each (pass/FAIL, kind, value, tolerance, value as a
    fraction of the tolerance), what the symbolic column means for it and the statements its
    derivation proved: what a reader checks a row by, without reading JSON.

    Example:
        >>> from derivations.table import Comparison, RowInfo, RowResult
        >>> r = RowResult(RowInfo("k", None, "A", "q", "none", "—", ("no closed form",)))
        >>> r.comparisons = [Comparison("BLR vs A", 2e-16, 1e-12)]
        >>> print(format_details([r]))
        A (k) — pass
          symbolic —: numeric only, because
            - no closed form
          comparisons:
            pass  equality  2.000e-16 ≤ 1.0e-12  (2.0e-04 of tol)  BLR vs A
    """
    from derivations.table import SYMBOLIC

    lines: list[str] = []
    for r in results:
        if lines:
            lines.append("")
        title = f"Row {r.info.number}: " if r.info.number else ""
        lines.append(f"{title}{r.info.algorithm} ({r.info.key}) — {'pass' if r.passed else 'FAIL'}")
        lines.append(f"  symbolic {r.info.symbolic}: {SYMBOLIC[r.info.symbolic]}")
        lines += [f"    - {a}" for a in r.info.assumptions]
        if r.error:
            lines.append(f"  error: {r.error}")
        if r.statements:
            lines.append("  proved (derive()):")
            lines += [f"    - {s}" for s in r.statements]
        if r.comparisons:
            lines.append("  comparisons:")
        for c in r.comparisons:
            status = "pass" if c.passed else "FAIL"
            rel = "≤" if c.passed else ">"
            lines.append(
                f"    {status:<4}  {c.kind:<8}  {c.value:.3e} {rel} {c.tolerance:.1e}  "
                f"({c.ratio:.1e} of tol)  {c.name}"
            )
    return "\n".join(lines)


def to_json(results: list[RowResult]) -> str:
    """The results as JSON: one object per row with its info, max |Δ|, every comparison,
    the proved statements, time and status.

    Example:
        >>> import json
        >>> from derivations.table import Comparison, RowInfo, RowResult
        >>> r = RowResult(RowInfo("gd", 1, "Gradient descent", "Gaussian", "delta method", "✓"))
        >>> r.comparisons = [Comparison("BLR vs GD", 2e-17, 1e-10)]
        >>> row = json.loads(to_json([r]))[0]
        >>> row["key"], row["status"], row["max_abs_diff"], row["comparisons"][0]["kind"]
        ('gd', 'pass', 2e-17, 'equality')
    """

    def one(r: RowResult) -> dict[str, Any]:
        value = r.max_abs_diff
        return {
            "key": r.info.key,
            "number": r.info.number,
            "algorithm": r.info.algorithm,
            "posterior": r.info.posterior,
            "approximation": r.info.approximation,
            "symbolic": "✗" if r.symbolic_ok is False else r.info.symbolic,
            "assumptions": list(r.info.assumptions),
            "statements": r.statements,
            "max_abs_diff": None if math.isnan(value) else value,
            "comparisons": [
                {
                    "name": c.name,
                    "kind": c.kind,
                    "value": c.value,
                    "tolerance": c.tolerance,
                    "passed": c.passed,
                }
                for c in r.comparisons
            ],
            "seconds": r.seconds,
            "status": "pass" if r.passed else "fail",
            "error": r.error,
        }

    return json.dumps([one(r) for r in results], indent=2)


def format_margins(results: list[MutationResult], *, markdown: bool = False) -> str:
    """One line per mutation: row, side, change, what was changed, caught or not, the margin
    and the comparison that caught it.

    Example:
        >>> from derivations.mutations import Mutation, MutationResult
        >>> from derivations.table import Comparison
        >>> m = Mutation("blr", "constant", "f", "2", "3", "2 → 3")
        >>> r = MutationResult("gd", m, [Comparison("BLR vs GD", 1e-3, 1e-12)])
        >>> print(format_margins([r]))
        row  side  change    mutation  caught  margin (× tol)  caught by
        ---  ----  --------  --------  ------  --------------  ---------
        gd   blr   constant  2 → 3     yes     1.0e+09         BLR vs GD
    """
    head = ("row", "side", "change", "mutation", "caught", "margin (× tol)", "caught by")
    rows = []
    for r in results:
        worst = r.worst
        rows.append(
            (
                r.key,
                r.mutation.side,
                r.mutation.change,
                r.mutation.description,
                "yes" if r.caught else ("error" if r.error else "NO"),
                "—" if math.isnan(r.margin) else f"{r.margin:.1e}",
                r.error or ("" if worst is None else worst.name),
            )
        )
    if markdown:
        return markdown_table(head, rows)
    return text_table(head, rows)
