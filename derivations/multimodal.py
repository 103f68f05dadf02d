r"""Multimodal optimization is the BLR on a mixture of Gaussians under the delta method: K Newton
runs, one per component, coupled only through the entropy of the mixture.

**Family.** q(θ) = Σ_k π_k N(θ | m_k, S_k⁻¹) as the joint exponential family of (θ, z)
(Lin, Khan & Schmidt 2019): T = (1[z=k], 1[z=k]θ, 1[z=k]θθᵀ), λ_k = (S_k m_k, −½S_k),
μ = (π_k, π_k m_k, π_k(S_k⁻¹ + m_k m_kᵀ)). The marginal entropy has no closed form, so it stays in
the loss: L(q) = E_q[f], f = ℓ̄ + log q (log q held fixed for the step, since E_q[∇_λ log q] = 0).

**Rule.** With F(μ) = Σ_k π_k E_{q_k}[f], Bonnet's and Price's theorems per component give (π_k
cancels) ∇_{μ1_k}F = E_{q_k}[∇f] − E_{q_k}[∇²f]m_k and ∇_{μ2_k}F = ½E_{q_k}[∇²f], so
λ ← λ − ρ∇_μF is S_k ← S_k + ρE_{q_k}[∇²f], m_k ← m_k − ρS_k⁻¹E_{q_k}[∇f] (new S_k). The delta
method is applied to the loss part only (E_{q_k}[∇ℓ̄] ≈ ∇ℓ̄(m_k), E_{q_k}[∇²ℓ̄] ≈ ∇²ℓ̄(m_k)); the
log q terms are kept (here by 60-point Gauss–Hermite per component) because they couple the
components. π is held fixed. Writing log q = log π_kN_k − log r_k with the responsibility
r_k = π_kN_k/q, E_{q_k}[∇log N_k] = 0 and E_{q_k}[∇²log N_k] = −S_k turn the step into

    S_k ← (1 − ρ)S_k + ρ(∇²ℓ̄(m_k) − E_{q_k}[∇²log r_k]),
    m_k ← m_k − ρS_k⁻¹(∇ℓ̄(m_k) − E_{q_k}[∇log r_k]):

the Newton-BLR of Row 2 per component, plus coupling terms from the responsibilities.

**Equality conditions.** Same start, ρ, π and quadrature ⇒ the mixture-BLR iterates equal the
coupled update above written out by hand, step by step. They equal K independent Newton-BLR runs,
S_k ← (1 − ρ)S_k + ρ∇²ℓ̄(m_k), m_k ← m_k − ρS_k⁻¹∇ℓ̄(m_k), only in the limit of separated
components, where r_k → 1 on the support of q_k. ``derive()`` proves that limit for K = 2 in 1-D
with any weights and precisions (component 1 at 0, component 2 at distance d):
|E_{q_1}[(log q)']| and |E_{q_1}[(log q)''] + s_1| are at most B(d), a finite sum of Gaussian
tails J_j = ∫_{d/2}^∞ u^{2j}N(u | 0, 1/s)du (j ≤ 1, s ∈ {s_1, s_2}) times polynomials in d of
degree ≤ 2, and every such term → 0 as d → ∞. At finite separation the error is exponentially
small (e^{−sd²/8}): B < 1e-50 at the one-step test below (d = 10, s = 10), and B < 1e-140 at
d = 19.5 with precisions 7.4 or 20, the extremes of the wide well's run (d ≥ 19.5,
7.4 ≤ S ≤ 20), both evaluated by ``derive()``. With overlap the log r terms repel the components
and shift every precision away from the local Hessian.

**Test problem.** (a) Coupled (equalities, 1e-12): the tilted double well
ℓ̄ = (θ² − 1)² + 0.3θ with fixed, unequal π = (0.3, 0.7), m₀ = (−0.5, 0.7), S₀ = (10, 6),
ρ = 0.1, 40 steps, where the components overlap: the coupling moves (m, S) by (0.03, 2.3) away
from independent Newton-BLR runs, and π = (0.3, 0.7) instead of (½, ½) moves them by
(0.012, 0.7). The mixture BLR (:func:`blr.mixture.mixture_step`, ``delta=True``,
``weights="fixed"``, GH-60; ∇ℓ̄, ∇²ℓ̄ by autograd, log q's derivatives by the engine) equals a
hand-coded numpy version of the coupled update (hand-written ℓ̄', ℓ̄'' and closed-form log q
derivatives, numpy's own Gauss–Hermite nodes). The kernel path runs 32 copies × 2 components
(64 Gaussians, random starts around m₀, S₀) through :func:`blr.kernels.full_gaussian_step`,
one call per step, with ĝ = ℓ̄'(m_k) − E_{q_k}[(log r_k)'] and Ĥ = ℓ̄''(m_k) −
E_{q_k}[(log r_k)''] from autograd of ℓ̄ and of log r_k (at the engine's Gauss–Hermite nodes);
it equals the hand-coded update on every copy and the engine on the first. (b) The separated
limit (limit, 1e-12): ℓ̄ = (θ² − 25)²/100, m = (−5, 5), S = (10, 10), π = (½, ½), ρ = 0.3, one
step; and the wide well ℓ̄ = (θ² − 100)²/100 from m = (−9, 10.5), S = (10, 20), π = (0.3, 0.7),
30 steps: the mixture BLR equals hand-coded per-component Newton-BLR runs. (c) The double well
ℓ̄ = (θ² − 1)², m₀ = (−0.5, 0.7), S₀ = (10, 10), π fixed at ½, ρ = 0.1, 300 steps (the iteration
contracts by ≈ (1 − ρ) per step; 300 steps sit within 1e-11 of the fixed point): both minima
are found (bound: |m_k| − 1 ∈ [0, 0.01]); the end point is a fixed point of the hand-coded
update (limit: residuals ℓ̄'(m_k) + E_{q_k}[(log q)'] and ℓ̄''(m_k) + E_{q_k}[(log q)''] below
1e-10); and it is the root of those residuals found by ``scipy.optimize.fsolve`` from the
Laplace point (m, S) = (±1, 8) (limit, 1e-10): m = ±1.0054746734821, S = 8.5067461575333.
Laplace at ±1 would give S = 8: the 0.5 % and 6 % shifts are the entropy coupling (GH-60 itself
is off by ~2e-3 in S on the log q terms: with GH-400 the fixed point is m = ±1.0054705,
S = 8.509164).

**References.** Khan & Rue (2023), Table 1 row 3; Lin, Khan & Schmidt (2019), Fast and simple
natural-gradient variational inference with mixture of exponential-family approximations
(ICML).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.optimize
import sympy as sp
import torch

import expfam
from blr.kernels import full_gaussian_step
from blr.mixture import mixture_step
from blr.quadrature import gauss_hermite_product
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="multimodal",
    number=3,
    algorithm="Multimodal optimization",
    posterior="Mixture of Gaussians",
    approximation="delta method (per component)",
    symbolic="✓",
)

GH_POINTS = 60
RHO_SEP, RHO_COUPLED, RHO_DW = 0.3, 0.1, 0.1
SEP_STEPS, COUPLED_STEPS, DW_STEPS = 30, 40, 300
COPIES = 32

#: the test losses ℓ̄(θ) = (θ² − a²)²/c + tθ as (a², c, t)
SEPARATED = (25.0, 100.0, 0.0)
WIDE = (100.0, 100.0, 0.0)  # minima at ±10, S* = 8: no overlap to double precision
TILTED = (1.0, 1.0, 0.3)  # asymmetric and overlapping: the coupling matters
DOUBLE_WELL = (1.0, 1.0, 0.0)

Derivs = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _exp_moments(t, m, v) -> tuple:
    """E[f], E[f'], E[f''] for f(θ) = e^{tθ} under N(m, v)."""
    e = sp.exp(t * m + t**2 * v / 2)
    return e, t * e, t**2 * e


def _tails(s: sp.Symbol, c: sp.Symbol) -> tuple[sp.Expr, sp.Expr]:
    """J_0, J_1 = ∫_c^∞ u^{2j}N(u | 0, 1/s)du in closed form, checked by their derivative in c
    and their limit c → ∞."""
    u = sp.Symbol("u", positive=True)
    dens = sp.sqrt(s / (2 * sp.pi)) * sp.exp(-s * u**2 / 2)
    j0 = sp.erfc(c * sp.sqrt(s / 2)) / 2
    j1 = c * dens.subs(u, c) / s + j0 / s
    for j, tail in enumerate((j0, j1)):
        assert sp.simplify(sp.diff(tail, c) + c ** (2 * j) * dens.subs(u, c)) == 0
        assert sp.limit(tail, c, sp.oo) == 0
    return j0, j1


def derive() -> list[str]:
    """The joint-family natural gradient of F = Σπ_kE_{q_k}[f] (f = e^{tθ}, every t), the
    λ-space step in (m_k, S_k) form, the log q derivatives of a two-component mixture, a bound on
    the coupling that vanishes with the separation, and the reduction to the Newton-BLR of Row 2."""
    # (1) ∇_μF, K = 2, 1-D, f = e^{tθ}: μ0 = π1, μ1_k = π_k m_k, μ2_k = π_k(v_k + m_k²)
    t = sp.Symbol("t", real=True)
    u0, u11, u12, u21, u22 = sp.symbols("mu0 mu1_1 mu1_2 mu2_1 mu2_2", positive=True)
    u0c = sp.Symbol("mu0c", positive=True)  # stands for π2 = 1 − μ0
    pis = (u0, u0c)
    ms = (u11 / pis[0], u12 / pis[1])
    vs = (u21 / pis[0] - ms[0] ** 2, u22 / pis[1] - ms[1] ** 2)
    moments = [_exp_moments(t, ms[k], vs[k]) for k in range(2)]
    big_f = sum(pis[k] * moments[k][0] for k in range(2))
    # differentiate in μ, then evaluate at μ(π_k, n_k, w_k): π_k = p_k, m_k = n_k, v_k = w_k
    p1, p2, n1, n2, w1, w2 = sp.symbols("p1 p2 n1 n2 w1 w2", positive=True)
    at = {u0: p1, u0c: p2, u11: p1 * n1, u12: p2 * n2}
    at.update({u21: p1 * (w1 + n1**2), u22: p2 * (w2 + n2**2)})

    def zero(expr: sp.Expr) -> bool:
        return sp.simplify(expr.subs(at)) == 0

    for k, (u1, u2) in enumerate(((u11, u21), (u12, u22))):
        _, e_g, e_h = moments[k]
        assert zero(sp.diff(big_f, u1) - (e_g - e_h * ms[k]))
        assert zero(sp.diff(big_f, u2) - e_h / 2)
    # (2) λ_k ← λ_k − ρ(E[f'] − E[f'']m, ½E[f'']) in (m, S): S' = S + ρE[f''], m' = m − ρE[f']/S'
    m, s, rho, gf, hf = sp.symbols("m S rho g_f h_f", real=True)
    lam1_new = s * m - rho * (gf - hf * m)
    s_new = -2 * (-s / 2 - rho * hf / 2)
    assert sp.expand(s_new - (s + rho * hf)) == 0
    assert sp.expand(lam1_new - (s_new * m - rho * gf)) == 0  # S'm' = λ₁'
    # (3) q = π1N1 + π2N2, N1 = N(0, 1/s1), N2 = N(d, 1/s2): the log q derivatives
    th = sp.Symbol("theta", real=True)
    d, s1, s2, q1, q2 = sp.symbols("d s1 s2 pi1 pi2", positive=True)
    e1, e2 = sp.symbols("E1 E2", positive=True)  # the two exponentials
    x1, x2 = -s1 * th**2 / 2, -s2 * (th - d) ** 2 / 2
    c1, c2 = sp.sqrt(s1 / (2 * sp.pi)), sp.sqrt(s2 / (2 * sp.pi))
    q = q1 * c1 * sp.exp(x1) + q2 * c2 * sp.exp(x2)

    def named(expr: sp.Expr) -> sp.Expr:
        return expr.replace(sp.exp, lambda x: e1 if sp.expand(x - x1) == 0 else e2)

    dens1, dens2 = c1 * e1, c2 * e2
    r1 = q1 * dens1 / (q1 * dens1 + q2 * dens2)
    r2 = q2 * dens2 / (q1 * dens1 + q2 * dens2)
    d1, d2 = -s1 * th, -s2 * (th - d)
    grad_q = named(sp.diff(sp.log(q), th))
    hess_q = named(sp.diff(sp.log(q), th, 2))
    assert sp.cancel(grad_q - (r1 * d1 + r2 * d2)) == 0
    assert sp.cancel(hess_q - (-(r1 * s1 + r2 * s2) + r1 * r2 * (d2 - d1) ** 2)) == 0
    # log q = log π1N1 − log r1, so (log q)' = d1 − (log r1)', (log q)'' = −s1 − (log r1)''
    log_r1 = sp.log(q1 * c1) + x1 - sp.log(q)
    assert sp.cancel(named(sp.diff(log_r1, th)) - (d1 - grad_q)) == 0
    assert sp.cancel(named(sp.diff(log_r1, th, 2)) - (-s1 - hess_q)) == 0
    # (4) the coupling under q_1: E_1[d1] = 0, so E_1[(log q)'] = E_1[r2(d2 − d1)] and
    # E_1[(log q)''] + s1 = E_1[r2((s1 − s2) + r1(d2 − d1)²)]
    assert sp.cancel(grad_q - (d1 + r2 * (d2 - d1))) == 0
    assert sp.cancel(hess_q + s1 - r2 * ((s1 - s2) + r1 * (d2 - d1) ** 2)) == 0
    # both |·| ≤ E_1[r2 P], P = 1 + s1 + s2 + (d2 − d1)² (|x| ≤ 1 + x², 0 ≤ r1 ≤ 1), and
    # (d2 − d1)² = (a + b)² ≤ 2a² + 2b², a = (s1 − s2)θ, b = s2d
    xx = sp.Symbol("x", real=True)
    quarter = sp.Rational(3, 4)
    for sign in (1, -1):  # 1 + x² ∓ x = (x ∓ ½)² + ¾ > 0
        assert sp.expand(1 + xx**2 - sign * xx - ((xx - sign / sp.Integer(2)) ** 2 + quarter)) == 0
    a, b = (s1 - s2) * th, s2 * d
    assert sp.expand(d2 - d1 - (a + b)) == 0
    assert sp.expand(2 * a**2 + 2 * b**2 - (a + b) ** 2 - (a - b) ** 2) == 0
    # r2 ≤ 1 and N1·r2 ≤ (π2/π1)N2, so E_1[r2 P] ≤ ∫_{θ>d/2}N1 P + (π2/π1)∫_{θ<d/2}N2 P
    assert sp.cancel(1 - r2 - r1) == 0
    gap = (q2 / q1) * dens2 - dens1 * r2
    assert sp.cancel(gap - q2**2 * dens2**2 / (q1 * (q1 * dens1 + q2 * dens2))) == 0
    # on θ < d/2 put θ = d − u, u > d/2: θ² ≤ 2d² + 2u²; each piece is a tail J_j(d/2; s)
    uu = sp.Symbol("u", positive=True)
    assert sp.expand(2 * d**2 + 2 * uu**2 - (d - uu) ** 2 - (d + uu) ** 2) == 0
    # so B = Σ coef·d^{2i}·J_j(d/2; s) with coefficients free of d, i, j ≤ 1, s ∈ {s1, s2}:
    #   θ > d/2: k0 + 2s2²d² + 2(s1 − s2)²θ² against N1; θ < d/2: k0 + (2s2² + 4(s1 − s2)²)d²
    #   + 4(s1 − s2)²u² against N2 (× π2/π1); k0 = 1 + s1 + s2
    cc, sv = sp.Symbol("c", positive=True), sp.Symbol("s", positive=True)
    tails = _tails(sv, cc)
    pieces = {(i, j): (d ** (2 * i) * tails[j]).subs(cc, d / 2) for i in (0, 1) for j in (0, 1)}
    for piece in pieces.values():  # each piece → 0 as d → ∞, for every s > 0
        assert sp.limit(piece, d, sp.oo) == 0
    k0 = 1 + s1 + s2
    near = {(0, 0): k0, (1, 0): 2 * s2**2, (0, 1): 2 * (s1 - s2) ** 2}
    far = {(0, 0): k0, (1, 0): 2 * s2**2 + 4 * (s1 - s2) ** 2, (0, 1): 4 * (s1 - s2) ** 2}
    bound = sum(c * pieces[key].subs(sv, s1) for key, c in near.items())
    bound += q2 / q1 * sum(c * pieces[key].subs(sv, s2) for key, c in far.items())
    assert not any(d in c.free_symbols for c in (*near.values(), *far.values(), q2 / q1))
    # the size of B at the separated tests of check(): one step at d = 10, s = 10, π = ½; the
    # wide well's run stays at d ≥ 19.5 with 7.4 ≤ S ≤ 20 (π = (0.3, 0.7)): B at its extremes
    at_one_step = bound.subs({d: 10, s1: 10, s2: 10, q1: 1, q2: 1})
    assert sp.N(at_one_step) < 1e-50
    for w1, w2 in ((20, sp.Rational(37, 5)), (sp.Rational(37, 5), 20)):
        for p_1, p_2 in ((3, 7), (7, 3)):
            at_wide = bound.subs({d: sp.Rational(39, 2), s1: w1, s2: w2, q1: p_1, q2: p_2})
            assert sp.N(at_wide) < 1e-140
    # (5) the limit E[(log q)'] = 0, E[(log q)''] = −S in (2): the Newton-BLR step of Row 2
    g1, h1 = sp.symbols("ell1 ell2", real=True)  # ℓ̄'(m), ℓ̄''(m) (delta method)
    s_lim = s + rho * (h1 - s)
    assert sp.expand(s_lim - ((1 - rho) * s + rho * h1)) == 0
    assert sp.cancel((m - rho * g1 / s_lim) * s_lim - (s_lim * m - rho * g1)) == 0
    return [
        "joint family, K = 2, f = e^{tθ} for every t (so every polynomial f): "
        "∇_{μ1_k}Σπ_jE_j[f] = E_k[f'] − E_k[f'']m_k, ∇_{μ2_k} = ½E_k[f''] (π_k cancels)",
        "λ-space step ⇔ S_k' = S_k + ρE_k[f''], m_k' = m_k − ρE_k[f']/S_k' (f = ℓ̄ + log q)",
        "K = 2, precisions s₁, s₂ at distance d: (log q)' = Σr_jd_j, "
        "(log q)'' = −(r₁s₁ + r₂s₂) + r₁r₂(d₂ − d₁)², and log q = log π₁N₁ − log r₁",
        "|E_1[(log q)']| and |E_1[(log q)''] + s₁| ≤ B(d), a sum of Gaussian tails "
        "∫_{d/2}^∞u^{2j}N(u | 0, 1/s)du (j ≤ 1) times polynomials in d; B(d) → 0 as d → ∞; "
        "B < 1e-50 at the one-step test (d = 10, s = 10), < 1e-140 at d = 19.5, S ∈ {7.4, 20}",
        "separated limit: S_k' = (1 − ρ)S_k + ρℓ̄''(m_k), m_k' = m_k − ρℓ̄'(m_k)/S_k' "
        "(the Newton-BLR of Row 2 per component)",
    ]


# ---------------------------------------------------------------------------- classical
def derivs(a2: float, c: float, tilt: float) -> Derivs:
    """θ ↦ (ℓ̄'(θ), ℓ̄''(θ)) = (4θ(θ² − a²)/c + t, (12θ² − 4a²)/c), hand-written (numpy)."""

    def fn(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return 4 * theta * (theta**2 - a2) / c + tilt, (12 * theta**2 - 4 * a2) / c

    return fn


def log_q_terms(weights, m: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E_{q_k}[(log q)'] and E_{q_k}[(log q)''] by GH-60 (numpy's nodes) for a 1-D mixture with
    means ``m`` and precisions ``s`` of shape ``(..., K)``: (log q)' = Σ_j r_jd_j,
    (log q)'' = Σ_j r_j((d_j − (log q)')² − s_j), d_j = −s_j(θ − m_j)."""
    z, w = np.polynomial.hermite_e.hermegauss(GH_POINTS)
    w = w / math.sqrt(2 * math.pi)
    theta = m[..., :, None] + z / np.sqrt(s)[..., :, None]  # (..., K, P): nodes of q_k
    diff = theta[..., None] - m[..., None, None, :]  # (..., K, P, J)
    sj = s[..., None, None, :]
    logits = np.log(weights) + 0.5 * np.log(sj / (2 * np.pi)) - 0.5 * sj * diff**2
    r = np.exp(logits - logits.max(-1, keepdims=True))
    r = r / r.sum(-1, keepdims=True)
    dj = -sj * diff
    grad = (r * dj).sum(-1)
    hess = (r * ((dj - grad[..., None]) ** 2 - sj)).sum(-1)
    return grad @ w, hess @ w


def classical(
    weights, m0: np.ndarray, s0: np.ndarray, problem: tuple, rho: float, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """The coupled update written out by hand (numpy): S_k ← S_k + ρ(ℓ̄''(m_k) +
    E_{q_k}[(log q)'']), m_k ← m_k − ρ(ℓ̄'(m_k) + E_{q_k}[(log q)'])/S_k, π fixed; ``m0``, ``s0``
    of shape ``(..., K)`` (independent copies in front); iterates ``(steps + 1, ..., K)``."""
    fn = derivs(*problem)
    m, s = np.asarray(m0, dtype=np.float64), np.asarray(s0, dtype=np.float64)
    ms, ss = [m], [s]
    for _ in range(steps):
        g, h = fn(m)
        e_g, e_h = log_q_terms(weights, m, s)
        s = s + rho * (h + e_h)
        m = m - rho * (g + e_g) / s
        ms.append(m)
        ss.append(s)
    return np.stack(ms), np.stack(ss)


def newton_blr(
    m0: np.ndarray, s0: np.ndarray, problem: tuple, rho: float, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """K independent damped Newton runs (the Row-2 BLR per component), hand-coded:
    S_k ← (1 − ρ)S_k + ρℓ̄''(m_k), m_k ← m_k − ρℓ̄'(m_k)/S_k; iterates ``(steps + 1, K)``."""
    fn = derivs(*problem)
    m, s = np.asarray(m0, dtype=np.float64), np.asarray(s0, dtype=np.float64)
    ms, ss = [m], [s]
    for _ in range(steps):
        g, h = fn(m)
        s = (1 - rho) * s + rho * h
        m = m - rho * g / s
        ms.append(m)
        ss.append(s)
    return np.stack(ms), np.stack(ss)


def fixed_point(weights, problem: tuple) -> tuple[float, float]:
    """(m, S) of the symmetric fixed point m = (−m, m), S = (S, S) of the coupled update: the
    root of ℓ̄'(m) + E[(log q)'] and ℓ̄''(m) + E[(log q)''] by ``scipy.optimize.fsolve`` from the
    Laplace point (1, 8)."""
    fn = derivs(*problem)

    def residual(p: np.ndarray) -> np.ndarray:
        m, s = np.array([-p[0], p[0]]), np.array([p[1], p[1]])
        g, h = fn(m)
        e_g, e_h = log_q_terms(weights, m, s)
        return np.array([g[1] + e_g[1], h[1] + e_h[1]])

    root = scipy.optimize.fsolve(residual, np.array([1.0, 8.0]), xtol=1e-14)
    return float(root[0]), float(root[1])


# ---------------------------------------------------------------------------- BLR
def loss_fn(a2: float, c: float, tilt: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """ℓ̄(θ) = (θ² − a²)²/c + tθ for 1-D θ ``(P, 1)`` → ``(P,)`` (differentiated by autograd)."""

    def loss(theta: torch.Tensor) -> torch.Tensor:
        x = theta[..., 0]
        return (x**2 - a2) ** 2 / c + tilt * x

    return loss


def blr_instance(
    weights: torch.Tensor,
    m0: torch.Tensor,
    prec0: torch.Tensor,
    problem: tuple,
    rho: float,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixture BLR (:func:`blr.mixture.mixture_step`: joint family of
    :class:`expfam.Mixture` with :class:`expfam.FullGaussian` components, delta method for ℓ̄,
    GH-60 for log q, π fixed) on 1-D components with means ``m0`` and precisions ``prec0``
    ``(K,)``; iterates ``(steps + 1, K)``."""
    fam = expfam.Mixture(expfam.FullGaussian())
    nat = fam.from_components(
        weights, fam.component.from_moments(m0.reshape(-1, 1), prec0.reshape(-1, 1, 1))
    )
    loss = loss_fn(*problem)
    nats = [nat]
    for _ in range(steps):
        nat = mixture_step(fam, nat, loss, rho, n_points=GH_POINTS, weights="fixed", delta=True)
        nats.append(nat)
    path = expfam.MixtureNat(*(torch.stack(x) for x in zip(*nats)))  # one batched conversion
    m, s = fam.component.to_moments(fam.components(path))
    return m[..., 0], s[..., 0, 0]


def _coupling(
    log_w: torch.Tensor, m: torch.Tensor, s: torch.Tensor, z: torch.Tensor, wq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """E_{q_k}[(log r_k)'] and E_{q_k}[(log r_k)''] for copies × components ``(B, K)``, by
    autograd of log r_k(θ) = log π_kN_k(θ) − log Σ_j π_jN_j(θ) at the nodes θ = m_k + z/√s_k."""
    theta = (m[..., None] + z / s.sqrt()[..., None]).requires_grad_()  # (B, K, P)
    k = torch.arange(m.shape[-1], device=m.device)
    with torch.enable_grad():
        diff = theta[..., None] - m[:, None, None, :]  # (B, K, P, J)
        sj = s[:, None, None, :]
        log_joint = log_w + 0.5 * torch.log(sj / (2 * math.pi)) - 0.5 * sj * diff**2
        own = log_joint[:, k, :, k].permute(1, 0, 2)  # log π_kN_k at the nodes of q_k
        log_r = own - torch.logsumexp(log_joint, -1)
        (g,) = torch.autograd.grad(log_r.sum(), theta, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), theta)
    return g.detach() @ wq, h @ wq


def kernel_instance(
    weights: torch.Tensor,
    m0: torch.Tensor,
    prec0: torch.Tensor,
    problem: tuple,
    rho: float,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies × components of 1-D Gaussians (``m0``, ``prec0`` of shape ``(B, K)``, π shared)
    through :func:`blr.kernels.full_gaussian_step` as ``(B, K, 1)`` means and ``(B, K, 1, 1)``
    precisions, one call per step, with ĝ = ℓ̄'(m_k) − E_{q_k}[(log r_k)'] and
    Ĥ = ℓ̄''(m_k) − E_{q_k}[(log r_k)''] (autograd; GH-60 nodes of :mod:`blr.quadrature`);
    iterates ``(steps + 1, B, K)``."""
    loss = loss_fn(*problem)
    z, wq = gauss_hermite_product(GH_POINTS, 1, dtype=m0.dtype, device=m0.device)
    z, log_w = z[:, 0], torch.log(weights.to(m0.device))
    m, s = m0.unsqueeze(-1), prec0.reshape(*prec0.shape, 1, 1)
    ms, ss = [m0], [prec0]
    for _ in range(steps):
        mk, sk = m[..., 0], s[..., 0, 0]
        leaf = mk.clone().requires_grad_()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss(leaf.reshape(-1, 1)).sum(), leaf, create_graph=True)
            (h,) = torch.autograd.grad(g.sum(), leaf)
        e_g, e_h = _coupling(log_w, mk, sk, z, wq)
        g_hat = g.detach() - e_g
        h_hat = h - e_h
        m, s, _ = full_gaussian_step(m, s, g_hat.unsqueeze(-1), h_hat[..., None, None], rho)
        ms.append(m[..., 0])
        ss.append(s[..., 0, 0])
    return torch.stack(ms), torch.stack(ss)


def _dev(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def check(device: str = "cpu") -> list[Comparison]:
    """The coupled update (engine, kernel on ``device``, hand-coded), the separated limit
    (engine vs per-component Newton-BLR), and the double-well fixed point."""
    dt = torch.float64
    half = torch.tensor([0.5, 0.5], dtype=dt)
    unequal = torch.tensor([0.3, 0.7], dtype=dt)
    # (a) the coupled problem: engine, hand-coded, kernel
    m0, s0 = torch.tensor([-0.5, 0.7], dtype=dt), torch.tensor([10.0, 6.0], dtype=dt)
    em, es = blr_instance(unequal, m0, s0, TILTED, RHO_COUPLED, COUPLED_STEPS)
    cm, cs = classical(unequal.numpy(), m0.numpy(), s0.numpy(), TILTED, RHO_COUPLED, COUPLED_STEPS)
    coupled = max(_dev(em, cm), _dev(es, cs))
    gen = torch.Generator().manual_seed(3)
    starts = m0 + 0.1 * torch.randn(COPIES, 2, dtype=dt, generator=gen)
    precs = s0 * (0.5 + torch.rand(COPIES, 2, dtype=dt, generator=gen))
    km, ks = kernel_instance(
        unequal, starts.to(device), precs.to(device), TILTED, RHO_COUPLED, COUPLED_STEPS
    )
    km, ks = km.cpu(), ks.cpu()
    bm, bs = classical(
        unequal.numpy(), starts.numpy(), precs.numpy(), TILTED, RHO_COUPLED, COUPLED_STEPS
    )
    kernel_classical = max(_dev(km, bm), _dev(ks, bs))
    fm, fs = blr_instance(unequal, starts[0], precs[0], TILTED, RHO_COUPLED, COUPLED_STEPS)
    kernel_engine = max(_dev(km[:, 0], fm), _dev(ks[:, 0], fs))
    # (b) the separated limit: one step on (θ² − 25)²/100, 30 steps on the wide well
    m0, s0 = torch.tensor([-5.0, 5.0], dtype=dt), torch.tensor([10.0, 10.0], dtype=dt)
    em, es = blr_instance(half, m0, s0, SEPARATED, RHO_SEP, 1)
    nm, ns = newton_blr(m0.numpy(), s0.numpy(), SEPARATED, RHO_SEP, 1)
    one_step = max(_dev(em, nm), _dev(es, ns))
    m0, s0 = torch.tensor([-9.0, 10.5], dtype=dt), torch.tensor([10.0, 20.0], dtype=dt)
    em, es = blr_instance(unequal, m0, s0, WIDE, RHO_SEP, SEP_STEPS)
    nm, ns = newton_blr(m0.numpy(), s0.numpy(), WIDE, RHO_SEP, SEP_STEPS)
    many_steps = max(_dev(em, nm), _dev(es, ns))
    # (c) the double well
    m0, s0 = torch.tensor([-0.5, 0.7], dtype=dt), torch.tensor([10.0, 10.0], dtype=dt)
    dm, ds = blr_instance(half, m0, s0, DOUBLE_WELL, RHO_DW, DW_STEPS)
    m, s = dm[-1].numpy(), ds[-1].numpy()
    signs = np.array([-1.0, 1.0])
    excess = signs * m - 1  # |m_k| − 1 if component k sits at the minimum of its sign
    g, h = derivs(*DOUBLE_WELL)(m)
    e_g, e_h = log_q_terms(half.numpy(), m, s)
    root_m, root_s = fixed_point(half.numpy(), DOUBLE_WELL)
    return [
        Comparison(
            "mixture BLR vs hand-coded coupled update, 40 steps, (θ² − 1)² + 0.3θ, π = (0.3, 0.7)",
            coupled,
            1e-12,
        ),
        Comparison(
            f"kernel ({device}, 32 copies × 2 components) vs hand-coded coupled update",
            kernel_classical,
            1e-12,
        ),
        Comparison(
            f"kernel ({device}) vs mixture engine, first copy, 40 steps", kernel_engine, 1e-12
        ),
        Comparison(
            "separated limit: mixture BLR vs per-component Newton-BLR, 1 step, "
            "(θ² − 25)²/100, m = ±5",
            one_step,
            1e-12,
            kind="limit",
        ),
        Comparison(
            "separated limit: mixture BLR vs per-component Newton-BLR, 30 steps, (θ² − 100)²/100",
            many_steps,
            1e-12,
            kind="limit",
        ),
        Comparison(
            "double well: distance of ±m_k − 1 from [0, 0.01] (both minima found)",
            max(0.0, float(-excess.min()), float(excess.max()) - 0.01),
            0.0,
            kind="bound",
        ),
        Comparison(
            "double well, 300 steps: residuals ℓ̄' + E_k[(log q)'], ℓ̄'' + E_k[(log q)''] "
            "(hand-coded GH-60)",
            float(max(np.abs(g + e_g).max(), np.abs(h + e_h).max())),
            1e-10,
            kind="limit",
        ),
        Comparison(
            "double well, 300 steps: (m, S) vs the fsolve root of those residuals",
            max(_dev(m, signs * root_m), _dev(s, root_s)),
            1e-10,
            kind="limit",
        ),
    ]


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "loss, rho, n_points",
        "loss, 1.01 * rho, n_points",
        "engine step ρ × 1.01",
    ),
    Mutation(
        "blr",
        "constant",
        "kernel_instance",
        "h_hat[..., None, None], rho)",
        "h_hat[..., None, None], rho, lr=1.01 * rho)",
        "kernel mean rate × 1.01",
    ),
    Mutation(
        "blr",
        "term",
        "kernel_instance",
        "g_hat = g.detach() - e_g",
        "g_hat = g.detach()",
        "kernel ĝ without the coupling E_k[(log r_k)']",
    ),
    Mutation("blr", "term", "loss_fn", " + tilt * x", "", "ℓ̄ without the tilt tθ (engine, kernel)"),
    Mutation(
        "classical",
        "constant",
        "classical",
        "s = s + rho * (h + e_h)",
        "s = s + 1.01 * rho * (h + e_h)",
        "coupled update precision step ρ × 1.01",
    ),
    Mutation(
        "classical",
        "constant",
        "newton_blr",
        "s = (1 - rho) * s + rho * h",
        "s = (1 - rho) * s + 1.01 * rho * h",
        "Newton-BLR Hessian weight ρ × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "log_q_terms",
        "logits = np.log(weights) + ",
        "logits = ",
        "hand-coded log q without log π_j",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "m = m - rho * (g + e_g) / s",
        "m = m - rho * g / s",
        "coupled update mean step without E_k[(log q)']",
    ),
    Mutation(
        "problem",
        "constant",
        "check",
        "torch.tensor([-5.0, 5.0], dtype=dt)",
        "torch.tensor([-1.5, 1.5], dtype=dt)",
        "separated test moved to m = ±1.5 (overlapping)",
    ),
)
