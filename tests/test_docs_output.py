"""Every printed "Output" block in the docs is what its snippets print.

A page's ``python`` blocks run in order in one namespace (as tests/test_tutorials.py runs the
tutorials); an "Output" block (a fenced block after a line ``Output ...:``) must equal what the
python blocks since the previous Output block printed, line by line.

Tolerance: the text between numbers must match exactly (trailing spaces aside). A number printed
as an integer must match exactly. A number printed with a fractional part or an exponent may
differ by one unit in its last printed digit (one rounding flip: a value within 1e-16 of a rounding
boundary rounds the other way after a change of BLAS or CPU), and two numbers printed in scientific
notation both below 1e-12 in magnitude are taken as equal: they are floating-point residuals of
O(1) float64 quantities (``|∇ℓ(m)| = 2.5e-16``), rounding noise with no reproducible digits. A
block labelled ``(CPU, torch X.Y)`` is compared only under torch X.Y: another version may draw or
round differently.

Output claims that are not run here are listed in ``NOT_RUN`` with the reason; a test fails on any
Output block or ``... output ...:`` line that is neither compared nor listed, so a new one cannot
be added unchecked. Running the three tutorials takes about 20 s on 2 CPU cores (each page's run is
cached, so a second test in the same process that needs it pays nothing: see :func:`run_page`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import pathlib
import re
from typing import NamedTuple

import pytest
import torch

import expfam

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
OUTPUT_LABEL = re.compile(r"^[^\n]*\boutput\b[^\n]*:[ \t]*$", re.I | re.M)
LABEL = re.compile(r"^Output(?: \((?P<device>[^,)]+), torch (?P<torch>\d+\.\d+)\))?:$")
NUMBER = re.compile(r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")

NOT_RUN = {
    ("docs/demo.md", "printed output, top 5 per method:"): (
        "the output of `python -m blr.apps.demo --tune --seeds 3`, a 6-minute grid search"
    ),
    ("docs/uci.md", "Its output (48 s wall, 26 s CPU):"): (
        "48 s, and it reads the UCI files outside the repository; the page shows the output "
        "reshaped as a table"
    ),
}
"""Output claims that are not run here: (page, label line) → why."""


class Block(NamedTuple):
    """An Output block: the label line, the printed text, and where it is."""

    label: str
    text: str
    line: int


def _rel(page: pathlib.Path) -> str:
    return page.relative_to(ROOT).as_posix()


def parse(text: str) -> list[tuple[str, object]]:
    """The page as a sequence of ``("python", code)``, ``("output", Block)`` (an Output block
    whose nearest code block above is python) and ``("claim", Block)`` (any other
    ``... output ...:`` line: above the output of a shell command, or not followed by a fence)."""
    items: list[tuple[str, object]] = []
    last, code = 0, None  # code: the language of the last code block (not output) seen

    def claims(start: int, labels: list) -> None:
        for lab in labels:
            line = text.count("\n", 0, start + lab.start()) + 1
            items.append(("claim", Block(lab.group().strip(), "", line)))

    for m in FENCE.finditer(text):
        before = text[last : m.start()]
        labels = list(OUTPUT_LABEL.finditer(before))
        fenced = labels.pop() if labels and not before[labels[-1].end() :].strip() else None
        claims(last, labels)
        if fenced is None:
            code = m.group(1)
            if code == "python":
                items.append(("python", m.group(2)))
        else:
            line = text.count("\n", 0, m.start()) + 1
            block = Block(fenced.group().strip(), m.group(2), line)
            items.append(("output" if code == "python" else "claim", block))
        last = m.end()
    claims(last, list(OUTPUT_LABEL.finditer(text[last:])))
    return items


@functools.cache
def run_page(rel: str) -> tuple[tuple[Block, str], ...]:
    """Run the python blocks of page ``rel`` (relative to the repository root) in order in one
    namespace; return each Output block with what the blocks before it (since the previous
    Output block) printed. Cached: a page runs at most once per process. Torch's thread count and
    the family registry (new_variant.md registers ``inverse_gamma``) are restored afterwards."""
    page = ROOT / rel
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    threads = torch.get_num_threads()
    registered = set(expfam.FAMILIES)
    pairs: list[tuple[Block, str]] = []
    printed = io.StringIO()
    try:
        for kind, item in parse(page.read_text(encoding="utf-8")):
            if kind == "python":
                with contextlib.redirect_stdout(printed):
                    exec(compile(item, str(page), "exec"), namespace)
            elif kind == "output":
                pairs.append((item, printed.getvalue()))
                printed = io.StringIO()
    finally:
        torch.set_num_threads(threads)
        for name in set(expfam.FAMILIES) - registered:
            expfam.FAMILIES.pop(name)
    return tuple(pairs)


def _decimals_unit(token: str) -> float | None:
    """One unit in the last printed digit of ``token`` (None for an integer)."""
    mantissa, _, exponent = token.lower().partition("e")
    if "." not in mantissa and not exponent:
        return None
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def same_output(expected: str, got: str) -> str | None:
    """None when ``got`` matches ``expected`` under the tolerance of this module, else why not."""
    exp_lines = [line.rstrip() for line in expected.strip("\n").splitlines()]
    got_lines = [line.rstrip() for line in got.strip("\n").splitlines()]
    if len(exp_lines) != len(got_lines):
        return f"{len(got_lines)} lines printed, {len(exp_lines)} in the block"
    for i, (e, g) in enumerate(zip(exp_lines, got_lines), 1):
        es, gs = NUMBER.split(e), NUMBER.split(g)
        if len(es) != len(gs) or es[0::2] != gs[0::2]:
            return f"line {i}: printed {g!r}, the block has {e!r}"
        for a, b in zip(es[1::2], gs[1::2]):
            if a == b:
                continue
            unit = _decimals_unit(a)
            if unit is None or _decimals_unit(b) != unit:
                return f"line {i}: {b} printed, {a} in the block"
            x, y = float(a), float(b)
            noise = "e" in a.lower() and abs(x) < 1e-12 and abs(y) < 1e-12
            if not noise and abs(x - y) > unit * (1 + 1e-9):
                return f"line {i}: {b} printed, {a} in the block (more than {unit:g} apart)"
    return None


def _pages_with_output() -> list[str]:
    return [_rel(p) for p in PAGES if any(k == "output" for k, _ in parse(p.read_text("utf-8")))]


@pytest.mark.parametrize("rel", _pages_with_output())
def test_output_blocks_are_what_the_snippets_print(rel):
    pytest.importorskip("sklearn")
    installed = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    pairs = run_page(rel)
    assert pairs
    compared = 0
    for block, printed in pairs:
        label = LABEL.match(block.label)
        assert label, f"{rel}:{block.line}: label {block.label!r} is not 'Output (CPU, torch X.Y):'"
        if label["torch"] and label["torch"] != installed:
            continue
        why = same_output(block.text, printed)
        assert why is None, f"{rel}:{block.line} ({block.label}) is stale: {why}\n{printed}"
        compared += 1
    if not compared:
        pytest.skip(f"every Output block of {rel} was printed by another torch than {installed}")


def test_every_output_claim_is_compared_or_listed():
    """Every Output block below python code is compared above; every other ``... output ...:``
    line (the output of a shell command, or one shown as a table) is in NOT_RUN, and every
    NOT_RUN entry still exists."""
    unlisted, seen = [], set()
    for page in PAGES:
        for kind, item in parse(page.read_text(encoding="utf-8")):
            if kind == "claim":
                key = (_rel(page), item.label)
                seen.add(key)
                if key not in NOT_RUN:
                    unlisted.append(f"{_rel(page)}:{item.line}: {item.label!r}")
    assert not unlisted, unlisted
    assert set(NOT_RUN) <= seen, set(NOT_RUN) - seen


@pytest.mark.parametrize(
    ("expected", "got", "ok"),
    [
        ("acc 0.9741 n 455", "acc 0.9741 n 455", True),
        ("acc 0.9741", "acc 0.9742", True),  # one rounding flip
        ("acc 0.9741", "acc 0.9743", False),
        ("n 455", "n 456", False),  # integers are exact
        ("|g| = 2.5e-16", "|g| = 4.4e-16", True),  # rounding noise
        ("|g| = 3.2e-10", "|g| = 3.3e-10", True),
        ("|g| = 3.2e-10", "|g| = 3.5e-10", False),
        ("|g| = 3.2e-10", "|g| = 3.2e-16", False),
        ("resumed exactly: True", "resumed exactly: False", False),
        ("a 1.0\nb 2.0", "a 1.0", False),
        ("ELBO 46.104", "ELBO 46.1040", False),  # a changed format is a change
    ],
)
def test_the_tolerance_is_the_one_stated(expected, got, ok):
    assert (same_output(expected, got) is None) == ok
