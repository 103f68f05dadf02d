"""Every ``python`` block of each tutorial page (docs/tutorials/) runs as written: the blocks of a
page are executed in order in one namespace, and the pages assert their own claims."""

from __future__ import annotations

import pathlib
import re

import pytest

import expfam
from tests.test_docs_output import run_page

TUTORIALS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "tutorials"
PAGES = (
    "logistic_regression.md",
    "ivon_training_loop.md",
    "training_loops.md",
    "new_variant.md",
    "network_family.md",
)


def blocks(page: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


def test_index_lists_every_tutorial():
    index = (TUTORIALS / "index.md").read_text(encoding="utf-8")
    pages = sorted(p.name for p in TUTORIALS.glob("*.md") if p.name != "index.md")
    assert pages == sorted(PAGES)
    for name in PAGES:
        assert f"]({name})" in index
    assert "](../table.md)" in index


@pytest.mark.parametrize("name", PAGES)
def test_tutorial_runs_as_written(name):
    """Run through tests/test_docs_output.py's cached runner, which also compares the page's
    Output blocks with what it prints: each page runs once per test session."""
    pytest.importorskip("sklearn")
    assert blocks(TUTORIALS / name), f"{name} has python blocks"
    pairs = run_page(f"docs/tutorials/{name}")
    assert any(printed.strip() for _, printed in pairs), f"{name} printed nothing"


def test_tutorial_asserts_can_fail():
    """The pages check their claims: a wrong textbook posterior makes new_variant.md fail."""
    page = TUTORIALS / "new_variant.md"
    code = [b.replace("α₀ + n/2", "").replace("2.0 + 25.0", "2.0 + 24.0") for b in blocks(page)]
    namespace: dict = {"__name__": "tutorial_broken"}
    try:
        with pytest.raises(AssertionError):
            for block in code:
                exec(compile(block, str(page), "exec"), namespace)
    finally:
        expfam.FAMILIES.pop("inverse_gamma", None)


def test_new_variant_is_as_short_as_the_page_says():
    """Tutorial 3's promise: the family and the estimator in under 60 lines of code (the page
    states the exact count, blank lines aside)."""
    page = (TUTORIALS / "new_variant.md").read_text(encoding="utf-8")
    code = blocks(TUTORIALS / "new_variant.md")
    family = next(b for b in code if "(expfam.GenericFamily)" in b)
    estimator = next(b for b in code if "(blr.Estimator)" in b)
    lines = sum(1 for b in (family, estimator) for line in b.splitlines() if line.strip())
    assert lines < 60
    assert f"in {lines} lines of code together" in page


def test_network_family_is_as_short_as_the_page_says():
    """Tutorial 4's promise: a new family for a network's weights and its training in at most
    60 lines of user code (the page states the exact count, blank lines aside)."""
    page = (TUTORIALS / "network_family.md").read_text(encoding="utf-8")
    code = blocks(TUTORIALS / "network_family.md")
    family = next(b for b in code if "(expfam.GenericFamily)" in b)
    training = next(b for b in code if "BLROptimizer(" in b and "closure" in b)
    lines = sum(1 for b in (family, training) for line in b.splitlines() if line.strip())
    assert lines <= 60
    assert f"take {lines} lines of code" in page
