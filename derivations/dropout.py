r"""Dropout (DropConnect with weight decay) is the BLR on a spike-and-slab mixture of Gaussians
with the keep probability and the component variance fixed, a sampled mask for the
responsibility, and the delta method σ² → 0.

**Family.** Per weight j, q(θ_j) = p N(θ_j | m_j, σ²) + (1 − p) N(θ_j | 0, σ²), with p and σ²
fixed and m learnable; q(θ) = Π_j q(θ_j). As the joint family of (θ_j, z_j) (Lin, Khan & Schmidt,
2019), T = (z_j, z_jθ_j) with θ_j² in the base measure; holding p = E[z_j] fixed, the only block
that is stepped is T = z_jθ_j, with natural parameter λ_j = m_j/σ² and expectation parameter
μ_j = E[z_jθ_j] = p m_j, so ∇_μ = (1/p)∇_m. The objective keeps the entropy of the marginal
q(θ), not of the joint. The row's :class:`SpikeAndSlab` is that family: μ ↔ λ, a
reparameterized sampler θ = z⊙m + σε (z_j ~ Bernoulli(p), ε ~ N(0, I)), the marginal entropy and
its natural gradient

    ∇_μ(−H) = −λ ⊙ E_{N(m, σ²)}[r₀(θ)],   r₀(θ) = (1 − p)N(θ | 0, σ²)/q(θ)

(r₀ the spike's responsibility). It follows from ∂H/∂m = −∫∂_m q · log q (as ∫∂_m q = 0),
∂_m q = −p ∂_θN(θ | m, σ²), integration by parts (Bonnet) and ∂_θ log q = −(θ − (1 − r₀)m)/σ²:
∂H/∂m = (p m/σ²) E_{N(m,σ²)}[r₀]. With θ = m + σu, r₀ = sigmoid(log((1 − p)/p) − t²/2 − tu),
t = m/σ; the family evaluates E_u[r₀] with a 2048-node trapezoid rule on [−8, 8] (exactly 0 once
the spike's share underflows, as at σ² = 1e-30).

**Rule.** Each step is :func:`blr.step` on that family with ρ = αp/σ²: the data loss is
differentiated by the generic :class:`blr.Reparam` (one (z, ε) draw per step, μ the autograd
leaf, through the family's μ → λ and sampler: ∇_μ ℓ̄(z⊙μ/p + σε) = (1/p) z⊙∇ℓ̄(θ)); the prior
R = (δ/2)‖θ‖² is exact, E_q[R] = (δ/2)Σ_j(p m_j² + σ²) = (δ/2)Σ_j(μ_j²/p + σ²) differentiated by
:class:`blr.Exact`; the row's :class:`Sum` adds the two estimates; the engine adds ∇_μ(−H) from
the family. On m = σ²λ this is

    m ← m − α[z⊙∇ℓ̄_data(z⊙m + σε) + pδm − p(m/σ²) E_{N(m,σ²)}[r₀]],   α = ρσ²/p.

Sampling z instead of weighting by the responsibility q(z_j = 1 | θ_j) is unbiased
(Σ_z P(z) z φ(zm + σε) = p φ(m + σε) = E_q[r₁φ]). In the delta-method limit σ² → 0 with α held
fixed the σε term vanishes, and so does the entropy term for every m:
E_u[r₀] ≤ Φ(−|t|/2)/p (split the integral at u = −t/2, use sigmoid(x) ≤ min(1, eˣ)), so
|∂H/∂m| ≤ (|m|/σ²) Φ(−|m|/2σ) → 0 (and ∂H/∂m = 0 at m = 0). What is left is

    m_{t+1} = m_t − α[z_t⊙∇ℓ̄_data(z_t⊙m_t) + pδm_t]:

SGD on the dropped-out loss with weight decay pδ (non-inverted DropConnect). :func:`derive`
proves every step of this in sympy (the family's maps, the estimator's chain rule, the prior, the
entropy gradient, the bound and its limit, the step). For a quadratic loss the BLR's data term is
DropConnect's plus exactly σ z⊙Aε, so away from the limit the iterates differ by σ·v_t plus the
entropy terms: the gap decays like σ.

**Equality conditions.** Same masks z_t (the BLR draws them in its sampler and DropConnect
regenerates them from the same seed: per step u = ``torch.rand((1, D))`` then
ε = ``torch.randn((1, D))`` on one ``torch.Generator``, z = 1[u < p]), m₀ = θ₀, α = ρσ²/p held
fixed while σ² → 0, non-inverted dropout (no 1/p rescaling of the kept weights), the prior
gradient in closed form (pδm; evaluating R at the dropped sample instead gives z⊙δm, with the same
expectation). The per-step limit holds at every m, but uniformly only on |m_j| ≥ c > 0: the
iterates converge when no component of the DropConnect iterates is 0 (other than zeros the BLR
iterates share exactly, e.g. a dropped weight at m₀ = 0). At finite σ the agreement is not an
equality: for |m_j| of order σ the entropy term is of order 1/σ. Inverted dropout is the same
algorithm in w = pm with step α/p² (not tested); unit dropout shares z across a unit's weights
(not tested).

**Test problem.** Linear regression ℓ̄_data = ½‖Xθ − y‖², X 10×3 and y from seed 0, p = 0.8,
δ = 0.1, α = 0.02, 20 steps from random starts (seed 2), the masks of copy c from seed 100 + c.
At σ² = ``SIGMA2`` = 1e-30 (σε and the entropy term below rounding: the spike's responsibility
underflows to 0) the BLR iterates of 3 copies equal hand-coded DropConnect-SGD with decay pδ to
1e-12 (kind "limit"; 1e-15 measured); their DropConnect iterates stay ≥ 0.018 away from 0. On the
ladder σ² = 0.5, 1e-2, 1e-4, 1e-6, 1e-8 (copy 0, whose iterates stay ≥ 0.10 away from 0) the gap
max_t‖m_t − θ_t‖_∞ is 0.81, 0.13, 1.1e-2, 1.1e-3, 1.1e-4: it decreases at every rung, is
≥ 0.5 at σ² = 0.5 (without the σε term it would be 0.045: the entropy term alone), and its
log-log slope in σ between the last two rungs is 1 to 1e-8 (1.5e-13 measured). The limit is not
uniform near 0: where |m_j| comes within a few σ the entropy term pushes the weight away (copy 0
at σ² = 1e-3, min |m_j|/σ = 3.2: up to 0.06 in one step; copy 2, whose DropConnect iterates come
within 0.018 of 0: gap 0.27 at σ² = 1e-4, against 0.13 at 1e-2), and the decay ∝ σ resumes once
σ ≪ min |m_j|. The family's entropy gradient equals autograd of a 400-point
Gauss–Hermite −E_q[log q] (an independent quadrature in θ with ``torch.distributions``) at
σ² = 0.5 and σ² = 0.01 with m of order σ, to 1e-11 (1e-14 measured), and respects the derived
bound on m ∈ [−3, 3] for σ² = 0.5 … 1e-3. All 2³ masks enumerated: Σ_z P(z) z⊙∇ℓ̄(z⊙m) =
∇_m E_z[ℓ̄(z⊙m)]; at σ² = 0.5 (masks and sigma points in ε: exact for a quadratic)
∇_μ E_q[ℓ̄] through the family's μ → λ and sampler equals (1/p)Σ_z P(z) z⊙∇ℓ̄(z⊙m), and
E_q[(δ/2)‖θ‖²] and its ∇_μ equal the closed form. The batched kernel
(:func:`blr.kernels.diag_gaussian_step_`, ρ = 0, s = 1: the σ = 0 path, with the gradient of
ℓ̄_data(z⊙m) + E_q[R] by autograd) runs 64 copies with their own starts and masks and equals
DropConnect-SGD (equality) and the engine at ``SIGMA2`` (limit). The test
``tests/derivations/test_dropout_limit.py`` measures the ladder more finely.

**References.** Khan & Rue (2023), Table 1 row 6 and the dropout derivation of §4;
Srivastava et al. (2014); Wan et al., "DropConnect" (2013); Gal & Ghahramani (2016) for the
weight-decay correspondence; Lin, Khan & Schmidt (ICML 2019) for mixtures as joint exponential
families.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import sympy as sp
import torch
from torch import Tensor

import blr
import expfam
from blr.kernels import diag_gaussian_step_
from blr.quadrature import normal_quadrature, sigma_points
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo
from expfam.base import check_finite

INFO = RowInfo(
    key="dropout",
    number=6,
    algorithm="Dropout",
    posterior="Mixture of Gaussians (spike and slab)",
    approximation="delta, stochastic approx., responsibility ≈ mask",
    symbolic="✓",
)

N_DATA = 10
DIM = 3
KEEP = 0.8
DELTA = 0.1
ALPHA = 0.02
SIGMA2 = 1e-30
STEPS = 20
COPIES = 64
SEED = 100
LADDER = (0.5, 1e-2, 1e-4, 1e-6, 1e-8)
GAP_AT_HALF = 0.5


def derive() -> list[str]:
    """The family's maps and chain rule, the exact prior, the closed-form entropy gradient and its
    bound, the BLR step and its σ² → 0 limit (DropConnect-SGD), and, for a quadratic loss, the
    mask-averaged direction and the O(σ) gap."""
    p, s2, rho, delta, alpha = sp.symbols("p sigma^2 rho delta alpha", positive=True)
    pbar = sp.Symbol("pbar", positive=True)  # 1 − p
    m, mu, th, u, eps, z, t, g, b = sp.symbols("m mu theta u epsilon z t g b", real=True)
    sig = sp.sqrt(s2)
    ell = sp.Function("ell")
    # the family: λ = m/σ², μ = pm ⇒ μ = pσ²λ; sampler θ = z σ²λ(μ) + σε = zμ/p + σε
    lam_of_mu = mu / (p * s2)
    assert sp.simplify(p * s2 * lam_of_mu - mu) == 0
    theta_mu = z * s2 * lam_of_mu + sig * eps
    assert sp.simplify(theta_mu.subs(mu, p * m) - (z * m + sig * eps)) == 0
    d_mu = sp.diff(ell(theta_mu), mu)
    d_theta = sp.diff(ell(th), th).subs(th, theta_mu)
    assert sp.simplify(d_mu - z / p * d_theta) == 0
    # the exact prior: E_q[θ²] = p(m² + σ²) + (1 − p)σ² = pm² + σ², and in μ: μ²/p + σ²
    n1 = sp.exp(-((th - m) ** 2) / (2 * s2)) / sp.sqrt(2 * sp.pi * s2)
    n0 = sp.exp(-(th**2) / (2 * s2)) / sp.sqrt(2 * sp.pi * s2)

    def integral(f, density, mean):  # ∫f(θ)density(θ)dθ with θ = mean + σu, dθ = σ du
        integrand = sp.simplify((f * density).subs(th, mean + sig * u) * sig)
        return sp.integrate(integrand, (u, -sp.oo, sp.oo))

    moment = p * integral(th**2, n1, m) + (1 - p) * integral(th**2, n0, 0)
    assert sp.simplify(moment - (p * m**2 + s2)) == 0
    prior_mu = delta / 2 * (mu**2 / p + s2)
    assert sp.simplify(prior_mu.subs(mu, p * m) - delta / 2 * moment) == 0
    assert sp.simplify(sp.diff(prior_mu, mu).subs(mu, p * m) - delta * m) == 0
    # the entropy gradient of q = p N₁ + p̄ N₀: ∂_m q = −p ∂_θN₁, ∂_θ log q = −(θ − (1 − r₀)m)/σ²
    q = p * n1 + pbar * n0
    r0 = pbar * n0 / q
    assert sp.simplify(sp.diff(q, m) + p * sp.diff(n1, th)) == 0
    assert sp.simplify(sp.diff(sp.log(q), th) + (th - (1 - r0) * m) / s2) == 0
    # ∫N₁ = 1 (so ∫∂_m q = 0), ∫(θ − m)N₁ = 0, and the boundary term N₁ log q → 0: log q lies
    # between log(p̄N₀) and −½log 2πσ² (q/(p̄N₀) − 1 > 0, q ≤ 1/√(2πσ²)), and N₁θ² → 0
    assert sp.simplify(integral(1, n1, m) - 1) == 0
    assert sp.simplify(integral(th - m, n1, m)) == 0
    assert sp.simplify(q / (pbar * n0) - 1).is_positive
    assert all(sp.limit(n1 * th**2, th, end) == 0 for end in (sp.oo, -sp.oo))
    # ⇒ ∂H/∂m = −∫∂_m q log q = p∫∂_θN₁ log q = −p∫N₁ ∂_θ log q = (p/σ²)E_{N₁}[θ − m + r₀m]
    #         = (pm/σ²)E_{N₁}[r₀]
    # r₀ at θ = m + σu is sigmoid(log(p̄/p) − t²/2 − tu) with t = m/σ
    r0_u = sp.simplify(r0.subs(th, m + sig * u))
    logit = sp.log(pbar / p) - t**2 / 2 - t * u
    assert sp.simplify(r0_u - (1 / (1 + sp.exp(-logit))).subs(t, m / sig)) == 0
    # bound: sigmoid(x) ≤ 1 and ≤ eˣ; split E_u at u = b = −t/2 (t > 0; r₀ is even in m)
    x = sp.Symbol("x", real=True)
    assert sp.simplify(1 - 1 / (1 + sp.exp(-x))).is_positive
    assert sp.simplify(sp.exp(x) - 1 / (1 + sp.exp(-x))).is_positive
    tp = sp.Symbol("t", positive=True)
    phi = sp.exp(-(u**2) / 2) / sp.sqrt(2 * sp.pi)
    cdf = sp.Lambda(x, (1 + sp.erf(x / sp.sqrt(2))) / 2)
    tail = sp.integrate(sp.exp(logit.subs(t, tp)) * phi, (u, b, sp.oo))
    bound = cdf(b) + tail
    bound = sp.simplify(bound.subs(b, -tp / 2))
    assert sp.simplify(bound - (1 + pbar / p) * cdf(-tp / 2)) == 0  # = Φ(−t/2)/p as p + p̄ = 1
    grad_bound = p * m / s2 * cdf(-m / (2 * sig)) / p
    mp = sp.Symbol("m", positive=True)
    assert sp.limit(grad_bound.subs(m, mp), s2, 0, "+") == 0
    # the engine's step on λ with ρ = αp/σ²: ∇_μ E_q[ℓ̄] = (z/p)g + δm, ∇_μ(−H) = −λE[r₀]
    er0 = sp.Symbol("R", nonnegative=True)
    lam = m / s2
    lam_new = lam - rho * (z / p * g + delta * m - lam * er0)
    m_new = sp.expand(s2 * lam_new.subs(rho, alpha * p / s2))
    assert sp.expand(m_new - (m - alpha * (z * g + p * delta * m - p * m / s2 * er0))) == 0
    # σ² → 0 with α fixed: the step is DropConnect's at z⊙m + σε plus α·p(m/σ²)E[r₀], whose
    # size is at most α·grad_bound → 0; and g = ℓ'(zm + σε) → ℓ'(zm) (ℓ' continuous)
    entropy_term = p * m / s2 * er0
    assert sp.expand(m_new - (m - alpha * (z * g + p * delta * m)) - alpha * entropy_term) == 0
    assert sp.simplify(entropy_term.subs(er0, cdf(-m / (2 * sig)) / p) - grad_bound) == 0
    dropconnect = m - alpha * (z * sp.diff(ell(th), th).subs(th, z * m) + p * delta * m)
    limit_step = (m_new - alpha * entropy_term).subs(g, d_theta.subs(mu, p * m)).subs(s2, 0)
    assert sp.simplify(limit_step - dropconnect) == 0
    # quadratic ℓ = ½θᵀAθ − bᵀθ in 2-D: exact mixture moments E θ_j = pm_j, E θ_j² = pm_j² + σ²,
    # E θ₁θ₂ = p²m₁m₂ ⇒ ∇_m E_q[ℓ] = Σ_z P(z) z⊙∇ℓ(z⊙m), free of σ²; and the data term at
    # z⊙m + σε is DropConnect's plus exactly σ z⊙Aε (the O(σ) gap)
    a11, a12, a22, b1, b2, m1, m2, e1, e2 = sp.symbols("a11 a12 a22 b1 b2 m1 m2 e1 e2")
    amat, bvec = sp.Matrix([[a11, a12], [a12, a22]]), sp.Matrix([b1, b2])
    mvec, evec = sp.Matrix([m1, m2]), sp.Matrix([e1, e2])
    second = sp.Matrix([[p * m1**2 + s2, p**2 * m1 * m2], [p**2 * m1 * m2, p * m2**2 + s2]])
    expected = sum(amat.multiply_elementwise(second)) / 2 - (bvec.T * p * mvec)[0]
    grad_exact = sp.Matrix([sp.diff(expected, v) for v in (m1, m2)])
    masked = sp.zeros(2, 1)
    for z1, z2 in itertools.product((0, 1), repeat=2):
        prob = (p if z1 else 1 - p) * (p if z2 else 1 - p)
        zvec = sp.Matrix([z1, z2])
        masked += prob * zvec.multiply_elementwise(amat * zvec.multiply_elementwise(mvec) - bvec)
        noisy = zvec.multiply_elementwise(
            amat * (zvec.multiply_elementwise(mvec) + sig * evec) - bvec
        )
        clean = zvec.multiply_elementwise(amat * zvec.multiply_elementwise(mvec) - bvec)
        assert sp.expand(noisy - clean - sig * zvec.multiply_elementwise(amat * evec)) == (
            sp.zeros(2, 1)
        )
    assert sp.expand(grad_exact - masked) == sp.zeros(2, 1)
    assert all(sp.diff(gj, s2) == 0 for gj in grad_exact)
    # responsibility ≈ mask is unbiased: Σ_z P(z) z φ(zm + σε) = pφ(m + σε) = E_q[r₁φ]
    fphi = sp.Function("phi")
    mask_avg = sum(pz * zz * fphi(zz * m + sig * eps) for zz, pz in ((0, 1 - p), (1, p)))
    assert sp.simplify(mask_avg - p * fphi(m + sig * eps)) == 0
    return [
        "joint (θ, z) family, p fixed: λ = m/σ², μ = pm = pσ²λ; sampler θ = zμ/p + σε ⇒ "
        "∇_μ ℓ(θ) = (z/p)∇ℓ(θ)",
        "E_q[(δ/2)θ²] = (δ/2)(pm² + σ²) = (δ/2)(μ²/p + σ²) ⇒ ∇_μ = δm",
        "∂_m q = −p∂_θN(θ|m, σ²), ∂_θ log q = −(θ − (1 − r₀)m)/σ², boundary terms vanish ⇒ "
        "∂H/∂m = (pm/σ²)E_{N(m,σ²)}[r₀], ∇_μ(−H) = −λE[r₀]",
        "r₀(m + σu) = sigmoid(log((1 − p)/p) − t²/2 − tu), t = m/σ; E_u[r₀] ≤ Φ(−|t|/2)/p",
        "|∂H/∂m| ≤ (|m|/σ²)Φ(−|m|/2σ) → 0 as σ² → 0 (m ≠ 0; 0 at m = 0)",
        "engine step with ρ = αp/σ²: m' = m − α[z⊙∇ℓ(z⊙m + σε) + pδm − p(m/σ²)E[r₀]]",
        "σ² → 0 with α fixed: m' = m − α[z⊙∇ℓ(z⊙m) + pδm] (DropConnect-SGD, decay pδ)",
        "2-D quadratic ℓ: ∇_m E_q[ℓ] = Σ_z P(z) z⊙∇ℓ(z⊙m) exactly, free of σ²; the data term "
        "at z⊙m + σε is DropConnect's + σ z⊙Aε (gap O(σ))",
        "responsibility ≈ mask is unbiased: Σ_z P(z)·z·φ(zm + σε) = pφ(m + σε) = E_q[r₁φ]",
    ]


# ---------------------------------------------------------------------------- problem and draws
def data(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """X ``(10, 3)`` and y = Xw + noise, seed 0."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_DATA, DIM, dtype=dtype, generator=gen)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
    y = x @ w + 0.1 * torch.randn(N_DATA, dtype=dtype, generator=gen)
    return x, y


def starts(copies: int = COPIES) -> Tensor:
    """The starting points m₀ = θ₀ of the first ``copies`` copies, ``(copies, D)``: the first rows
    of one ``(64, D)`` standard-normal draw, seed 2."""
    gen = torch.Generator().manual_seed(2)
    return torch.randn(COPIES, DIM, dtype=torch.float64, generator=gen)[:copies]


def mask_sequence(seed: int, steps: int) -> Tensor:
    """The stored masks of one copy, ``(steps, D)``: per step u = rand((1, D)), then
    ε = randn((1, D)) (drawn to keep the generator in step; unused at σ = 0), z = 1[u < p]."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        u = torch.rand((1, DIM), dtype=torch.float64, generator=gen)
        torch.randn((1, DIM), dtype=torch.float64, generator=gen)
        out.append((u[0] < KEEP).to(torch.float64))
    return torch.stack(out)


# ---------------------------------------------------------------------------- classical
def classical(
    theta0: Tensor, x: Tensor, y: Tensor, seed: int, alpha: float, steps: int = STEPS
) -> Tensor:
    """Hand-coded DropConnect-SGD with weight decay pδ, θ ← θ − α[z⊙Xᵀ(X(z⊙θ) − y) + pδθ],
    regenerating its masks from ``seed`` (per step u = rand((1, D)), then randn((1, D)), unused;
    z = 1[u < p]). Returns the iterates ``(steps + 1, D)``."""
    gen = torch.Generator().manual_seed(seed)
    theta, out = theta0, [theta0]
    for _ in range(steps):
        u = torch.rand((1, DIM), dtype=torch.float64, generator=gen)[0]
        torch.randn((1, DIM), dtype=torch.float64, generator=gen)
        z = (u < KEEP).to(theta.dtype)
        resid = x @ (z * theta) - y
        theta = theta - alpha * (z * (x.T @ resid) + KEEP * DELTA * theta)
        out.append(theta)
    return torch.stack(out)


# ---------------------------------------------------------------------------- the family
class SpikeSlabNat(NamedTuple):
    """λ of the slab block: ``lam1 = m/σ²`` (``(*batch, d)``)."""

    lam1: Tensor


class SpikeSlabMean(NamedTuple):
    """μ of the slab block: ``mu1 = E[zθ] = p m``."""

    mu1: Tensor


_TRAPEZOID = 2048


class SpikeAndSlab(expfam.ExpFamily):
    r"""q(θ) = Π_j [p N(θ_j | m_j, σ²) + (1 − p) N(θ_j | 0, σ²)] with p and σ² fixed: the slab
    block z_jθ_j of the joint (θ, z) family, stepped with p held fixed.

    .. math::
        \lambda = m/\sigma^2,\quad \mu = p\,m,\quad
        \theta = z\odot m + \sigma\epsilon,\quad
        \nabla_\mu(-H) = -\lambda\odot\mathbb{E}_{N(m,\sigma^2)}[r_0(\theta)],

    r₀(θ) = (1 − p)N(θ | 0, σ²)/q(θ) the spike's responsibility, H the entropy of the marginal
    q(θ). With θ = m + σu, r₀ = sigmoid(log((1 − p)/p) − t²/2 − tu), t = m/σ: the expectation
    over u ~ N(0, 1) and the entropy are evaluated by a 2048-node trapezoid rule on [−8, 8].

    With p fixed the block is a curved subfamily of the joint family (η = logit p − m²/2σ²
    follows m), so the joint family's log-partition, sufficient statistics, base measure and KL
    are not defined here; :meth:`log_prob` is the marginal log q(θ).

    Args:
        keep: p ∈ (0, 1).
        var: σ² > 0.

    Example:
        >>> import torch
        >>> fam = SpikeAndSlab(keep=0.8, var=0.5)
        >>> nat = SpikeSlabNat(torch.tensor([2.0, -1.0], dtype=torch.float64))  # m = (1, −0.5)
        >>> fam.nat_to_mean(nat).mu1
        tensor([ 0.8000, -0.4000], dtype=torch.float64)
        >>> fam.location(nat)
        tensor([ 1.0000, -0.5000], dtype=torch.float64)
    """

    name = "spike_and_slab"
    nat_type = SpikeSlabNat
    mean_type = SpikeSlabMean
    event_ndims = (1,)
    has_rsample = True

    def __init__(self, keep: float, var: float) -> None:
        if not 0 < keep < 1:
            raise ValueError(f"keep must be in (0, 1), got {keep}")
        if not var > 0:
            raise ValueError(f"var must be > 0, got {var}")
        self.keep, self.var = float(keep), float(var)

    def location(self, nat: SpikeSlabNat) -> Tensor:
        """The slab mean m = σ²λ."""
        return self.var * nat.lam1

    def reparam(self, nat: SpikeSlabNat, z: Tensor, eps: Tensor) -> Tensor:
        """θ = z⊙σ²λ + σε for masks ``z`` (0/1) and standard-normal ``eps``
        (``(*sample, *batch, d)``), differentiable in λ."""
        return z * (self.var * nat.lam1) + math.sqrt(self.var) * eps

    def spike_responsibility(self, nat: SpikeSlabNat) -> Tensor:
        """E_{N(m, σ²)}[r₀(θ)] per weight, r₀ = (1 − p)N(θ | 0, σ²)/q(θ), by the trapezoid rule
        in u = (θ − m)/σ (exactly 0 once the spike's share underflows)."""
        u, w = normal_quadrature(
            _TRAPEZOID, "trapezoid", dtype=nat.lam1.dtype, device=nat.lam1.device
        )
        t = (math.sqrt(self.var) * nat.lam1).unsqueeze(-1)  # m/σ
        logit = math.log((1 - self.keep) / self.keep) - 0.5 * t.square() - t * u
        return (w * torch.sigmoid(logit)).sum(-1)

    def _nat_to_mean(self, nat: SpikeSlabNat) -> SpikeSlabMean:
        return SpikeSlabMean(self.keep * self.var * nat.lam1)

    def _mean_to_nat(self, mean: SpikeSlabMean) -> SpikeSlabNat:
        return SpikeSlabNat(mean.mu1 / (self.keep * self.var))

    def _neg_entropy_grad(self, nat: SpikeSlabNat) -> SpikeSlabNat:
        return SpikeSlabNat(-nat.lam1 * self.spike_responsibility(nat))

    def _entropy(self, nat: SpikeSlabNat) -> Tensor:
        # −E_q[log q] per weight in standardized units: θ = m + σu (slab) or σu (spike)
        u, w = normal_quadrature(
            _TRAPEZOID, "trapezoid", dtype=nat.lam1.dtype, device=nat.lam1.device
        )
        t = (math.sqrt(self.var) * nat.lam1).unsqueeze(-1)
        lp, lq = math.log(self.keep), math.log(1 - self.keep)

        # log q + ½log 2πσ² at θ = m + σu and at θ = σu (never forming t + u − t)
        at_slab = torch.logaddexp(lp - 0.5 * u.square(), lq - 0.5 * (t + u).square())
        at_spike = torch.logaddexp(lp - 0.5 * (u - t).square(), lq - 0.5 * u.square())
        e_log_q = self.keep * (w * at_slab).sum(-1) + (1 - self.keep) * (w * at_spike).sum(-1)
        return (0.5 * math.log(2 * math.pi * self.var) - e_log_q).sum(-1)

    def _log_prob(self, nat: SpikeSlabNat, x: Tensor) -> Tensor:
        m, var = self.location(nat), self.var
        slab = math.log(self.keep) - 0.5 * (x - m).square() / var
        spike = math.log(1 - self.keep) - 0.5 * x.square() / var
        return (torch.logaddexp(slab, spike) - 0.5 * math.log(2 * math.pi * var)).sum(-1)

    def _sample(
        self, nat: SpikeSlabNat, sample_shape: tuple[int, ...], generator: torch.Generator | None
    ) -> Tensor:
        # the documented draw order: u = rand(shape), then ε = randn(shape); z = 1[u < p]
        shape = tuple(sample_shape) + tuple(nat.lam1.shape)
        kw = dict(dtype=nat.lam1.dtype, device=nat.lam1.device, generator=generator)
        u = torch.rand(shape, **kw)
        eps = torch.randn(shape, **kw)
        return self.reparam(nat, (u < self.keep).to(nat.lam1.dtype), eps)

    def _curved(self, what: str):
        raise NotImplementedError(
            f"{what} is not defined for the spike-and-slab block with p fixed (a curved "
            "subfamily of the joint (θ, z) family)"
        )

    def _suff_stats(self, x: Tensor):
        self._curved("T(θ) of the marginal")

    def _log_base_measure(self, x: Tensor):
        self._curved("the base measure of the marginal")

    def _log_partition(self, nat: SpikeSlabNat):
        self._curved("the log-partition")

    def _expected_log_base_measure(self, nat: SpikeSlabNat):
        self._curved("E_q[log h]")

    def _kl(self, nat_p: SpikeSlabNat, nat_q: SpikeSlabNat):
        self._curved("a closed-form KL between mixtures")

    def _check_nat(self, nat: SpikeSlabNat, name: str) -> None:
        check_finite(nat.lam1, f"{name}.lam1")

    def _check_mean(self, mean: SpikeSlabMean, name: str) -> None:
        check_finite(mean.mu1, f"{name}.mu1")

    def example_nat(
        self,
        batch_shape: Sequence[int] = (),
        dim: int = 3,
        *,
        extreme: bool = False,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> SpikeSlabNat:
        """λ = m/σ² with m uniform in [−3, 3] (magnitudes up to 3e3 with ``extreme``)."""
        kw = dict(dtype=dtype, device=device, generator=generator)
        m = 3 * (2 * torch.rand((*batch_shape, dim), **kw) - 1)
        if extreme:
            m = m * 10 ** (3 * torch.rand((*batch_shape, dim), **kw))
        return SpikeSlabNat(m / self.var)


# ---------------------------------------------------------------------------- BLR side
class Sum(blr.Estimator):
    """The sum of estimators, each with its own loss: called with ``loss = (loss_1, ...)``, it
    returns Σ_k ∇_μE_q[ℓ_k] and Σ_k E_q[ℓ_k] (e.g. a Monte Carlo data term plus a closed-form
    prior). The estimators run in order on the same generator.

    Example:
        >>> import torch, expfam, blr
        >>> fam = expfam.FixedCovGaussian()
        >>> nat = expfam.FixedCovNat(torch.tensor([1.0], dtype=torch.float64))
        >>> est = Sum(blr.Delta(), blr.Exact())(
        ...     fam, nat, (lambda th: th.square().sum(-1), lambda mean: 3 * mean.mu1.sum(-1)))
        >>> est.grad.lam1   # 2m + 3
        tensor([5.], dtype=torch.float64)
    """

    def __init__(self, *estimators: blr.Estimator) -> None:
        self.estimators = estimators

    def __call__(self, family, nat, loss, *, generator=None) -> blr.Estimate:
        if len(loss) != len(self.estimators):
            raise ValueError(f"Sum needs {len(self.estimators)} losses, got {len(loss)}")
        parts = [e(family, nat, f, generator=generator) for e, f in zip(self.estimators, loss)]
        grad = [sum(fields) for fields in zip(*(part.grad for part in parts))]
        return blr.Estimate(family.nat_type(*grad), sum(part.value for part in parts))


def data_loss(x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
    """θ ↦ ½‖Xθ − y‖², vectorized over leading dimensions."""
    return lambda theta: 0.5 * (theta @ x.T - y).square().sum(-1)


def expected_prior(keep: float, var: float) -> Callable[[SpikeSlabMean], Tensor]:
    """μ ↦ E_q[(δ/2)‖θ‖²] = (δ/2)Σ_j(μ_j²/p + σ²), the prior in closed form (for
    :class:`blr.Exact`)."""
    return lambda mean: 0.5 * DELTA * (mean.mu1.square() / keep + var).sum(-1)


def blr_instance(
    m0: Tensor, x: Tensor, y: Tensor, seed: int, alpha: float, sigma2: float | None = None
) -> Tensor:
    """:func:`blr.step` on :class:`SpikeAndSlab` ``(KEEP, sigma2)`` with ρ = αp/σ², the data loss
    by :class:`blr.Reparam` ``(1)`` (one draw per step from a generator seeded with ``seed``)
    and the prior by :class:`blr.Exact`; returns the slab means m_t, ``(STEPS + 1, D)``.
    ``sigma2`` defaults to the module's ``SIGMA2``."""
    sigma2 = SIGMA2 if sigma2 is None else sigma2
    fam = SpikeAndSlab(keep=KEEP, var=sigma2)
    nat = SpikeSlabNat(m0 / sigma2)
    rho = alpha * KEEP / sigma2
    losses = (data_loss(x, y), expected_prior(KEEP, sigma2))
    estimator = Sum(blr.Reparam(1), blr.Exact())
    gen = torch.Generator().manual_seed(seed)
    out = [fam.location(nat)]
    for _ in range(STEPS):
        nat = blr.step(fam, nat, losses, rho, estimator=estimator, generator=gen)
        out.append(fam.location(nat))
    return torch.stack(out)


def kernel_instance(m0: Tensor, x: Tensor, y: Tensor, z: Tensor, alpha: float) -> Tensor:
    """The batched kernel on B copies (``m0`` ``(B, D)``, ``z`` ``(B, steps, D)``), the σ = 0
    path: s = 1 fixed, ĝ = ∇_m[ℓ̄_data(z⊙m) + E_q[R]] by autograd (μ = pm), mean rate α."""
    x, y, z = x.to(m0.device), y.to(m0.device), z.to(m0.device)
    m, s = m0.clone(), torch.ones_like(m0)
    loss, prior = data_loss(x, y), expected_prior(KEEP, 0.0)
    out = [m.clone()]
    for t in range(z.shape[1]):
        theta = m.clone().requires_grad_()
        with torch.enable_grad():
            value = loss(z[:, t] * theta) + prior(SpikeSlabMean(KEEP * theta))
            (g,) = torch.autograd.grad(value.sum(), theta)
        diag_gaussian_step_(m, s, g, None, rho=0.0, lr=alpha)
        out.append(m.clone())
    return torch.stack(out, 1)


# ---------------------------------------------------------------------------- checks
def entropy_oracle(mu: Tensor, keep: float, var: float, n_points: int = 400) -> Tensor:
    """H(q) = −Σ_j E_{q_j}[log q_j(θ)] by Gauss–Hermite in θ (``torch.distributions`` densities),
    as a function of μ = pm: the independent oracle of the family's entropy gradient."""
    z, w = normal_quadrature(n_points, dtype=mu.dtype)
    sigma = math.sqrt(var)
    m = (mu / keep).unsqueeze(-1)
    normal = torch.distributions.Normal

    def log_q(theta: Tensor) -> Tensor:
        return torch.logaddexp(
            math.log(keep) + normal(m, sigma).log_prob(theta),
            math.log(1 - keep) + normal(torch.zeros_like(m), sigma).log_prob(theta),
        )

    slab, spike = m + sigma * z, (sigma * z).expand_as(m + z)
    return -(keep * (w * log_q(slab)).sum(-1) + (1 - keep) * (w * log_q(spike)).sum(-1)).sum(-1)


def _phi(x: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-x / math.sqrt(2))


def _entropy_checks() -> list[Comparison]:
    worst = 0.0
    for var, m in ((0.5, (0.7, -1.2, 0.4)), (0.01, (0.1, -0.05, 0.3))):
        mu = KEEP * torch.tensor(m, dtype=torch.float64)
        fam = SpikeAndSlab(keep=KEEP, var=var)
        closed = fam.neg_entropy_grad(fam.mean_to_nat(SpikeSlabMean(mu))).lam1
        leaf = mu.clone().requires_grad_()
        (grad_h,) = torch.autograd.grad(entropy_oracle(leaf, KEEP, var), leaf)
        worst = max(worst, (closed + grad_h).abs().max().item())
    violation = 0.0
    m_grid = torch.linspace(-3.0, 3.0, 61, dtype=torch.float64)
    for var in (0.5, 0.1, 1e-2, 1e-3):
        fam = SpikeAndSlab(keep=KEEP, var=var)
        dh_dm = -KEEP * fam.neg_entropy_grad(SpikeSlabNat(m_grid / var)).lam1  # ∂H/∂m
        bound = m_grid.abs() / var * _phi(-m_grid.abs() / (2 * math.sqrt(var)))
        violation = max(violation, (dh_dm.abs() - bound).clamp(min=0).max().item())
    return [
        Comparison(
            "∇_μ(−H): closed form −λE[r₀] vs autograd of Gauss–Hermite −E_q[log q] "
            "(σ² = 0.5 and 0.01, m of order σ)",
            worst,
            1e-11,
            kind="limit",
        ),
        Comparison(
            "|∂H/∂m| ≤ (|m|/σ²)Φ(−|m|/2σ) on m ∈ [−3, 3], σ² = 0.5 … 1e-3 (violation)",
            violation,
            1e-15,
            kind="bound",
        ),
    ]


def _all_masks(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The 2^D masks and their probabilities Π_j p^{z_j}(1 − p)^{1−z_j}."""
    z = torch.tensor(list(itertools.product((0.0, 1.0), repeat=DIM)), dtype=dtype)
    keep = torch.tensor(KEEP, dtype=dtype)
    prob = torch.where(z > 0, keep, 1 - keep).prod(-1)
    return z, prob


def _enumeration(x: Tensor, y: Tensor) -> list[Comparison]:
    var = 0.5
    m = torch.tensor([0.7, -1.2, 0.4], dtype=torch.float64)
    loss = data_loss(x, y)
    z, prob = _all_masks(m.dtype)
    masked = torch.stack([zk * (x.T @ (x @ (zk * m) - y)) for zk in z])
    masked_mean = (prob.unsqueeze(-1) * masked).sum(0)
    leaf = m.clone().requires_grad_()
    (grad_dropped,) = torch.autograd.grad((prob * loss(z * leaf)).sum(), leaf)
    # E_q over all masks and the sigma points of ε, through the family's μ → λ and sampler
    fam = SpikeAndSlab(keep=KEEP, var=var)
    eps, w = sigma_points(DIM, dtype=m.dtype)
    zz, epsz = z.unsqueeze(1), eps.unsqueeze(0)  # (2^D, 1, D), (1, 2D, D)
    weight = prob.unsqueeze(1) * w  # (2^D, 2D)
    mu = (KEEP * m).requires_grad_()

    def expectation(fn: Callable[[Tensor], Tensor]) -> Tensor:
        lam = fam.mean_to_nat(SpikeSlabMean(mu), validate=False)  # μ is the autograd leaf
        theta = fam.reparam(lam, zz, epsz)
        return (weight * fn(theta)).sum()

    (grad_mu,) = torch.autograd.grad(expectation(loss), mu)
    prior_value = expectation(lambda th: 0.5 * DELTA * th.square().sum(-1))
    (grad_prior,) = torch.autograd.grad(prior_value, mu)
    closed = expected_prior(KEEP, var)(SpikeSlabMean(mu))
    (grad_closed,) = torch.autograd.grad(closed, mu)
    return [
        Comparison(
            "all 2³ masks: Σ_z P(z) z⊙∇ℓ(z⊙m) vs ∇_m E_z[ℓ(z⊙m)]",
            (masked_mean - grad_dropped).abs().max().item(),
            1e-12,
        ),
        Comparison(
            "σ² = 0.5, masks × sigma points: ∇_μ E_q[ℓ] through the family vs "
            "(1/p)Σ_z P(z) z⊙∇ℓ(z⊙m)",
            (grad_mu - masked_mean / KEEP).abs().max().item(),
            1e-12,
        ),
        Comparison(
            "σ² = 0.5: E_q[(δ/2)‖θ‖²] and ∇_μ by enumeration vs the closed form (δ/2)Σ(μ²/p + σ²)",
            max(
                (grad_prior - grad_closed).abs().max().item(),
                abs(prior_value.item() - closed.item()),
            ),
            1e-12,
        ),
    ]


def _gap(m0: Tensor, x: Tensor, y: Tensor, sgd: Tensor, sigma2: float) -> float:
    return (blr_instance(m0, x, y, SEED, ALPHA, sigma2) - sgd).abs().max().item()


def check(device: str = "cpu") -> list[Comparison]:
    """BLR-dropout at σ² = SIGMA2 vs hand-coded DropConnect-SGD, the σ² ladder (gap at 0.5, its
    decay and rate), the entropy gradient vs its oracle and bound, the mask enumeration, and the
    batched kernel."""
    x, y = data()
    m0 = starts()
    sgd = torch.stack([classical(m0[c], x, y, SEED + c, ALPHA) for c in range(COPIES)])
    engine = torch.stack([blr_instance(m0[c], x, y, SEED + c, ALPHA) for c in range(3)])
    z_all = torch.stack([mask_sequence(SEED + c, STEPS) for c in range(COPIES)])
    kernel = kernel_instance(m0.to(device), x, y, z_all, ALPHA).cpu()
    gaps = [_gap(m0[0], x, y, sgd[0], s2) for s2 in LADDER]
    rises = max(b - a for a, b in itertools.pairwise(gaps))
    slope = math.log(gaps[-2] / gaps[-1]) / (0.5 * math.log(LADDER[-2] / LADDER[-1]))
    return [
        Comparison(
            "BLR-dropout (σ² = SIGMA2) vs DropConnect-SGD + decay pδ, 3 × 20 steps",
            (engine - sgd[:3]).abs().max().item(),
            1e-12,
            kind="limit",
        ),
        Comparison(
            f"gap to DropConnect at σ² = 0.5 is ≥ {GAP_AT_HALF} (shortfall)",
            max(0.0, GAP_AT_HALF - gaps[0]),
            0.0,
            kind="bound",
        ),
        Comparison(
            "σ² ladder 0.5 → 1e-8: the gap decreases at every rung (largest rise)",
            max(0.0, rises),
            0.0,
            kind="bound",
        ),
        Comparison(
            "σ² ladder: log-log slope of the gap vs σ (1e-6 → 1e-8) − 1",
            abs(slope - 1.0),
            1e-8,
            kind="limit",
        ),
        *_entropy_checks(),
        *_enumeration(x, y),
        Comparison(
            f"kernel ({device}, 64 copies) vs engine (σ² = SIGMA2)",
            (kernel[:3] - engine).abs().max().item(),
            1e-12,
            kind="limit",
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs DropConnect-SGD",
            (kernel - sgd).abs().max().item(),
            1e-12,
        ),
    ]


MUTATIONS = (
    Mutation(
        "problem",
        "constant",
        "",
        "SIGMA2 = 1e-30",
        "SIGMA2 = 0.5",
        "σ² = 1e-30 → 0.5 (out of the σ² → 0 limit)",
    ),
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "rho = alpha * KEEP / sigma2",
        "rho = 1.01 * alpha * KEEP / sigma2",
        "BLR step ρ × 1.01",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "theta = theta - alpha *",
        "theta = theta - 1.01 * alpha *",
        "DropConnect step α × 1.01",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "KEEP * DELTA * theta",
        "DELTA * theta",
        "DropConnect decay pδ → δ",
    ),
    Mutation(
        "blr",
        "constant",
        "expected_prior",
        "mean.mu1.square() / keep",
        "mean.mu1.square()",
        "E_q[θ²] = μ²/p + σ² → μ² + σ² (prior's p wrong; engine and kernel)",
    ),
    Mutation(
        "blr",
        "term",
        "SpikeAndSlab._neg_entropy_grad",
        "-nat.lam1 * self.spike_responsibility(nat)",
        "0 * nat.lam1",
        "family: ∇_μ(−H) dropped",
    ),
    Mutation(
        "blr",
        "constant",
        "SpikeAndSlab._neg_entropy_grad",
        "-nat.lam1 *",
        "-2 * nat.lam1 *",
        "family: ∇_μ(−H) × 2",
    ),
    Mutation(
        "blr",
        "term",
        "SpikeAndSlab.reparam",
        " + math.sqrt(self.var) * eps",
        "",
        "family sampler without σε (θ = z⊙m: the limit taken by hand)",
    ),
    Mutation(
        "blr",
        "constant",
        "kernel_instance",
        "lr=alpha",
        "lr=1.01 * alpha",
        "kernel mean rate α × 1.01",
    ),
)
