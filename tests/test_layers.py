"""Imports point down only: expfam imports torch (and the standard library) alone; blr may import
expfam; derivations may import both (and sympy); nothing in expfam or blr imports derivations, and
nothing imports the test-only reference ivon-opt."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALLOWED = {
    "expfam": {"torch", "expfam"},
    "blr": {"torch", "expfam", "blr", "numpy", "scipy"},
    "derivations": {"torch", "expfam", "blr", "derivations", "numpy", "scipy", "sympy"},
}


def _imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _module_level_roots(path: pathlib.Path) -> set[str]:
    """Imports executed at import time (not inside functions: the CLI imports lazily)."""
    roots = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_expfam_imports_only_torch_and_the_standard_library():
    for path in (ROOT / "expfam").rglob("*.py"):
        extra = _imported_roots(path) - ALLOWED["expfam"] - set(sys.stdlib_module_names)
        assert not extra, f"{path.relative_to(ROOT)} imports {sorted(extra)}"


def test_blr_never_imports_derivations_at_module_level():
    for path in (ROOT / "blr").rglob("*.py"):
        extra = _module_level_roots(path) - ALLOWED["blr"] - set(sys.stdlib_module_names)
        assert not extra, f"{path.relative_to(ROOT)} imports {sorted(extra)}"


def test_importing_expfam_loads_no_blr_or_derivations_module():
    code = (
        "import sys, expfam; bad = [m for m in sys.modules "
        "if m.split('.')[0] in ('blr', 'derivations', 'scipy', 'numpy')]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = eval(out.stdout.strip())
    # torch itself may import numpy; blr, derivations and scipy must stay out
    assert not [m for m in loaded if m.split(".")[0] in ("blr", "derivations", "scipy")]


def test_derivations_import_only_the_layers_below_and_sympy():
    for path in (ROOT / "derivations").rglob("*.py"):
        extra = _imported_roots(path) - ALLOWED["derivations"] - set(sys.stdlib_module_names)
        assert not extra, f"{path.relative_to(ROOT)} imports {sorted(extra)}"


def test_no_package_module_imports_the_gpl_reference():
    for package in ("expfam", "blr", "derivations"):
        for path in (ROOT / package).rglob("*.py"):
            assert "ivon" not in _imported_roots(path), f"{path.relative_to(ROOT)} imports ivon"
