r"""The paper's table as data: the row contract, the runner behind ``blr table``, and the generator
of ``docs/table.md``. (What ``blr table`` prints — the text, Markdown and JSON tables — is
formatted by the command line, :mod:`blr.apps.table`, from the :class:`RowResult` list that
:func:`run_table` returns.)

Every row is one module of :mod:`derivations` (listed in :data:`derivations.ROWS`, table order)
that defines

- ``INFO``: a :class:`RowInfo` (the algorithm, the posterior family, the natural-gradient
  approximations, what :func:`derive` proves: :data:`SYMBOLIC`);
- ``derive() -> list[str]``: the sympy derivation. It raises ``AssertionError`` if an identity
  fails to simplify and returns the statements it proved, one line each;
- a classical implementation written without :mod:`blr`, and the BLR instance built from
  :mod:`expfam` + :mod:`blr` (names and signatures are the row's own);
- ``check(device="cpu") -> list[Comparison]``: runs both on the row's test problem (and, for the
  Gaussian rows, the batched kernel path of :mod:`blr.kernels` on ``device``) and reports every
  deviation with its tolerance and kind (:data:`KINDS`);
- ``MUTATIONS``: deliberate bugs in the row's source that ``check()`` must catch
  (:mod:`derivations.mutations`).

The module docstring is the row's page in ``docs/table.md``: the derivation in words and math,
the exact conditions under which the BLR iterate equals the classical one, and references.

Example:
    >>> from derivations.table import Comparison
    >>> Comparison("BLR vs GD, 50 steps", 3e-17, 1e-10).passed
    True
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import time
from dataclasses import dataclass, field
from types import ModuleType

import torch

__all__ = [
    "Comparison",
    "RowInfo",
    "RowResult",
    "document",
    "load_rows",
    "run_row",
    "run_table",
]


#: The symbolic column (:attr:`RowInfo.symbolic`): ``"✓"`` derive() proves the whole reduction
#: (the BLR step under the row's approximations simplifies to the classical update, nothing taken
#: on trust); ``"~"`` it proves the reduction given the assumptions the row names (stated, not
#: derived; the checks test them numerically where they can); ``"—"`` numeric only (derive()
#: proves auxiliary identities, not the reduction, for the reasons the row names).
SYMBOLIC = {
    "✓": "the whole reduction derived",
    "~": "the reduction derived, given these assumptions",
    "—": "numeric only, because",
}


@dataclass(frozen=True)
class RowInfo:
    """What a row of the table is.

    Attributes:
        key: the row's name on the command line (``blr table --row KEY``), the module's name.
        number: its row number in Table 1 of Khan & Rue (2023); None for rules beyond the table
            (IVON, VON, Vadam, bSAM).
        algorithm: the classical algorithm, e.g. ``"Gradient descent"``.
        posterior: the candidate family q, e.g. ``"Gaussian (fixed covariance)"``.
        approximation: the natural-gradient approximations, e.g. ``"delta method"``.
        symbolic: what :func:`derive` proves (:data:`SYMBOLIC`): ``"✓"`` the whole reduction
            from the BLR step to the classical update; ``"~"`` the reduction given the named
            ``assumptions``; ``"—"`` auxiliary identities only (numeric checks carry the row).
        assumptions: for ``"~"``, the steps taken on trust (typed in, not derived), one
            sentence each; for ``"—"``, why no symbolic reduction exists; empty for ``"✓"``.

    Example:
        >>> RowInfo("gd", 1, "Gradient descent", "Gaussian", "delta method", "✓").symbolic
        '✓'
        >>> RowInfo("x", None, "X", "q", "none", "~")
        Traceback (most recent call last):
        ...
        ValueError: row 'x': symbolic '~' needs its assumptions listed
    """

    key: str
    number: int | None
    algorithm: str
    posterior: str
    approximation: str
    symbolic: str
    assumptions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.symbolic not in SYMBOLIC:
            raise ValueError(
                f"row {self.key!r}: symbolic must be one of {', '.join(SYMBOLIC)}, "
                f"got {self.symbolic!r}"
            )
        if not isinstance(self.assumptions, tuple):
            raise TypeError(f"row {self.key!r}: assumptions must be a tuple of strings")
        if self.symbolic == "✓" and self.assumptions:
            raise ValueError(f"row {self.key!r}: symbolic '✓' takes no assumptions")
        if self.symbolic != "✓" and not self.assumptions:
            raise ValueError(
                f"row {self.key!r}: symbolic {self.symbolic!r} needs its assumptions listed"
            )


#: The kinds of :class:`Comparison`.
KINDS = {
    "equality": "two computations of the same iterates (the BLR instance or a kernel against "
    "the classical algorithm or the engine), identical up to float64 rounding: tolerance ≤ 1e-10",
    "limit": "agreement that holds only in a limit or at convergence (a fixed point, σ² → 0, "
    "N → ∞, a value pinned from elsewhere, an independent optimizer's answer): the tolerance "
    "that claim deserves",
    "bound": "a one-sided claim (an objective that never decreases, a fixed point no worse than "
    "other points): the value is the violation, 0 when the inequality holds",
}


@dataclass(frozen=True)
class Comparison:
    """One measured deviation of a row's check: ``value`` against ``tolerance``.

    ``kind`` (:data:`KINDS`): ``"equality"`` (the default) for two computations of the same
    iterates, tolerance ≤ 1e-10 (float64, enforced by a test), which make the table's max |Δ|
    column; ``"limit"`` for an agreement that holds only in a limit or at convergence;
    ``"bound"`` for a one-sided claim whose value is the violation.

    Example:
        >>> Comparison("BLR vs GD, 50 steps", 3e-17, 1e-10).passed
        True
        >>> Comparison("ELBO: largest decrease", 0.0, 1e-10, kind="bound").passed
        True
    """

    name: str
    value: float
    tolerance: float
    kind: str = "equality"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"kind must be one of {', '.join(map(repr, KINDS))}, got {self.kind!r}"
            )
        if not (self.tolerance >= 0):
            raise ValueError(f"tolerance must be ≥ 0, got {self.tolerance!r}")

    @property
    def passed(self) -> bool:
        """``value ≤ tolerance`` (a NaN value fails)."""
        return bool(math.isfinite(self.value) and self.value <= self.tolerance)

    @property
    def ratio(self) -> float:
        """``value / tolerance`` (inf for a non-finite value, or a non-zero value against a zero
        tolerance): how far out of tolerance."""
        if not math.isfinite(self.value):
            return math.inf
        if self.tolerance == 0:
            return 0.0 if self.value <= 0 else math.inf
        return self.value / self.tolerance


@dataclass
class RowResult:
    """The outcome of one row: its info, the proved statements (or the derivation's error), the
    comparisons of :func:`check`, and the wall time of derivation and check."""

    info: RowInfo
    statements: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    symbolic_ok: bool | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def max_abs_diff(self) -> float:
        """The largest deviation of the row's equality comparisons (NaN without any)."""
        return max((c.value for c in self.comparisons if c.kind == "equality"), default=math.nan)

    @property
    def passed(self) -> bool:
        """No error, a non-failing derivation, and every comparison within its tolerance."""
        return (
            self.error is None
            and self.symbolic_ok is not False
            and bool(self.comparisons)
            and all(c.passed for c in self.comparisons)
        )


def _select(keys: list[str] | None) -> list[str]:
    from derivations import ROWS

    if keys is None:
        return list(ROWS)
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        raise ValueError(f"unknown row {unknown[0]!r}; rows are: {', '.join(ROWS)}")
    return [k for k in ROWS if k in keys]


def load_rows(keys: list[str] | None = None) -> list[ModuleType]:
    """The row modules in table order; ``keys`` selects some (ValueError naming an unknown key)."""
    return [importlib.import_module(f"derivations.{k}") for k in _select(keys)]


def run_row(module: ModuleType, *, device: str = "cpu", symbolic: bool = True) -> RowResult:
    """Run one row: its sympy derivation (unless ``symbolic=False``) and its check on ``device``.
    Exceptions are caught into :attr:`RowResult.error` so one broken row does not hide the rest."""
    result = RowResult(module.INFO)
    start = time.perf_counter()
    try:
        if symbolic:
            try:
                result.statements = list(module.derive())
                result.symbolic_ok = True
            except AssertionError as exc:
                result.symbolic_ok = False
                result.error = f"derivation failed: {exc}"
        result.comparisons = list(module.check(device=device))
    except Exception as exc:  # a row's failure is reported, not raised
        result.error = f"{type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - start
    return result


def run_table(
    keys: list[str] | None = None, *, device: str = "cpu", symbolic: bool = True
) -> list[RowResult]:
    """:func:`run_row` for every row (or the rows named by ``keys``), in table order, with torch
    on one thread (the problems are tiny; more threads only add contention)."""
    selected = _select(keys)  # unknown keys fail before any work
    try:
        torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device={device!r} is not a valid torch device: {exc}") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available")
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: extra threads only add contention
    try:
        for key in selected:
            results.append(_run_key(key, device=device, symbolic=symbolic))
    finally:
        torch.set_num_threads(threads)
    return results


def _run_key(key: str, *, device: str, symbolic: bool) -> RowResult:
    try:
        module = importlib.import_module(f"derivations.{key}")
    except Exception as exc:  # a row that cannot even be imported is a failing row
        info = RowInfo(key, None, key, "?", "?", "—", ("the module could not be imported",))
        return RowResult(info, error=f"import failed: {type(exc).__name__}: {exc}")
    return run_row(module, device=device, symbolic=symbolic)


_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr):`~?([^`]+)`")  # Sphinx roles → code


def _md(cell: str) -> str:
    """A Markdown table cell: a literal | would end the cell."""
    return cell.replace("|", "\\|")


def _margin(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.0e}×"


def document(mutations: list | None = None) -> str:
    """The text of ``docs/table.md``, generated from the row modules (their :class:`RowInfo`,
    docstrings, proved statements and comparisons) and the mutation margins
    (:mod:`derivations.mutations`; run here unless ``mutations`` gives their results); a test
    keeps the checked-in file current."""
    from derivations.mutations import MIN_MARGIN, run_mutations

    modules = load_rows()
    if mutations is None:
        mutations = run_mutations()
    by_row: dict[str, list] = {}
    for r in mutations:
        by_row.setdefault(r.key, []).append(r)
    symbols = (
        "**✓** the whole reduction from the BLR step, under the row's approximations, to the "
        "classical update is derived, nothing taken on trust; **~** the reduction is derived "
        "given assumptions the row names (stated, not derived; the checks test them numerically "
        "where they can); **—** numeric only (derive() proves auxiliary identities, not the "
        "reduction, for the reasons the row names)"
    )
    kinds = "; ".join(f"**{k}**: {v}" for k, v in KINDS.items())
    lines = [
        "# The paper's table, derived and verified",
        "",
        "<!-- generated by `python -m derivations.table > docs/table.md`; do not edit -->",
        "",
        "Each row of Table 1 of Khan & Rue (2023), and four rules beyond it, is one module of",
        "`derivations/`: a sympy derivation of the BLR step under the row's approximations, the",
        "classical algorithm written independently, the BLR instance built from `expfam` + `blr`,",
        "and a check that runs both. `blr table` runs them all; `blr table --row KEY --verbose`",
        "prints one row's comparisons, values, tolerances and proved statements.",
        "",
        f"The **symbolic** column says what `derive()` proves: {symbols}. A row marked ~ or —",
        "lists its assumptions or reasons below.",
        "",
        f"Each comparison has a kind. {kinds}.",
        "",
        "Every row is also **mutation-tested** (`tests/derivations/test_mutations.py`,",
        "`blr table --mutations`): small deliberate bugs in its source (a constant changed by 1%",
        "on the BLR side, one on the classical side, a term dropped, the test problem moved out",
        "of the regime the claim needs) must each make the row fail by at least "
        f"{MIN_MARGIN:.0f} tolerances.",
        "The margin is the value/tolerance of the comparison that catches the mutation (the",
        "largest finite ratio among the failing comparisons); the last column gives the smallest",
        "margin of the row's mutations.",
        "",
        "| # | Algorithm | Posterior | Natural-gradient approximation | symbolic | mutations "
        "(min margin) | module |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in modules:
        i = m.INFO
        cells = [_md(i.posterior), _md(i.approximation)]
        rows = by_row.get(i.key, [])
        least = min((r.margin for r in rows), default=math.nan)
        lines.append(
            f"| {i.number or ''} | [{_md(i.algorithm)}](#{i.key}) | {cells[0]} | {cells[1]} | "
            f"{i.symbolic} | {len(rows)} ({_margin(least)}) | `derivations/{i.key}.py` |"
        )
    for m in modules:
        i = m.INFO
        title = f"Row {i.number}: {i.algorithm}" if i.number else i.algorithm
        lines += ["", f'<a id="{i.key}"></a>', "", f"## {title}", ""]
        lines.append(_ROLE.sub(r"`\1`", inspect.cleandoc(m.__doc__ or "").strip()))
        lines += ["", f"Symbolic column: **{i.symbolic}** ({SYMBOLIC[i.symbolic]})"]
        if i.assumptions:
            lines[-1] += ":"
            lines += [""] + [f"- {a}" for a in i.assumptions]
        lines += ["", "Proved symbolically (`derive()`):", ""]
        lines += [f"- {s}" for s in m.derive()]
        lines += [
            "",
            "Compared by `check()`:",
            "",
            "| comparison | kind | tolerance |",
            "|---|---|---|",
        ]
        lines += [
            f"| {_md(c.name)} | {c.kind} | {c.tolerance:.0e} |" for c in m.check(device="cpu")
        ]
        lines += [
            "",
            "Mutations (each must make the row fail):",
            "",
            "| side | change | mutation | margin | caught by |",
            "|---|---|---|---|---|",
        ]
        for r in by_row.get(i.key, []):
            worst = r.worst
            caught_by = r.error or ("" if worst is None else worst.name)
            lines.append(
                f"| {r.mutation.side} | {r.mutation.change} | {_md(r.mutation.description)} | "
                f"{_margin(r.margin)} | {_md(caught_by)} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(document(), end="")
