"""The paper's table: every row's derivation and check pass, the row contract holds, `blr table`
behaves as a command line should, and docs/table.md is current."""

from __future__ import annotations

import importlib
import json
import pathlib

import pytest

from blr.apps.cli import main
from derivations import ROWS, table

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("key", ROWS)
def test_row_derivation_and_check_pass(key):
    module = importlib.import_module(f"derivations.{key}")
    result = table.run_row(module)
    failing = [c for c in result.comparisons if not c.passed]
    assert result.error is None, result.error
    assert result.symbolic_ok, "derive() did not run"
    assert result.statements, "derive() proved nothing"
    assert result.comparisons and not failing, failing
    assert result.passed
    equalities = [c for c in result.comparisons if c.kind == "equality"]
    assert equalities, "a row must compare the BLR instance with its classical algorithm"
    loose = [c for c in equalities if c.tolerance > 1e-10]
    assert not loose, f"equality comparisons need a tolerance ≤ 1e-10: {loose}"


@pytest.mark.parametrize("key", ROWS)
def test_row_contract(key):
    module = importlib.import_module(f"derivations.{key}")
    info = module.INFO
    assert isinstance(info, table.RowInfo)
    assert info.key == key
    doc = module.__doc__ or ""
    for section in ("**Equality conditions.**", "**References.**"):
        assert section in doc, f"{key}: the module docstring lacks {section}"
    assert callable(module.derive) and callable(module.check)


def test_table_numbers_cover_the_papers_seventeen_rows():
    numbers = [importlib.import_module(f"derivations.{k}").INFO.number for k in ROWS]
    assert sorted(n for n in numbers if n is not None) == list(range(1, 18))
    assert len(ROWS) == 21


def test_cli_json_for_one_row(capsys):
    assert main(["table", "--row", "gradient_descent", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in rows] == ["gradient_descent"]
    assert rows[0]["status"] == "pass" and rows[0]["symbolic"] == "✓"
    assert rows[0]["assumptions"] == []
    assert rows[0]["max_abs_diff"] < 1e-10
    assert all(c["passed"] for c in rows[0]["comparisons"])


def test_cli_text_and_markdown(capsys):
    assert main(["table", "--row", "gradient_descent", "--no-symbolic"]) == 0
    out = capsys.readouterr().out
    assert "Gradient descent" in out and "pass" in out and "1/1 rows pass" in out
    assert main(["table", "--row", "gradient_descent", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| # | Algorithm |") and "max \\|Δ\\|" in out


def test_cli_unknown_row_and_device_are_clear_errors(capsys):
    assert main(["table", "--row", "nope"]) == 2
    assert "unknown row 'nope'" in capsys.readouterr().err
    assert main(["table", "--row", "gradient_descent", "--device", "warp9"]) == 2
    assert "warp9" in capsys.readouterr().err


def test_cli_exits_nonzero_when_a_row_fails(monkeypatch, capsys):
    module = importlib.import_module("derivations.gradient_descent")
    monkeypatch.setattr(
        module, "check", lambda device="cpu": [table.Comparison("forced", 1.0, 1e-10)]
    )
    assert main(["table", "--row", "gradient_descent"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "forced: 1.000e+00 > 1.0e-10" in out


def test_a_raising_check_is_reported_not_raised(monkeypatch):
    module = importlib.import_module("derivations.gradient_descent")

    def boom(device="cpu"):
        raise RuntimeError("broken row")

    monkeypatch.setattr(module, "check", boom)
    result = table.run_row(module, symbolic=False)
    assert not result.passed and "broken row" in result.error


def test_comparison_kind_is_checked():
    with pytest.raises(ValueError, match="kind"):
        table.Comparison("x", 0.0, 1.0, kind="close enough")
    with pytest.raises(ValueError, match="tolerance"):
        table.Comparison("x", 0.0, -1.0)
    assert table.Comparison("b", 0.0, 1e-10, kind="bound").passed
    limit = table.Comparison("limit", 1e-3, 1e-2, kind="limit")
    result = table.RowResult(table.RowInfo("k", None, "A", "q", "none", "—", ("numeric only",)))
    result.comparisons = [limit, table.Comparison("eq", 1e-15, 1e-12)]
    assert result.max_abs_diff == 1e-15 and result.passed


def test_python_dash_m_blr_table_runs_a_row():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "blr", "table", "--row", "conjugate", "--no-symbolic", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["status"] == "pass"


def test_cli_list(capsys):
    assert main(["table", "--list"]) == 0
    assert capsys.readouterr().out.split() == list(ROWS)


def test_cli_verbose_prints_every_comparison_and_statement(capsys):
    assert main(["table", "--row", "bsam", "--verbose"]) == 0
    out = capsys.readouterr().out
    result = table.run_row(importlib.import_module("derivations.bsam"))
    for c in result.comparisons:
        assert c.name in out
    for s in result.statements:
        assert s in out
    for a in result.info.assumptions:
        assert a in out
    assert "symbolic ~: the reduction derived, given these assumptions" in out
    assert "equality" in out and "of tol" in out


def test_symbolic_column_values_and_assumptions_are_checked():
    with pytest.raises(ValueError, match="symbolic must be one of"):
        table.RowInfo("k", None, "A", "q", "none", True)
    with pytest.raises(ValueError, match="needs its assumptions"):
        table.RowInfo("k", None, "A", "q", "none", "—")
    with pytest.raises(ValueError, match="takes no assumptions"):
        table.RowInfo("k", None, "A", "q", "none", "✓", ("typed in",))


@pytest.mark.parametrize("key", ROWS)
def test_rows_marked_with_assumptions_name_them(key):
    info = importlib.import_module(f"derivations.{key}").INFO
    assert info.symbolic in table.SYMBOLIC
    assert all(isinstance(a, str) and len(a) > 10 for a in info.assumptions)


def test_cli_mutations_for_one_row(capsys):
    assert main(["table", "--row", "gradient_descent", "--mutations"]) == 0
    out = capsys.readouterr().out
    assert "GD step α × 1.01" in out and "mutations caught with a margin" in out
