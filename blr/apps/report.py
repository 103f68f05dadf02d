"""What the applications print: the mean ± standard error of repeated runs and aligned text or
Markdown tables (``blr demo``, ``blr bench uci``, ``blr table``).

- :func:`mean_se`: the mean and the standard error s/√n (sample standard deviation, ddof = 1) of
  runs over seeds or splits; :func:`format_mean_se` writes it as ``mean ± se``.
- :func:`text_table`: columns aligned to their widest cell, a rule under the header;
  :func:`markdown_table`: the same rows as a Markdown table (a literal ``|`` in a cell is
  escaped).

Example:
    >>> m, se = mean_se([1.0, 2.0, 3.0])   # sd 1, n 3
    >>> m, round(se, 6)
    (2.0, 0.57735)
    >>> print(format_mean_se(0.97531, 0.0012))
    0.9753 ± 0.0012
    >>> print(text_table(["method", "RMSE"], [["IVON", "2.741 ± 0.217"], ["BBB", "2.889"]]))
    method  RMSE
    ------  -------------
    IVON    2.741 ± 0.217
    BBB     2.889
    >>> print(markdown_table(["a", "b|c"], [["1", "2"]]))
    | a | b\\|c |
    |---|---|
    | 1 | 2 |
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["format_mean_se", "markdown_table", "mean_se", "text_table"]


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error) = (x̄, s/√n) with the sample standard deviation s (ddof = 1); the
    standard error of a single value is NaN.

    Raises:
        ValueError: ``values`` is empty.

    Example:
        >>> [round(v, 6) for v in mean_se([1.0, 2.0, 3.0])]   # s = 1, s.e. = 1/√3
        [2.0, 0.57735]
        >>> mean_se([2.0])
        (2.0, nan)
    """
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("values is empty")
    se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else math.nan
    return float(a.mean()), se


def format_mean_se(mean: float, se: float | None, digits: int = 4, *, missing: str = "n/a") -> str:
    """``mean ± se`` with ``digits`` decimals; ``missing`` stands for an undefined s.e. (None or
    NaN: a single run).

    Example:
        >>> format_mean_se(2.0, 0.57735, 3), format_mean_se(2.0, None, 3, missing="—")
        ('2.000 ± 0.577', '2.000 ± —')
    """
    err = missing if se is None or math.isnan(se) else f"{se:.{digits}f}"
    return f"{mean:.{digits}f} ± {err}"


def text_table(
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    align: str | None = None,
    sep: str = "  ",
    full_rule: bool = False,
    rstrip: bool = True,
) -> str:
    """An aligned text table: the header, a rule of dashes, one line per row; every column as
    wide as its widest cell.

    Args:
        head: the column titles.
        rows: the cells (strings), one sequence per row.
        align: one letter per column, ``"l"`` (left, the default) or ``"r"`` (right).
        sep: what separates two columns.
        full_rule: one rule as long as the header line (default: a rule under each column,
            joined by ``sep``).
        rstrip: strip trailing spaces from the header and the rows.

    Example:
        >>> print(text_table(["method", "ECE"], [["IVON", "0.0168"]], align="lr", sep=" | ",
        ...                  full_rule=True))
        method |    ECE
        ---------------
        IVON   | 0.0168
    """
    align = align or "l" * len(head)
    if len(align) != len(head) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be one 'l' or 'r' per column, got {align!r}")
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        out = sep.join(
            c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align)
        )
        return out.rstrip() if rstrip else out

    header = line(head)
    rule = "-" * len(header) if full_rule else sep.join("-" * w for w in widths)
    return "\n".join([header, rule, *(line(row) for row in rows)])


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    r"""A Markdown table of ``rows`` under ``head`` (``|`` in a cell written ``\|``).

    Example:
        >>> print(markdown_table(["method", "time (s)"], [["IVON", "0.4"]]))
        | method | time (s) |
        |---|---|
        | IVON | 0.4 |
    """

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(head), "|" + "---|" * len(head), *(line(row) for row in rows)])
