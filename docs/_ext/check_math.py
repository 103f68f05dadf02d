"""Check that MathJax accepts every formula of the built documentation site.

    python docs/_ext/check_math.py site      # after `mkdocs build`

Collects the formulas that ``pymdownx.arithmatex`` wrote into the HTML (``\\( \\)`` inline,
``\\[ \\]`` display) and typesets each with MathJax 3 under node (docs/_ext/check_math.js;
``mathjax-full`` is installed into ``.cache/mathjax`` on first use). Exit status 1 lists the
formulas MathJax rejects (a misplaced ``&``, an unknown macro, ``_`` in text mode, ...), which
``mkdocs build --strict`` cannot see. Without node, or when npm cannot install MathJax, the
check is skipped (status 0, with a notice).
"""

from __future__ import annotations

import html
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
CACHE = HERE.parents[1] / ".cache" / "mathjax"
_MATH = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', flags=re.S)


def formulas(site: pathlib.Path) -> list[dict]:
    """Every arithmatex formula of the site: {page, tex, display}."""
    items = []
    for page in sorted(site.rglob("*.html")):
        for match in _MATH.finditer(page.read_text(encoding="utf-8")):
            tex = html.unescape(match.group(2)).strip()
            display = not tex.startswith("\\(")
            if tex[:2] in ("\\(", "\\[") and tex[-2:] in ("\\)", "\\]"):
                tex = tex[2:-2]
            items.append({"page": str(page.relative_to(site)), "tex": tex, "display": display})
    return items


def main(argv: list[str]) -> int:
    site = pathlib.Path(argv[0] if argv else "site")
    items = formulas(site)
    if not items:
        print(f"check_math: no formulas under {site}/ (build the site first)")
        return 1
    if shutil.which("node") is None or shutil.which("npm") is None:
        print("check_math: node/npm not found; MathJax check skipped")
        return 0
    if not (CACHE / "node_modules" / "mathjax-full").is_dir():
        install = ["npm", "install", "--silent", "--prefix", str(CACHE), "mathjax-full@3"]
        if subprocess.run(install, check=False).returncode != 0:
            print("check_math: `npm install mathjax-full@3` failed; MathJax check skipped")
            return 0
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(items, f)
    env = {**os.environ, "NODE_PATH": str(CACHE / "node_modules")}
    run = subprocess.run(["node", str(HERE / "check_math.js"), f.name], env=env, check=False)
    pathlib.Path(f.name).unlink()
    return run.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
