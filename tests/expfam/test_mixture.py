"""Mixtures of Gaussians: the marginal against brute force and torch, responsibilities, and the
joint family's parameter maps (Lin, Khan & Schmidt 2019; Khan & Rue 2023, Table 1
rows 3 and 17)."""

from __future__ import annotations

import math

import pytest
import torch

from expfam import DiagGaussian, FullGaussian, Mixture, MixtureMean, MixtureNat, MixturePoint
from tests.expfam.test_contract import nat_for, rel_err

FAMILIES = [Mixture(FullGaussian()), Mixture(DiagGaussian())]
IDS = ["full", "diag"]


def _moments(fam, nat):
    comp = fam.component
    m, prec = comp.to_moments(comp.nat_type(nat.lam1, nat.lam2))
    if prec.ndim == m.ndim:
        prec = torch.diag_embed(prec)
    return m, prec


@pytest.mark.parametrize("fam", FAMILIES, ids=IDS)
def test_marginal_log_prob_is_the_brute_force_sum(fam):
    nat = nat_for(fam, batch=(2,), dim=3)
    theta = torch.randn(7, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = torch.exp(fam.log_weights(nat))
    m, prec = _moments(fam, nat)
    total = torch.zeros(7, 2, dtype=torch.float64)
    for k in range(w.shape[-1]):  # Σ_k π_k N(θ | m_k, S_k⁻¹), one term at a time
        r = theta - m[:, k]
        quad = torch.einsum("sbi,bij,sbj->sb", r, prec[:, k], r)
        logdet = torch.logdet(prec[:, k])
        dens = torch.exp(-0.5 * quad + 0.5 * logdet - 1.5 * math.log(2 * math.pi))
        total = total + w[:, k] * dens
    assert rel_err(fam.marginal_log_prob(nat, theta), torch.log(total)) <= 1e-12


@pytest.mark.parametrize("fam", FAMILIES, ids=IDS)
def test_marginal_matches_torch_mixture_same_family(fam):
    nat = nat_for(fam, batch=(2,), dim=3)
    m, prec = _moments(fam, nat)
    twin = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=fam.log_weights(nat)),
        torch.distributions.MultivariateNormal(m, precision_matrix=prec),
    )
    theta = twin.sample((5,))
    assert rel_err(fam.marginal_log_prob(nat, theta), twin.log_prob(theta)) <= 1e-12


@pytest.mark.parametrize("fam", FAMILIES, ids=IDS)
def test_responsibilities_sum_to_one_and_are_bayes_rule(fam):
    nat = nat_for(fam, batch=(2,), dim=3, extreme=True)
    theta = torch.randn(4, 2, 3, dtype=torch.float64)
    r = fam.responsibilities(nat, theta)
    torch.testing.assert_close(r.sum(-1), torch.ones(4, 2, dtype=torch.float64), rtol=0, atol=1e-14)
    assert (r >= 0).all()
    z = torch.eye(3, dtype=torch.float64)
    for k in range(3):  # r_k = q(θ, z=k) / q(θ)
        joint = fam.log_prob(nat, MixturePoint(theta, z[k].expand(4, 2, 3)))
        ref = torch.exp(joint - fam.marginal_log_prob(nat, theta))
        torch.testing.assert_close(r[..., k], ref, rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("fam", FAMILIES, ids=IDS)
def test_from_components_and_weights_roundtrip(fam):
    nat = nat_for(fam, batch=(2,), dim=2)
    w = torch.exp(fam.log_weights(nat))
    rebuilt = fam.from_components(w, fam.components(nat))
    assert rel_err(rebuilt, nat) <= 1e-12
    mean = fam.nat_to_mean(nat)
    assert isinstance(mean, MixtureMean)
    torch.testing.assert_close(mean.mu0, w[..., :-1])


def test_rsample_components_is_reparameterized_per_component():
    fam = Mixture(FullGaussian())
    nat = nat_for(fam, batch=(), dim=2)
    leaf = MixtureNat(*(t.detach().requires_grad_() for t in nat))
    draws = fam.rsample_components(leaf, (20_000,), generator=torch.Generator().manual_seed(1))
    assert draws.shape == (20_000, 3, 2)
    draws.mean(0).sum().backward()
    assert leaf.lam1.grad.abs().sum() > 0 and leaf.c.grad is None
    m, _ = _moments(fam, nat)
    se = draws.std(0) / 20_000**0.5
    assert ((draws.mean(0) - m).abs() <= 5 * se).all()


def test_sample_frequencies_match_weights():
    fam = Mixture(DiagGaussian())
    nat = nat_for(fam, batch=(), dim=2)
    x = fam.sample(nat, (50_000,), generator=torch.Generator().manual_seed(2))
    w = torch.exp(fam.log_weights(nat))
    freq = x.z.mean(0)
    se = (w * (1 - w) / 50_000).sqrt()
    assert ((freq - w).abs() <= 5 * se).all()


def test_component_type_and_counts_are_checked():
    with pytest.raises(TypeError, match="component must be a FullGaussian or DiagGaussian"):
        Mixture("gaussian")
    fam = Mixture(DiagGaussian())
    nat = nat_for(fam, batch=(), dim=2)
    with pytest.raises(ValueError, match=r"nat\.c must have K − 1 entries"):
        fam.entropy(MixtureNat(nat.c[:1], nat.lam1, nat.lam2))
    with pytest.raises(TypeError, match="MixturePoint"):
        fam.log_prob(nat, torch.zeros(2, dtype=torch.float64))
