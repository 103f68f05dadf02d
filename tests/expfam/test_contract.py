"""The family contract, one parametrized suite over every registered family.

Oracles: the generic autograd implementations of ``expfam.generic`` (μ = ∇A, F = ∇²A, Bregman
KL, Legendre entropy, ∇_μ(−H) = F⁻¹∇_λ(−H)) and Monte Carlo moments (E[T] = μ, Cov[T] = F).
Capabilities (``has_rsample``) and tolerances (``family.tolerances``) come from the family
itself; there are no per-family branches here.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from expfam import ExpFamily, generic
from expfam.tree import flatten, inner, tmap
from tests.expfam.families import ALL, IDS

DTYPES = [torch.float64, torch.float32]
# (dtype, extreme): float64 and float32 on moderate parameters, float64 on the extreme ranges
CASES = [(torch.float64, False), (torch.float32, False), (torch.float64, True)]
CASE_IDS = ["f64", "f32", "f64-extreme"]


def rel_err(a: tuple | torch.Tensor, b: tuple | torch.Tensor) -> float:
    """max over fields of max|a − b| / max|b| (field-wise relative error in the max norm)."""
    if isinstance(a, torch.Tensor):
        a, b = (a,), (b,)
    worst = 0.0
    for x, y in zip(a, b):
        x, y = x.double(), y.double()
        scale = max(y.abs().max().item(), 1e-300)
        worst = max(worst, (x - y).abs().max().item() / scale)
    return worst


def nat_for(family: ExpFamily, dtype=torch.float64, batch=(2,), dim=3, seed=0, extreme=False):
    g = torch.Generator().manual_seed(seed)
    nat64 = family.example_nat(batch, dim, extreme=extreme, dtype=torch.float64, generator=g)
    return tmap(lambda t: t.to(dtype), nat64)


def tol(family: ExpFamily, dtype: torch.dtype) -> float:
    return family.tolerances.closed64 if dtype == torch.float64 else family.tolerances.closed32


def ref64(fn, family, nat):
    """Evaluate an oracle in float64 (the reference for both float64 and float32 results)."""
    return fn(family, tmap(lambda t: t.double(), nat))


pytestmark = pytest.mark.parametrize("family", ALL, ids=IDS)


@pytest.mark.parametrize("dtype,extreme", CASES, ids=CASE_IDS)
def test_mean_closed_form_matches_autograd(family, dtype, extreme):
    nat = nat_for(family, dtype, extreme=extreme)
    mean = family.nat_to_mean(nat)
    assert all(m.dtype == dtype for m in mean)
    assert rel_err(mean, ref64(generic.mean_autograd, family, nat)) <= tol(family, dtype)


@pytest.mark.parametrize("dtype,extreme", CASES, ids=CASE_IDS)
def test_entropy_closed_form_matches_legendre(family, dtype, extreme):
    nat = nat_for(family, dtype, extreme=extreme)
    h = family.entropy(nat)
    assert h.dtype == dtype and h.shape == family.batch_shape(nat)
    nat64 = tmap(torch.Tensor.double, nat)
    ref = generic.entropy_legendre(family, nat64)
    if not extreme:
        assert rel_err(h, ref) <= tol(family, dtype)
    else:  # the oracle A − <λ,μ> − E[log h] cancels large terms: scale the error by them
        terms = (
            family.log_partition(nat64).abs()
            + inner(
                tmap(torch.abs, nat64),
                tmap(torch.abs, family.nat_to_mean(nat64)),
                family.event_ndims,
            )
            + family.expected_log_base_measure(nat64).abs()
        )
        assert ((h - ref).abs() <= tol(family, dtype) * terms).all()


@pytest.mark.parametrize("dtype,extreme", CASES, ids=CASE_IDS)
def test_kl_closed_form_matches_bregman(family, dtype, extreme):
    p = nat_for(family, dtype, seed=1, extreme=extreme)
    q = nat_for(family, dtype, seed=2, extreme=extreme)
    kl = family.kl(p, q)
    p64, q64 = tmap(torch.Tensor.double, p), tmap(torch.Tensor.double, q)
    ref = generic.kl_bregman(family, p64, q64)
    assert kl.dtype == dtype and kl.shape == family.batch_shape(p)
    assert (ref > 0).all()
    if not extreme:
        assert rel_err(kl, ref) <= tol(family, dtype)
    else:  # Bregman: A(λq) − A(λp) − <λq − λp, μp> cancels large terms
        # (Σ|λ_i μ_i| bounds the terms that A itself cancels, e.g. c_k + A_k in a mixture)
        def mag(a, b):
            return inner(tmap(torch.abs, a), tmap(torch.abs, b), family.event_ndims)

        mu_p, mu_q = family.nat_to_mean(p64), family.nat_to_mean(q64)
        terms = (
            family.log_partition(q64).abs()
            + family.log_partition(p64).abs()
            + mag(tmap(torch.sub, q64, p64), mu_p)
            + mag(p64, mu_p)
            + mag(q64, mu_q)
        )
        # one digit of slack: at precisions of 1e6 the float64 Bregman oracle itself is off by
        # ~2e-10 relative (checked against 50-digit mpmath, where the closed form is exact)
        assert ((kl - ref).abs() <= 10 * tol(family, dtype) * terms).all()
    assert family.kl(p, p).abs().max() <= 10 * tol(family, dtype) * max(1.0, ref.abs().max())


def test_neg_entropy_grad_matches_fisher_solve(family):
    nat = nat_for(family, batch=(2,), dim=2)
    got = family.neg_entropy_grad(nat)
    ref = generic.neg_entropy_grad_fisher(family, nat)
    scale = max(max(x.abs().max().item() for x in nat), 1.0)
    # absolute in units of |λ| (the fixed-covariance answer is exactly 0); the oracle solves a
    # Fisher system by pseudo-inverse, whose conditioning costs up to one digit
    for x, y in zip(got, ref):
        assert (x - y).abs().max().item() <= 10 * family.tolerances.closed64 * scale


def test_log_prob_matches_exponential_family_formula(family):
    nat = nat_for(family)
    x = family.sample(nat, (4,), generator=torch.Generator().manual_seed(3))
    got = family.log_prob(nat, x)
    ref = (
        inner(nat, family.suff_stats(x), family.event_ndims)
        - family.log_partition(nat)
        + family.log_base_measure(x)
    )
    assert got.shape == (4, *family.batch_shape(nat))
    assert rel_err(got, ref) <= 1e-9


def test_fisher_vector_product_matches_dense_fisher(family):
    nat = nat_for(family, batch=(2,), dim=2)
    v = nat_for(family, batch=(2,), dim=2, seed=5)
    fv = flatten(generic.fisher_vector_product(family, nat, v), family.event_ndims)
    dense = generic.fisher(family, nat) @ flatten(v, family.event_ndims).unsqueeze(-1)
    assert rel_err(fv, dense.squeeze(-1)) <= 1e-10


def _mc_stats(family, nat, n, seed):
    x = family.sample(nat, (n,), generator=torch.Generator().manual_seed(seed))
    return flatten(family.suff_stats(x), family.event_ndims).double()  # (n, *batch, P)


def test_sample_moments_match_mean_parameters(family):
    """E[T(θ)] = μ: z-test with 5 standard errors per coordinate (fixed seed)."""
    nat = nat_for(family, batch=(2,), dim=2)
    t = _mc_stats(family, nat, 40_000, seed=11)
    mu = flatten(family.nat_to_mean(nat), family.event_ndims)
    se = t.std(0) / t.shape[0] ** 0.5
    assert ((t.mean(0) - mu).abs() <= 5 * se + 1e-12).all()


def test_fisher_equals_covariance_of_suff_stats(family):
    """F(λ) = ∇²A = Cov_q[T(θ)]: every entry within 5 standard errors (fixed seed)."""
    nat = nat_for(family, batch=(1,), dim=2)
    t = _mc_stats(family, nat, 40_000, seed=12)[:, 0]  # (n, P)
    f = generic.fisher(family, nat)[0]
    c = t - t.mean(0)
    prod = c.unsqueeze(-1) * c.unsqueeze(-2)  # (n, P, P)
    cov, se = prod.mean(0), prod.std(0) / prod.shape[0] ** 0.5
    assert ((cov - f).abs() <= 5 * se + 1e-9 * f.abs().max()).all()


def test_batch_shapes(family):
    nat = nat_for(family, batch=(2, 3))
    bs = family.batch_shape(nat)  # scalar-event families append ``dim`` as a batch dimension
    assert bs[:2] == (2, 3)
    assert family.log_partition(nat).shape == bs
    assert family.entropy(nat).shape == bs
    assert family.expected_log_base_measure(nat).shape == bs
    x = family.sample(nat, (5,))
    assert family.log_prob(nat, x).shape == (5, *bs)
    for m, k in zip(family.nat_to_mean(nat), family.event_ndims):
        assert m.shape[: m.ndim - k] == bs


def test_rsample_is_differentiable_and_unbiased_for_the_mean(family):
    """Where reparameterized: ∂/∂λ E[<v, T(θ)>] by rsample ≈ F(λ)v (= ∂/∂λ <v, μ(λ)>)."""
    nat = nat_for(family, batch=(1,), dim=2)
    if not family.has_rsample:
        with pytest.raises(NotImplementedError, match="reparameterized"):
            family.rsample(nat)
        return
    v = tmap(lambda t: 0.1 * t, nat_for(family, batch=(1,), dim=2, seed=7))
    leaf = tmap(lambda t: t.detach().requires_grad_(), nat)
    x = family.rsample(leaf, (100_000,), generator=torch.Generator().manual_seed(13))
    obj = inner(v, family.suff_stats(x), family.event_ndims).mean(0).sum()
    grads = torch.autograd.grad(obj, tuple(leaf), allow_unused=True)
    grads = tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaf))
    ref = generic.fisher_vector_product(family, nat, v)
    # a seeded Monte Carlo estimate from 1e5 draws: 5% of the scale of F v
    assert rel_err(grads, ref) <= 0.05


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    dim=st.integers(1, 64),
    batch=st.sampled_from([(), (1,), (3,), (2, 2)]),
)
def test_roundtrip_nat_mean_nat(family, seed, dim, batch):
    """λ → μ → λ on moderately conditioned parameters, dimensions 1…64."""
    dim = max(dim, family.min_dim)
    nat = nat_for(family, batch=batch, dim=dim, seed=seed)
    back = family.mean_to_nat(family.nat_to_mean(nat))
    assert rel_err(back, nat) <= family.tolerances.roundtrip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    dim=st.integers(1, 64),
    batch=st.sampled_from([(), (3,), (2, 2)]),
)
def test_roundtrip_extreme_parameters(family, seed, dim, batch):
    """On the extreme ranges (logits ±36, precisions 1e-6…1e6, concentrations 1e-3…1e4, ...):
    μ → λ → μ reproduces μ (backward stability: exact where the μ coordinates can represent λ,
    which near the boundary of the mean domain they cannot to full relative precision), and
    every quantity stays finite."""
    dim = max(dim, family.min_dim)
    nat = nat_for(family, batch=batch, dim=dim, seed=seed, extreme=True)
    mean = family.nat_to_mean(nat)
    back = family.mean_to_nat(mean)
    assert all(torch.isfinite(t).all() for t in back)
    assert rel_err(family.nat_to_mean(back), mean) <= 1e-8
    for value in (family.entropy(nat), family.log_partition(nat), family.kl(nat, back)):
        assert torch.isfinite(value).all()
