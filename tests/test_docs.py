"""The code in docs/adding-a-family.md runs as written, and the family it defines passes the
contract's closed-form checks."""

from __future__ import annotations

import pathlib
import re

import numpy as np
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


# ---------------------------------------------------------------- concepts.md: ∇_μ(−H)
CONCEPTS = DOC.parent / "concepts.md"
F64 = torch.float64


def documented_entropy_sign() -> float:
    """The sign s in docs/concepts.md's ∇_μ(−H) = λ s ∇_μE_q[log h], read from the page."""
    formula = re.search(
        r"\\nabla_\\mu\(-\\mathcal\{H\}\)\s*=\s*\\lambda\s*([+-])\s*"
        r"\\nabla_\\mu\s*\\mathbb\{E\}_q\[\\log h\]",
        CONCEPTS.read_text(encoding="utf-8"),
    )
    assert formula, "docs/concepts.md states ∇_μ(−H) = λ ± ∇_μE_q[log h]"
    return 1.0 if formula.group(1) == "+" else -1.0


def _lognormal(mu):
    """λ and E_q[log h] of LogNormal(m, v) written from μ = (E log θ, E (log θ)²) by hand:
    h(θ) = 1/θ, E_q[log h] = −E[log θ] by 40-point Gauss–Hermite quadrature in log θ."""
    from tests.expfam.families import AutoLogNormal, LogNatT

    m, v = mu[0], mu[1] - mu[0] ** 2
    z, w = (torch.as_tensor(a, dtype=F64) for a in np.polynomial.hermite_e.hermegauss(40))
    e_log_h = (w * -(m + v.sqrt() * z)).sum() / w.sum()
    return AutoLogNormal(), LogNatT(m / v, -0.5 / v), e_log_h


def _poisson(mu):
    """Poisson(r), μ = r: λ = log r, h(k) = 1/k!, E_q[log h] = −Σ_k p_r(k) log k! (k ≤ 150)."""
    k = torch.arange(151, dtype=F64)
    log_p = -mu[0] + k * torch.log(mu[0]) - torch.lgamma(k + 1)
    return (
        expfam.Poisson(),
        expfam.Poisson().nat_type(torch.log(mu)),
        -(log_p.exp() * torch.lgamma(k + 1)).sum(),
    )


_SIGMA = torch.tensor([[2.0, 0.3], [0.3, 0.5]], dtype=F64)


def _fixed_cov(mu):
    """N(m, Σ) with Σ fixed, μ = m: λ = Σ⁻¹m, log h(θ) = −½θᵀΣ⁻¹θ + const, so
    E_q[log h] = −½(mᵀΣ⁻¹m + d) + const."""
    fam = expfam.FixedCovGaussian(cov=_SIGMA)
    prec_m = torch.linalg.solve(_SIGMA, mu)
    return fam, fam.nat_type(prec_m), -0.5 * (mu @ prec_m + 2)


@pytest.mark.parametrize(
    ("build", "mu"),
    [
        (_lognormal, [0.3, 0.3**2 + 0.4]),
        (_poisson, [3.5]),
        (_fixed_cov, [0.7, -1.2]),
    ],
    ids=["lognormal", "poisson", "fixed_cov_gaussian"],
)
def test_concepts_entropy_gradient_formula_is_what_the_code_computes(build, mu):
    """For families with a non-constant base measure h, λ s ∇_μE_q[log h] with the sign s as
    docs/concepts.md writes it, ∇_μ by autograd of E_q[log h] written by hand as a function of
    μ, equals ``family.neg_entropy_grad(λ)``; the ∇_μE_q[log h] term is far from 0 in each case,
    so the other sign fails."""
    sign = documented_entropy_sign()
    mu = torch.tensor(mu, dtype=F64, requires_grad=True)
    family, nat, e_log_h = build(mu)
    (grad,) = torch.autograd.grad(e_log_h, mu)
    nat = type(nat)(*(t.detach() for t in nat))
    want = torch.cat([t.reshape(-1) for t in nat]) + sign * grad
    got = torch.cat([t.reshape(-1) for t in family.neg_entropy_grad(nat)])
    assert grad.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_citation_is_the_same_in_the_readme_and_the_docs_and_names_this_version():
    """README.md and docs/citation.md give the same BibTeX entries (the paper: JMLR 24(281),
    pages 1–46, 2023; the library with ``expfam.__version__``), and the docs' home page links
    the paper and the citation page."""
    readme = (DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    page = (DOC.parent / "citation.md").read_text(encoding="utf-8")
    entries = [re.findall(r"```bibtex\n(.*?)```", t, flags=re.S) for t in (readme, page)]
    assert entries[0] == entries[1] and len(entries[0]) == 2
    paper, library = entries[0]
    for field in ("volume  = {24}", "number  = {281}", "pages   = {1--46}", "year    = {2023}"):
        assert field in paper
    assert "https://jmlr.org/papers/v24/22-0291.html" in paper
    assert f"version {expfam.__version__}" in library
    index = (DOC.parent / "index.md").read_text(encoding="utf-8")
    assert "https://jmlr.org/papers/v24/22-0291.html" in index and "(citation.md)" in index
    assert "arxiv.org/abs/2107.04562" in index and "arxiv.org/abs/2107.04562" in readme
