"""Vadam: the kernel against the (m, S)-form BLR with square-root scaling and bias correction as
a ρ_t schedule, and the optimizer against a transcription of the paper's algorithm."""

from __future__ import annotations

import math

import torch

import blr
import expfam
from blr.kernels.diag_gaussian import vadam_step_
from blr.optim import Vadam

f64 = torch.float64


def test_vadam_kernel_is_the_sqrt_scaled_gaussian_blr_with_a_bias_corrected_rate():
    """β₁ = 0: ŝ_t = s_t/(1 − β₂^t) follows the BLR precision recursion with
    ρ_t = (1 − β₂)/(1 − β₂^t), and the mean step is gaussian_step with sqrt_scaling and damping
    δ/N on ĝ_total = ĝ + (δ/N)m."""
    gen = torch.Generator().manual_seed(0)
    d, ess, prior, lr, b2 = 6, 50.0, 2.0, 0.05, 0.9
    delta = prior / ess
    mean, exp_avg, exp_avg_sq = (
        torch.randn(d, dtype=f64, generator=gen),
        torch.zeros(d, dtype=f64),
        torch.zeros(d, dtype=f64),
    )
    fam = expfam.DiagGaussian()
    nat = fam.from_moments(mean.clone(), torch.ones(d, dtype=f64))  # s_0 is irrelevant: ρ_1 = 1
    sched = blr.schedules.bias_corrected(b2)
    for t in range(1, 8):
        g = torch.randn(d, dtype=f64, generator=gen)
        m = fam.location(nat)
        grad = fam.mean_grad_from_gh(nat, g + delta * m, g * g)
        opts = blr.GaussianOptions(lr=lr, sqrt_scaling=True, damping=delta)
        nat = blr.gaussian_step(fam, nat, grad, rho=sched(t), options=opts)
        vadam_step_(
            mean,
            exp_avg,
            exp_avg_sq,
            g.clone(),
            lr=lr,
            beta1=0.0,
            beta2=b2,
            prior_prec=prior,
            ess=ess,
            step=t,
        )
        m_want, s_want = fam.to_moments(nat)
        torch.testing.assert_close(mean, m_want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(exp_avg_sq / (1 - b2**t), s_want, rtol=1e-12, atol=1e-12)


def test_vadam_optimizer_equals_the_papers_algorithm_with_the_same_noise():
    """Khan et al. (2018), Vadam: θ = μ + σε, σ = 1/√(Ns + λ); m ← β₁m + (1 − β₁)(g + λμ/N);
    s ← β₂s + (1 − β₂)g²; μ ← μ − α m̂/(√ŝ + λ/N)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, dtype=f64, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=f64)
    n, lam, lr, (b1, b2), s0 = 32, 3.0, 0.02, (0.9, 0.99), 0.5
    w = torch.nn.Parameter(torch.zeros(4, dtype=f64))
    opt = Vadam([w], lr=lr, ess=n, prior_prec=lam, betas=(b1, b2), prec_init=s0, seed=7)
    ref_gen = torch.Generator().manual_seed(7)
    mu, m, s = torch.zeros(4, dtype=f64), torch.zeros(4, dtype=f64), torch.full((4,), s0, dtype=f64)
    for t in range(1, 21):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            ((x @ w - y) ** 2).mean().backward()
        opt.step()
        eps = torch.randn(4, dtype=f64, generator=ref_gen)
        theta = mu + eps / torch.sqrt(n * s + lam)
        g = 2 * x.T @ (x @ theta - y) / 32
        m = b1 * m + (1 - b1) * (g + lam * mu / n)
        s = b2 * s + (1 - b2) * g * g
        mu = mu - lr * (m / (1 - b1**t)) / (torch.sqrt(s / (1 - b2**t)) + lam / n)
        torch.testing.assert_close(w.detach(), mu, rtol=1e-10, atol=1e-12)
    assert math.isfinite(float(w.detach().sum()))
