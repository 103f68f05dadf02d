"""Bernoulli at saturated logits, where λ must stay the source of truth."""

from __future__ import annotations

import pytest
import torch

from expfam import Bernoulli, BernoulliMean, BernoulliNat

f64 = torch.float64


def exact_entropy(logit: float) -> float:
    """H at a logit, from mpmath-free exact algebra: H = softplus(−|ℓ|) + |ℓ|σ(−|ℓ|),
    evaluated with Python floats via log1p/exp (independent of torch)."""
    import math

    a = abs(logit)
    e = math.exp(-a)
    return math.log1p(e) + a * e / (1 + e)


@pytest.mark.parametrize("support", ["01", "pm1"])
def test_entropy_is_finite_and_exact_at_logits_100_minus100_5(support):
    fam = Bernoulli(support)
    logits = torch.tensor([100.0, -100.0, 5.0], dtype=f64)
    h = fam.entropy(fam.from_logits(logits))
    ref = torch.tensor([exact_entropy(v) for v in logits.tolist()], dtype=f64)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h, ref, rtol=1e-14, atol=0)
    # the generic exponential-family entropy of torch.distributions is NaN here
    twin = torch.distributions.Bernoulli(logits=logits)
    nan = torch.distributions.ExponentialFamily.entropy(twin)
    assert torch.isnan(nan).any()


@pytest.mark.parametrize("support", ["01", "pm1"])
def test_kl_and_log_prob_exact_when_saturated(support):
    fam = Bernoulli(support)
    p = fam.from_logits(torch.tensor([50.0, -50.0, 100.0], dtype=f64))
    q = fam.from_logits(torch.tensor([49.0, -51.0, 0.0], dtype=f64))
    kl = fam.kl(p, q)
    # KL = Σ_x p(x) log(p(x)/q(x)) ≈ log σ(ℓp) − log σ(ℓq) + (1−p)(ℓq − ℓp) to first order
    assert torch.isfinite(kl).all() and (kl >= 0).all()
    assert kl[2].item() == pytest.approx(torch.nn.functional.softplus(torch.tensor(0.0)).item())
    lo = 0.0 if support == "01" else -1.0
    x = torch.tensor([1.0, lo, lo], dtype=f64)
    lp = fam.log_prob(p, x)
    torch.testing.assert_close(
        lp, torch.tensor([-1.9287e-22, -1.9287e-22, -100.0], dtype=f64), rtol=1e-4, atol=0
    )


def test_mean_at_logit_50_is_at_the_float64_boundary_and_mean_to_nat_says_so():
    """σ(50) rounds to 1.0 in float64: μ cannot represent that λ, and μ → λ refuses it by name,
    while logit −50 (μ = 1.9e-22) round-trips exactly."""
    fam = Bernoulli()
    nat = BernoulliNat(torch.tensor([-50.0, 50.0], dtype=f64))
    mean = fam.nat_to_mean(nat)
    assert mean.mu1[1] == 1.0
    back = fam.mean_to_nat(BernoulliMean(mean.mu1[:1]))
    torch.testing.assert_close(back.lam1, nat.lam1[:1], rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match=r"mean\.mu1 must lie in the open interval \(0, 1\)"):
        fam.mean_to_nat(mean)


def test_pm1_is_the_01_family_rescaled():
    """θ ∈ {−1, +1} with λ = ½ logit: μ = tanh λ = 2p − 1 and equal entropies."""
    logits = torch.linspace(-8, 8, 9, dtype=f64)
    b01, bpm = Bernoulli("01"), Bernoulli("pm1")
    p = b01.nat_to_mean(b01.from_logits(logits)).mu1
    mu = bpm.nat_to_mean(bpm.from_logits(logits)).mu1
    torch.testing.assert_close(mu, 2 * p - 1)
    torch.testing.assert_close(
        bpm.entropy(bpm.from_logits(logits)), b01.entropy(b01.from_logits(logits))
    )
    torch.testing.assert_close(bpm.from_logits(logits).lam1, 0.5 * logits)


def test_support_argument_is_checked():
    with pytest.raises(ValueError, match="support"):
        Bernoulli("pm")
    with pytest.raises(ValueError, match=r"x must take values in \{-1, 1\}"):
        Bernoulli("pm1").log_prob(BernoulliNat(torch.zeros(2)), torch.tensor([0.0, 1.0]))
