r"""Variational message passing is the mean-field BLR with ρ = 1 for every node, one node at a
time.

**Family.** q(θ) = Π_j q_j(θ_j), each q_j a minimal exponential family. The Fisher matrix of a
product is block diagonal, so the BLR splits into one rule per node,
λ_j ← (1 − ρ)λ_j − ρ∇_{μ_j}E_q[ℓ̄ + log h_j]. Here the normal–gamma model: q(μ) = N(m, 1/κ)
(a 1-D diagonal Gaussian, T = (μ, μ²)) and q(τ) = Gamma(a, b) (T = (log τ, τ)); h is constant
for both.

**Rule.** In a conditionally conjugate model −ℓ̄ = <η_j(θ_{−j}, D), T_j(θ_j)> + (terms free of
θ_j), so E_q[ℓ̄] is linear in μ_j and ρ = 1 gives λ_j ← −∇_{μ_j}E_q[ℓ̄] = E_{q_{−j}}[η_j], the sum
of the node's incoming messages (prior included): the VMP/CAVI update. For
y_i ~ N(μ, 1/τ), μ ~ N(μ₀, 1/κ₀), τ ~ Gamma(a₀, b₀):

  μ-node: κ_N = κ₀ + nE[τ],  m_N = (κ₀μ₀ + E[τ]Σy_i)/κ_N;
  τ-node: a_N = a₀ + n/2,    b_N = b₀ + ½Σ_i[(y_i − m_N)² + 1/κ_N],   E[τ] = a_N/b_N.

**Equality conditions.** ρ = 1 for each node, exact expectations (:class:`blr.Exact` on the
node's μ ↦ E_q[ℓ̄] with the other node fixed) and a sequential schedule (μ then τ) ⇒ the BLR
iterates are closed-form CAVI, and the ELBO never decreases (coordinate ascent). Updating both
nodes at once with ρ = 1 is a different (Jacobi) schedule and may oscillate.

**Test problem.** 40 points from N(1, 0.5²) (``numpy.random.default_rng(0)``), priors
μ₀ = 0.6, κ₀ = 2.5, a₀ = 3, b₀ = 2 (μ₀ ≠ 0 and κ₀ ≠ 1 keep the prior's cross-terms κ₀μ₀ and
−2κ₀μ₀E[μ] alive on both sides; a₀ ≠ b₀ makes the first E[τ] = 1.5, not 1); q(μ) started at
the prior N(μ₀, 1/κ₀), q(τ) at the prior Gamma(a₀, b₀). For 30 iterations the BLR node
updates equal the closed-form CAVI formulas (relative ≤ 1e-12, equality); the ELBO never
decreases after any node update (bound: the largest decrease, rounding level, ≤ 1e-10); the
end point equals the fixed point solved independently by bisection on a scalar equation in
E[τ] (relative ≤ 1e-12, limit); for this seed that fixed point is m_N = 0.9646157318,
κ_N = 179.0824079455, a_N = 23, b_N = 5.2100320225 (relative ≤ 1e-9, limit).

**References.** Khan & Rue (2023), Table 1 row 15; Winn & Bishop (2005), "Variational message
passing", JMLR 6; Bishop (2006), *Pattern Recognition and Machine Learning*, §10.1.3.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp
import torch

import blr
import expfam
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="vmp",
    number=15,
    algorithm="Variational message passing (VMP)",
    posterior="mean-field exp-family",
    approximation="ρ = 1 per node, sequential",
    symbolic="✓",
)

F64 = torch.float64
MU0, KAPPA0, A0, B0 = 0.6, 2.5, 3.0, 2.0
ITERS = 30
PINNED = (0.9646157318, 179.0824079455, 23.0, 5.2100320225)  # (m_N, κ_N, a_N, b_N), this seed
_LOG_2PI = math.log(2 * math.pi)


def data() -> torch.Tensor:
    """40 points from N(1, 0.5²), numpy default_rng(0)."""
    return torch.from_numpy(np.random.default_rng(0).normal(1.0, 0.5, 40)).to(F64)


def derive() -> list[str]:
    """Each node's ρ = 1 BLR step, −∇_{μ_j} of the expected log-joint, is the normal–gamma CAVI
    update; ∇_μ(−H) = λ for the 1-D Gaussian and the Gamma."""
    # 1-D Gaussian: A = −λ₁²/(4λ₂) − ½log(−2λ₂), μ = (m, m² + 1/κ), F⁻¹∇_λ(−H) = λ
    l1 = sp.Symbol("lambda_1", real=True)
    l2 = sp.Symbol("lambda_2", negative=True)
    a_gauss = -(l1**2) / (4 * l2) - sp.log(-2 * l2) / 2
    mu_g = [sp.diff(a_gauss, v) for v in (l1, l2)]
    kap, mm = sp.symbols("kappa m", positive=True)
    at = {l1: kap * mm, l2: -kap / 2}
    assert sp.simplify(mu_g[0].subs(at) - mm) == 0
    assert sp.simplify(mu_g[1].subs(at) - (mm**2 + 1 / kap)) == 0
    # Gamma: A = log Γ(λ₁ + 1) − (λ₁ + 1)log(−λ₂), μ = (ψ(a) − log b, a/b)
    g1 = sp.Symbol("lambda_g1", positive=True)
    g2 = sp.Symbol("lambda_g2", negative=True)
    a_gamma = sp.loggamma(g1 + 1) - (g1 + 1) * sp.log(-g2)
    for a_fn, lams in ((a_gauss, (l1, l2)), (a_gamma, (g1, g2))):
        mu = [sp.diff(a_fn, v) for v in lams]
        fisher = sp.Matrix([[sp.diff(mu_i, v) for v in lams] for mu_i in mu])
        neg_h = lams[0] * mu[0] + lams[1] * mu[1] - a_fn
        grad = sp.Matrix([sp.diff(neg_h, v) for v in lams])
        assert sp.simplify(grad - fisher * sp.Matrix(lams)) == sp.zeros(2, 1)
    # the expected loss E_q[ℓ̄] in the node means (m₁, m₂) = E[μ], E[μ²] and
    # (t₁, t₂) = E[log τ], E[τ]; data through n, Σy, Σy²
    n, sy, syy = sp.symbols("n S_y S_yy", positive=True)
    mu0, k0, a0, b0 = sp.symbols("mu_0 kappa_0 a_0 b_0", positive=True)
    m1, m2, t1, t2 = sp.symbols("m_1 m_2 t_1 t_2", real=True)
    e_loss = (
        -n / 2 * t1
        + t2 / 2 * (syy - 2 * sy * m1 + n * m2)
        + k0 / 2 * (m2 - 2 * mu0 * m1 + mu0**2)
        - (a0 - 1) * t1
        + b0 * t2
    )
    # μ-node, ρ = 1: λ = λ − (∇_μ + λ) = −∇_{(m₁, m₂)}E_q[ℓ̄] = (κ_N m_N, −½κ_N)
    lam_mu = [-sp.diff(e_loss, v) for v in (m1, m2)]
    kappa_n = -2 * lam_mu[1]
    assert sp.simplify(kappa_n - (k0 + n * t2)) == 0
    m_n = lam_mu[0] / kappa_n
    assert sp.simplify(m_n - (k0 * mu0 + t2 * sy) / (k0 + n * t2)) == 0
    # τ-node, ρ = 1: λ = −∇_{(t₁, t₂)}E_q[ℓ̄] = (a_N − 1, −b_N), at the new q(μ)
    lam_tau = [-sp.diff(e_loss, v) for v in (t1, t2)]
    assert sp.simplify(lam_tau[0] + 1 - (a0 + n / 2)) == 0
    kn, mn = sp.symbols("kappa_N m_N", positive=True)
    b_n = -lam_tau[1].subs({m1: mn, m2: mn**2 + 1 / kn})
    # with three explicit points: b_N = b₀ + ½Σ_i[(y_i − m_N)² + 1/κ_N]
    ys = sp.symbols("y1:4", real=True)
    three = {n: 3, sy: sum(ys), syy: sum(v**2 for v in ys)}
    textbook = b0 + sum((v - mn) ** 2 + 1 / kn for v in ys) / 2
    assert sp.simplify(b_n.subs(three) - textbook) == 0
    return [
        "1-D Gaussian: μ = ∇A = (m, m² + 1/κ); Gaussian and Gamma: F⁻¹∇_λ(−H) = λ",
        "μ-node, ρ = 1: −∇_{(E μ, E μ²)}E_q[ℓ̄] gives κ_N = κ₀ + nE[τ], m_N = (κ₀μ₀ + E[τ]Σy_i)/κ_N",
        "τ-node, ρ = 1: −∇_{(E log τ, E τ)}E_q[ℓ̄] gives a_N = a₀ + n/2, "
        "b_N = b₀ + ½Σ_i[(y_i − m_N)² + 1/κ_N]",
    ]


# ---------------------------------------------------------------------------- classical
def classical(y: torch.Tensor, iters: int) -> torch.Tensor:
    """Closed-form CAVI (μ-node, then τ-node); rows (m_N, κ_N, a_N, b_N) per iteration."""
    n, sy = y.shape[0], y.sum()
    e_tau = torch.tensor(A0 / B0, dtype=y.dtype)
    out = []
    for _ in range(iters):
        kappa_n = KAPPA0 + n * e_tau
        m_n = (KAPPA0 * MU0 + e_tau * sy) / kappa_n
        a_n = torch.tensor(A0 + n / 2, dtype=y.dtype)
        b_n = B0 + 0.5 * ((y - m_n) ** 2 + 1 / kappa_n).sum()
        e_tau = a_n / b_n
        out.append(torch.stack([m_n, kappa_n, a_n, b_n]))
    return torch.stack(out)


def fixed_point(y: torch.Tensor) -> torch.Tensor:
    """The CAVI fixed point solved as one equation, E·b_N(E) = a_N for E = E[τ] (bisection in
    plain floats), then (m_N, κ_N, a_N, b_N)."""
    ys = y.tolist()
    n, sy = len(ys), sum(ys)
    a_n = A0 + n / 2

    def parts(e: float) -> tuple[float, float, float]:
        kappa_n = KAPPA0 + n * e
        m_n = (KAPPA0 * MU0 + e * sy) / kappa_n
        return m_n, kappa_n, B0 + 0.5 * sum((v - m_n) ** 2 + 1 / kappa_n for v in ys)

    lo, hi = 1e-8, a_n / B0  # b_N ≥ b₀ ⇒ E ≤ a_N/b₀
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid * parts(mid)[2] < a_n:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-16 * hi:
            break
    m_n, kappa_n, b_n = parts(0.5 * (lo + hi))
    return torch.tensor([m_n, kappa_n, a_n, b_n], dtype=F64)


# ---------------------------------------------------------------------------- BLR
def expected_loss(y: torch.Tensor, mean_mu: expfam.DiagMean, mean_tau: expfam.GammaMean):
    """E_q[ℓ̄] = E_q[−log p(y | μ, τ) − log p(μ) − log p(τ)] with all constants, linear in each
    node's μ: (E μ, E μ²) = ``mean_mu`` and (E log τ, E τ) = ``mean_tau``."""
    n = y.shape[0]
    e_mu, e_mu2 = mean_mu.mu1.sum(-1), mean_mu.mu2.sum(-1)
    e_log_tau, e_tau = mean_tau.mu1, mean_tau.mu2
    lik = n / 2 * _LOG_2PI - n / 2 * e_log_tau
    lik = lik + e_tau / 2 * ((y**2).sum() - 2 * y.sum() * e_mu + n * e_mu2)
    prior_mu = 0.5 * (_LOG_2PI - math.log(KAPPA0)) + KAPPA0 / 2 * (e_mu2 - 2 * MU0 * e_mu + MU0**2)
    prior_tau = -A0 * math.log(B0) + math.lgamma(A0) - (A0 - 1) * e_log_tau + B0 * e_tau
    return lik + prior_mu + prior_tau


def blr_instance(y: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential BLR node updates at ρ = 1 with :class:`blr.Exact`: the μ-node (1-D
    :class:`expfam.DiagGaussian`) then the τ-node (:class:`expfam.Gamma`). Returns rows
    (m_N, κ_N, a_N, b_N) per iteration and the ELBO after every node update."""
    gauss, gamma = expfam.DiagGaussian(), expfam.Gamma()
    nat_mu = gauss.from_moments(
        torch.full((1,), MU0, dtype=F64), torch.full((1,), KAPPA0, dtype=F64)
    )
    nat_tau = gamma.from_shape_rate(torch.tensor(A0, dtype=F64), torch.tensor(B0, dtype=F64))

    def elbo() -> float:
        e = expected_loss(y, gauss.nat_to_mean(nat_mu), gamma.nat_to_mean(nat_tau))
        return (-e + gauss.entropy(nat_mu) + gamma.entropy(nat_tau)).item()

    out, elbos = [], [elbo()]
    for _ in range(iters):
        mean_tau = gamma.nat_to_mean(nat_tau)
        nat_mu = blr.step(
            gauss,
            nat_mu,
            lambda mm, mt=mean_tau: expected_loss(y, mm, mt),
            1.0,
            estimator=blr.Exact(),
        )
        elbos.append(elbo())
        mean_mu = gauss.nat_to_mean(nat_mu)
        nat_tau = blr.step(
            gamma,
            nat_tau,
            lambda mt, mm=mean_mu: expected_loss(y, mm, mt),
            1.0,
            estimator=blr.Exact(),
        )
        elbos.append(elbo())
        m, kappa = gauss.to_moments(nat_mu)
        a, b = gamma.shape_rate(nat_tau)
        out.append(torch.stack([m[0], kappa[0], a, b]))
    return torch.stack(out), torch.tensor(elbos, dtype=F64)


def check(device: str = "cpu") -> list[Comparison]:
    """BLR node updates vs closed-form CAVI, the ELBO's monotonicity and the fixed point (CPU
    float64; ``device`` is unused)."""
    y = data()
    cavi = classical(y, ITERS)
    ours, elbos = blr_instance(y, ITERS)
    fixed = fixed_point(y)
    pinned = torch.tensor(PINNED, dtype=F64)
    return [
        Comparison(
            f"BLR node updates vs closed-form CAVI (m_N, κ_N, a_N, b_N), {ITERS} iterations "
            "(relative)",
            ((ours - cavi).abs() / cavi.abs()).max().item(),
            1e-12,
        ),
        Comparison(
            "ELBO after every node update: largest decrease (rounding level)",
            max(0.0, -(elbos[1:] - elbos[:-1]).min().item()),
            1e-10,
            kind="bound",
        ),
        Comparison(
            f"BLR after {ITERS} iterations vs fixed point of E·b_N(E) = a_N (relative)",
            ((ours[-1] - fixed).abs() / fixed).max().item(),
            1e-12,
            kind="limit",
        ),
        Comparison(
            f"fixed point vs pinned (m_N, κ_N, a_N, b_N) = {PINNED} (this seed, relative)",
            ((fixed - pinned).abs() / pinned).max().item(),
            1e-9,
            kind="limit",
        ),
    ]


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "lambda mm, mt=mean_tau: expected_loss(y, mm, mt),\n            1.0,",
        "lambda mm, mt=mean_tau: expected_loss(y, mm, mt),\n            1.01,",
        "μ-node ρ × 1.01",
    ),
    Mutation(
        "blr",
        "term",
        "expected_loss",
        " - 2 * MU0 * e_mu",
        "",
        "μ₀ cross-term −2κ₀μ₀E[μ] dropped from the BLR's E_q[ℓ̄]",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "(KAPPA0 * MU0 + e_tau * sy)",
        "(e_tau * sy)",
        "μ₀ cross-term κ₀μ₀ dropped from CAVI's m_N",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "kappa_n = KAPPA0 + n * e_tau",
        "kappa_n = 1.01 * KAPPA0 + n * e_tau",
        "CAVI κ_N: κ₀ × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        " + 1 / kappa_n).sum()",
        ").sum()",
        "CAVI b_N without the posterior variance 1/κ_N",
    ),
    Mutation(
        "blr",
        "constant",
        "expected_loss",
        "+ B0 * e_tau",
        "+ 1.01 * B0 * e_tau",
        "BLR's E_q[−log p(τ)]: b₀ × 1.01",
    ),
)
