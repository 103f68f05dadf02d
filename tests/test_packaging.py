"""The package as it is installed and cited: the license text, the typing markers, the citation
metadata, the project metadata in pyproject.toml, and what a built sdist and wheel contain."""

from __future__ import annotations

import hashlib
import importlib
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import expfam

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("expfam", "blr", "derivations")
PAPER_URL = "https://jmlr.org/papers/v24/22-0291.html"
ARXIV_URL = "https://arxiv.org/abs/2107.04562"

# SHA-256 of the Apache License 2.0 as published at https://www.apache.org/licenses/LICENSE-2.0.txt
# (202 lines, LF line endings); the same bytes as Debian's /usr/share/common-licenses/Apache-2.0.
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"

# The keys that the Citation File Format 1.2.0 schema allows (every object in it has
# additionalProperties: false), so a misspelt key is caught here rather than ignored by readers.
CFF_TOP_KEYS = {
    "abstract", "authors", "cff-version", "commit", "contact", "date-released", "doi",
    "identifiers", "keywords", "license", "license-url", "message", "preferred-citation",
    "references", "repository", "repository-artifact", "repository-code", "title", "type", "url",
    "version",
}  # fmt: skip
CFF_TOP_REQUIRED = {"authors", "cff-version", "message", "title"}
CFF_REFERENCE_KEYS = {
    "abbreviation", "abstract", "authors", "collection-doi", "collection-title", "collection-type",
    "commit", "conference", "contact", "copyright", "data-type", "database", "database-provider",
    "date-accessed", "date-downloaded", "date-published", "date-released", "department", "doi",
    "edition", "editors", "editors-series", "end", "entry", "filename", "format", "identifiers",
    "institution", "isbn", "issn", "issue", "issue-date", "issue-title", "journal", "keywords",
    "languages", "license", "license-url", "loc-end", "loc-start", "location", "medium", "month",
    "nihmsid", "notes", "number", "number-volumes", "pages", "patent-states", "pmcid", "publisher",
    "recipients", "repository", "repository-artifact", "repository-code", "scope", "section",
    "senders", "start", "status", "term", "thesis-type", "title", "translators", "type", "url",
    "version", "volume", "volume-title", "year", "year-original",
}  # fmt: skip
CFF_REFERENCE_REQUIRED = {"authors", "title", "type"}
CFF_PERSON_KEYS = {
    "address", "affiliation", "alias", "city", "country", "email", "family-names", "fax",
    "given-names", "name-particle", "name-suffix", "orcid", "post-code", "region", "tel", "website",
}  # fmt: skip
CFF_ENTITY_KEYS = {
    "address", "alias", "city", "country", "date-end", "date-start", "email", "fax", "location",
    "name", "orcid", "post-code", "region", "tel", "website",
}  # fmt: skip
CFF_IDENTIFIER_TYPES = {"doi", "url", "swh", "other"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _citation() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))


def _bibtex(text: str, kind: str) -> dict[str, str]:
    """The fields of the first ``@kind{...}`` entry in a Markdown file's bibtex block."""
    match = re.search(rf"@{kind}\{{[^,]*,\n(.*?)\n\}}", text, flags=re.S)
    assert match, f"no @{kind} entry"
    fields = re.findall(r"^\s*([a-z]+)\s*=\s*\{(.*)\},?\s*$", match.group(1), flags=re.M)
    return {key: value for key, value in fields}


def _unbrace(latex: str) -> str:
    return latex.replace(r"{\aa}", "å").replace("{", "").replace("}", "")


def _check_authors(authors: list, where: str) -> None:
    assert isinstance(authors, list) and authors, f"{where}: authors must be a non-empty list"
    for author in authors:
        assert isinstance(author, dict), f"{where}: {author!r} is not a mapping"
        if "name" in author:  # an entity
            assert set(author) <= CFF_ENTITY_KEYS, f"{where}: {set(author) - CFF_ENTITY_KEYS}"
        else:
            assert set(author) <= CFF_PERSON_KEYS, f"{where}: {set(author) - CFF_PERSON_KEYS}"
            assert author.get("family-names"), f"{where}: a person needs family-names"
        assert all(isinstance(v, str) and v for v in author.values()), where


# ---------------------------------------------------------------------------------------------
# license, typing markers and project metadata


def test_license_is_the_unmodified_apache_2_text():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8").replace("\r\n", "\n")
    assert text.lstrip().startswith("Apache License\n")
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "APPENDIX: How to apply the Apache License to your work." in text
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == APACHE_2_SHA256


def test_pyproject_declares_the_license_and_ships_its_text():
    meta = _pyproject()
    project = meta["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    # PEP 639: a license expression excludes the deprecated "License ::" classifiers
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]
    # setuptools < 77 rejects a license expression: the build requirement must say so
    requires = meta["build-system"]["requires"]
    (setuptools_req,) = [r for r in requires if r.startswith("setuptools")]
    minimum = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools_req.replace(" ", ""))
    assert minimum and int(minimum.group(1)) >= 77, setuptools_req


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_is_marked_typed_and_ships_the_marker(package):
    marker = ROOT / package / "py.typed"
    assert marker.is_file()
    package_data = _pyproject()["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data.get(package, []) + package_data.get("*", [])


def test_typed_classifier():
    assert "Typing :: Typed" in _pyproject()["project"]["classifiers"]


def test_project_urls_are_the_papers_links_given_in_the_readme():
    urls = _pyproject()["project"]["urls"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert urls["Paper"] == PAPER_URL == _bibtex(readme, "article")["url"]
    assert urls["arXiv"] == ARXIV_URL and ARXIV_URL in readme
    for name, url in urls.items():
        assert re.fullmatch(r"https://[^\s<>]+", url), f"{name}: {url!r}"


# ---------------------------------------------------------------------------------------------
# CITATION.cff


def test_citation_cff_has_the_structure_of_cff_1_2_0():
    cff = _citation()
    assert isinstance(cff, dict)
    assert CFF_TOP_REQUIRED <= set(cff), CFF_TOP_REQUIRED - set(cff)
    assert set(cff) <= CFF_TOP_KEYS, set(cff) - CFF_TOP_KEYS
    assert cff["cff-version"] == "1.2.0"
    assert cff.get("type", "software") == "software"
    assert isinstance(cff["message"], str) and cff["message"].strip()
    _check_authors(cff["authors"], "authors")
    ref = cff["preferred-citation"]
    assert CFF_REFERENCE_REQUIRED <= set(ref), CFF_REFERENCE_REQUIRED - set(ref)
    assert set(ref) <= CFF_REFERENCE_KEYS, set(ref) - CFF_REFERENCE_KEYS
    _check_authors(ref["authors"], "preferred-citation.authors")
    for key in ("year", "volume", "start", "end"):
        assert isinstance(ref[key], int), f"preferred-citation.{key} must be an integer"
    for ident in ref.get("identifiers", []) + cff.get("identifiers", []):
        assert set(ident) <= {"type", "value", "description"} and ident["type"] in (
            CFF_IDENTIFIER_TYPES
        )
    for url in [cff.get("url"), ref.get("url")] + [
        i["value"] for i in ref.get("identifiers", []) if i["type"] == "url"
    ]:
        assert url is None or re.fullmatch(r"https?://.+", url), url


def test_citation_cff_describes_this_version_and_license():
    cff = _citation()
    assert str(cff["version"]) == expfam.__version__
    assert cff["license"] == _pyproject()["project"]["license"]


def test_citation_cff_cites_the_paper_as_the_readme_does():
    ref = _citation()["preferred-citation"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    bib = _bibtex(readme, "article")
    assert ref["type"] == "article"
    assert ref["title"] == _unbrace(bib["title"]) == "The Bayesian Learning Rule"
    assert ref["journal"] == bib["journal"]
    assert ref["year"] == int(bib["year"])
    assert ref["volume"] == int(bib["volume"])
    assert str(ref["issue"]) == bib["number"]
    assert f"{ref['start']}--{ref['end']}" == bib["pages"]
    assert ref["url"] == bib["url"] == PAPER_URL
    names = [f"{a['given-names']} {a['family-names']}" for a in ref["authors"]]
    assert names == [_unbrace(a) for a in bib["author"].split(" and ")]
    assert ARXIV_URL in [i["value"] for i in ref.get("identifiers", [])]


def test_citation_cff_names_the_software_as_the_readme_does():
    cff = _citation()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    misc = _bibtex(readme, "misc")
    assert cff["title"] == _unbrace(misc["title"])
    assert re.search(r"version (\S+)$", misc["note"]).group(1) == expfam.__version__


def test_changelog_records_the_current_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in text
    versions = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", text, flags=re.M)
    assert expfam.__version__ in versions


# ---------------------------------------------------------------------------------------------
# the built distributions


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """An sdist and, built from it, a wheel, from a copy of the package's sources (so the checkout
    gets no build/ or dist/ folder), with the installed setuptools (no download)."""
    pytest.importorskip("build")
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("needs setuptools >= 77 installed")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


def _sources() -> set[str]:
    """Every module of the three packages in the checkout, as paths relative to the root."""
    return {
        p.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if "__pycache__" not in p.parts
    }


def test_wheel_holds_every_module_the_license_and_the_markers(dists):
    wheel, _ = dists
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        license_text = zf.read(f"{dist_info}/licenses/LICENSE")
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert license_text == (ROOT / "LICENSE").read_bytes()
    assert {f"{package}/py.typed" for package in PACKAGES} <= names
    missing = _sources() - names
    assert not missing, f"modules left out of the wheel: {sorted(missing)}"
    assert f"Version: {expfam.__version__}" in metadata
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata
    assert f"Project-URL: Paper, {PAPER_URL}" in metadata
    assert f"Project-URL: arXiv, {ARXIV_URL}" in metadata
    # the console script points at a function the packages define
    target = re.search(r"^blr\s*=\s*(\S+)$", entry_points, flags=re.M).group(1)
    module, _, function = target.partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_sdist_holds_the_license_and_the_markers(dists):
    _, sdist = dists
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {"LICENSE", "pyproject.toml", "README.md"} <= names
    assert {f"{package}/py.typed" for package in PACKAGES} <= names
    assert not _sources() - names
