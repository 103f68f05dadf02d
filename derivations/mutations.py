r"""Mutation testing of the table: deliberate bugs that every row's check must catch.

A row that passes proves little if it would also pass with a wrong constant or a missing term. Each
row module lists, in ``MUTATIONS``, small edits of its own source — a constant perturbed by 1% on
the BLR side, one on the classical side, a term dropped, a test problem moved out of the regime its
claim needs — and :func:`run_mutation` applies one to a fresh copy of the module, runs the copy's
``check()`` and reports how far out of tolerance the row lands. A mutation is *caught* when some
comparison fails; its **margin** is the value/tolerance ratio of the comparison that catches it, the
largest finite ratio among the failing ones, near-ties (within 12%) going to the first in the
check's order (so a margin of 1e6 means the bug shows up a million times above the tolerance).
``tests/derivations/test_mutations.py`` requires every mutation to be caught with a margin of at
least :data:`MIN_MARGIN`, every row to carry the three basic kinds, and ``docs/table.md`` to
show the margins (``blr table --mutations`` prints them: :func:`blr.apps.table.format_margins`).

The edit is textual and local: ``old`` must occur exactly once inside the function, method or
class named by ``where`` (or, with ``where=""``, once in the module outside ``MUTATIONS``
itself), so an edit never silently misses after the code changes. A mutation may target another
module of :mod:`derivations` that the row imports (``module=``); the row is then re-executed
against the mutated copy. Nothing is written to disk and ``sys.modules`` is restored after
each run.

Example:
    >>> from derivations.mutations import Mutation
    >>> Mutation("blr", "constant", "blr_instance", "rho,", "1.01 * rho,", "ρ × 1.01").side
    'blr'
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import math
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from derivations.table import Comparison, _select

__all__ = [
    "MIN_MARGIN",
    "SIDES",
    "Mutation",
    "MutationError",
    "MutationResult",
    "mutated_source",
    "run_mutation",
    "run_mutations",
]

#: A caught mutation must land at least this many tolerances away (otherwise the row needs a
#: tighter tolerance or a larger problem).
MIN_MARGIN = 100.0

#: Where a mutation is made: the BLR instance (the engine's configuration, the estimator, the
#: kernel path), the classical algorithm, or the test problem (a condition of the claim).
SIDES = ("blr", "classical", "problem")
CHANGES = ("constant", "term")


class MutationError(ValueError):
    """A mutation that cannot be applied: its text is missing or ambiguous in the source."""


@dataclass(frozen=True)
class Mutation:
    """One deliberate bug in a row's source.

    Attributes:
        side: ``"blr"``, ``"classical"`` or ``"problem"`` (:data:`SIDES`).
        change: ``"constant"`` (a number perturbed) or ``"term"`` (a term dropped or a factor
            removed).
        where: the qualified name of the function, class or method holding ``old``
            (``"blr_instance"``, ``"MaskedDelta.__call__"``), or ``""`` for the module level.
        old: the source text to replace; it must occur exactly once in ``where``.
        new: its replacement.
        description: what the bug is, in words (``"ρ × 1.01"``).
        module: the module to edit when it is not the row's own (another module of
            :mod:`derivations` the row imports), e.g. ``"derivations.ogn"``.
    """

    side: str
    change: str
    where: str
    old: str
    new: str
    description: str
    module: str | None = None

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {self.side!r}")
        if self.change not in CHANGES:
            raise ValueError(f"change must be one of {CHANGES}, got {self.change!r}")
        if not self.old or self.old == self.new:
            raise ValueError(f"mutation {self.description!r}: old must be non-empty and ≠ new")


@dataclass
class MutationResult:
    """The outcome of one mutation: the comparisons of the mutated check (or the error it
    raised), whether the row failed, and the margin (largest value/tolerance)."""

    key: str
    mutation: Mutation
    comparisons: list[Comparison]
    error: str | None = None

    @property
    def caught(self) -> bool:
        """Some comparison of the mutated row is out of tolerance (an exception is not a catch:
        it measures nothing)."""
        return self.error is None and any(not c.passed for c in self.comparisons)

    @property
    def worst(self) -> Comparison | None:
        """The comparison that measures the mutation: the largest finite value/tolerance among
        the failing comparisons (an infinite ratio — a zero-tolerance bound — only when no
        finite one fails), else the largest ratio overall. Comparisons within 12% of the largest
        ratio (0.05 in log₁₀) count as a tie, won by the first in the check's order: two
        comparisons that measure the same quantity (a run against two references that agree)
        differ by rounding, which another CPU may order the other way."""
        failing = [c for c in self.comparisons if not c.passed]
        finite = [c for c in failing if math.isfinite(c.ratio)]
        pool = finite or failing or self.comparisons
        best = max(pool, key=lambda c: c.ratio, default=None)
        if best is None or not (math.isfinite(best.ratio) and best.ratio > 0):
            return best
        return next(c for c in pool if c.ratio >= best.ratio * 10**-0.05)

    @property
    def margin(self) -> float:
        """The value/tolerance of :attr:`worst` (NaN when the check raised)."""
        worst = self.worst
        return math.nan if self.error is not None or worst is None else worst.ratio


def _span(tree: ast.Module, where: str) -> tuple[int, int]:
    """Line span (0-based, end exclusive) of the definition named by ``where``."""
    body: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    for part in where.split("."):
        node = next(
            (
                n
                for n in body
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and n.name == part
            ),
            None,
        )
        if node is None:
            raise MutationError(f"no definition {where!r} in the module")
        body = node.body  # type: ignore[attr-defined]
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return start - 1, node.end_lineno  # type: ignore[union-attr,return-value]


def _mutations_span(tree: ast.Module) -> tuple[int, int] | None:
    for n in tree.body:
        targets = n.targets if isinstance(n, ast.Assign) else [getattr(n, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == "MUTATIONS" for t in targets):
            return n.lineno - 1, n.end_lineno  # type: ignore[return-value]
    return None


def mutated_source(source: str, mutation: Mutation) -> str:
    """``source`` with ``mutation.old`` replaced by ``mutation.new`` inside ``mutation.where``;
    MutationError unless ``old`` occurs there exactly once (the ``MUTATIONS`` list itself is
    never searched).

    Example:
        >>> src = "def f(x):\\n    return 2 * x\\n\\ndef g(x):\\n    return 2 * x\\n"
        >>> m = Mutation("blr", "constant", "g", "2 * x", "2.02 * x", "2 → 2.02")
        >>> print(mutated_source(src, m))
        def f(x):
            return 2 * x
        <BLANKLINE>
        def g(x):
            return 2.02 * x
        <BLANKLINE>
    """
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    if mutation.where:
        start, end = _span(tree, mutation.where)
        pieces = [(start, end)]
    else:
        skip = _mutations_span(tree)
        pieces = [(0, len(lines))] if skip is None else [(0, skip[0]), (skip[1], len(lines))]
    hits = [(a, b) for a, b in pieces if "".join(lines[a:b]).count(mutation.old)]
    count = sum("".join(lines[a:b]).count(mutation.old) for a, b in pieces)
    place = mutation.where or "the module"
    if count != 1:
        raise MutationError(
            f"mutation {mutation.description!r}: {mutation.old!r} occurs {count} times in "
            f"{place}, expected exactly once"
        )
    a, b = hits[0]
    segment = "".join(lines[a:b]).replace(mutation.old, mutation.new)
    return "".join(lines[:a]) + segment + "".join(lines[b:])


def _source(name: str) -> tuple[str, str]:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise MutationError(f"module {name!r} not found")
    with open(spec.origin, encoding="utf-8") as f:
        return f.read(), spec.origin


@contextmanager
def _installed(name: str, source: str, filename: str) -> Iterator[types.ModuleType]:
    """Execute ``source`` as module ``name``, visible to imports (``sys.modules`` and the parent
    package's attribute) while the context lasts; both are restored afterwards."""
    parent_name, _, child = name.rpartition(".")
    parent = sys.modules.get(parent_name) if parent_name else None
    missing = object()
    old_module = sys.modules.get(name, missing)
    old_attr = getattr(parent, child, missing) if parent is not None else missing
    module = types.ModuleType(name)
    module.__file__ = filename
    module.__package__ = parent_name
    sys.modules[name] = module
    if parent is not None:
        setattr(parent, child, module)
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
        yield module
    finally:
        if old_module is missing:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = old_module  # type: ignore[assignment]
        if parent is not None:
            if old_attr is missing:
                delattr(parent, child)
            else:
                setattr(parent, child, old_attr)


def run_mutation(key: str, mutation: Mutation, *, device: str = "cpu") -> MutationResult:
    """Apply ``mutation`` to a fresh copy of row ``key`` (or of the module it names), run the
    copy's ``check(device)`` on one torch thread, as ``blr table`` does, and report it.

    Raises MutationError when the mutation cannot be applied; an exception inside the mutated
    check is reported in :attr:`MutationResult.error`.
    """
    (key,) = _select([key])
    row_name = f"derivations.{key}"
    target = mutation.module or row_name
    source, filename = _source(target)
    mutant = mutated_source(source, mutation)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _installed(target, mutant, filename + " (mutated)") as module:
            if target == row_name:
                comparisons = list(module.check(device=device))
            else:
                row_source, row_file = _source(row_name)
                with _installed(row_name, row_source, row_file) as row:
                    comparisons = list(row.check(device=device))
        return MutationResult(key, mutation, comparisons)
    except MutationError:
        raise
    except Exception as exc:  # the mutated check may raise; that is reported, not a catch
        return MutationResult(key, mutation, [], error=f"{type(exc).__name__}: {exc}")
    finally:
        torch.set_num_threads(threads)


def run_mutations(keys: list[str] | None = None, *, device: str = "cpu") -> list[MutationResult]:
    """:func:`run_mutation` for every mutation of every row (or of the rows in ``keys``)."""
    results = []
    for key in _select(keys):
        for mutation in importlib.import_module(f"derivations.{key}").MUTATIONS:
            results.append(run_mutation(key, mutation, device=device))
    return results
