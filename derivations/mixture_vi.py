r"""Non-conjugate variational inference with a mixture of Gaussians (Lin, Khan & Schmidt 2019) is
the BLR on the joint exponential family of (θ, z), with exact component expectations.

**Family.** q(θ) = Σ_k π_k N(θ | m_k, S_k⁻¹), handled as q(θ, z) = Cat(z | π) N(θ | m_z, S_z⁻¹):
T = (1[z=k]_{k<K}, 1[z=k]θ, 1[z=k]θθᵀ), λ = (c_k, S_k m_k, −½S_k) with
c_k = log(π_k/π_K) − A_k + A_K, A_k = ½m_kᵀS_km_k − ½log|S_k|, and μ = (π_k, π_k m_k,
π_k(S_k⁻¹ + m_k m_kᵀ)). The objective keeps the MARGINAL entropy: L(q) = E_q[f],
f = ℓ̄ + log q with ℓ̄ = −log p̃ (log q held fixed for the step, as E_q[∇_λ log q] = 0).

**Rule.** For F(μ) = Σ_k π_k E_{q_k}[f] (Bonnet/Price per component; π_k cancels):
∇_{μ1_k}F = E_k[∇f] − E_k[∇²f]m_k, ∇_{μ2_k}F = ½E_k[∇²f], ∇_{μ0_k}F = Φ_k − Φ_K with
Φ_k = E_k[f] − m_kᵀE_k[∇f] + ½tr(E_k[∇²f]·(m_km_kᵀ − S_k⁻¹)). The BLR λ ← λ − ρ∇_μF is

    S_k ← S_k + ρE_k[∇²f],   m_k ← m_k − ρS_k⁻¹E_k[∇f] (new S_k),   c_k ← c_k − ρ(Φ_k − Φ_K),

and Lin et al.'s weight rule log(π_k/π_K) ← log(π_k/π_K) − ρ(E_k[f] − E_K[f]) is the same update
to first order in ρ (the ρ² terms differ). No approximation enters the rule: the expectations
are computed "exactly", here by 60-point Gauss–Hermite quadrature in each component's
coordinates (1-D).

**Equality conditions.** Same start, same ρ and the same quadrature ⇒ the BLR component updates
(:func:`blr.mixture.mixture_step`) equal Lin et al.'s natural-gradient updates exactly. The weights
equal Lin et al.'s only with Lin's first-order rule in place of the λ-space step of c
(``weights="lin"``, the assumption of the symbolic column); with the exact λ-space rule
(``weights="exact"``) the iterates differ at O(ρ²) per step (derived, and measured below) but
the fixed points are the same (at E_k[∇f] = E_k[∇²f] = 0, Φ_k = E_k[f]). If the target is
itself a K-component MoG, q = p̃ makes f ≡ 0 pointwise, so every update is exactly zero: the
target is a fixed point (up to round-off). As f ≡ 0 there, the quadrature error vanishes at
that fixed point too, so the GH-60 iteration converges to the exact target although GH-60 is
not exact for f away from it.

**Test problem.** Target p = 0.3 N(−2, 0.5²) + 0.7 N(1.5, 0.8²), ℓ̄ = −log p; start
m = (−1, 0.5), S = (1, 1), π = (½, ½), ρ = 0.1, GH-60. Equality: the BLR (Lin weights; ∇ℓ̄ and
∇²ℓ̄ by autograd, log q's derivatives by the engine) equals a hand-coded numpy implementation
of Lin et al.'s update (hand-written derivatives of log p and log q, numpy's own Gauss–Hermite
nodes) over 300 steps to 1e-12. Limits: after those 300 steps the means, precisions and
weights are the target's to 1e-6 (measured ~1e-8); with the exact weight rule, ρ = 0.3 and
100 steps also reach the target (1e-6); at q = p one step changes nothing (≤ 1e-12), with
either weight rule; and one step of the two weight rules from the start differs by
Δ(ρ) = O(ρ²) in log(π₁/π₂): |log₂(Δ(2ρ)/Δ(ρ)) − 2| ≤ 0.01 at ρ = 0.01 (measured 0.0035; a
first-order disagreement would give 1).

**References.** Khan & Rue (2023), Table 1 row 17; Lin, Khan & Schmidt (2019), Fast and simple
natural-gradient variational inference with mixture of exponential-family approximations
(ICML).
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp
import torch

import expfam
from blr.mixture import mixture_step
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="mixture_vi",
    number=17,
    algorithm="Non-conjugate VI with mixtures",
    posterior="Mixture of exp-families (MoG)",
    approximation="none (exact expectations by quadrature)",
    symbolic="~",
    assumptions=(
        "the weights follow Lin et al.'s first-order rule log(π_k/π_K) ← log(π_k/π_K) − "
        "ρ(E_k[f] − E_K[f]) instead of the λ-space BLR step of c = log(π_k/π_K) − A_k + A_K: "
        "derived to agree with it to first order in ρ (not beyond) and to share its fixed "
        "points; the O(ρ²) gap is measured by check()",
    ),
)

TARGET_W, TARGET_M, TARGET_SD = (0.3, 0.7), (-2.0, 1.5), (0.5, 0.8)
START_W, START_M, START_S = (0.5, 0.5), (-1.0, 0.5), (1.0, 1.0)
RHO, STEPS = 0.1, 300
RHO_EXACT, STEPS_EXACT = 0.3, 100
RHO_ORDER = 0.01  # the order of the gap between the two weight rules: ρ and 2ρ
GH_POINTS = 60
_LOG_2PI = math.log(2 * math.pi)


def _exp_moments(t, m, v) -> tuple:
    """E[f], E[f'], E[f''] for f(θ) = e^{tθ} under N(m, v)."""
    e = sp.exp(t * m + t**2 * v / 2)
    return e, t * e, t**2 * e


def derive() -> list[str]:
    """∇_μF of the joint family (K = 2, 1-D, f = e^{tθ} for every t, so every polynomial f)
    including the weight block Φ_k − Φ_K; Lin's weight rule = the λ-space rule to first order in
    ρ only, with the same fixed points; q = p ⇒ f ≡ 0 ⇒ no update."""
    t = sp.Symbol("t", real=True)
    u0, u11, u12, u21, u22 = sp.symbols("mu0 mu1_1 mu1_2 mu2_1 mu2_2", positive=True)
    u0c = sp.Symbol("mu0c", positive=True)  # stands for π2 = 1 − μ0: ∂/∂μ0 = ∂/∂mu0 − ∂/∂mu0c
    pis = (u0, u0c)
    ms = (u11 / pis[0], u12 / pis[1])
    vs = (u21 / pis[0] - ms[0] ** 2, u22 / pis[1] - ms[1] ** 2)
    e_f, e_g, e_h = zip(*(_exp_moments(t, ms[k], vs[k]) for k in range(2)))
    big_f = sum(pis[k] * e_f[k] for k in range(2))
    # differentiate in μ, then evaluate at μ(π_k, n_k, w_k): π_k = p_k, m_k = n_k, v_k = w_k
    p1, p2, n1, n2, w1, w2 = sp.symbols("p1 p2 n1 n2 w1 w2", positive=True)
    at = {u0: p1, u0c: p2, u11: p1 * n1, u12: p2 * n2}
    at.update({u21: p1 * (w1 + n1**2), u22: p2 * (w2 + n2**2)})

    def zero(expr: sp.Expr) -> bool:
        return sp.simplify(expr.subs(at)) == 0

    for k, (u1, u2) in enumerate(((u11, u21), (u12, u22))):
        assert zero(sp.diff(big_f, u1) - (e_g[k] - e_h[k] * ms[k]))
        assert zero(sp.diff(big_f, u2) - e_h[k] / 2)
    phi = [e_f[k] - ms[k] * e_g[k] + e_h[k] * (ms[k] ** 2 - vs[k]) / 2 for k in range(2)]
    assert zero(sp.diff(big_f, u0) - sp.diff(big_f, u0c) - (phi[0] - phi[1]))

    # weight rules: exact c' = c − ρ(Φ₁ − Φ₂), log(π₁/π₂)' = c' + A₁' − A₂' vs Lin's
    rho = sp.Symbol("rho", real=True)
    m1, m2, s1, s2, g1, g2, h1, h2, f1, f2, lr = sp.symbols(
        "m1 m2 s1 s2 g1 g2 h1 h2 f1 f2 l", real=True
    )  # E_k[f], E_k[f'], E_k[f''] = f_k, g_k, h_k; lr = log(π₁/π₂)

    def log_partition(m, s):
        return m**2 * s / 2 - sp.log(s) / 2

    def new(m, s, g, h):
        s_new = s + rho * h
        return m - rho * g / s_new, s_new

    c = lr - log_partition(m1, s1) + log_partition(m2, s2)
    phis = [
        f - m * g + h * (m**2 - 1 / s) / 2
        for f, m, g, h, s in ((f1, m1, g1, h1, s1), (f2, m2, g2, h2, s2))
    ]
    exact = c - rho * (phis[0] - phis[1]) + log_partition(*new(m1, s1, g1, h1))
    exact -= log_partition(*new(m2, s2, g2, h2))
    lin = lr - rho * (f1 - f2)
    gap = exact - lin
    assert sp.expand(gap.subs(rho, 0)) == 0
    assert sp.expand(sp.diff(gap, rho).subs(rho, 0)) == 0
    half = sp.Rational(1, 2)
    values = {m1: half, m2: -1, s1: 2, s2: 1, g1: half, g2: -half, h1: 1, h2: half, f1: 0, f2: 0}
    second = sp.diff(gap, rho, 2).subs(rho, 0).subs(values)
    assert second != 0  # the ρ² terms differ (at one point)
    # same fixed points: with E_k[f'] = E_k[f''] = 0 both rules move log(π₁/π₂) by −ρ(f₁ − f₂)
    still = {g1: 0, g2: 0, h1: 0, h2: 0}
    assert sp.simplify((exact - lr).subs(still) + rho * (f1 - f2)) == 0

    # q = p: f = −log p + log q ≡ 0, so E_k[f] = E_k[f'] = E_k[f''] = 0 and nothing moves
    th = sp.Symbol("theta", real=True)
    w1, mu1, mu2, t1, t2 = sp.symbols("w1 nu1 nu2 tau1 tau2", positive=True)

    def mog(x):
        comps = [
            w * sp.sqrt(t / (2 * sp.pi)) * sp.exp(-t * (x - mu) ** 2 / 2)
            for w, mu, t in ((w1, mu1, t1), (1 - w1, mu2, t2))
        ]
        return sp.log(sum(comps))

    f_at_p = -mog(th) + mog(th)
    assert f_at_p == 0 and sp.diff(f_at_p, th) == 0
    return [
        "joint family, K = 2, f = e^{tθ} for every t (so every polynomial f): "
        "∇_{μ1_k}F = E_k[f'] − E_k[f'']m_k, ∇_{μ2_k}F = ½E_k[f''], "
        "∇_{μ0}F = Φ₁ − Φ₂ with Φ_k = E_k[f] − m_kE_k[f'] + ½E_k[f'']·(m_k² − 1/S_k)",
        "exact λ-space weight rule (c ← c − ρ(Φ₁ − Φ₂), then A_k at the new (m_k, S_k)) = Lin's "
        "log(π₁/π₂) ← log(π₁/π₂) − ρ(E₁[f] − E₂[f]) + O(ρ²), the ρ² term nonzero",
        "at E_k[f'] = E_k[f''] = 0 both weight rules give log(π₁/π₂) − ρ(E₁[f] − E₂[f]): the "
        "same fixed points",
        "q = p (a two-component MoG): f = ℓ̄ + log q ≡ 0, so every update is zero",
    ]


def _mog_derivs(theta: np.ndarray, w: np.ndarray, m: np.ndarray, s: np.ndarray):
    """log r(θ), (log r)', (log r)'' of r = Σ_j w_j N(m_j, 1/s_j) at θ ``(...)`` (numpy)."""
    diff = theta[..., None] - m
    logits = np.log(w) + 0.5 * np.log(s) - 0.5 * _LOG_2PI - 0.5 * s * diff**2
    top = logits.max(-1, keepdims=True)
    log_r = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
    resp = np.exp(logits - log_r[..., None])
    dj = -s * diff
    grad = (resp * dj).sum(-1)
    hess = (resp * ((dj - grad[..., None]) ** 2 - s)).sum(-1)
    return log_r, grad, hess


def classical(
    w0, m0, s0, target: tuple, rho: float, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lin et al. (2019) natural-gradient VI with a 1-D MoG, hand-coded in numpy,
    f = −log p + log q:

        S_k ← S_k + ρE_k[f''],  m_k ← m_k − ρE_k[f']/S_k,
        log(π_k/π_K) ← log(π_k/π_K) − ρ(E_k[f] − E_K[f]),

    E_k by GH-60 at θ = m_k + z/√S_k. ``target`` = (weights, means, precisions) of p. Returns the
    iterates of (π, m, S), each ``(steps + 1, K)``."""
    z, gw = np.polynomial.hermite_e.hermegauss(GH_POINTS)
    gw = gw / math.sqrt(2 * math.pi)
    w, m, s = (np.asarray(x, dtype=np.float64) for x in (w0, m0, s0))
    tw, tm, ts = (np.asarray(x, dtype=np.float64) for x in target)
    out = [(w, m, s)]
    for _ in range(steps):
        theta = m[:, None] + z / np.sqrt(s)[:, None]  # (K, P)
        lp, gp, hp = _mog_derivs(theta, tw, tm, ts)
        lq, gq, hq = _mog_derivs(theta, w, m, s)
        e_f, e_g, e_h = (lq - lp) @ gw, (gq - gp) @ gw, (hq - hp) @ gw
        s = s + rho * e_h
        m = m - rho * e_g / s
        ratio = np.log(w) - np.log(w[-1]) - rho * (e_f - e_f[-1])
        w = np.exp(ratio - ratio.max())
        w = w / w.sum()
        out.append((w, m, s))
    return tuple(np.stack(x) for x in zip(*out))


def target_loss(theta: torch.Tensor) -> torch.Tensor:
    """ℓ̄(θ) = −log p(θ), p = 0.3 N(−2, 0.5²) + 0.7 N(1.5, 0.8²); θ ``(P, 1)`` → ``(P,)``."""
    w, m, sd = (torch.tensor(x, dtype=theta.dtype) for x in (TARGET_W, TARGET_M, TARGET_SD))
    x = theta[..., 0:1]
    logp = torch.log(w) - 0.5 * ((x - m) / sd) ** 2 - torch.log(sd) - 0.5 * _LOG_2PI
    return -torch.logsumexp(logp, dim=-1)


def blr_instance(
    w0, m0, s0, rho: float, steps: int, weights: str = "lin"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mixture BLR (:func:`blr.mixture.mixture_step`, :class:`expfam.Mixture` of
    :class:`expfam.FullGaussian`, GH-60, exact expectations of f = ℓ̄ + log q) on the Row-17
    target, with Lin's (``"lin"``) or the λ-space (``"exact"``) weight rule; iterates of
    (π, m, S), each ``(steps + 1, K)``."""
    fam = expfam.Mixture(expfam.FullGaussian())
    w0, m0, s0 = (torch.tensor(x, dtype=torch.float64) for x in (w0, m0, s0))
    nat = fam.from_components(
        w0, fam.component.from_moments(m0.reshape(-1, 1), s0.reshape(-1, 1, 1))
    )
    nats = [nat]
    for _ in range(steps):
        nat = mixture_step(fam, nat, target_loss, rho, n_points=GH_POINTS, weights=weights)
        nats.append(nat)
    path = expfam.MixtureNat(*(torch.stack(x) for x in zip(*nats)))  # one batched conversion
    m, s = fam.component.to_moments(fam.components(path))
    return torch.exp(fam.log_weights(path)), m[..., 0], s[..., 0, 0]


def _dev(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def check(device: str = "cpu") -> list[Comparison]:
    """BLR vs hand-coded Lin et al. (300 steps), convergence to the target (Lin and exact weight
    rules), and q = p as a fixed point. (No Gaussian kernel: ``device`` is unused.)"""
    target = (TARGET_W, TARGET_M, tuple(1 / sd**2 for sd in TARGET_SD))
    bw, bm, bs = blr_instance(START_W, START_M, START_S, RHO, STEPS)
    cw, cm, cs = classical(START_W, START_M, START_S, target, RHO, STEPS)
    step_by_step = max(_dev(bw, cw), _dev(bm, cm), _dev(bs, cs))
    lin_limit = max(_dev(bw[-1], target[0]), _dev(bm[-1], target[1]), _dev(bs[-1], target[2]))
    ew, em, es = blr_instance(START_W, START_M, START_S, RHO_EXACT, STEPS_EXACT, "exact")
    exact_limit = max(_dev(ew[-1], target[0]), _dev(em[-1], target[1]), _dev(es[-1], target[2]))
    fixed = 0.0
    for rule in ("lin", "exact"):
        fw, fm, fs = blr_instance(*target, 0.5, 1, rule)
        fixed = max(fixed, _dev(fw[1], fw[0]), _dev(fm[1], fm[0]), _dev(fs[1], fs[0]))
    gaps = []
    for rho in (2 * RHO_ORDER, RHO_ORDER):  # one step of each weight rule from the start
        lw = blr_instance(START_W, START_M, START_S, rho, 1, "lin")[0][1]
        ew = blr_instance(START_W, START_M, START_S, rho, 1, "exact")[0][1]
        gaps.append(abs(float(torch.log(lw[0] / lw[1]) - torch.log(ew[0] / ew[1]))))
    order = abs(math.log2(gaps[0] / gaps[1]) - 2)
    return [
        Comparison(
            "BLR (Lin weights) vs hand-coded Lin et al. (2019), 300 steps", step_by_step, 1e-12
        ),
        Comparison(
            "BLR (Lin weights, ρ = 0.1, 300 steps) vs target (π, m, S)",
            lin_limit,
            1e-6,
            kind="limit",
        ),
        Comparison(
            "BLR (exact weights, ρ = 0.3, 100 steps) vs target (π, m, S)",
            exact_limit,
            1e-6,
            kind="limit",
        ),
        Comparison(
            "q = target is a fixed point: one step (ρ = 0.5, both rules)",
            fixed,
            1e-12,
            kind="limit",
        ),
        Comparison(
            f"Lin vs exact weight rule, one step: |log₂(Δ(2ρ)/Δ(ρ)) − 2| at ρ = {RHO_ORDER} "
            "(an O(ρ²) gap)",
            order,
            0.01,
            kind="limit",
        ),
    ]


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "target_loss, rho,",
        "target_loss, 1.01 * rho,",
        "BLR step ρ × 1.01",
    ),
    Mutation(
        "blr",
        "term",
        "target_loss",
        " - torch.log(sd)",
        "",
        "BLR target −log p without the components' −log σ_k",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "s = s + rho * e_h",
        "s = s + 1.01 * rho * e_h",
        "Lin et al. precision step ρ × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "(hq - hp) @ gw",
        "(-hp) @ gw",
        "Lin et al. without E_k[∇²log q] (the entropy's curvature)",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "ratio = np.log(w) - np.log(w[-1]) - rho * (e_f - e_f[-1])",
        "ratio = np.log(w) - np.log(w[-1])",
        "Lin et al. with the weights never updated",
    ),
)
