"""Every public name of :mod:`expfam`, :mod:`blr` and :mod:`blr.optim` has a docstring with an
example.

The rule this test enforces (pytest runs the examples themselves: ``--doctest-modules`` over
``expfam/``, ``blr/`` and ``derivations/``):

1. The public names are each package's ``__all__``, plus the ``__all__`` of every submodule a
   package exports as a name (``expfam.generic``, ...) and of every module of ``blr`` that users
   import by name (``MODULES``: ``blr.metrics``, ``blr.influence``, ...; ``blr``'s own
   ``__all__`` is the engine only).
2. A function, a class, an exported submodule or a module of ``MODULES`` has a docstring with a
   runnable example: at least one ``>>>`` line (for a module, in its module docstring).
3. A NamedTuple (the parameter types ``FullNat``, ``DiagMean``, ``MixturePoint``, ... and result
   records such as ``blr.Estimate``, ``blr.influence.Sensitivity``) is a plain record: its own
   docstring (not the generated ``FullNat(lam1, lam2)``) names every field; it needs no example of
   its own, since the function or family that makes it shows it in use.
4. A constant (``__version__``, ``FAMILIES``, ``blr.influence.LOSSES``, ...) cannot carry a
   docstring, so the docstring of the module that exports it names it and has an example.
5. Every public method and property of an exported class, defined in the package (inherited from
   a package base class counts; methods inherited untouched from torch do not), has a docstring
   with a ``>>>`` example (``inspect.getdoc``, so an override without a docstring of its own
   inherits its base's, example included).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import types

import pytest

PACKAGES = ("expfam", "blr", "blr.optim")
# the modules of blr imported by name (``import blr.predict``), not exported by ``blr``'s __all__
MODULES = (
    "blr.curvature",
    "blr.glm",
    "blr.influence",
    "blr.kernels",
    "blr.metrics",
    "blr.mixture",
    "blr.nn_laplace",
    "blr.predict",
    "blr.quadrature",
    "blr.schedules",
)
OURS = ("expfam", "blr")


def _is_ours(obj) -> bool:
    return (getattr(obj, "__module__", None) or "").split(".")[0] in OURS


def _is_namedtuple(obj) -> bool:
    return inspect.isclass(obj) and issubclass(obj, tuple) and hasattr(obj, "_fields")


def _is_constant(obj) -> bool:
    return not (inspect.isclass(obj) or inspect.isroutine(obj) or isinstance(obj, types.ModuleType))


def _public_names() -> list[tuple[str, str, object]]:
    """(module name, exported name, object) for every public name, submodules' ``__all__`` too."""
    seen: set[tuple[str, str]] = set()
    out = []

    def visit(modname: str) -> None:
        module = importlib.import_module(modname)
        for name in module.__all__:
            if (modname, name) in seen:
                continue
            seen.add((modname, name))
            obj = getattr(module, name)
            out.append((modname, name, obj))
            if isinstance(obj, types.ModuleType) and hasattr(obj, "__all__"):
                visit(obj.__name__)

    for pkg in PACKAGES:
        visit(pkg)
    for modname in MODULES:  # each as if its package exported it: the module, then its __all__
        parent, _, name = modname.rpartition(".")
        module = importlib.import_module(modname)
        if (parent, name) not in seen:
            seen.add((parent, name))
            out.append((parent, name, module))
        if hasattr(module, "__all__"):
            visit(modname)
    return out


NAMES = _public_names()


def _has_example(doc: str | None) -> bool:
    return any(line.strip().startswith(">>>") for line in (doc or "").splitlines())


def _public_members(cls) -> list[tuple[str, object]]:
    """Public methods and properties of ``cls`` defined in the package (its own or a base's)."""
    members: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        if not _is_ours(klass):
            continue
        for name, raw in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(raw, property | staticmethod | classmethod) or inspect.isfunction(raw):
                members[name] = raw
    return sorted(members.items())


def _member_doc(cls, name: str, raw) -> str | None:
    if isinstance(raw, property):
        return inspect.getdoc(raw)
    return inspect.getdoc(getattr(cls, name))


def _ids(rows):
    return [f"{mod}.{name}" for mod, name, _ in rows]


def test_the_enumeration_covers_the_packages():
    exported = {f"{mod}.{name}" for mod, name, _ in NAMES}
    for must in ("expfam.FullGaussian", "blr.step", "blr.optim.IVON", "blr.metrics.ece"):
        assert must in exported
    assert len(NAMES) > 100


@pytest.mark.parametrize(("modname", "name", "obj"), NAMES, ids=_ids(NAMES))
def test_public_name_has_a_docstring_with_an_example(modname, name, obj):
    where = f"{modname}.{name}"
    if isinstance(obj, types.ModuleType):
        assert _has_example(obj.__doc__), f"module {where}: its docstring needs a >>> example"
    elif _is_constant(obj):
        doc = importlib.import_module(modname).__doc__ or ""
        assert name in doc, f"constant {where}: the docstring of {modname} must name it"
        assert _has_example(doc), f"constant {where}: the docstring of {modname} needs an example"
    elif _is_namedtuple(obj):
        doc = obj.__doc__ or ""
        generated = f"{obj.__name__}({', '.join(obj._fields)})"
        assert doc.strip() and doc.strip() != generated, f"{where}: write a docstring"
        missing = [f for f in obj._fields if not re.search(rf"\b{f}\b", doc)]
        assert not missing, f"{where}: the docstring must name the fields {missing}"
    else:
        doc = inspect.getdoc(obj)
        assert doc, f"{where} has no docstring"
        if dataclasses.is_dataclass(obj):
            assert not doc.startswith(f"{obj.__name__}("), f"{where}: write a docstring"
        assert _has_example(doc), f"{where}: the docstring needs a >>> example"


CLASSES = [(m, n, o) for m, n, o in NAMES if inspect.isclass(o) and not _is_namedtuple(o)]
MEMBERS = [
    (f"{m}.{n}", cls, name, raw)
    for m, n, cls in CLASSES
    if m in PACKAGES + MODULES
    for name, raw in _public_members(cls)
]


@pytest.mark.parametrize(
    ("where", "cls", "name", "raw"), MEMBERS, ids=[f"{w}.{n}" for w, _, n, _ in MEMBERS]
)
def test_public_method_has_a_docstring_with_an_example(where, cls, name, raw):
    doc = _member_doc(cls, name, raw)
    assert doc, f"{where}.{name} has no docstring"
    assert _has_example(doc), f"{where}.{name}: the docstring needs a >>> example"
