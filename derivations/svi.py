r"""Stochastic variational inference is the mean-field BLR with exact local steps (ρ = 1) and a
minibatch estimate of the global natural gradient.

**Family.** A conditionally conjugate model with global β and local z_i, q(β)Π_i q(z_i): here the
Bayesian 1-D mixture of K = 2 unit-variance Gaussians with known, unequal weights π, prior
μ_k ~ N(μ₀, 1/δ); q(μ_k) = N(m_k, 1/s_k) (diagonal Gaussian over the two means,
λ_g = (s⊙m, −½s), μ_g = (m, m² + 1/s)) and q(z_i) = Cat(φ_i) (minimal Categorical). For both,
∇_μ(−H) = λ.

**Rule.** ℓ̄ = −log p(y, z, μ). Every block's expected loss is linear in its own μ, so the BLR
blocks are the conjugate updates of rows 11 and 15:

- local (ρ = 1, i ∈ B): λ_i ← λ_i − (∇_{φ_i}E_q[ℓ̄] + λ_i) = −∇_{φ_i}E_q[ℓ̄] ⇒
  log φ_ik = log π_k + m_k y_i − ½(m_k² + 1/s_k) + const;
- global, with the minibatch objective (N/|B|)Σ_{i∈B}E_q[ℓ_i] + E_q[−log p₀] − H(q_g), whose
  prior term has ∇_μ = −λ₀, λ₀ = (δμ₀, −½δ):
  λ_g ← λ_g − ρ_t(∇_μ(N/|B|)Σ_{i∈B}E_q[ℓ_i] − λ₀ + λ_g)
      = (1 − ρ_t)λ_g + ρ_t(δμ₀ + (N/|B|)Σ_{i∈B}φ_ik y_i, −½(δ + (N/|B|)Σ_{i∈B}φ_ik)),
  Hoffman et al.'s (2013) update λ ← (1 − ρ_t)λ + ρ_tλ̂ with the intermediate parameter λ̂;
  their natural gradient λ̂ − λ_g is exactly −∇_μL of the minibatch objective.

**Equality conditions.** Same minibatch sequence, same ρ_t, local blocks at ρ = 1 before the
global step, exact expectations ⇒ every iterate equals hand-coded SVI (Hoffman et al. 2013).
λ̂ is unbiased for the full-batch target over uniformly drawn minibatches. The full batch with
ρ_t = 1 is CAVI (VMP, row 15). The step-size schedule is not part of the reduction: any ρ_t
gives the same equality; Robbins–Monro conditions only matter for SVI's convergence.

**Test problem.** N = 200 points, 60 from N(−2, 1) then 140 from N(2, 1)
(``numpy.random.default_rng(0)``), known π = (0.3, 0.7), prior N(μ₀ = 0.5, 1/δ) with δ = 0.5,
m₀ = (−1, 0.5), s₀ = (1, 2): unequal weights (so log π enters φ), a prior mean ≠ 0 (so δμ₀
enters λ̂) and an asymmetric start. |B| = 20 drawn without replacement (seeded
torch.Generator, the same index sets fed to both), ρ_t = (t + 2)^{−0.7}. Equalities: the BLR
(:class:`blr.Exact` on each block's E_q[ℓ̄], differentiated by autograd) equals hand-coded SVI
step by step (relative ≤ 1e-12) for 1000 steps, and with the full batch and ρ = 1 it equals
hand-coded CAVI for 30 sweeps (≤ 1e-12). Limits: after the 1000 SVI steps the BLR is near the
CAVI fixed point (m = (−1.8213, 2.0096), s = (62.75, 138.25) for this seed, computed by
iterating full-batch CAVI): |m − m_CAVI| < 0.05 (measured 0.019) and
|s − s_CAVI|/s_CAVI < 0.05 (measured 0.018). The distance to CAVI is SVI's own noise at this
step size (0.005 to 0.04 in m between 500 and 2000 steps, over minibatch seeds), not a
discrepancy of the BLR.

**References.** Khan & Rue (2023), Table 1 row 14; Hoffman, Blei, Wang & Paisley (2013),
"Stochastic variational inference", JMLR 14.
"""

from __future__ import annotations

import itertools

import numpy as np
import sympy as sp
import torch

import blr
import expfam
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="svi",
    number=14,
    algorithm="Stochastic VI (SVI)",
    posterior="mean-field exp-family",
    approximation="stochastic approx., local ρ = 1",
    symbolic="✓",
)

F64 = torch.float64
DELTA, MU0 = 0.5, 0.5
PI = (0.3, 0.7)
M0, S0 = (-1.0, 0.5), (1.0, 2.0)
BATCH, STEPS, KAPPA, TAU = 20, 1000, 0.7, 2.0
CAVI_SWEEPS = 30


def data() -> torch.Tensor:
    """60 points from N(−2, 1) then 140 from N(2, 1), numpy default_rng(0)."""
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.normal(-2.0, 1.0, 60), rng.normal(2.0, 1.0, 140)])
    return torch.from_numpy(y).to(F64)


def schedule(t: int) -> float:
    """ρ_t = (t + τ)^{−κ} with τ = 2, κ = 0.7 (Robbins–Monro)."""
    return (t + TAU) ** -KAPPA


def derive() -> list[str]:
    """∇_μ(−H) = λ for both blocks; local ρ = 1 step = Hoffman's φ; the global BLR step on the
    minibatch objective with the prior N(μ₀, 1/δ) = (1 − ρ)λ + ρλ̂; λ̂ unbiased (all minibatches
    of 2 out of 4 enumerated)."""
    rho, delta, n, nb = sp.symbols("rho delta N M", positive=True)
    y, m1, m2, mu0 = sp.symbols("y m_1 m_2 mu_0", real=True)
    s1, s2, phi, p1 = sp.symbols("s_1 s_2 phi pi_1", positive=True)
    # entropies: Bernoulli form of Cat(φ, 1 − φ) and N(m, 1/s) in μ = (m, m² + 1/s)
    neg_h_cat = phi * sp.log(phi) + (1 - phi) * sp.log(1 - phi)
    lam_phi = sp.log(phi) - sp.log(1 - phi)  # λ = log(φ/(1 − φ))
    assert sp.simplify(sp.diff(neg_h_cat, phi) - lam_phi) == 0
    u1, u2 = sp.symbols("mu_1 mu_2", real=True)
    m, s = sp.symbols("m s", real=True)
    back = {u1: m, u2: m**2 + 1 / s}

    def grad_mu(expr: sp.Expr) -> list[sp.Expr]:  # expr in (μ₁, μ₂), evaluated at (m, s)
        return [sp.simplify(sp.diff(expr, w).subs(back, simultaneous=True)) for w in (u1, u2)]

    var = u2 - u1**2
    neg_h_gauss = -sp.log(2 * sp.pi * sp.E * var) / 2
    lam = [s * m, -s / 2]
    assert all(sp.simplify(a - b) == 0 for a, b in zip(grad_mu(neg_h_gauss), lam))
    # local: E_q[ℓ_i] = Σ_k φ_k(½(y² − 2yμ₁ₖ + μ₂ₖ) − log π_k), μ = (m, m² + 1/s) of q(μ_k)

    def e_sq(mk: sp.Symbol, sk: sp.Symbol) -> sp.Expr:  # E_q[(y − μ_k)²] through μ of q(μ_k)
        return y**2 - 2 * y * mk + mk**2 + 1 / sk

    e_local = phi * (e_sq(m1, s1) / 2 - sp.log(p1)) + (1 - phi) * (
        e_sq(m2, s2) / 2 - sp.log(1 - p1)
    )
    lam_local = lam_phi - (sp.diff(e_local, phi) + lam_phi)  # ρ = 1, ∇_μ(−H) = λ
    hoffman = (sp.log(p1) + m1 * y - (m1**2 + 1 / s1) / 2) - (
        sp.log(1 - p1) + m2 * y - (m2**2 + 1 / s2) / 2
    )
    assert sp.simplify(lam_local - hoffman) == 0
    # global, one component: minibatch loss (N/M)Σ_B φ_i ½(y_i² − 2y_iμ₁ + μ₂), prior
    # E_q[−log N(μ_k | μ₀, 1/δ)] = ½δ(μ₂ − 2μ₀μ₁ + μ₀²) + const, entropy as above
    sb_phi_y, sb_phi, sb_phi_yy = sp.symbols("Sigma_B_phiy Sigma_B_phi Sigma_B_phiyy", real=True)
    e_global = n / nb * (sb_phi_yy - 2 * sb_phi_y * u1 + sb_phi * u2) / 2
    e_prior = delta * (u2 - 2 * mu0 * u1 + mu0**2) / 2
    lam0 = [delta * mu0, -delta / 2]
    assert all(sp.simplify(a + b) == 0 for a, b in zip(grad_mu(e_prior), lam0))
    objective = e_global + e_prior + neg_h_gauss
    blr_step = [a - rho * g for a, g in zip(lam, grad_mu(objective))]
    lam_hat = (delta * mu0 + n / nb * sb_phi_y, -(delta + n / nb * sb_phi) / 2)
    hoffman_step = [(1 - rho) * a + rho * lh for a, lh in zip(lam, lam_hat)]
    assert all(sp.simplify(a - b) == 0 for a, b in zip(blr_step, hoffman_step))
    # unbiasedness: over all C(4, 2) minibatches, E[(N/M)Σ_B φ_i y_i] = Σ_i φ_i y_i
    phis, ys = sp.symbols("phi1:5", real=True), sp.symbols("y1:5", real=True)
    batches = list(itertools.combinations(range(4), 2))
    mean_hat = sum(sp.Rational(4, 2) * sum(phis[i] * ys[i] for i in b) for b in batches)
    mean_hat = mean_hat / len(batches)
    assert sp.expand(mean_hat - sum(p * v for p, v in zip(phis, ys))) == 0
    mean_cnt = sum(sp.Rational(4, 2) * sum(phis[i] for i in b) for b in batches) / len(batches)
    assert sp.expand(mean_cnt - sum(phis)) == 0
    return [
        "∇_μ(−H) = λ for Cat(φ) (log(φ/(1 − φ))) and for N(m, 1/s) in μ = (m, m² + 1/s) "
        "((sm, −½s))",
        "local block, ρ = 1: log(φ_1/φ_2) = Σ_k ±(log π_k + m_k y − ½(m_k² + 1/s_k)), Hoffman's "
        "local update",
        "global block: λ − ρ∇_μ((N/M)Σ_B E_q[ℓ_i] + E_q[−log p₀] − H) = (1−ρ)λ + ρλ̂, "
        "λ̂ = (δμ₀ + (N/M)Σ_Bφ_i y_i, −½(δ + (N/M)Σ_Bφ_i))",
        "λ̂ is unbiased: the average over all C(4, 2) minibatches equals the full-batch target",
    ]


# ---------------------------------------------------------------------------- classical
def _local_phi(y: torch.Tensor, eta1: torch.Tensor, eta2: torch.Tensor) -> torch.Tensor:
    """Hoffman's local step: φ_ik ∝ exp(log π_k + m_k y_i − ½(m_k² + 1/s_k))."""
    s = -2 * eta2
    m = eta1 / s
    logits = torch.log(torch.tensor(PI, dtype=y.dtype)) + y[:, None] * m - 0.5 * (m * m + 1 / s)
    w = torch.exp(logits - logits.max(-1, keepdim=True).values)
    return w / w.sum(-1, keepdim=True)


def classical(y: torch.Tensor, batches: torch.Tensor, rhos: list[float]) -> torch.Tensor:
    """Hand-coded SVI (Hoffman et al. 2013) in natural parameters η = (s⊙m, −½s):
    φ_i ∝ exp(log π_k + m_k y_i − ½(m_k² + 1/s_k)) for i ∈ B_t, λ̂ = (δμ₀ + (N/|B|)Σφ_ik y_i,
    −½(δ + (N/|B|)Σφ_ik)), η ← (1 − ρ_t)η + ρ_tλ̂. Returns the (m, s) iterates (T+1, 2, K)."""
    n = y.shape[0]
    s = torch.tensor(S0, dtype=F64)
    eta1, eta2 = s * torch.tensor(M0, dtype=F64), -0.5 * s
    out = [torch.stack([eta1 / s, s])]
    for idx, rho in zip(batches, rhos):
        yb = y[idx]
        phi = _local_phi(yb, eta1, eta2)
        scale = n / yb.shape[0]
        hat1 = DELTA * MU0 + scale * (phi * yb[:, None]).sum(0)
        hat2 = -0.5 * (DELTA + scale * phi.sum(0))
        eta1, eta2 = (1 - rho) * eta1 + rho * hat1, (1 - rho) * eta2 + rho * hat2
        s = -2 * eta2
        out.append(torch.stack([eta1 / s, s]))
    return torch.stack(out)


def cavi_fixed_point(y: torch.Tensor, max_iter: int = 10000) -> torch.Tensor:
    """Full-batch CAVI (|B| = N, ρ = 1) iterated until (m, s) moves by less than 1e-13."""
    full = torch.arange(y.shape[0])
    state = classical(y, full[None], [1.0])[-1]
    for _ in range(max_iter):
        new = classical_from(y, state)
        if (new - state).abs().max() < 1e-13:
            return new
        state = new
    return state


def classical_from(y: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """One full-batch CAVI sweep from (m, s): s' = δ + Σφ_ik, m' = (δμ₀ + Σφ_ik y_i)/s'."""
    s = state[1]
    phi = _local_phi(y, s * state[0], -0.5 * s)
    s_new = DELTA + phi.sum(0)
    return torch.stack([(DELTA * MU0 + (phi * y[:, None]).sum(0)) / s_new, s_new])


# ---------------------------------------------------------------------------- BLR
def local_loss(yb: torch.Tensor, mean_g: expfam.DiagMean):
    """μ_z ↦ E_q[ℓ̄] over the minibatch's z: Σ_k φ_ik(½(y_i² − 2y_iE[μ_k] + E[μ_k²]) − log π_k)."""
    c = 0.5 * (yb[:, None] ** 2 - 2 * yb[:, None] * mean_g.mu1 + mean_g.mu2)
    c = c - torch.log(torch.tensor(PI, dtype=yb.dtype))

    def loss(mean: expfam.CategoricalMean) -> torch.Tensor:
        phi = torch.cat([mean.mu1, 1 - mean.mu1.sum(-1, keepdim=True)], dim=-1)
        return (phi * c).sum(-1)

    return loss


def global_loss(yb: torch.Tensor, phi: torch.Tensor, scale: float):
    """μ_g ↦ (N/|B|)Σ_{i∈B}Σ_k φ_ik ½(y_i² − 2y_iμ₁ₖ + μ₂ₖ), the minibatch's E_q[Σℓ_i]."""

    def loss(mean: expfam.DiagMean) -> torch.Tensor:
        y = yb[:, None]
        return scale * 0.5 * (phi * (y * y - 2 * y * mean.mu1 + mean.mu2)).sum()

    return loss


def blr_instance(y: torch.Tensor, batches: torch.Tensor, rhos: list[float]) -> torch.Tensor:
    """BLR: local Categorical blocks at ρ = 1, then the global diagonal-Gaussian block with the
    conjugate prior λ₀ of N(μ₀, 1/δ) at ρ_t (both with :class:`blr.Exact`); (m, s) iterates."""
    cat, gauss = expfam.Categorical(), expfam.DiagGaussian()
    k = len(M0)
    nat_g = gauss.from_moments(torch.tensor(M0, dtype=F64), torch.tensor(S0, dtype=F64))
    prior = gauss.from_moments(torch.full((k,), MU0, dtype=F64), torch.full((k,), DELTA, dtype=F64))
    out = [torch.stack(gauss.to_moments(nat_g))]
    for idx, rho in zip(batches, rhos):
        yb = y[idx]
        nat_z = expfam.CategoricalNat(torch.zeros(yb.shape[0], k - 1, dtype=F64))
        nat_z = blr.step(
            cat, nat_z, local_loss(yb, gauss.nat_to_mean(nat_g)), 1.0, estimator=blr.Exact()
        )
        mu_z = cat.nat_to_mean(nat_z).mu1
        phi = torch.cat([mu_z, 1 - mu_z.sum(-1, keepdim=True)], dim=-1)
        scale = y.shape[0] / yb.shape[0]
        nat_g = blr.step(
            gauss, nat_g, global_loss(yb, phi, scale), rho, estimator=blr.Exact(), prior=prior
        )
        out.append(torch.stack(gauss.to_moments(nat_g)))
    return torch.stack(out)


def check(device: str = "cpu") -> list[Comparison]:
    """BLR vs hand-coded SVI under the same minibatches, the end point vs CAVI, and the full
    batch at ρ = 1 vs CAVI (CPU float64; ``device`` is unused)."""
    y = data()
    gen = torch.Generator().manual_seed(0)
    batches = torch.stack([torch.randperm(y.shape[0], generator=gen)[:BATCH] for _ in range(STEPS)])
    rhos = [schedule(t) for t in range(STEPS)]
    svi = classical(y, batches, rhos)
    ours = blr_instance(y, batches, rhos)
    cavi = cavi_fixed_point(y)
    full = torch.arange(y.shape[0]).expand(CAVI_SWEEPS, -1)
    ones = [1.0] * CAVI_SWEEPS
    return [
        Comparison(
            f"BLR vs hand-coded SVI (same minibatches), (m, s), {STEPS} steps (relative)",
            ((ours - svi).abs() / svi.abs()).max().item(),
            1e-12,
        ),
        Comparison(
            f"full batch, ρ = 1: BLR vs hand-coded CAVI, {CAVI_SWEEPS} sweeps (relative)",
            ((blr_instance(y, full, ones) - classical(y, full, ones)).abs() / cavi.abs())
            .max()
            .item(),
            1e-12,
        ),
        Comparison(
            f"BLR after {STEPS} SVI steps: |m − m_CAVI|",
            (ours[-1, 0] - cavi[0]).abs().max().item(),
            0.05,
            kind="limit",
        ),
        Comparison(
            f"BLR after {STEPS} SVI steps: |s − s_CAVI| / s_CAVI",
            ((ours[-1, 1] - cavi[1]).abs() / cavi[1]).max().item(),
            0.05,
            kind="limit",
        ),
    ]


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "global_loss(yb, phi, scale), rho,",
        "global_loss(yb, phi, scale), 1.01 * rho,",
        "BLR global step ρ_t × 1.01",
    ),
    Mutation(
        "blr",
        "term",
        "blr_instance",
        "scale = y.shape[0] / yb.shape[0]",
        "scale = 1.0",
        "BLR minibatch loss without the N/|B| scale",
    ),
    Mutation(
        "blr",
        "term",
        "local_loss",
        "c = c - torch.log(torch.tensor(PI, dtype=yb.dtype))",
        "c = c",
        "BLR local E_q[ℓ_i] without −log π_k",
    ),
    Mutation(
        "blr",
        "term",
        "blr_instance",
        "torch.full((k,), MU0, dtype=F64)",
        "torch.zeros(k, dtype=F64)",
        "BLR prior mean μ₀ dropped (prior N(0, 1/δ))",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "hat2 = -0.5 * (DELTA +",
        "hat2 = -0.5 * (1.01 * DELTA +",
        "SVI prior precision δ × 1.01 in λ̂",
    ),
    Mutation(
        "classical",
        "term",
        "_local_phi",
        "logits = torch.log(torch.tensor(PI, dtype=y.dtype)) + ",
        "logits = ",
        "SVI local φ without log π_k",
    ),
)
