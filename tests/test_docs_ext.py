"""The documentation site's docstring bridge (docs/_ext/griffe_rst.py): reST roles, math and
example sections become the Markdown that mkdocstrings renders."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

pytest.importorskip("griffe")

_PATH = pathlib.Path(__file__).resolve().parents[1] / "docs" / "_ext" / "griffe_rst.py"
_spec = importlib.util.spec_from_file_location("griffe_rst", _PATH)
griffe_rst = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(griffe_rst)


def test_roles_and_example_sections():
    out = griffe_rst.markdownify("See :func:`~blr.step` and :class:`expfam.Gamma`.\n\nExample:\n")
    assert "`blr.step`" in out and "`expfam.Gamma`" in out and "Examples:" in out


def test_one_line_math_is_a_display_block():
    out = griffe_rst.markdownify("Text.\n\n.. math::  a = b\n\nMore.")
    assert "$$\na = b\n$$" in out and "aligned" not in out


def test_multiline_math_with_alignment_is_wrapped_in_aligned():
    doc = "Update:\n\n    .. math::\n        m &= a,\\\\\n        h &= b.\n\n    After."
    out = griffe_rst.markdownify(doc)
    body = out[out.index("$$") : out.rindex("$$") + 2]
    assert body.splitlines() == [
        "$$",
        "    \\begin{aligned}",
        "    m &= a,\\\\",
        "    h &= b.",
        "    \\end{aligned}",
        "    $$",
    ]
    assert "After." in out
    env = "    .. math::\n        \\begin{cases} 1 & x > 0 \\\\ 0 & \\text{else} \\end{cases}\n"
    assert "aligned" not in griffe_rst.markdownify(env)  # an environment of its own is kept


def _check_math():
    path = _PATH.parent / "check_math.py"
    spec = importlib.util.spec_from_file_location("check_math", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_math_check_collects_the_sites_formulas_and_flags_bad_ones(tmp_path):
    check = _check_math()
    page = tmp_path / "a" / "index.html"
    page.parent.mkdir()
    page.write_text(
        '<p><span class="arithmatex">\\(x &lt; y\\)</span></p>'
        '<div class="arithmatex">\\[a &amp;= b\\]</div>',
        encoding="utf-8",
    )
    assert check.formulas(tmp_path) == [
        {"page": "a/index.html", "tex": "x < y", "display": False},
        {"page": "a/index.html", "tex": "a &= b", "display": True},
    ]
    import shutil

    if shutil.which("node") is None or not (check.CACHE / "node_modules").is_dir():
        pytest.skip("MathJax under node is not installed (docs/_ext/check_math.py installs it)")
    assert check.main([str(tmp_path)]) == 1  # "a &= b" outside an alignment: misplaced &
    page.write_text('<span class="arithmatex">\\(x_1\\)</span>', encoding="utf-8")
    assert check.main([str(tmp_path)]) == 0
