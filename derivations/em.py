r"""Expectation–maximization is the BLR on q(z)q(θ) with ρ = 1 per block and the delta method
for the parameters θ.

**Family.** Mean field q(z, θ) = Π_i q(z_i) · q(θ): each q(z_i) a Categorical over the K
components in its minimal form (λ_ik = log(r_ik/r_iK), μ_ik = r_ik, k < K, ∇_μ(−H) = λ), and
q(θ) = N(m, S⁻¹) over the component means (full Gaussian, λ = (Sm, −½S)). The Fisher matrix is
block diagonal, so the BLR splits into one rule per block.

**Rule.** ℓ̄(z, θ) = −log p(y, z | θ) − log p₀(θ). The delta method for θ replaces every
E_{q(θ)}[φ(θ)] by φ(m).

- E-block (ρ = 1): E_{q(z)}[ℓ̄(z, m)] = Σ_i Σ_k r_ik c_ik with c_ik = −log π_k − log N(y_i | m_k, 1)
  is linear in μ_z = r, so λ_ik ← −(c_ik − c_iK) = log(π_kN(y_i|m_k)/(π_KN(y_i|m_K))): q(z_i) =
  p(z_i | y_i, θ = m), the E-step.
- θ-block (ρ = 1, delta method): the Gaussian BLR S ← (1−ρ)S + ρ∇²ℓ̄_r(m),
  m ← m − ρS⁻¹∇ℓ̄_r(m), with ℓ̄_r(θ) = E_{q(z)}[ℓ̄(z, θ)] = −Q(θ), is one Newton step on the EM
  objective Q. For Gaussian components with known variances Q is quadratic, the Newton step is
  the exact M-step m_k = Σ_i r_ik y_i / (δ + Σ_i r_ik), and S = −∇²Q = diag(δ + Σ_i r_ik).

**Equality conditions.** ρ = 1 for both blocks, the E-block first, the delta method for θ, and a
Q quadratic in θ (Gaussian means, known variances, fixed π) ⇒ one BLR sweep = one EM iteration,
from any S. For a non-quadratic Q the θ-block is one Newton step (generalized EM); iterating it
to convergence gives the exact M-step. With exact E_{q(θ)} instead of the delta method the E-block
picks up the variance term −½/S_kk: that is variational EM (rows 14 and 15).

**Test problem** (BLR_SPEC Row 13). 1-D mixture of two unit-variance Gaussians with π = (½, ½)
fixed, prior N(0, 1/δ) on each mean, δ = 0.1; 200 points, 100 from N(−2, 1) then 100 from
N(2, 1) (``numpy.random.default_rng(0)``); m₀ = (−1, 1), S₀ = I. For 100 sweeps the BLR means,
responsibilities and precision equal hand-coded EM (≤ 1e-12); the EM objective never decreases
(up to rounding, 1e-10); after 100 sweeps the means are EM's fixed point (iterated until a step
is below 1e-15) to 1e-12. For this seed the fixed point is m = (−1.8656445583, 1.9799857434);
the spec's ≈ (−2.03, 2.05) belongs to its own, unrecorded seed.

**References.** Khan & Rue (2023), Table 1 row 13; Dempster, Laird & Rubin (1977);
Neal & Hinton (1998), a view of EM as coordinate ascent on a free energy.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp
import torch

import blr
import expfam
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="em",
    number=13,
    algorithm="Expectation–Maximization",
    posterior="exp-family (latents) × Gaussian (parameters)",
    approximation="delta method (parameters), ρ = 1",
    symbolic="✓",
)

F64 = torch.float64
DELTA = 0.1
PI = (0.5, 0.5)
M0 = (-1.0, 1.0)
SWEEPS = 100
PINNED = (-1.8656445583, 1.9799857434)  # EM's fixed point for data(), to 10 decimals


def data() -> torch.Tensor:
    """200 points: 100 from N(−2, 1) then 100 from N(2, 1), numpy default_rng(0)."""
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.normal(-2.0, 1.0, 100), rng.normal(2.0, 1.0, 100)])
    return torch.from_numpy(y).to(F64)


def derive() -> list[str]:
    """E-block at ρ = 1 = Bayes' rule for z; Categorical ∇_μ(−H) = λ; θ-block Newton at ρ = 1
    = the M-step m_k = Σr_ik y_i/(δ + Σr_ik), from any (m, S)."""
    # Categorical, K = 3: A = log(1 + e^λ₁ + e^λ₂), μ = softmax, F⁻¹∇_λ(−H) = λ
    l1, l2 = sp.symbols("lambda_1 lambda_2", real=True)
    a_cat = sp.log(1 + sp.exp(l1) + sp.exp(l2))
    mu = [sp.diff(a_cat, v) for v in (l1, l2)]
    assert sp.simplify(mu[0] - sp.exp(l1) / (1 + sp.exp(l1) + sp.exp(l2))) == 0
    neg_h = l1 * mu[0] + l2 * mu[1] - a_cat
    fisher = sp.Matrix(2, 2, lambda i, j: sp.diff(mu[i], (l1, l2)[j]))
    grad = sp.Matrix([sp.diff(neg_h, v) for v in (l1, l2)])
    assert sp.simplify(grad - fisher * sp.Matrix([l1, l2])) == sp.zeros(2, 1)
    # E-block, K = 2: E_{q(z)}[ℓ̄(z, m)] = r c₁ + (1 − r) c₂ (μ = r), ρ = 1: λ' = λ − (∇_μ + λ)
    y, m1, m2, p1, r, lam = sp.symbols("y m_1 m_2 pi_1 r lambda", real=True)

    def normal(mk: sp.Symbol) -> sp.Expr:
        return sp.exp(-((y - mk) ** 2) / 2) / sp.sqrt(2 * sp.pi)

    c1, c2 = -sp.log(p1) - sp.log(normal(m1)), -sp.log(1 - p1) - sp.log(normal(m2))
    e_z = r * c1 + (1 - r) * c2
    lam_new = lam - (sp.diff(e_z, r) + lam)
    bayes = p1 * normal(m1) / (p1 * normal(m1) + (1 - p1) * normal(m2))
    assert sp.simplify(1 / (1 + sp.exp(-lam_new)) - bayes) == 0
    # θ-block: 3 points, responsibilities r_i (component 1) and 1 − r_i (component 2)
    ys, rs = sp.symbols("y1:4", real=True), sp.symbols("r1:4", positive=True)
    delta = sp.Symbol("delta", positive=True)
    th = sp.symbols("theta_1 theta_2", real=True)
    ell_r = (
        sum(ri * (yi - th[0]) ** 2 / 2 + (1 - ri) * (yi - th[1]) ** 2 / 2 for yi, ri in zip(ys, rs))
        + delta * (th[0] ** 2 + th[1] ** 2) / 2
    )
    m = sp.Matrix(sp.symbols("m_a m_b", real=True))
    s11, s12, s22, rho = sp.symbols("s11 s12 s22 rho", positive=True)
    s_old = sp.Matrix([[s11, s12], [s12, s22]])
    at_m = dict(zip(th, m))
    g = sp.Matrix([sp.diff(ell_r, v) for v in th]).subs(at_m)
    h = sp.hessian(ell_r, th).subs(at_m)
    # λ' = (1 − ρ)λ − ρ(ĝ − Ĥm, ½Ĥ) at ρ = 1
    lam1 = ((1 - rho) * s_old * m - rho * (g - h * m)).subs(rho, 1)
    prec = (-2 * ((1 - rho) * (-s_old / 2) - rho * h / 2)).subs(rho, 1)
    m_new = prec.inv() * lam1
    n1 = sum(rs)
    n2 = sum(1 - ri for ri in rs)
    m_step = sp.Matrix(
        [
            sum(ri * yi for yi, ri in zip(ys, rs)) / (delta + n1),
            sum((1 - ri) * yi for yi, ri in zip(ys, rs)) / (delta + n2),
        ]
    )
    assert sp.simplify(m_new - m_step) == sp.zeros(2, 1)
    assert sp.simplify(prec - sp.diag(delta + n1, delta + n2)) == sp.zeros(2, 2)
    return [
        "Categorical (K = 3): μ = ∇A = softmax and F⁻¹∇_λ(−H) = λ",
        "E-block, ρ = 1: λ = −∂_r E_{q(z)}[ℓ̄(z, m)] gives σ(λ) = π₁N(y|m₁)/Σ_kπ_kN(y|m_k) = "
        "p(z = 1 | y, θ = m)",
        "θ-block, delta method, ρ = 1, from any (m, S): S = δ + Σ_i r_ik (diagonal) and "
        "m_k = Σ_i r_ik y_i / (δ + Σ_i r_ik), the M-step (3 symbolic points)",
    ]


# ---------------------------------------------------------------------------- classical
def classical(y: torch.Tensor, m0: torch.Tensor, sweeps: int):
    """Hand-coded EM: r_ik ∝ π_k N(y_i | m_k, 1), m_k = Σ_i r_ik y_i / (δ + Σ_i r_ik).
    Returns the means (sweeps+1, K) and the responsibilities of each sweep (sweeps, N, K)."""
    log_pi = torch.log(torch.tensor(PI, dtype=y.dtype))
    m, means, resp = m0, [m0], []
    for _ in range(sweeps):
        logits = log_pi - 0.5 * (y[:, None] - m) ** 2
        w = torch.exp(logits - logits.max(-1, keepdim=True).values)
        r = w / w.sum(-1, keepdim=True)
        m = (r * y[:, None]).sum(0) / (DELTA + r.sum(0))
        means.append(m)
        resp.append(r)
    return torch.stack(means), torch.stack(resp)


def em_objective(y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """log p(y | m) + log p₀(m) (up to a constant), the objective EM ascends."""
    log_pi = torch.log(torch.tensor(PI, dtype=y.dtype))
    logits = log_pi - 0.5 * (y[:, None] - m) ** 2 - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(logits, -1).sum() - 0.5 * DELTA * (m**2).sum()


def em_fixed_point(y: torch.Tensor, m0: torch.Tensor, max_iter: int = 5000) -> torch.Tensor:
    """EM iterated until a step changes the means by less than 1e-15."""
    m = m0
    for _ in range(max_iter):
        new = classical(y, m, 1)[0][-1]
        if (new - m).abs().max() < 1e-15:
            return new
        m = new
    return m


# ---------------------------------------------------------------------------- BLR
def e_block_loss(y: torch.Tensor, m: torch.Tensor):
    """μ_z ↦ E_{q(z)}[ℓ̄(z, m)] = Σ_k r_ik (½(y_i − m_k)² − log π_k) per point (delta method:
    θ = m); r_iK = 1 − Σ_{k<K} μ_ik."""
    c = 0.5 * (y[:, None] - m) ** 2 - torch.log(torch.tensor(PI, dtype=y.dtype))

    def loss(mean: expfam.CategoricalMean) -> torch.Tensor:
        r = torch.cat([mean.mu1, 1 - mean.mu1.sum(-1, keepdim=True)], dim=-1)
        return (r * c).sum(-1)

    return loss


def theta_block_loss(y: torch.Tensor, r: torch.Tensor):
    """θ ↦ E_{q(z)}[ℓ̄(z, θ)] = Σ_i Σ_k r_ik ½(y_i − θ_k)² + ½δ‖θ‖² (vectorized over draws)."""

    def loss(theta: torch.Tensor) -> torch.Tensor:
        resid = y[:, None] - theta[..., None, :]
        return 0.5 * (r * resid**2).sum((-2, -1)) + 0.5 * DELTA * (theta**2).sum(-1)

    return loss


def blr_instance(y: torch.Tensor, m0: torch.Tensor, sweeps: int):
    """BLR sweeps: Categorical E-block (:class:`blr.Exact`, ρ = 1), then the Gaussian θ-block
    (:class:`blr.Delta`, ρ = 1). Returns means (sweeps+1, K), responsibilities (sweeps, N, K)
    and precisions (sweeps, K, K)."""
    cat, gauss = expfam.Categorical(), expfam.FullGaussian()
    k = m0.shape[0]
    nat_z = expfam.CategoricalNat(torch.zeros(y.shape[0], k - 1, dtype=F64))
    nat_t = gauss.from_moments(m0, torch.eye(k, dtype=F64))
    means, resp, precs = [m0], [], []
    for _ in range(sweeps):
        m = gauss.location(nat_t)
        nat_z = blr.step(cat, nat_z, e_block_loss(y, m), 1.0, estimator=blr.Exact())
        mu_z = cat.nat_to_mean(nat_z).mu1
        r = torch.cat([mu_z, 1 - mu_z.sum(-1, keepdim=True)], dim=-1)
        nat_t = blr.step(gauss, nat_t, theta_block_loss(y, r), 1.0, estimator=blr.Delta())
        m, prec = gauss.to_moments(nat_t)
        means.append(m)
        resp.append(r)
        precs.append(prec)
    return torch.stack(means), torch.stack(resp), torch.stack(precs)


def check(device: str = "cpu") -> list[Comparison]:
    """BLR sweeps vs EM (means, responsibilities, precision), the monotone EM objective and the
    fixed point (CPU float64; ``device`` is unused)."""
    y = data()
    m0 = torch.tensor(M0, dtype=F64)
    em_means, em_resp = classical(y, m0, SWEEPS)
    means, resp, precs = blr_instance(y, m0, SWEEPS)
    want_prec = torch.diag_embed(DELTA + em_resp.sum(1))
    objective = torch.stack([em_objective(y, m) for m in means])
    fixed = em_fixed_point(y, m0)
    pinned = torch.tensor(PINNED, dtype=F64)
    return [
        Comparison(
            f"BLR sweep vs EM iteration, means, {SWEEPS} sweeps",
            (means - em_means).abs().max().item(),
            1e-12,
        ),
        Comparison(
            f"E-block (ρ = 1) vs EM responsibilities, {SWEEPS} sweeps",
            (resp - em_resp).abs().max().item(),
            1e-12,
        ),
        Comparison(
            "θ-block precision S vs −∇²Q = diag(δ + Σ_i r_ik) (relative)",
            ((precs - want_prec).abs().max() / want_prec.abs().max()).item(),
            1e-12,
        ),
        Comparison(
            "EM objective log p(y, m) + log p₀(m) along the BLR sweeps: largest decrease",
            max(0.0, -(objective[1:] - objective[:-1]).min().item()),
            1e-10,
        ),
        Comparison(
            f"BLR after {SWEEPS} sweeps vs EM fixed point",
            (means[-1] - fixed).abs().max().item(),
            1e-12,
        ),
        Comparison(
            f"EM fixed point vs pinned {PINNED} (this seed)",
            (fixed - pinned).abs().max().item(),
            1e-9,
            kind="limit",
        ),
    ]
