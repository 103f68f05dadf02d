r"""Conjugate Bayes is the BLR at ρ = 1 with exact expectations: one step lands on the posterior.

**Family.** Any minimal exponential family q(θ) ∝ h(θ)exp(<λ, T(θ)>) whose sufficient statistics
also carry the likelihood: every per-example loss is linear in T, ℓ_i(θ) = −<λ̃_i, T(θ)> + c_i,
and the prior is in the family, −log p₀(θ) = −<λ₀, T(θ)> − log h(θ) + const. Here Beta
(T = (log θ, log(1−θ)), λ = (α−1, β−1)), Gamma (T = (log θ, θ), λ = (a−1, −b)) and the
full Gaussian (T = (θ, θθᵀ), λ = (Sm, −½S)).

**Rule.** E_q[ℓ_i] = −<λ̃_i, μ> + c_i is linear in μ, so ∇_μE_q[Σℓ_i] = −Σλ̃_i does not depend
on q, and the BLR with the conjugate split (a prior λ₀ in the family: its log-density and the
base measure of the entropy cancel) is

  λ_{t+1} = (1 − ρ)λ_t + ρ(λ₀ + Σ_i λ̃_i) = (1 − ρ)λ_t + ρλ*.

At ρ = 1 it returns λ* = λ₀ + Σλ̃_i, the natural parameter of Bayes' posterior, from any λ_t;
for ρ < 1 the error contracts geometrically, λ_t = λ* + (1 − ρ)^t(λ_0 − λ*). With one example
per step and the previous posterior as the prior it is recursive Bayes.

**Equality conditions.** ρ = 1 and exact expectations (:class:`blr.Exact` on μ ↦ Σ_iE_q[ℓ_i],
no approximation at all) ⇒ λ₁ = λ* exactly, whatever λ_init. The conjugate split (``prior=``) and
the prior written into ℓ̄ give the same step, since ∇_μE_q[−log p₀ − log h] = −λ₀.

**Test problem.** The BLR side is given the per-example negative log-likelihoods
ℓ_i = −log p(y_i | θ), each written in μ and summed (autograd differentiates the sum); the
textbook side computes the posterior from the sufficient statistics (Σy, N, XᵀX, Xᵀy) without
:mod:`blr`. (i) Beta–Bernoulli: y = (1,1,0,1,1,1,0,1), ℓ_i = −y_i log θ − (1 − y_i) log(1 − θ),
E_q[ℓ_i] = −y_iμ₁ − (1 − y_i)μ₂, prior Beta(2, 2) ⇒ Beta(8, 4), λ = (7, 3), in one step from six
starts; ρ = 0.5 for 25 steps follows the geometric law; the online version (one
:meth:`blr.Exact.linear` site λ̃_i = (y_i, 1 − y_i) per step, prior = last posterior) ends on the
same λ. (ii) Gamma–Poisson: y = (3, 0, 2, 5, 1, 4), ℓ_i = θ − y_i log θ + log y_i!,
E_q[ℓ_i] = μ₂ − y_iμ₁ + log y_i!, prior Gamma(2, 0.5) ⇒ Gamma(a₀ + Σy, b₀ + N) = Gamma(17, 6.5),
from three starts with the conjugate split and with the prior inside ℓ̄, and the geometric law
at ρ = 0.5. (iii) Bayesian linear regression (ridge): 20 points in 3-D, σ² = 0.25, prior
N(0, δ⁻¹I) with δ = 2, ℓ_i = −log N(y_i | x_iᵀθ, σ²) with exact Gaussian expectations
E_q[ℓ_i] = (y_i² − 2y_ix_iᵀμ₁ + x_iᵀμ₂x_i)/(2σ²) + ½log(2πσ²): one step from two starts gives
S = XᵀX/σ² + δI and m = (XᵀX + σ²δI)⁻¹Xᵀy (relative). All eight comparisons are equalities
with tolerance 1e-12.

**References.** Khan & Rue (2023), Table 1 row 11; Bernardo & Smith
(1994), *Bayesian Theory*, §5.2 (conjugate families).
"""

from __future__ import annotations

import math

import sympy as sp
import torch

import blr
import expfam
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="conjugate",
    number=11,
    algorithm="Conjugate Bayes",
    posterior="any exponential family",
    approximation="none (ρ = 1)",
    symbolic="✓",
)

F64 = torch.float64
BERNOULLI_Y = (1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0)
BETA_PRIOR = (2.0, 2.0)  # (α₀, β₀)
POISSON_Y = (3.0, 0.0, 2.0, 5.0, 1.0, 4.0)
GAMMA_PRIOR = (2.0, 0.5)  # (a₀, b₀)
RIDGE_SIGMA2, RIDGE_DELTA = 0.25, 2.0
RHO_SLOW, STEPS_SLOW = 0.5, 25


def _zero(expr: sp.Expr) -> bool:
    return sp.simplify(expr) == 0


def derive() -> list[str]:
    """Linearity of E_q[ℓ_i] in μ, the textbook posteriors as one ρ = 1 step, and the geometric
    law for ρ < 1 (Beta, Gamma, 2-D Gaussian)."""
    rho = sp.Symbol("rho", positive=True)
    # ---- Beta: A(λ) = log Γ(α) + log Γ(β) − log Γ(α+β), α = λ₁ + 1, β = λ₂ + 1
    l1, l2 = sp.symbols("lambda_1 lambda_2", positive=True)
    a_beta = sp.loggamma(l1 + 1) + sp.loggamma(l2 + 1) - sp.loggamma(l1 + l2 + 2)
    mu_beta = [sp.diff(a_beta, v) for v in (l1, l2)]
    assert _zero(mu_beta[0] - (sp.digamma(l1 + 1) - sp.digamma(l1 + l2 + 2)))
    assert _zero(mu_beta[1] - (sp.digamma(l2 + 1) - sp.digamma(l1 + l2 + 2)))
    # ∇_μ(−H) = λ: −H = <λ, μ(λ)> − A(λ) (h = 1), so ∇_λ(−H) = F λ, i.e. F⁻¹∇_λ(−H) = λ
    neg_h = l1 * mu_beta[0] + l2 * mu_beta[1] - a_beta
    fisher = sp.Matrix(2, 2, lambda i, j: sp.diff(mu_beta[i], (l1, l2)[j]))
    grad_neg_h = sp.Matrix([sp.diff(neg_h, v) for v in (l1, l2)])
    assert sp.simplify(grad_neg_h - fisher * sp.Matrix([l1, l2])) == sp.zeros(2, 1)
    # Bernoulli likelihood: ℓ_i = −y_i log θ − (1−y_i) log(1−θ) = −<(y_i, 1−y_i), T(θ)>,
    # E_q[ℓ_i] = −y_i μ₁ − (1−y_i) μ₂ is linear in μ: its gradient is constant
    m1, m2, y = sp.symbols("mu_1 mu_2 y")
    theta = sp.Symbol("theta", positive=True)
    log_lik = sp.expand_log(sp.log(theta**y * (1 - theta) ** (1 - y)), force=True)
    assert _zero(log_lik - (y * sp.log(theta) + (1 - y) * sp.log(1 - theta)))
    e_ell = -y * m1 - (1 - y) * m2
    grad = [sp.diff(e_ell, v) for v in (m1, m2)]
    assert all(not g.has(m1, m2) for g in grad)
    # per-example sites summed over 5 symbolic points: E_q[Σℓ_i] = Σ_i(−y_iμ₁ − (1 − y_i)μ₂);
    # the BLR step with the conjugate split, λ' = (1 − ρ)λ_t + ρ(λ₀ − ∇_μE_q[Σℓ_i]), at ρ = 1
    # forgets λ_t and gives (α₀ + k, β₀ + N − k) with k = Σy_i, N = 5
    a0, b0, lt1, lt2 = sp.symbols("alpha_0 beta_0 lambda_t1 lambda_t2", positive=True)
    ys = sp.symbols("y1:6", real=True)
    e_sum = sum(e_ell.subs(y, yi) for yi in ys)
    k, n = sum(ys), len(ys)
    lam0 = (a0 - 1, b0 - 1)
    lam_new = [
        ((1 - rho) * lt + rho * (l0 - sp.diff(e_sum, v))).subs(rho, 1)
        for lt, l0, v in zip((lt1, lt2), lam0, (m1, m2))
    ]
    assert not any(x.has(lt1, lt2) for x in lam_new)
    assert _zero(lam_new[0] + 1 - (a0 + k)) and _zero(lam_new[1] + 1 - (b0 + n - k))
    # Bayes: log p₀ + Σ log p(y_i|θ) has coefficients (α₀−1+k, β₀−1+N−k) on (log θ, log(1−θ))
    u, w = sp.symbols("u w")  # u = log θ, w = log(1 − θ)
    log_post = sp.expand((a0 - 1) * u + (b0 - 1) * w + k * u + (n - k) * w)
    assert _zero(log_post.coeff(u) - lam_new[0]) and _zero(log_post.coeff(w) - lam_new[1])
    # ---- Gamma: A(λ) = log Γ(λ₁ + 1) − (λ₁ + 1) log(−λ₂); μ = (ψ(a) − log b, a/b)
    g1, bb = sp.symbols("lambda_g1 b", positive=True)
    g2 = -bb
    lam2 = sp.Symbol("lambda_g2", negative=True)
    a_gamma = sp.loggamma(g1 + 1) - (g1 + 1) * sp.log(-lam2)
    mu_g = [sp.diff(a_gamma, g1), sp.diff(a_gamma, lam2)]
    assert _zero(mu_g[0].subs(lam2, g2) - (sp.digamma(g1 + 1) - sp.log(bb)))
    assert _zero(mu_g[1].subs(lam2, g2) - (g1 + 1) / bb)
    # Poisson: ℓ_i = θ − y_i log θ + log y_i! ⇒ E_q[ℓ_i] = μ₂ − y_i μ₁ + c: ∇_μ = (−y_i, 1);
    # ρ = 1 with λ₀ = (a₀ − 1, −b₀): λ = (a₀ − 1 + Σy, −(b₀ + N)) = Gamma(a₀ + Σy, b₀ + N)
    log_pois = sp.expand_log(sp.log(theta**y * sp.exp(-theta) / sp.factorial(y)), force=True)
    assert _zero(log_pois - (y * sp.log(theta) - theta - sp.log(sp.factorial(y))))
    e_pois = m2 - y * m1
    assert [sp.diff(e_pois, v) for v in (m1, m2)] == [-y, 1]
    ga0, gb0 = sp.symbols("a_0 b_0", positive=True)
    e_pois_sum = sum(e_pois.subs(y, yi) for yi in ys)  # per-example sites, 5 symbolic points
    gam_new = [
        ((1 - rho) * lt + rho * (l0 - sp.diff(e_pois_sum, v))).subs(rho, 1)
        for lt, l0, v in zip((lt1, lt2), (ga0 - 1, -gb0), (m1, m2))
    ]
    assert _zero(gam_new[0] + 1 - (ga0 + sum(ys))) and _zero(-gam_new[1] - (gb0 + n))
    # ---- Gaussian (2-D), per-example sites over 3 symbolic points (x_i, y_i):
    # (y_i − x_iᵀθ)² = y_i² − 2y_ix_iᵀθ + x_iᵀ(θθᵀ)x_i is linear in T(θ) = (θ, θθᵀ), so
    # E_q[ℓ_i] = (y_i² − 2y_ix_iᵀμ₁ + x_iᵀμ₂x_i)/(2σ²) with μ = (m, Σ + mmᵀ)
    s2, dl = sp.symbols("sigma2 delta", positive=True)
    th = sp.Matrix(sp.symbols("theta_a theta_b", real=True))
    mu1 = sp.Matrix(sp.symbols("m1 m2"))
    mu2 = sp.Matrix(2, 2, sp.symbols("M11 M12 M21 M22"))
    xs = [sp.Matrix(sp.symbols(f"x{i}_a x{i}_b", real=True)) for i in range(3)]
    yg = sp.symbols("yg1:4", real=True)

    def site(xi: sp.Matrix, yi: sp.Symbol, t1: sp.Matrix, t2: sp.Matrix) -> sp.Expr:
        return (yi**2 - 2 * yi * (xi.T * t1)[0] + (xi.T * t2 * xi)[0]) / (2 * s2)

    for xi, yi in zip(xs, yg):
        assert sp.expand(site(xi, yi, th, th * th.T) - (yi - (xi.T * th)[0]) ** 2 / (2 * s2)) == 0
    e_gauss = sum(site(xi, yi, mu1, mu2) for xi, yi in zip(xs, yg))
    pmat = sum((xi * xi.T for xi in xs), sp.zeros(2, 2))  # XᵀX
    qvec = sum((yi * xi for xi, yi in zip(xs, yg)), sp.zeros(2, 1))  # Xᵀy
    d_mu1 = sp.Matrix([sp.diff(e_gauss, v) for v in mu1])
    d_mu2 = sp.Matrix(2, 2, lambda i, j: sp.diff(e_gauss, mu2[i, j]))
    assert sp.expand(d_mu1 + qvec / s2) == sp.zeros(2, 1)
    assert sp.expand(d_mu2 - pmat / (2 * s2)) == sp.zeros(2, 2)
    # ρ = 1, prior λ₀ = (0, −½δI): λ₁ = Xᵀy/σ², λ₂ = −½(δI + XᵀX/σ²) ⇒ S, m = S⁻¹λ₁ = ridge
    prec = -2 * (-dl * sp.eye(2) / 2 - d_mu2)
    assert sp.expand(prec - (pmat / s2 + dl * sp.eye(2))) == sp.zeros(2, 2)
    # S⁻¹λ₁ = (P + σ²δI)⁻¹q for every symmetric P and q, so for P = XᵀX, q = Xᵀy
    p11, p12, p22, q1, q2 = sp.symbols("p11 p12 p22 q1 q2")
    pg, qg = sp.Matrix([[p11, p12], [p12, p22]]), sp.Matrix([q1, q2])
    mean = (pg / s2 + dl * sp.eye(2)).inv() * (qg / s2)
    ridge = (pg + s2 * dl * sp.eye(2)).inv() * qg
    assert sp.simplify(mean - ridge) == sp.zeros(2, 1)
    # ---- ρ < 1: λ_{t+1} = (1−ρ)λ_t + ρλ* is solved by λ_t = λ* + (1−ρ)^t(λ_0 − λ*)
    t = sp.Symbol("t", integer=True, nonnegative=True)
    lstar, linit = sp.symbols("lambda_star lambda_init")

    def closed(tt: sp.Expr) -> sp.Expr:
        return lstar + (1 - rho) ** tt * (linit - lstar)

    assert _zero(closed(0) - linit)
    assert _zero(sp.expand((1 - rho) * closed(t) + rho * lstar - closed(t + 1)))
    return [
        "Beta: μ = ∇A(λ) = (ψ(α) − ψ(α+β), ψ(β) − ψ(α+β)) and ∇_μ(−H) = F⁻¹∇_λ(−H) = λ",
        "Bernoulli: ℓ_i = −<(y_i, 1−y_i), (log θ, log(1−θ))>, so E_q[ℓ_i] = −y_iμ₁ − (1−y_i)μ₂ "
        "is linear in μ and ∇_μE_q[ℓ_i] is constant",
        "Beta–Bernoulli, the 5 per-example sites of symbolic y_i summed, ρ = 1 from any λ_t: "
        "(α, β) = (α₀ + Σy_i, β₀ + N − Σy_i), Bayes' posterior",
        "Gamma: μ = (ψ(a) − log b, a/b); Poisson: ℓ_i = θ − y_i log θ + log y_i! is linear in "
        "T = (log θ, θ); the 5 per-example sites summed, ρ = 1 gives Gamma(a₀ + Σy_i, b₀ + N)",
        "Gaussian 2-D, 3 symbolic examples: (y_i − x_iᵀθ)² is linear in (θ, θθᵀ); ∇_μ of "
        "Σ_i E_q[(y_i − x_iᵀθ)²]/(2σ²) = (−Σ_iy_ix_i/σ², Σ_ix_ix_iᵀ/(2σ²)) = (−Xᵀy/σ², "
        "XᵀX/(2σ²)); ρ = 1 gives S = XᵀX/σ² + δI, m = (XᵀX + σ²δI)⁻¹Xᵀy (ridge)",
        "ρ < 1: λ_t = λ* + (1 − ρ)^t(λ_0 − λ*) solves λ_{t+1} = (1 − ρ)λ_t + ρλ*",
    ]


# ---------------------------------------------------------------------------- classical
def classical_beta_bernoulli(y: torch.Tensor, alpha0: float, beta0: float) -> torch.Tensor:
    """Textbook Beta–Bernoulli posterior Beta(α₀ + Σy, β₀ + N − Σy), returned as λ = (α−1, β−1)."""
    k, n = y.sum(), y.numel()
    return torch.stack([alpha0 + k - 1, beta0 + (n - k) - 1])


def classical_gamma_poisson(y: torch.Tensor, a0: float, b0: float) -> torch.Tensor:
    """Textbook Gamma–Poisson posterior Gamma(a₀ + Σy, b₀ + N), returned as λ = (a−1, −b)."""
    return torch.stack([a0 + y.sum() - 1, -(b0 + y.new_tensor(float(y.numel())))])


def classical_ridge(
    x: torch.Tensor, y: torch.Tensor, sigma2: float, delta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bayesian linear regression: S = XᵀX/σ² + δI and m = (XᵀX + σ²δI)⁻¹Xᵀy (ridge)."""
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    prec = x.T @ x / sigma2 + delta * eye
    return prec, torch.linalg.solve(x.T @ x + sigma2 * delta * eye, x.T @ y)


def geometric_law(lam_init: torch.Tensor, lam_star: torch.Tensor, rho: float, steps: int):
    """λ_t = λ* + (1 − ρ)^t(λ_init − λ*), t = 0..steps (rows)."""
    t = torch.arange(steps + 1, dtype=lam_init.dtype).unsqueeze(-1)
    return lam_star + (1 - rho) ** t * (lam_init - lam_star)


# ---------------------------------------------------------------------------- BLR
def _scalar(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=F64)


def bernoulli_expected_loss(y: torch.Tensor):
    """μ ↦ Σ_i E_q[ℓ_i], one site per example: ℓ_i(θ) = −log p(y_i | θ) = −y_i log θ −
    (1 − y_i) log(1 − θ), so E_q[ℓ_i] = −y_iμ₁ − (1 − y_i)μ₂ with μ = (E log θ, E log(1 − θ))."""

    def loss(mean: expfam.BetaMean) -> torch.Tensor:
        per_example = -(y * mean.mu1.unsqueeze(-1) + (1 - y) * mean.mu2.unsqueeze(-1))
        return per_example.sum(-1)

    return loss


def beta_bernoulli_blr(
    y: torch.Tensor, init: expfam.BetaNat, rho: float, steps: int
) -> torch.Tensor:
    """BLR on Beta with the conjugate split, λ ← (1−ρ)λ + ρ(λ₀ − ∇_μΣ_iE_q[ℓ_i]), the
    per-example Bernoulli sites of :func:`bernoulli_expected_loss` differentiated by autograd
    (:class:`blr.Exact`); returns all λ."""
    fam = expfam.Beta()
    prior = fam.from_concentrations(_scalar(BETA_PRIOR[0]), _scalar(BETA_PRIOR[1]))
    loss = bernoulli_expected_loss(y)
    nat, out = init, [torch.stack(list(init))]
    for _ in range(steps):
        nat = blr.step(fam, nat, loss, rho, estimator=blr.Exact(), prior=prior)
        out.append(torch.stack(list(nat)))
    return torch.stack(out)


def beta_bernoulli_online(y: torch.Tensor) -> torch.Tensor:
    """Recursive Bayes: one ρ = 1 step per observation, its site λ̃_i = (y_i, 1 − y_i) as a
    :meth:`blr.Exact.linear` loss, with the previous posterior as prior."""
    fam = expfam.Beta()
    post = fam.from_concentrations(_scalar(BETA_PRIOR[0]), _scalar(BETA_PRIOR[1]))
    for yi in y:
        loss = blr.Exact.linear(fam, expfam.BetaNat(yi, 1 - yi))
        post = blr.step(fam, post, loss, 1.0, estimator=blr.Exact(), prior=post)
    return torch.stack(list(post))


def poisson_expected_loss(y: torch.Tensor, with_prior: bool = False):
    """μ ↦ Σ_i E_q[ℓ_i], one site per example: ℓ_i(θ) = −log p(y_i | θ) = θ − y_i log θ +
    log y_i!, so E_q[ℓ_i] = μ₂ − y_iμ₁ + log y_i! for Gamma q (μ₁ = E log θ, μ₂ = Eθ); with
    ``with_prior`` also E_q[−log p₀] = −(a₀ − 1)μ₁ + b₀μ₂ + c."""
    a0, b0 = GAMMA_PRIOR

    def loss(mean: expfam.GammaMean) -> torch.Tensor:
        per_example = mean.mu2.unsqueeze(-1) - y * mean.mu1.unsqueeze(-1) + torch.lgamma(y + 1)
        value = per_example.sum(-1)
        if with_prior:
            value = value - (a0 - 1) * mean.mu1 + b0 * mean.mu2
        return value

    return loss


def gamma_poisson_blr(
    y: torch.Tensor, init: expfam.GammaNat, rho: float, steps: int, split: bool = True
) -> torch.Tensor:
    """BLR on Gamma, with the conjugate split (``split``) or the prior inside ℓ̄; all λ."""
    fam = expfam.Gamma()
    prior = fam.from_shape_rate(_scalar(GAMMA_PRIOR[0]), _scalar(GAMMA_PRIOR[1]))
    loss = poisson_expected_loss(y, with_prior=not split)
    nat, out = init, [torch.stack(list(init))]
    for _ in range(steps):
        nat = blr.step(fam, nat, loss, rho, estimator=blr.Exact(), prior=prior if split else None)
        out.append(torch.stack(list(nat)))
    return torch.stack(out)


def ridge_blr(
    x: torch.Tensor, y: torch.Tensor, init: expfam.FullNat
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ρ = 1 BLR step on the full Gaussian with the per-example sites
    ℓ_i = −log N(y_i | x_iᵀθ, σ²), E_q[ℓ_i] = (y_i² − 2y_i x_iᵀμ₁ + x_iᵀμ₂x_i)/(2σ²) + ½log(2πσ²),
    summed, and the prior N(0, δ⁻¹I); returns (S, m)."""
    fam = expfam.FullGaussian()
    d = x.shape[1]
    prior = fam.from_moments(torch.zeros(d, dtype=F64), RIDGE_DELTA * torch.eye(d, dtype=F64))

    def loss(mean: expfam.FullMean) -> torch.Tensor:
        quad = torch.einsum("ia,ab,ib->i", x, mean.mu2, x)
        per_example = (y.square() - 2 * y * (x @ mean.mu1) + quad) / (2 * RIDGE_SIGMA2)
        return (per_example + 0.5 * math.log(2 * math.pi * RIDGE_SIGMA2)).sum()

    nat = blr.step(fam, init, loss, 1.0, estimator=blr.Exact(), prior=prior)
    m, prec = fam.to_moments(nat)
    return prec, m


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def check(device: str = "cpu") -> list[Comparison]:
    """The three conjugate pairs at ρ = 1 from several starts, the geometric law at ρ = 0.5,
    recursive Bayes, and the prior inside ℓ̄ (all CPU float64; ``device`` is unused)."""
    gen = torch.Generator().manual_seed(0)
    # (i) Beta–Bernoulli
    y = torch.tensor(BERNOULLI_Y, dtype=F64)
    want = classical_beta_bernoulli(y, *BETA_PRIOR)
    starts = [(1.0, 1.0), (0.5, 4.0), *(3 * torch.rand(4, 2, dtype=F64, generator=gen)).tolist()]
    one = [
        beta_bernoulli_blr(y, expfam.BetaNat(_scalar(a), _scalar(b)), 1.0, 1)[-1] for a, b in starts
    ]
    slow_init = expfam.BetaNat(_scalar(0.5), _scalar(4.0))
    slow = beta_bernoulli_blr(y, slow_init, RHO_SLOW, STEPS_SLOW)
    law = geometric_law(torch.stack(list(slow_init)), want, RHO_SLOW, STEPS_SLOW)
    online = beta_bernoulli_online(y)
    # (ii) Gamma–Poisson
    yp = torch.tensor(POISSON_Y, dtype=F64)
    want_g = classical_gamma_poisson(yp, *GAMMA_PRIOR)
    g_starts = [(GAMMA_PRIOR[0] - 1, -GAMMA_PRIOR[1]), (3.0, -2.0), (0.2, -10.0)]
    g_one = [
        gamma_poisson_blr(yp, expfam.GammaNat(_scalar(a), _scalar(b)), 1.0, 1)[-1]
        for a, b in g_starts
    ]
    g_inside = [
        gamma_poisson_blr(yp, expfam.GammaNat(_scalar(a), _scalar(b)), 1.0, 1, split=False)[-1]
        for a, b in g_starts
    ]
    g_init = expfam.GammaNat(_scalar(3.0), _scalar(-2.0))
    g_slow = gamma_poisson_blr(yp, g_init, RHO_SLOW, STEPS_SLOW)
    g_law = geometric_law(torch.stack(list(g_init)), want_g, RHO_SLOW, STEPS_SLOW)
    # (iii) ridge
    x = torch.randn(20, 3, dtype=F64, generator=gen)
    yr = x @ torch.tensor([1.0, -2.0, 0.5], dtype=F64) + 0.5 * torch.randn(
        20, dtype=F64, generator=gen
    )
    s_want, m_want = classical_ridge(x, yr, RIDGE_SIGMA2, RIDGE_DELTA)
    fam = expfam.FullGaussian()
    r_inits = [
        fam.from_moments(torch.zeros(3, dtype=F64), RIDGE_DELTA * torch.eye(3, dtype=F64)),
        fam.from_moments(torch.tensor([5.0, 5.0, -5.0], dtype=F64), 0.3 * torch.eye(3, dtype=F64)),
    ]
    ridge = [ridge_blr(x, yr, i) for i in r_inits]
    return [
        Comparison(
            "Beta–Bernoulli, ρ = 1, one step from 6 starts vs Beta(8, 4), λ = (7, 3)",
            max((o - want).abs().max().item() for o in one),
            1e-12,
        ),
        Comparison(
            f"Beta–Bernoulli, ρ = 0.5, {STEPS_SLOW} steps vs λ* + (1−ρ)^t(λ_0 − λ*)",
            (slow - law).abs().max().item(),
            1e-12,
        ),
        Comparison(
            "Beta–Bernoulli, online (prior = last posterior, one y_i per step) vs batch",
            (online - want).abs().max().item(),
            1e-12,
        ),
        Comparison(
            "Gamma–Poisson, ρ = 1, one step from 3 starts vs Gamma(a₀ + Σy, b₀ + N)",
            max((o - want_g).abs().max().item() for o in g_one),
            1e-12,
        ),
        Comparison(
            "Gamma–Poisson, prior inside ℓ̄ (no conjugate split), ρ = 1 vs textbook",
            max((o - want_g).abs().max().item() for o in g_inside),
            1e-12,
        ),
        Comparison(
            f"Gamma–Poisson, ρ = 0.5, {STEPS_SLOW} steps vs λ* + (1−ρ)^t(λ_0 − λ*)",
            (g_slow - g_law).abs().max().item(),
            1e-12,
        ),
        Comparison(
            "ridge, ρ = 1, one step from 2 starts: S vs XᵀX/σ² + δI (relative)",
            max(_rel(s, s_want) for s, _ in ridge),
            1e-12,
        ),
        Comparison(
            "ridge, ρ = 1, one step from 2 starts: m vs (XᵀX + σ²δI)⁻¹Xᵀy (relative)",
            max(_rel(m, m_want) for _, m in ridge),
            1e-12,
        ),
    ]


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "beta_bernoulli_blr",
        "nat, loss, rho,",
        "nat, loss, 1.01 * rho,",
        "Beta–Bernoulli BLR ρ × 1.01",
    ),
    Mutation(
        "blr",
        "term",
        "bernoulli_expected_loss",
        " + (1 - y) * mean.mu2.unsqueeze(-1)",
        "",
        "Bernoulli site without −(1 − y_i) log(1 − θ)",
    ),
    Mutation(
        "blr",
        "term",
        "poisson_expected_loss",
        "mean.mu2.unsqueeze(-1) - y",
        "-y",
        "Poisson site without θ (the E_q[θ] = μ₂ term)",
    ),
    Mutation(
        "blr",
        "term",
        "poisson_expected_loss",
        " + b0 * mean.mu2",
        "",
        "prior inside ℓ̄ without b₀θ",
    ),
    Mutation(
        "blr",
        "term",
        "ridge_blr",
        " + quad) /",
        ") /",
        "Gaussian site without x_iᵀE[θθᵀ]x_i",
    ),
    Mutation(
        "classical",
        "constant",
        "classical_gamma_poisson",
        "-(b0 +",
        "-(1.01 * b0 +",
        "textbook Gamma–Poisson: b₀ × 1.01",
    ),
    Mutation(
        "classical",
        "constant",
        "classical_beta_bernoulli",
        "alpha0 + k - 1",
        "1.01 * alpha0 + k - 1",
        "textbook Beta–Bernoulli: α₀ × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "classical_ridge",
        "prec = x.T @ x / sigma2 + delta * eye",
        "prec = x.T @ x / sigma2",
        "textbook ridge precision without δI",
    ),
)
