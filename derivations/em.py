r"""Expectation–maximization is the BLR on q(z)q(θ) with ρ = 1 per block and the delta method
for the parameters θ.

**Family.** Mean field q(z, θ) = Π_i q(z_i) · q(θ): each q(z_i) a Categorical over the K
components in its minimal form (λ_ik = log(r_ik/r_iK), μ_ik = r_ik, k < K, ∇_μ(−H) = λ), and
q(θ) = N(m, S⁻¹) a full Gaussian over the unconstrained parameters
θ = (m_1..m_K, s_1..s_K, η_1..η_{K−1}): component means, log-variances s_k = log σ²_k and
K − 1 free logits (π = softmax(η_1, .., η_{K−1}, 0); the K-th logit is pinned at 0, which
removes the softmax's redundant direction). The Fisher matrix is block diagonal, so the BLR
splits into one rule per block.

**Rule.** ℓ̄(z, θ) = −log p(y, z | θ) − log p₀(θ). The delta method for θ replaces every
E_{q(θ)}[φ(θ)] by φ(m).

- E-block (ρ = 1): E_{q(z)}[ℓ̄(z, m)] = Σ_i Σ_k r_ik c_ik with
  c_ik = −log π_k − log N(y_i | m_k, σ²_k) (the mixing weight and the variance terms included)
  is linear in μ_z = r, so λ_ik ← −(c_ik − c_iK) = log(π_kN(y_i|m_k, σ²_k)/(π_KN(y_i|m_K, σ²_K))):
  q(z_i) = p(z_i | y_i, θ = m), the E-step.
- θ-block (ρ = 1, delta method): the Gaussian BLR S ← ∇²ℓ̄_r(m), m ← m − S⁻¹∇ℓ̄_r(m) with
  ℓ̄_r(θ) = E_{q(z)}[ℓ̄(z, θ)] = −Q(θ) (Q the EM objective, log prior included): one Newton
  step on Q. Q is not quadratic in (s, η), so one step is not the M-step; iterated within the
  sweep (ρ = 1, delta method, fresh S each step) the θ-block stops only where ∇Q(m) = 0, the
  unique stationary point of Q, which is the closed-form MAP M-step

  π_k = (N_k + α − 1)/(N + K(α − 1)),  m_k = (Σ_i r_ik y_i + κ₀μ₀)/(N_k + κ₀),
  σ²_k = (Σ_i r_ik (y_i − m_k)² + κ₀(m_k − μ₀)² + 2b₀)/(N_k + 2a₀ + 3),  N_k = Σ_i r_ik.

  Stopped after one step it is generalized EM with a Newton M-step (Lange 1995).

Priors (MAP-EM): π ~ Dirichlet(α, .., α), m_k | σ²_k ~ N(μ₀, σ²_k/κ₀), σ²_k ~ InvGamma(a₀, b₀),
entering ℓ̄ as the function log p₀(π, m, σ²) of the parameters (written in θ it is the same
function, so the coordinates of q(θ) do not move the maximizer).

**Equality conditions.** ρ = 1 for both blocks, the E-block first, the delta method for θ, and
the θ-block iterated to its fixed point within each sweep ⇒ one BLR sweep = one EM iteration
(up to the inner loop's stopping rule: a step below 1e-9 leaves, by Newton's quadratic
convergence, an error at rounding level).
That the inner Newton loop converges is assumed (the symbolic column's assumption), not derived:
:func:`derive` proves that its only fixed point is the M-step, and the check measures ∇Q after
every inner loop. With a single θ-step per sweep the BLR equals generalized EM with one Newton
step on Q, from any S (no assumption). With exact E_{q(θ)} instead of the delta method the
E-block picks up the variance of q(θ): that is variational EM (rows 14 and 15).

**Test problem.** 1-D mixture of K = 2 Gaussians with unequal weights and variances: 200
points, 60 from N(−2, 0.6²) then 140 from N(1.5, 1.3²) (``numpy.random.default_rng(0)``);
priors α = 2, μ₀ = 0.5, κ₀ = 0.1, a₀ = 2, b₀ = 1; start π = (0.4, 0.6), m = (−1, 1),
σ² = (0.8, 1.5), S₀ = I, q(z) at λ = 0 (at ρ = 1 neither start enters). Learned: π, means
and variances. Compared: 20 BLR sweeps (inner θ-loop until a step is below 1e-9) against
hand-coded EM — (π, m, σ²) and the responsibilities, equality (≤ 1e-10, once the inner loop
has converged) — and ∇Q after every inner loop (hand-written gradient, limit ≤ 1e-8); 12 BLR
sweeps with a single θ-step against hand-coded generalized EM (one Newton step with the
hand-written ∇Q, ∇²Q), the iterates and the precision S = −∇²Q(θ_t), equality ≤ 1e-10; the
EM objective log p(y | θ) + log p₀(θ) along the BLR sweeps never decreasing (bound, 1e-10);
EM's fixed point (iterated until a step is below 1e-15) is a fixed point of both BLR sweeps
(limit, 1e-12) and matches the pinned value for this seed, π = (0.3250682707, 0.6749317293),
m = (−1.8911717475, 1.5749218158), σ² = (0.3293923692, 1.3922279363) (limit, 1e-9). The BLR
side differentiates ℓ̄ by autograd (:class:`blr.Exact` for the E-block, :class:`blr.Delta`
for the θ-block); the hand-written derivatives live only in the classical side.

**References.** Khan & Rue (2023), Table 1 row 13 (EM: exponential family for the latents ×
Gaussian for the parameters, delta method); Dempster, Laird & Rubin (1977); Neal & Hinton
(1998), a view of EM as coordinate ascent on a free energy; Lange (1995), "A gradient algorithm
locally equivalent to the EM algorithm", JRSS B 57 (one Newton step per M-step).
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
    key="em",
    number=13,
    algorithm="Expectation–Maximization",
    posterior="exp-family (latents) × Gaussian (parameters)",
    approximation="delta method (parameters), ρ = 1",
    symbolic="~",
    assumptions=(
        "The inner θ-block loop (ρ = 1, delta method: Newton's method on Q from the previous "
        "sweep's θ) converges within each sweep; derive() proves its only fixed point is the "
        "closed-form M-step, and the check measures ‖∇Q‖ ≤ 1e-8 after every inner loop.",
    ),
)

F64 = torch.float64
K = 2
ALPHA, MU0, KAPPA0, A0, B0 = 2.0, 0.5, 0.1, 2.0, 1.0
PI0, M0, VAR0 = (0.4, 0.6), (-1.0, 1.0), (0.8, 1.5)
SWEEPS, NEWTON_SWEEPS = 20, 12
INNER_TOL, INNER_MAX = 1e-9, 50
#: EM's fixed point for data(), to 10 decimals: (π, m, σ²)
PINNED = (
    (0.3250682707, 0.6749317293),
    (-1.8911717475, 1.5749218158),
    (0.3293923692, 1.3922279363),
)
_LOG_2PI = math.log(2 * math.pi)


def data() -> torch.Tensor:
    """200 points: 60 from N(−2, 0.6²) then 140 from N(1.5, 1.3²), numpy default_rng(0)."""
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.normal(-2.0, 0.6, 60), rng.normal(1.5, 1.3, 140)])
    return torch.from_numpy(y).to(F64)


def derive() -> list[str]:
    """E-block at ρ = 1 = Bayes' rule for z with unequal weights and variances; the θ-block at
    ρ = 1 is a Newton step on Q; its only fixed point is the closed-form MAP M-step (weights,
    means, variances), where −∇²Q is positive definite."""
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
    y, r, lam = sp.symbols("y r lambda", real=True)
    mk = sp.symbols("m_1 m_2", real=True)
    vk = sp.symbols("v_1 v_2", positive=True)
    p1 = sp.Symbol("pi_1", positive=True)
    pis = (p1, 1 - p1)

    def normal(k: int) -> sp.Expr:
        return sp.exp(-((y - mk[k]) ** 2) / (2 * vk[k])) / sp.sqrt(2 * sp.pi * vk[k])

    c = [-sp.log(pis[k]) - sp.log(normal(k)) for k in range(2)]
    e_z = r * c[0] + (1 - r) * c[1]
    lam_new = lam - (sp.diff(e_z, r) + lam)
    bayes = pis[0] * normal(0) / (pis[0] * normal(0) + pis[1] * normal(1))
    assert sp.simplify(sp.expand_log(1 / (1 + sp.exp(-lam_new)) - bayes, force=True)) == 0
    # θ-block, delta method, ρ = 1 (Gaussian BLR): λ' = (1 − ρ)λ − ρ(ĝ − Ĥm, ½Ĥ) ⇒ Newton
    g = sp.Matrix(sp.symbols("g1 g2", real=True))
    h11, h12, h22, s11, s12, s22 = sp.symbols("h11 h12 h22 s11 s12 s22", real=True)
    hh, s_old = sp.Matrix([[h11, h12], [h12, h22]]), sp.Matrix([[s11, s12], [s12, s22]])
    m = sp.Matrix(sp.symbols("m_a m_b", real=True))
    rho = sp.Symbol("rho", positive=True)
    # λ' = (1 − ρ)λ − ρ(ĝ − Ĥm, ½Ĥ) with λ = (S m, −½S), then ρ = 1
    lam1 = ((1 - rho) * s_old * m - rho * (g - hh * m)).subs(rho, 1)
    prec = (-2 * ((1 - rho) * (-s_old / 2) - rho * hh / 2)).subs(rho, 1)
    assert sp.simplify(prec - hh) == sp.zeros(2, 2)
    assert sp.simplify(prec.inv() * lam1 - (m - hh.inv() * g)) == sp.zeros(2, 1)
    # Q for one component in (m, s = log σ²) with 3 points, responsibilities r_i, priors
    # N(μ₀, σ²/κ₀) and InvGamma(a₀, b₀): the stationary point is the closed-form M-step
    ys, rs = sp.symbols("y1:4", real=True), sp.symbols("r1:4", positive=True)
    mu0 = sp.Symbol("mu_0", real=True)
    k0, a0, b0 = sp.symbols("kappa_0 a_0 b_0", positive=True)
    # written in (m, w) with w = e^{−s} = 1/σ², so that ∂/∂s = −w∂/∂w
    th_m, w = sp.Symbol("theta_m", real=True), sp.Symbol("w", positive=True)
    log_var = -sp.log(w)
    q_comp = sum(ri * (-log_var / 2 - w * (yi - th_m) ** 2 / 2) for yi, ri in zip(ys, rs)) + (
        -log_var / 2 - k0 * w * (th_m - mu0) ** 2 / 2 - (a0 + 1) * log_var - b0 * w
    )
    nk = sum(rs)
    m_hat = (sum(ri * yi for yi, ri in zip(ys, rs)) + k0 * mu0) / (nk + k0)
    d_hat = sum(ri * (yi - m_hat) ** 2 for yi, ri in zip(ys, rs)) + k0 * (m_hat - mu0) ** 2
    v_hat = (d_hat + 2 * b0) / (nk + 2 * a0 + 3)

    def d_s(expr: sp.Expr) -> sp.Expr:
        return -w * sp.diff(expr, w)

    def big_d(mm: sp.Expr) -> sp.Expr:  # D(m) = Σr_i(y_i − m)² + κ₀(m − μ₀)² + 2b₀
        return sum(ri * (yi - mm) ** 2 for yi, ri in zip(ys, rs)) + k0 * (mm - mu0) ** 2 + 2 * b0

    c_k = nk + 2 * a0 + 3
    q_m, q_s = sp.diff(q_comp, th_m), d_s(q_comp)
    # ∂Q/∂m = w(N_k + κ₀)(m̂ − m): linear in m, zero only at m̂, whatever σ²
    assert sp.cancel(q_m - w * (nk + k0) * (m_hat - th_m)) == 0
    # ∂Q/∂s = ½(wD(m) − c_k): at m̂ linear in w, zero only at w = c_k/D(m̂) = 1/σ̂²
    assert sp.expand(q_s - (w * big_d(th_m) - c_k) / 2) == 0
    assert (
        sp.cancel(big_d(m_hat) - (d_hat + 2 * b0)) == 0
        and sp.cancel(c_k * v_hat - big_d(m_hat)) == 0
    )
    # −∇²Q = [[w(N_k + κ₀), ∂Q/∂m], [∂Q/∂m, ½wD(m)]]: at the stationary point
    # diag((N_k + κ₀)/σ̂², c_k/2) ≻ 0
    assert sp.expand(-sp.diff(q_m, th_m) - w * (nk + k0)) == 0
    assert sp.expand(d_s(q_m) + q_m) == 0
    assert sp.expand(-d_s(q_s) - w * big_d(th_m) / 2) == 0
    # weights, K = 3: Q_w = Σ_k A_k log softmax_k(η₁, η₂, 0), A_k = N_k + α − 1 > 0. For every
    # η, −∇²Q_w = ΣA(diag π − ππᵀ) on the free logits, with determinant (ΣA)²π₁π₂π₃ > 0:
    # strictly concave, so its one stationary point, π_k = A_k/ΣA, is the maximum
    e1, e2 = sp.symbols("eta_1 eta_2", real=True)
    aa = sp.symbols("A_1:4", positive=True)
    zsum = sp.exp(e1) + sp.exp(e2) + 1
    log_pi = [e1 - sp.log(zsum), e2 - sp.log(zsum), -sp.log(zsum)]
    pw = sp.Matrix([sp.exp(e1) / zsum, sp.exp(e2) / zsum])
    q_w = sum(ak * lp for ak, lp in zip(aa, log_pi))
    big_a = sum(aa)
    hw = -sp.hessian(q_w, (e1, e2))
    assert sp.simplify(hw - big_a * (sp.diag(*pw) - pw * pw.T)) == sp.zeros(2, 2)
    assert sp.simplify(hw.det() - big_a**2 * pw[0] * pw[1] / zsum) == 0
    at_hat = {e1: sp.log(aa[0] / aa[2]), e2: sp.log(aa[1] / aa[2])}
    assert all(sp.simplify(sp.diff(q_w, v).subs(at_hat)) == 0 for v in (e1, e2))
    assert all(sp.simplify(p.subs(at_hat) - ak / big_a) == 0 for p, ak in zip(pw, aa))
    return [
        "Categorical (K = 3): μ = ∇A = softmax and F⁻¹∇_λ(−H) = λ",
        "E-block, ρ = 1: λ = −∂_r E_{q(z)}[ℓ̄(z, m)] gives "
        "σ(λ) = π₁N(y|m₁, σ²₁)/Σ_kπ_kN(y|m_k, σ²_k) = p(z = 1 | y, θ = m), with unequal weights "
        "and variances",
        "θ-block, delta method, ρ = 1: S = Ĥ and m' = m − Ĥ⁻¹ĝ, a Newton step on Q from any S "
        "(symbolic ĝ, Ĥ in 2-D); its fixed points are the stationary points of Q",
        "one component, 3 symbolic points, priors N(μ₀, σ²/κ₀) × InvGamma(a₀, b₀), in "
        "(m, s = log σ²): ∇Q = 0 only at m = (Σr_iy_i + κ₀μ₀)/(N_k + κ₀), σ² = (Σr_i(y_i − m)² "
        "+ κ₀(m − μ₀)² + 2b₀)/(N_k + 2a₀ + 3), where −∇²Q = diag((N_k + κ₀)/σ², (N_k + 2a₀ + 3)/2)",
        "weights (K = 3, free logits η₁, η₂, η₃ = 0, A_k = N_k + α − 1): −∇²Σ_kA_k log π_k = "
        "ΣA(diag π − ππᵀ) with determinant (ΣA)²π₁π₂π₃ > 0 for every η (strictly concave); its "
        "one stationary point is π_k = A_k/ΣA",
    ]


# ---------------------------------------------------------------------------- classical
def _e_step(y: torch.Tensor, pi: torch.Tensor, m: torch.Tensor, var: torch.Tensor):
    """r_ik ∝ π_k N(y_i | m_k, σ²_k)."""
    logits = torch.log(pi) - 0.5 * torch.log(2 * math.pi * var) - 0.5 * (y[:, None] - m) ** 2 / var
    w = torch.exp(logits - logits.max(-1, keepdim=True).values)
    return w / w.sum(-1, keepdim=True)


def m_step(y: torch.Tensor, r: torch.Tensor):
    """The closed-form MAP M-step: π_k = (N_k + α − 1)/(N + K(α − 1)),
    m_k = (Σ_i r_ik y_i + κ₀μ₀)/(N_k + κ₀),
    σ²_k = (Σ_i r_ik (y_i − m_k)² + κ₀(m_k − μ₀)² + 2b₀)/(N_k + 2a₀ + 3)."""
    nk = r.sum(0)
    pi = (nk + ALPHA - 1) / (y.shape[0] + K * (ALPHA - 1))
    m = ((r * y[:, None]).sum(0) + KAPPA0 * MU0) / (nk + KAPPA0)
    var = ((r * (y[:, None] - m) ** 2).sum(0) + KAPPA0 * (m - MU0) ** 2 + 2 * B0) / (
        nk + 2 * A0 + 3
    )
    return pi, m, var


def classical(y: torch.Tensor, sweeps: int):
    """Hand-coded MAP-EM from (π₀, m₀, σ²₀): E-step, then :func:`m_step`. Returns the
    parameters (sweeps, 3, K) as rows (π, m, σ²) and the responsibilities (sweeps, N, K)."""
    pi, m, var = (torch.tensor(v, dtype=y.dtype) for v in (PI0, M0, VAR0))
    params, resp = [], []
    for _ in range(sweeps):
        r = _e_step(y, pi, m, var)
        pi, m, var = m_step(y, r)
        params.append(torch.stack([pi, m, var]))
        resp.append(r)
    return torch.stack(params), torch.stack(resp)


def q_grad_hess(y: torch.Tensor, r: torch.Tensor, theta: torch.Tensor):
    """Hand-written ∇(−Q) and ∇²(−Q) in θ = (m_1..m_K, s_1..s_K, η_1..η_{K−1}):
    with G_k = Σ_i r_ik(y_i − m_k) − κ₀(m_k − μ₀), D_k = Σ_i r_ik(y_i − m_k)² + κ₀(m_k − μ₀)² + 2b₀,
    c_k = N_k + 2a₀ + 3, A_k = N_k + α − 1:
    ∂/∂m_k = −e^{−s_k}G_k, ∂/∂s_k = ½c_k − ½e^{−s_k}D_k, ∂/∂η_j = −(A_j − ΣA π_j);
    ∂²/∂m_k² = e^{−s_k}(N_k + κ₀), ∂²/∂m_k∂s_k = e^{−s_k}G_k, ∂²/∂s_k² = ½e^{−s_k}D_k,
    ∂²/∂η_i∂η_j = ΣA(π_iδ_ij − π_iπ_j)."""
    m, s, eta = theta[:K], theta[K : 2 * K], theta[2 * K :]
    e = torch.exp(-s)
    nk = r.sum(0)
    resid = y[:, None] - m
    gk = (r * resid).sum(0) - KAPPA0 * (m - MU0)
    dk = (r * resid**2).sum(0) + KAPPA0 * (m - MU0) ** 2 + 2 * B0
    ck = nk + 2 * A0 + 3
    ak = nk + ALPHA - 1
    logits = torch.cat([eta, torch.zeros(1, dtype=theta.dtype)])
    pi = torch.exp(logits - logits.max())
    pi = pi / pi.sum()
    grad = torch.cat([-e * gk, 0.5 * ck - 0.5 * e * dk, -(ak[:-1] - ak.sum() * pi[:-1])])
    hess = torch.zeros(3 * K - 1, 3 * K - 1, dtype=theta.dtype)
    idx_m, idx_s = torch.arange(K), torch.arange(K, 2 * K)
    hess[idx_m, idx_m] = e * (nk + KAPPA0)
    hess[idx_m, idx_s] = e * gk
    hess[idx_s, idx_m] = e * gk
    hess[idx_s, idx_s] = 0.5 * e * dk
    p = pi[:-1]
    hess[2 * K :, 2 * K :] = ak.sum() * (torch.diag(p) - torch.outer(p, p))
    return grad, hess


def to_theta(pi: torch.Tensor, m: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """θ = (m, log σ², log(π_k/π_K) for k < K) (the check's starts; neither side calls it)."""
    return torch.cat([m, torch.log(var), torch.log(pi[:-1] / pi[-1])])


def from_theta(theta: torch.Tensor) -> torch.Tensor:
    """(π, m, σ²) as rows (3, K) from θ = (m, s, η) (the check's read-out of the BLR's θ)."""
    logits = torch.cat([theta[2 * K :], torch.zeros(1, dtype=theta.dtype)])
    return torch.stack([torch.softmax(logits, 0), theta[:K], torch.exp(theta[K : 2 * K])])


def gradient_em(y: torch.Tensor, sweeps: int):
    """Hand-coded generalized EM (Lange 1995): E-step, then ONE Newton step on Q in θ with the
    hand-written derivatives of :func:`q_grad_hess`. Returns θ after each sweep (sweeps, 3K−1)
    and the Hessian −∇²Q(θ_t) of each step (sweeps, 3K−1, 3K−1)."""
    pi, m, var = (torch.tensor(v, dtype=y.dtype) for v in (PI0, M0, VAR0))
    theta = torch.cat([m, torch.log(var), torch.log(pi[:-1] / pi[-1])])
    thetas, hessians = [], []
    for _ in range(sweeps):
        m, var = theta[:K], torch.exp(theta[K : 2 * K])
        pi = torch.softmax(torch.cat([theta[2 * K :], torch.zeros(1, dtype=y.dtype)]), 0)
        r = _e_step(y, pi, m, var)
        grad, hess = q_grad_hess(y, r, theta)
        theta = theta - torch.linalg.solve(hess, grad)
        thetas.append(theta)
        hessians.append(hess)
    return torch.stack(thetas), torch.stack(hessians)


def em_objective(y: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """log p(y | π, m, σ²) + log p₀(π, m, σ²) (Dirichlet, normal, inverse-gamma; up to a
    constant), the objective MAP-EM ascends; ``params`` rows (π, m, σ²)."""
    pi, m, var = params
    logits = torch.log(pi) - 0.5 * torch.log(2 * math.pi * var) - 0.5 * (y[:, None] - m) ** 2 / var
    log_lik = torch.logsumexp(logits, -1).sum()
    log_prior = (ALPHA - 1) * torch.log(pi).sum()
    log_prior = (
        log_prior - (0.5 * torch.log(var / KAPPA0) + KAPPA0 * (m - MU0) ** 2 / (2 * var)).sum()
    )
    log_prior = log_prior - ((A0 + 1) * torch.log(var) + B0 / var).sum()
    return log_lik + log_prior


def em_fixed_point(y: torch.Tensor, max_iter: int = 5000) -> torch.Tensor:
    """EM iterated until a step changes (π, m, σ²) by less than 1e-15; rows (π, m, σ²)."""
    pi, m, var = (torch.tensor(v, dtype=y.dtype) for v in (PI0, M0, VAR0))
    old = torch.stack([pi, m, var])
    for _ in range(max_iter):
        new = torch.stack(m_step(y, _e_step(y, *old)))
        if (new - old).abs().max() < 1e-15:
            return new
        old = new
    return old


# ---------------------------------------------------------------------------- BLR
def unpack(theta: torch.Tensor):
    """θ (…, 3K−1) ↦ (m, s, log π) with log π = log softmax(η_1..η_{K−1}, 0)."""
    m, s, eta = theta[..., :K], theta[..., K : 2 * K], theta[..., 2 * K :]
    log_pi = torch.log_softmax(torch.cat([eta, torch.zeros_like(eta[..., :1])], -1), -1)
    return m, s, log_pi


def complete_terms(y: torch.Tensor, theta: torch.Tensor):
    """The complete-data log-likelihood log p(y_i, z_i = k | θ) in its two parts: log π_k
    (…, K) and log N(y_i | m_k, e^{s_k}) (…, N, K)."""
    m, s, log_pi = unpack(theta)
    s_, m_ = s[..., None, :], m[..., None, :]
    log_lik = -0.5 * _LOG_2PI - 0.5 * s_ - 0.5 * (y[:, None] - m_) ** 2 * torch.exp(-s_)
    return log_pi, log_lik


def log_prior(theta: torch.Tensor) -> torch.Tensor:
    """log p₀ (up to a constant) as a function of θ: Dirichlet(α) on π, N(μ₀, σ²_k/κ₀) on m_k,
    InvGamma(a₀, b₀) on σ²_k = e^{s_k}; vectorized over leading dimensions."""
    m, s, log_pi = unpack(theta)
    value = (ALPHA - 1) * log_pi.sum(-1)
    value = value - (0.5 * s + 0.5 * KAPPA0 * (m - MU0) ** 2 * torch.exp(-s)).sum(-1)
    value = value - ((A0 + 1) * s + B0 * torch.exp(-s)).sum(-1)
    return value


def e_block_loss(y: torch.Tensor, m: torch.Tensor):
    """μ_z ↦ E_{q(z)}[ℓ̄(z, m)] = Σ_k r_ik c_ik per point, c_ik = −log π_k − log N(y_i | m_k, σ²_k)
    (delta method: θ = m, the mean of q(θ)); r_iK = 1 − Σ_{k<K} μ_ik."""
    log_pi, log_lik = complete_terms(y, m)
    c = -(log_pi + log_lik)

    def loss(mean: expfam.CategoricalMean) -> torch.Tensor:
        r = torch.cat([mean.mu1, 1 - mean.mu1.sum(-1, keepdim=True)], dim=-1)
        return (r * c).sum(-1)

    return loss


def theta_block_loss(y: torch.Tensor, r: torch.Tensor):
    """θ ↦ E_{q(z)}[ℓ̄(z, θ)] = −Σ_i Σ_k r_ik log p(y_i, z_i = k | θ) − log p₀(θ) = −Q(θ)
    (vectorized over draws)."""

    def loss(theta: torch.Tensor) -> torch.Tensor:
        log_pi, log_lik = complete_terms(y, theta)
        return -(r * (log_pi[..., None, :] + log_lik)).sum((-2, -1)) - log_prior(theta)

    return loss


def blr_instance(y: torch.Tensor, theta0: torch.Tensor, sweeps: int, inner: int = INNER_MAX):
    """BLR sweeps: the Categorical E-block (:class:`blr.Exact`, ρ = 1), then the Gaussian
    θ-block (:class:`blr.Delta`, ρ = 1) repeated until a step moves θ by less than
    ``INNER_TOL`` (at most ``inner`` steps; ``inner=1`` is generalized EM). Returns θ after each
    sweep (sweeps, 3K−1), the responsibilities (sweeps, N, K) and the precision S after the
    first θ-step of each sweep (sweeps, 3K−1, 3K−1)."""
    cat, gauss = expfam.Categorical(), expfam.FullGaussian()
    nat_z = expfam.CategoricalNat(torch.zeros(y.shape[0], K - 1, dtype=F64))
    nat_t = gauss.from_moments(theta0, torch.eye(theta0.shape[0], dtype=F64))
    thetas, resp, precs = [], [], []
    for _ in range(sweeps):
        m = gauss.location(nat_t)
        nat_z = blr.step(cat, nat_z, e_block_loss(y, m), 1.0, estimator=blr.Exact())
        mu_z = cat.nat_to_mean(nat_z).mu1
        r = torch.cat([mu_z, 1 - mu_z.sum(-1, keepdim=True)], dim=-1)
        loss = theta_block_loss(y, r)
        for j in range(inner):
            old = gauss.location(nat_t)
            nat_t = blr.step(gauss, nat_t, loss, 1.0, estimator=blr.Delta())
            if j == 0:
                precs.append(gauss.to_moments(nat_t)[1])
            if (gauss.location(nat_t) - old).abs().max() < INNER_TOL:
                break
        thetas.append(gauss.location(nat_t))
        resp.append(r)
    return torch.stack(thetas), torch.stack(resp), torch.stack(precs)


def check(device: str = "cpu") -> list[Comparison]:
    """BLR sweeps vs EM (inner loop converged) and vs generalized EM (one Newton step), ∇Q after
    each inner loop, the monotone EM objective and the fixed point (CPU float64; ``device`` is
    unused)."""
    y = data()
    theta0 = to_theta(*(torch.tensor(v, dtype=F64) for v in (PI0, M0, VAR0)))
    em_params, em_resp = classical(y, SWEEPS)
    thetas, resp, _ = blr_instance(y, theta0, SWEEPS)
    params = torch.stack([from_theta(t) for t in thetas])
    grads = [q_grad_hess(y, r, t)[0].abs().max().item() for r, t in zip(resp, thetas)]
    objective = torch.stack(
        [em_objective(y, p) for p in [from_theta(theta0), *params]]  # from the start
    )
    gem_thetas, gem_hess = gradient_em(y, NEWTON_SWEEPS)
    one_thetas, _, one_precs = blr_instance(y, theta0, NEWTON_SWEEPS, inner=1)
    fixed = em_fixed_point(y)
    theta_star = to_theta(*fixed)
    stay = [blr_instance(y, theta_star, 1, inner=n)[0][0] for n in (INNER_MAX, 1)]
    pinned = torch.tensor(PINNED, dtype=F64)
    return [
        Comparison(
            f"BLR sweep (θ-block iterated until a step < {INNER_TOL:g}) vs EM iteration, "
            f"(π, m, σ²), {SWEEPS} sweeps",
            (params - em_params).abs().max().item(),
            1e-10,
        ),
        Comparison(
            f"E-block (ρ = 1) vs EM responsibilities, {SWEEPS} sweeps",
            (resp - em_resp).abs().max().item(),
            1e-10,
        ),
        Comparison(
            "inner θ-loop converged: largest |∇Q| after it (hand-written ∇Q), every sweep",
            max(grads),
            1e-8,
            kind="limit",
        ),
        Comparison(
            f"BLR with one θ-step per sweep vs generalized EM (one Newton step on Q, "
            f"hand-written ∇Q, ∇²Q), θ, {NEWTON_SWEEPS} sweeps",
            (one_thetas - gem_thetas).abs().max().item(),
            1e-10,
        ),
        Comparison(
            f"θ-block precision S vs hand-written −∇²Q(θ_t) (relative), {NEWTON_SWEEPS} sweeps",
            ((one_precs - gem_hess).abs().max() / gem_hess.abs().max()).item(),
            1e-10,
        ),
        Comparison(
            "EM objective log p(y | θ) + log p₀(θ) along the BLR sweeps: largest decrease",
            max(0.0, -(objective[1:] - objective[:-1]).min().item()),
            1e-10,
            kind="bound",
        ),
        Comparison(
            "EM fixed point (step < 1e-15) is a fixed point of the BLR sweep, inner loop "
            "converged and one θ-step",
            max((from_theta(t) - fixed).abs().max().item() for t in stay),
            1e-12,
            kind="limit",
        ),
        Comparison(
            "EM fixed point vs pinned (π, m, σ²) (this seed)",
            (fixed - pinned).abs().max().item(),
            1e-9,
            kind="limit",
        ),
    ]


MUTATIONS = (
    Mutation(
        "blr",
        "term",
        "e_block_loss",
        "c = -(log_pi + log_lik)",
        "c = -log_lik",
        "log π deleted from the BLR E-step",
    ),
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "e_block_loss(y, m), 1.0,",
        "e_block_loss(y, m), 1.01,",
        "E-block ρ × 1.01",
    ),
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "nat_t, loss, 1.0,",
        "nat_t, loss, 1.01,",
        "θ-block ρ × 1.01",
    ),
    Mutation(
        "blr",
        "term",
        "log_prior",
        " + B0 * torch.exp(-s)",
        "",
        "inverse-gamma b₀/σ² term dropped from the BLR's log prior",
    ),
    Mutation(
        "blr",
        "term",
        "complete_terms",
        " - 0.5 * s_ - 0.5",
        " - 0.5",
        "−½ log σ²_k dropped from log N(y_i | m_k, σ²_k) (both BLR blocks)",
    ),
    Mutation(
        "classical",
        "constant",
        "m_step",
        "+ 2 * B0) / (",
        "+ 2.02 * B0) / (",
        "EM σ² M-step: b₀ × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "m_step",
        " + KAPPA0 * (m - MU0) ** 2 + 2 * B0",
        " + 2 * B0",
        "EM σ² M-step without κ₀(m_k − μ₀)²",
    ),
    Mutation(
        "classical",
        "term",
        "m_step",
        "(nk + ALPHA - 1) / (y.shape[0] + K * (ALPHA - 1))",
        "nk / (y.shape[0] + K * (ALPHA - 1))",
        "EM π M-step without the Dirichlet α − 1",
    ),
    Mutation(
        "classical",
        "term",
        "q_grad_hess",
        "hess[idx_m, idx_s] = e * gk",
        "hess[idx_m, idx_s] = 0 * gk",
        "generalized EM: one ∂²Q/∂m∂s of the hand-written Hessian dropped",
    ),
)
