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


def _private_expfam_uses(source: str, filename: str = "<string>") -> list[str]:
    """Uses of expfam's private side in ``source``, as ``file:line: code``: an underscore method
    of a family called from outside a family class (any receiver but ``self``/``cls``/``super()``;
    also through ``getattr``), an underscore name reached through an expfam module, and an import
    of a private expfam module or name. Family authors (classes subclassing an expfam family)
    implement and call underscore methods: that is the contract, so their bodies are exempt."""
    import importlib.util

    import expfam

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    def subclasses(cls: type) -> list[type]:
        return [cls] + [s for sub in cls.__subclasses__() for s in subclasses(sub)]

    ours = [c for c in subclasses(expfam.ExpFamily) if c.__module__.split(".")[0] == "expfam"]
    methods = {n for c in ours for n in vars(c) if private(n)}
    methods |= {n for fam in expfam.FAMILIES.values() for n in vars(fam) if private(n)}
    family_classes = {c.__name__ for c in ours}

    tree = ast.parse(source)
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    local: set[ast.ClassDef] = set()
    grew = True
    while grew:  # family classes of this file, also subclasses of subclasses
        grew = False
        for c in classes:
            bases = {ast.unparse(b).split(".")[-1] for b in c.bases}
            if c not in local and bases & (family_classes | {k.name for k in local}):
                local.add(c)
                grew = True
    for c in local:
        methods |= {f.name for f in c.body if isinstance(f, ast.FunctionDef) and private(f.name)}

    modules = set()  # local names bound to expfam modules
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "expfam":
                    modules.add(a.asname or "expfam")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "expfam":
            for a in node.names:
                if importlib.util.find_spec(f"expfam.{a.name}") is not None:
                    modules.add(a.asname or a.name)

    found: list[str] = []

    def report(node: ast.AST) -> None:
        found.append(f"{filename}:{node.lineno}: {ast.unparse(node)[:80]}")

    def visit(node: ast.AST, in_family: bool) -> None:
        if isinstance(node, ast.ClassDef) and node in local:
            in_family = True
        if isinstance(node, ast.Import):
            if any(private(p) for a in node.names for p in a.name.split(".")[1:]):
                if any(a.name.split(".")[0] == "expfam" for a in node.names):
                    report(node)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] == "expfam" and (
                any(private(p) for p in parts) or any(private(a.name) for a in node.names)
            ):
                report(node)
        elif isinstance(node, ast.Attribute) and private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute | ast.Call | ast.Subscript):
                root = root.func if isinstance(root, ast.Call) else root.value
            if node.attr in methods:  # a family's underscore method: family authors only
                if not in_family and ast.unparse(node.value) not in ("self", "cls", "super()"):
                    report(node)
            elif isinstance(root, ast.Name) and root.id in modules:  # e.g. generic._solve_psd
                report(node)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in methods
            and not in_family
        ):
            report(node)
        for child in ast.iter_child_nodes(node):
            visit(child, in_family)

    visit(tree, False)
    return found


def test_blr_and_derivations_use_only_the_public_side_of_expfam():
    """The expfam boundary: blr and derivations call the public, validated methods of families
    (``validate=False`` where the caller has checked its input) and the public modules
    (``expfam.tree``, ``expfam.linalg``, ...), never an underscore method or a private module."""
    bad = """
import expfam
import expfam._tree
from expfam import _tree, generic
from expfam.gaussian_full import _sym
from expfam.tree import tmap

def f(family, nat, other):
    generic._solve_psd(nat, nat)
    expfam.FAMILIES["gamma"]._entropy(nat)
    getattr(family, "_kl")(nat, nat)
    return family._neg_entropy_grad(nat), other.fam._sample(nat, (), None)

class Mine(expfam.DiagGaussian):
    def _entropy(self, nat):
        return self._log_partition(nat) + expfam.Gamma()._entropy(nat)

class Helper:
    def _kl(self):
        return self._kl()
"""
    lines = sorted(int(hit.split(":")[1]) for hit in _private_expfam_uses(bad))
    assert lines == [3, 4, 5, 9, 10, 11, 12, 12], _private_expfam_uses(bad)

    found = []
    for package in ("blr", "derivations"):
        for path in sorted((ROOT / package).rglob("*.py")):
            found += _private_expfam_uses(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "private expfam uses:\n" + "\n".join(found)


def _upward_imports(
    source: str, module: str, tops: tuple[str, ...] = ("blr.apps", "derivations")
) -> list[str]:
    """Imports of the packages ``tops`` (default :mod:`blr.apps` and :mod:`derivations`) anywhere
    in ``source`` (the code of module ``module``): at module level or inside functions (lazily),
    relative imports resolved, and ``importlib.import_module``/``__import__`` of a constant name;
    as ``line: code``."""
    package = module.split(".")[:-1] if not module.endswith("__init__") else module.split(".")
    package = [p for p in package if p != "__init__"]

    def upward(name: str) -> bool:
        return any(name == top or name.startswith(top + ".") for top in tops)

    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            names = [target, *(f"{target}.{a.name}" for a in node.names)]
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        if any(upward(n) for n in names):
            found.append(f"{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_only_blr_apps_imports_derivations_and_nothing_below_imports_blr_apps():
    """The applications sit on top: nothing in the core (``blr`` outside ``blr/apps``), in
    ``expfam`` or in ``derivations`` imports :mod:`blr.apps`, and ``blr.apps`` is the only part of
    ``blr`` that imports :mod:`derivations` — lazily or not. ``blr/__main__.py`` (``python -m
    blr``) is an entry point that delegates to ``blr.apps.cli``; nothing imports it."""
    bad = """
import derivations
from blr.apps import cli
from blr import apps
from . import apps as a
from .apps.report import mean_se

def lazy():
    from derivations.table import run_table
    import importlib
    importlib.import_module("blr.apps.demo")
    return __import__("derivations")

from blr import optim
import blr.optim.bbb
"""
    lines = [int(hit.split(":")[0]) for hit in _upward_imports(bad, "blr.engine")]
    assert lines == [2, 3, 4, 5, 6, 9, 11, 12], _upward_imports(bad, "blr.engine")

    entry = ROOT / "blr" / "__main__.py"
    found = []
    for package in ("expfam", "blr", "derivations"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel.parts[:2] == ("blr", "apps") or path == entry:
                continue
            module = ".".join(rel.with_suffix("").parts)
            tops = ("blr.apps",) if package == "derivations" else ("blr.apps", "derivations")
            found += [f"{rel}:{hit}" for hit in _upward_imports(path.read_text(), module, tops)]
    assert not found, "imports pointing up a layer:\n" + "\n".join(found)
    # the rule is not empty: the command line does import derivations (lazily)
    cli = ROOT / "blr" / "apps" / "cli.py"
    assert any("derivations" in hit for hit in _upward_imports(cli.read_text(), "blr.apps.cli"))
    assert "blr.apps.cli" in entry.read_text()


def test_importing_the_core_loads_no_application_or_derivation():
    code = (
        "import sys, blr, blr.optim, blr.predict; bad = [m for m in sys.modules "
        "if m == 'blr.apps' or m.startswith('blr.apps.') or m.split('.')[0] == 'derivations']; "
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_blr_top_level_is_the_engine_and_the_rest_loads_on_use():
    """``blr`` exports the engine, BLR, the estimators and the Gaussian helpers; the posterior
    uses, curvature, kernels and optimizers are modules of their own, loaded on first use (as
    attributes, ``blr.kernels``) or by name (``import blr.predict``), never by ``import blr``; a
    name that moved says where it lives now."""
    import importlib

    import pytest

    import blr

    code = (
        "import sys, blr; print(repr(sorted(blr.__all__))); "
        "print(repr(sorted(m for m in sys.modules if m.split('.')[0] in ('blr', 'scipy')))); "
        "print(repr(dir(blr)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    exported, loaded, listed = (eval(line) for line in out.stdout.strip().splitlines())
    assert exported == [
        "BLR",
        "BonnetPrice",
        "Delta",
        "Estimate",
        "Estimator",
        "Exact",
        "GaussianOptions",
        "GumbelSoftmax",
        "ModelLoss",
        "ParameterPosterior",
        "Reparam",
        "ScoreFunction",
        "__version__",
        "gaussian_step",
        "objective",
        "step",
        "step_with_estimate",
    ]
    on_use = ("nn_laplace", "glm", "influence", "predict", "metrics", "mixture", "kernels")
    on_use += ("curvature", "optim")
    below = {m.split(".")[1] for m in loaded if m.startswith("blr.")}
    eager = sorted(below & {*on_use, "apps"}) + [m for m in loaded if m.startswith("scipy")]
    assert not eager, f"import blr loaded {eager}"

    for name in on_use:
        assert getattr(blr, name) is importlib.import_module(f"blr.{name}")
        assert name in dir(blr)
    # the applications are imported by name only (the core never names them)
    assert "apps" not in listed and "kernels" in listed and "step" in listed
    moved = [
        ("laplace", "blr.glm"),
        ("GLMQuadrature", "blr.glm"),
        ("NNLaplace", "blr.nn_laplace"),
        ("mixture_step", "blr.mixture"),
        ("predict_classification", "blr.predict"),
        ("mpe_sensitivity", "blr.influence"),
        ("full_gaussian_step", "blr.kernels"),
    ]
    for name, home in moved:
        with pytest.raises(AttributeError, match=rf"blr\.{name} moved to {home}"):
            getattr(blr, name)
        assert hasattr(importlib.import_module(home), name)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        blr.nope
