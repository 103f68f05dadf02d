"""log_prob, entropy, KL and moments against independent implementations: torch.distributions
(for every family that declares a twin) and scipy.stats (a table of twins for the built-in
families; a test checks that the table covers the registry)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special as sps
import scipy.stats as ss
import torch

import expfam
from tests.expfam.families import ALL, IDS
from tests.expfam.test_contract import nat_for, rel_err

TWINNED = [(i, f) for i, f in zip(IDS, ALL) if f.has_torch_twin]


@pytest.mark.parametrize("family", [f for _, f in TWINNED], ids=[i for i, _ in TWINNED])
def test_log_prob_entropy_kl_match_torch_distributions(family):
    p, q = nat_for(family, seed=1), nat_for(family, seed=2)
    tp, tq = family.to_torch(p), family.to_torch(q)
    x = family.sample(p, (6,), generator=torch.Generator().manual_seed(0))
    assert rel_err(family.log_prob(p, x), tp.log_prob(x)) <= 1e-10
    # H(p) = −E_p[log p] and KL(p‖q) = E_p[log p − log q] with the twin's own sampler and
    # log-densities (torch has no entropy or KL for some twins): z-tests, 5 standard errors
    # torch.distributions samplers take no generator: seed the global one inside fork_rng, so
    # the draw is the same whatever ran before and the caller's RNG state is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        xs = tp.sample((20_000,))
    neg_logp = -tp.log_prob(xs).double()
    se_h = neg_logp.std(0) / neg_logp.shape[0] ** 0.5
    assert ((family.entropy(p) - neg_logp.mean(0)).abs() <= 5 * se_h + 1e-12).all()
    ratio = (tp.log_prob(xs) - tq.log_prob(xs)).double()
    se = ratio.std(0) / ratio.shape[0] ** 0.5
    assert ((family.kl(p, q) - ratio.mean(0)).abs() <= 5 * se + 1e-12).all()


def _np(t):
    return t.detach().cpu().numpy()


def _gaussian_full(fam, nat, x):
    m, prec = fam.to_moments(nat)
    cov = np.linalg.inv(_np(prec))
    logp, ent = [], []
    for b in range(m.shape[0]):
        d = ss.multivariate_normal(_np(m[b]), cov[b])
        logp.append(d.logpdf(_np(x[:, b])))
        ent.append(d.entropy())
    return np.stack(logp, -1), np.array(ent)


def _gaussian_diag(fam, nat, x):
    m, prec = fam.to_moments(nat)
    d = ss.norm(_np(m), 1 / np.sqrt(_np(prec)))
    return d.logpdf(_np(x)).sum(-1), d.entropy().sum(-1)


def _fixed_cov(fam, nat, x):
    m = _np(fam.nat_to_mean(nat).mu1)
    cov = _np(fam.to_torch(nat).covariance_matrix[0])
    logp = np.stack([ss.multivariate_normal(m[b], cov).logpdf(_np(x[:, b])) for b in range(2)], -1)
    ent = np.array([ss.multivariate_normal(m[b], cov).entropy() for b in range(2)])
    return logp, ent


def _bernoulli(fam, nat, x):
    p = sps.expit(_np(fam.logits(nat)))
    x01 = _np(x) if fam.support == "01" else (_np(x) + 1) / 2
    return ss.bernoulli(p).logpmf(x01), ss.bernoulli(p).entropy()


def _categorical(fam, nat, x):
    probs = np.exp(_np(fam.log_probs(nat)))
    logp = np.stack([ss.multinomial(1, probs[b]).logpmf(_np(x[:, b])) for b in range(2)], -1)
    ent = np.array([ss.multinomial(1, probs[b]).entropy() for b in range(2)])
    return logp, ent


def _beta(fam, nat, x):
    d = ss.beta(_np(nat.lam1) + 1, _np(nat.lam2) + 1)
    return d.logpdf(_np(x)), d.entropy()


def _gamma(fam, nat, x):
    d = ss.gamma(_np(nat.lam1) + 1, scale=1 / -_np(nat.lam2))
    return d.logpdf(_np(x)), d.entropy()


def _lognormal(fam, nat, x):
    v = -0.5 / _np(nat.lam2)
    d = ss.lognorm(s=np.sqrt(v), scale=np.exp(_np(nat.lam1) * v))
    return d.logpdf(_np(x)), d.entropy()


def _dirichlet(fam, nat, x):
    alpha = _np(nat.lam1) + 1
    logp = np.stack([ss.dirichlet(alpha[b]).logpdf(_np(x[:, b]).T) for b in range(2)], -1)
    ent = np.array([ss.dirichlet(alpha[b]).entropy() for b in range(2)])
    return logp, ent


def _poisson(fam, nat, x):
    d = ss.poisson(np.exp(_np(nat.lam1)))
    return d.logpmf(_np(x)), d.entropy()


def _mixture(fam, nat, x):
    """Brute force: log π_z + log N(θ | m_z, Σ_z) from scipy, component by component."""
    w = np.exp(_np(fam.log_weights(nat)))
    comp = fam.component
    m, prec = comp.to_moments(comp.nat_type(nat.lam1, nat.lam2))
    m, prec = _np(m), _np(prec)
    if prec.ndim == m.ndim:  # diagonal
        prec = np.einsum("...i,ij->...ij", prec, np.eye(m.shape[-1]))
    z = _np(x.z).argmax(-1)
    theta = _np(x.theta)
    logp = np.empty(z.shape)
    for s, b in np.ndindex(*z.shape):
        k = z[s, b]
        d = ss.multivariate_normal(m[b, k], np.linalg.inv(prec[b, k]))
        logp[s, b] = np.log(w[b, k]) + d.logpdf(theta[s, b])
    ent = np.array(
        [
            -(w[b] * np.log(w[b])).sum()
            + sum(
                w[b, k] * ss.multivariate_normal(m[b, k], np.linalg.inv(prec[b, k])).entropy()
                for k in range(w.shape[-1])
            )
            for b in range(w.shape[0])
        ]
    )
    return logp, ent


def _product(fam, nat, x):
    """Σ over the blocks of each block's scipy twin on its slice of θ (summed over the block's
    own batch dimensions: the independent scalars of a Bernoulli, Gamma, Poisson block)."""
    logp, ent = 0.0, 0.0
    for block, part, point in zip(fam.families, fam.split(nat), fam.split_sample(x)):
        twin = SCIPY_TWINS[BLOCK_TWINS.get(block.name, block.name)]
        lp, en = twin(block, part, point)
        logp = logp + np.reshape(lp, (*x.shape[:-1], -1)).sum(-1)
        ent = ent + np.reshape(en, (*x.shape[1:-1], -1)).sum(-1)
    return logp, ent


BLOCK_TWINS = {"auto_lognormal": "generic[lognormal]", "auto_gamma": "generic[gamma]"}
SCIPY_TWINS = {
    "gaussian_full": _gaussian_full,
    "gaussian_diag": _gaussian_diag,
    "gaussian_fixed_cov": _fixed_cov,
    "gaussian_fixed_cov[matrix]": _fixed_cov,
    "bernoulli": _bernoulli,
    "bernoulli_pm1": _bernoulli,
    "categorical": _categorical,
    "beta": _beta,
    "gamma": _gamma,
    "dirichlet": _dirichlet,
    "poisson": _poisson,
    "mixture_full": _mixture,
    "mixture_diag": _mixture,
    "generic[gamma]": _gamma,
    "generic[lognormal]": _lognormal,
    "product[full+diag]": _product,
    "product[diag+pm1+gamma]": _product,
    "product[lognormal+dirichlet+poisson+fixed]": _product,
}


def test_scipy_table_covers_every_registered_family():
    assert set(IDS) == set(SCIPY_TWINS)


@pytest.mark.parametrize("name", IDS)
def test_log_prob_and_entropy_match_scipy(name):
    family = dict(zip(IDS, ALL))[name]
    nat = nat_for(family, batch=(2,), dim=3)
    x = family.sample(nat, (5,), generator=torch.Generator().manual_seed(4))
    logp, ent = SCIPY_TWINS[name](family, nat, x)
    got_logp, got_ent = family.log_prob(nat, x), family.entropy(nat)
    assert got_logp.shape == logp.shape and got_ent.shape == np.shape(ent)
    assert rel_err(got_logp, torch.from_numpy(np.asarray(logp))) <= 1e-10
    assert rel_err(got_ent, torch.from_numpy(np.asarray(ent, dtype=np.float64))) <= 1e-10


def test_poisson_entropy_at_large_rates_matches_asymptotic_series():
    """scipy's summation does not converge at r = 1e4; the asymptotic series does (error O(r⁻⁴))."""
    r = torch.tensor([2e3, 1e4], dtype=torch.float64)
    got = expfam.Poisson().entropy(expfam.PoissonNat(torch.log(r)))
    ref = (
        0.5 * torch.log(2 * math.pi * math.e * r)
        - 1 / (12 * r)
        - 1 / (24 * r**2)
        - 19 / (360 * r**3)
    )
    assert rel_err(got, ref) <= 1e-10
