"""The code in docs/adding-a-family.md runs as written, and the family it defines passes the
contract's closed-form checks."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

import expfam
from expfam import generic
from tests.expfam.test_contract import nat_for, rel_err

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "adding-a-family.md"


@pytest.fixture()
def exponential():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    namespace: dict = {"__name__": "adding_a_family_doc"}
    exec(compile(blocks[-1], str(DOC), "exec"), namespace)
    yield namespace["family"]
    expfam.FAMILIES.pop("exponential", None)


def test_documented_family_registers_and_passes_the_contract(exponential):
    fam = exponential
    assert expfam.FAMILIES["exponential"] is fam
    nat = nat_for(fam, batch=(2,), dim=3)
    assert rel_err(fam.nat_to_mean(nat), generic.mean_autograd(fam, nat)) <= 1e-12
    assert rel_err(fam.entropy(nat), generic.entropy_legendre(fam, nat)) <= 1e-12
    q = nat_for(fam, batch=(2,), dim=3, seed=1)
    assert rel_err(fam.kl(nat, q), generic.kl_bregman(fam, nat, q)) <= 1e-12
    assert rel_err(fam.mean_to_nat(fam.nat_to_mean(nat)), nat) <= 1e-12
    twin = fam.to_torch(nat)
    x = fam.sample(nat, (4,))
    assert rel_err(fam.log_prob(nat, x), twin.log_prob(x)) <= 1e-12
    assert rel_err(fam.entropy(nat), twin.entropy()) <= 1e-12
    with pytest.raises(ValueError, match=r"nat\.lam1 must be < 0"):
        fam.entropy(type(nat)(torch.ones(1, dtype=torch.float64)))


def test_readme_quickstart_runs_as_written(capsys):
    readme = DOC.parents[1] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)
    assert blocks, "README has a python quickstart"
    for block in blocks:
        exec(compile(block, str(readme), "exec"), {"__name__": "readme"})
    assert "tensor(" in capsys.readouterr().out


def test_laplace_guide_runs_as_written(capsys):
    doc = DOC.parent / "laplace.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert blocks, "docs/laplace.md has a python example"
    for block in blocks:
        exec(compile(block, str(doc), "exec"), {"__name__": "laplace_doc"})
    assert "tensor" in capsys.readouterr().out


def test_site_home_page_code_runs_as_written(capsys):
    doc = DOC.parent / "index.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert blocks, "docs/index.md has python examples"
    namespace: dict = {"__name__": "index_doc"}
    for block in blocks:
        exec(compile(block, str(doc), "exec"), namespace)
