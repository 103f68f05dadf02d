r"""Griffe extension for the documentation site: renders the library's reST-flavoured docstrings
as Markdown before griffe parses them (Google style).

- ``:func:`x```, ``:class:`x```, ``:mod:`x```, ... become ``x`` in code;
- a ``.. math::`` directive (with its indented continuation lines) becomes a ``$$ ... $$`` block
  for ``pymdownx.arithmatex``; a body with ``&`` or ``\\`` is wrapped in ``aligned``, as Sphinx
  wraps it in ``split`` (MathJax rejects a bare ``&``);
- an ``Example:`` section header becomes ``Examples:``, which griffe parses as doctest examples.

The docstrings themselves are untouched; only the copies griffe renders change.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const|term):`~?([^`]+)`")
_MATH = re.compile(r"^(\s*)\.\. math::\s*(.*)$")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", flags=re.M)


def _math_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MATH.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent, first = match.group(1), match.group(2)
        body = [first] if first.strip() else []
        i += 1
        while i < len(lines):
            line = lines[i]
            if line.strip() and len(line) - len(line.lstrip()) <= len(indent):
                break
            if not line.strip() and (
                i + 1 >= len(lines) or len(lines[i + 1]) - len(lines[i + 1].lstrip()) <= len(indent)
            ):
                break
            body.append(line.strip())
            i += 1
        body = [b for b in body if b]
        tex = "\n".join(body)
        if ("&" in tex or "\\\\" in tex) and not tex.lstrip().startswith("\\begin"):
            body = ["\\begin{aligned}", *body, "\\end{aligned}"]
        out += ["", f"{indent}$$", *(f"{indent}{b}" for b in body), f"{indent}$$", ""]
    return "\n".join(out)


def markdownify(text: str) -> str:
    """The Markdown that the site renders for one docstring."""
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    text = _EXAMPLE.sub(r"\1Examples:", text)
    return _math_blocks(text)


class RstToMarkdown(griffe.Extension):
    """Rewrite each loaded object's docstring with :func:`markdownify`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdownify(obj.docstring.value)
