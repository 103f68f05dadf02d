"""The mutation test of the table: deliberate bugs in every row's source (a constant perturbed on
the BLR side, one on the classical side, a term dropped, the test problem moved out of its
regime) must each make the row fail, by at least ``MIN_MARGIN`` tolerances. The margins are
printed (``pytest -s``) and shown in docs/table.md."""

from __future__ import annotations

import functools
import importlib
import math
import pathlib
import re
import sys

import pytest

from blr.apps.table import format_margins
from derivations import ROWS, mutations, table
from derivations.mutations import MIN_MARGIN, Mutation, MutationError, run_mutation

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _listed(key: str) -> tuple[Mutation, ...]:
    return tuple(getattr(importlib.import_module(f"derivations.{key}"), "MUTATIONS", ()))


CASES = [pytest.param(key, i, id=f"{key}-{i}") for key in ROWS for i in range(len(_listed(key)))]


@functools.cache
def result(key: str, i: int) -> mutations.MutationResult:
    return run_mutation(key, _listed(key)[i])


def all_results() -> list[mutations.MutationResult]:
    return [result(key, i) for key in ROWS for i in range(len(_listed(key)))]


@pytest.mark.parametrize(("key", "i"), CASES)
def test_mutation_is_caught_with_margin(key, i):
    r = result(key, i)
    print(f"\n{format_margins([r])}")
    assert r.error is None, f"the mutated check raised instead of measuring: {r.error}"
    assert r.caught, f"{key}: mutation {r.mutation.description!r} was not caught"
    assert r.margin >= MIN_MARGIN, (
        f"{key}: mutation {r.mutation.description!r} caught only {r.margin:.3g}× the tolerance "
        f"by {r.worst.name!r}: tighten the tolerance or enlarge the problem"
    )


@pytest.mark.parametrize("key", ROWS)
def test_every_row_has_the_three_basic_mutations(key):
    listed = _listed(key)
    kinds = {(m.side, m.change) for m in listed}
    assert len(listed) >= 3, f"{key}: fewer than three mutations"
    assert ("blr", "constant") in kinds, f"{key}: no constant perturbed on the BLR side"
    assert ("classical", "constant") in kinds, f"{key}: no constant perturbed on the classical side"
    assert any(m.change == "term" for m in listed), f"{key}: no term dropped"
    assert len({m.description for m in listed}) == len(listed), f"{key}: duplicate descriptions"


def test_a_mutation_must_match_exactly_once():
    src = "def f(x):\n    return 2 * x + 2 * x\n"
    with pytest.raises(MutationError, match="occurs 2 times"):
        mutations.mutated_source(src, Mutation("blr", "constant", "f", "2 * x", "3 * x", "2→3"))
    with pytest.raises(MutationError, match="occurs 0 times"):
        mutations.mutated_source(src, Mutation("blr", "constant", "f", "5 * x", "3 * x", "5→3"))
    with pytest.raises(MutationError, match="no definition 'g'"):
        mutations.mutated_source(src, Mutation("blr", "constant", "g", "2 * x", "3 * x", "2→3"))
    with pytest.raises(ValueError, match="side"):
        Mutation("kernel", "constant", "f", "2", "3", "x")


def test_module_level_mutations_skip_the_mutations_list():
    src = 'X = 1.0\nMUTATIONS = (Mutation("problem", "constant", "", "X = 1.0", "X = 2.0", "X"),)\n'
    m = Mutation("problem", "constant", "", "X = 1.0", "X = 2.0", "X")
    assert mutations.mutated_source(src, m).startswith("X = 2.0\nMUTATIONS")


def test_a_harmless_edit_is_not_caught_and_modules_are_restored():
    """The runner itself cannot make a row fail: an edit that changes nothing numerically leaves
    every comparison passing, and sys.modules holds the original module afterwards."""
    before = sys.modules["derivations.gradient_descent"]
    neutral = Mutation("blr", "constant", "blr_instance", "out = [", "out = [  # x\n", "no-op")
    r = run_mutation("gradient_descent", neutral)
    assert r.error is None and not r.caught and r.margin < 1
    assert sys.modules["derivations.gradient_descent"] is before
    assert importlib.import_module("derivations").gradient_descent is before


def test_a_mutation_in_an_imported_row_module_reaches_the_row():
    """``module=``: Row 9 re-executes against a mutated Row 8 (its hand-coded OGN)."""
    before = sys.modules["derivations.ogn"]
    ogn_src = (ROOT / "derivations" / "ogn.py").read_text()
    assert "def classical(" in ogn_src
    m = Mutation(
        "classical",
        "constant",
        "classical",
        "def classical(",
        "_SCALE = 1.01\n\n\ndef _unused(",
        "rename classical away (the row cannot run)",
        module="derivations.ogn",
    )
    r = run_mutation("vogn", m)
    assert r.error is not None and "classical" in r.error
    assert sys.modules["derivations.ogn"] is before


def test_docs_table_is_current():
    path = ROOT / "docs" / "table.md"
    fresh = table.document(mutations=all_results())
    have = path.read_text()
    number = re.compile(r"\d\.?\d*e[+-]\d+×")

    def margins(text: str) -> list[float]:
        return [float(x[:-1]) for x in number.findall(text)]

    assert number.sub("N×", have) == number.sub("N×", fresh), (
        "docs/table.md is stale: python -m derivations.table > docs/table.md"
    )
    for old, new in zip(margins(have), margins(fresh)):  # rounding may differ across machines
        assert math.isclose(math.log10(old), math.log10(new), abs_tol=0.5), (old, new)


@pytest.mark.parametrize(
    ("key", "where", "new"),
    [
        ("dropout", "", "SIGMA2 = 0.5"),  # σ² = 0.5: far from the σ² → 0 limit
        ("em", "e_block_loss", "c = -log_lik"),  # log π deleted from the BLR E-step
        ("ste", "blr_ste", "1.01 * ALPHA / n,"),  # ρ × 1.01 through the full rule
    ],
)
def test_the_audits_perturbations_make_their_rows_fail(key, where, new):
    """Issue #13's 'done means': these three perturbations each make their row fail."""
    listed = _listed(key)
    (i,) = [i for i, m in enumerate(listed) if m.where == where and m.new == new]
    r = result(key, i)
    assert r.caught and r.margin >= MIN_MARGIN, (r.margin, r.error)
