"""docs/architecture.md matches the code: its table of imports lists every module of the
repository and everything each imports (statically: at module level or lazily inside a function;
``if TYPE_CHECKING:`` blocks aside), the names it cites exist, and its code runs as written."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"
CORE = ("engine", "estimators", "functional", "gaussian", "posterior", "rule", "schedules")
CORE += ("quadrature",)
UNITS = ("blr.apps", "blr.curvature", "blr.glm", "blr.influence", "blr.kernels", "blr.metrics")
UNITS += ("blr.continual", "blr.merge", "blr.mixture", "blr.nn_laplace", "blr.optim", "blr.predict")


def unit(module: str) -> str | None:
    """The row of the table that holds ``module`` (``"blr"`` is the core), None outside the
    repository; a ValueError for a module of ``blr`` the table does not place."""
    parts = module.split(".")
    if parts[0] in ("expfam", "derivations"):
        return parts[0]
    if parts[0] != "blr":
        return None
    if len(parts) == 1 or parts[1] in CORE or parts[1] == "__version__":
        return "blr"
    if f"blr.{parts[1]}" in UNITS:
        return f"blr.{parts[1]}"
    raise ValueError(f"{module}: a module of blr that docs/architecture.md does not place")


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in (
        "TYPE_CHECKING",
        "typing.TYPE_CHECKING",
    )


def imports(path: pathlib.Path) -> set[str]:
    """The modules ``path`` imports (absolute names; ``from blr import x`` counts as blr.x when x
    is a submodule), outside ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            for a in node.names:
                name = f"{node.module}.{a.name}"
                if importlib.util.find_spec(node.module) and _is_module(name):
                    found.add(name)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def documented() -> dict[str, set[str]]:
    """The table of imports: module → the units its row lists (all units for "everything
    below")."""
    rows = re.findall(r"^\|[^|\n]*\| `([\w.]+)` \| ([^\n]*) \|$", PAGE.read_text("utf-8"), re.M)
    assert rows, "docs/architecture.md has a table of imports"
    table = {}
    everything = {"expfam", "blr", *UNITS, "derivations"}
    for module, cell in rows:
        listed = set(re.findall(r"`([\w.]+)`", cell))
        table[module] = everything if "everything below" in cell else listed
    return table


def test_the_table_of_imports_matches_the_code():
    table = documented()
    assert set(table) == {"expfam", "blr", "derivations", *UNITS}, sorted(table)
    wrong = []
    for package in ("expfam", "blr", "derivations"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel == pathlib.Path("blr/__main__.py"):  # the entry point of python -m blr
                continue
            module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            here = unit(module)
            used = {unit(m) for m in imports(path)} - {None, here}
            extra = used - table[here]
            if extra:
                wrong.append(f"{rel} ({here}) imports {sorted(extra)}")
    assert not wrong, "docs/architecture.md's table of imports is out of date:\n" + "\n".join(wrong)


def test_the_names_the_page_cites_exist():
    """Every dotted name in backticks that starts with expfam, blr or derivations is a module or
    an attribute of one (``blr.rule.BLR``, ``expfam.FAMILIES``, ``blr.glm.laplace``, ...), and
    every file path in backticks is a file of the repository."""
    page = PAGE.read_text("utf-8")
    names = set(re.findall(r"`((?:expfam|blr|derivations)(?:\.\w+)+)", page))
    assert len(names) > 40
    missing = []
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            if _is_module(".".join(parts[:cut])):
                obj = importlib.import_module(".".join(parts[:cut]))
                break
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            missing.append(name)
    assert not missing, f"docs/architecture.md cites names that do not exist: {missing}"
    paths = re.findall(r"`((?:expfam|blr|derivations|tests|docs)/[\w/.]+\.(?:py|md))`", page)
    assert len(paths) > 10
    gone = [path for path in paths if not (ROOT / path).is_file()]
    assert not gone, f"docs/architecture.md cites files that do not exist: {gone}"


def test_the_pages_code_runs_as_written():
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text("utf-8"), flags=re.S)
    assert blocks
    namespace: dict = {"__name__": "architecture_doc"}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), namespace)
