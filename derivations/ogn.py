r"""Online Gauss–Newton (OGN) is the diagonal-Gaussian BLR under the delta method, a minibatch
and a per-example Gauss–Newton Hessian, written in (m, S) coordinates with two rates.

**Family.** q = N(m, diag(S)⁻¹), T(θ) = (θ, θ⊙θ), λ = (S⊙m, −½S), μ = (m, m² + 1/S),
∇_μ(−H) = λ. OGN keeps the precision in per-example units, S = N(s + δ̃) with δ̃ = δ/N, for the
loss ℓ̄(θ) = Σ_i ℓ_i(θ) + (δ/2)‖θ‖² (a prior N(0, δ⁻¹I), i.e. λ₀ = (0, −½δ)).

**Rule.** By Bonnet's and Price's theorems and the chain rule to μ,
∇_μE_q[ℓ] = (E_q[∇ℓ] − m⊙E_q[diag ∇²ℓ], ½E_q[diag ∇²ℓ]), and the BLR step
λ ← (1 − ρ)λ + ρ(λ₀ − ∇_μE_q[Σ_iℓ_i]) is S' = (1 − ρ)S + ρ(E_q[diag ∇²Σℓ_i] + δ),
m' = m − ρS'⁻¹(E_q[∇Σℓ_i] + δm) (exact algebra; the new precision in the mean step). The
approximations: the delta method (both expectations at m), a minibatch B of M examples
(Σ_i ↦ (N/M)Σ_{i∈B}) and the per-example Gauss–Newton diagonal h_i = Λ_i(∂f_i/∂θ)² with
Λ_i = ∂²ℓ_i/∂f² (``"ggn"``: the Hessian JᵀΛJ + ℓ'∇²f without its second term), or the squared
per-example gradient [∇ℓ_i]² (``"ef"``, the "empirical Fisher" of Khan et al. 2018). With
ĝ = (1/M)Σ_{i∈B}∇ℓ_i(m), ĥ = (1/M)Σ_{i∈B}h_i(m) and S = N(s + δ̃) the step is OGN:

    s ← (1 − β)s + βĥ,    m ← m − α(ĝ + δ̃m)/(s + δ̃).

For a GLM (logistic regression, f = xᵀθ) the per-example GGN is the exact per-example Hessian
σ(f)(1 − σ(f))xxᵀ, and it is the EF's expectation over labels drawn from the model,
E_y[(σ − y)²] = σ(1 − σ).

**Equality conditions.** α = β = ρ: OGN *is* the BLR above with the delta method, the minibatch
and the GN Hessian (:func:`blr.step` with ``blr.Delta("ggn")`` on a :class:`blr.ModelLoss` with
scale N/M and the prior λ₀). α ≠ β: the two-rate (m, S)-form S' = (1 − β)S + βĤ,
m' = m − αS'⁻¹ĝ (:func:`blr.gaussian_step` with ``GaussianOptions(lr=α)``), which moves the
mean α/β times as far as the BLR step at ρ = β; it is not a λ-space BLR (rates α on λ₁ and β on
λ₂ give another mean), so this rate is the row's one assumption. The same minibatches,
m₀ = θ₀ and S₀ = N(s₀ + δ̃) give identical iterates. Full batch, exact GGN on a
linear-Gaussian model: the fixed point is m* = S*⁻¹Xᵀy/σ² and N(s + δ̃) = diag(S*),
S* = XᵀX/σ² + δI — the mean-field Gaussian VI optimum of a Gaussian target.

The sides are independent: the BLR instance takes ĝ and the GGN / EF from the library's
:class:`blr.Delta` (autograd), :class:`blr.optim.OGN` from its own curvature module, the batched
kernel from autograd (:func:`autograd_gh`, torch.func); the hand-written formulas
(σ − y)x, σ(1 − σ)x², (σ − y)²x² live only in :func:`classical`.

**Test problem.** (i) Logistic regression, N = 50, D = 2, labels drawn from σ(xᵀw),
w = (1.5, −2), δ = 0.1, M = 10 (N ≠ M, so the N/M scale and δ̃ = δ/N matter), 50 stored
minibatches, α = 0.2, β = 0.1, m₀ = (0.5, −0.5) (at m = 0 every σ = ½ and the EF would
equal the GGN), s₀ = 1; ĥ changes with m at every step. Equalities (tolerance
1e-10): the BLR ((m, S)-form) and hand-coded OGN, for both Hessians; :class:`blr.optim.OGN`
(``beta1=0``, ``beta2 = 1 − β``, ``weight_decay = δ̃``) and the same hand-coded OGN, for both;
:func:`blr.step` and OGN at α = β = 0.1; the batched kernel :func:`blr.kernels.diag_gaussian_step_`
(64 copies from different starts and precisions, one call per step) and the (batched) engine on
8 copies and OGN on all 64. (ii) Bayesian linear regression N = 20, D = 2, σ² = 0.25, δ = 1,
full batch, GGN, α = 0.8, β = 0.5, 60 steps: limits m = m* and N(s + δ̃) = diag(S*) to 1e-10
(convergence is geometric: the GGN is constant).

**References.** Khan & Rue (2023), Table 1 row 8 and §4.2; Khan et al. (2018), "Fast and
scalable Bayesian deep learning by weight-perturbation in Adam" (OGN/VOGN); Osawa et al. (2019),
"Practical deep learning with Bayesian principles"; Bonnet (1964) and Price (1958) for the
Gaussian gradient identities (Opper & Archambeau 2009).
"""

from __future__ import annotations

import sympy as sp
import torch
import torch.nn.functional as F

import blr
import expfam
from blr.kernels import diag_gaussian_step_
from blr.optim import OGN
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="ogn",
    number=8,
    algorithm="Online Gauss–Newton (OGN)",
    posterior="Gaussian (diagonal)",
    approximation="delta, stochastic approx., GGN Hessian (or EF)",
    symbolic="~",
    assumptions=(
        "α ≠ β (the row's main comparisons): the mean step's own rate α, m' = m − α(ĝ + δ̃m)/"
        "(s' + δ̃), is typed into the (m, S)-form, not derived; derive() proves the reduction "
        "for α = β (the λ-space BLR at ρ = β, also checked by blr.step) and that α ≠ β moves "
        "the mean α/β times the BLR step and is no λ-space BLR",
    ),
)

f64 = torch.float64
N, D, M = 50, 2, 10
W_TRUE = (1.5, -2.0)
DELTA = 0.1  # prior precision δ (total-loss units); δ̃ = δ/N
ALPHA, BETA = 0.2, 0.1
M0 = (0.5, -0.5)  # θ₀ ≠ 0: at θ = 0 every σ = ½ and the EF equals the GGN
S0 = 1.0
STEPS = 50
# Bayesian linear regression of test (ii)
LR_N, LR_SIGMA2, LR_DELTA = 20, 0.25, 1.0
LR_ALPHA, LR_BETA, LR_STEPS = 0.8, 0.5, 60


# ---------------------------------------------------------------------------- derivation
def _moment(k: int, m: sp.Expr, v: sp.Expr) -> sp.Expr:
    """E[θᵏ] for θ ~ N(m, v): the k-th derivative of the MGF exp(mt + vt²/2) at t = 0."""
    t = sp.Symbol("t")
    return sp.diff(sp.exp(m * t + v * t**2 / 2), t, k).subs(t, 0)


def _expect(expr: sp.Expr, thetas, means, variances) -> sp.Expr:
    """E_q[expr] for a polynomial in independent θ_j ~ N(m_j, v_j) (exact Gaussian moments)."""
    poly = sp.Poly(sp.expand(expr), *thetas)
    total = sp.Integer(0)
    for powers, coeff in poly.terms():
        term = coeff
        for k, m, v in zip(powers, means, variances):
            term *= _moment(k, m, v)
        total += term
    return sp.expand(total)


def derive_mean_gradient() -> list[str]:
    """The diagonal Gaussian's ∇_μE_q[ℓ] (Bonnet, Price, chain rule), ∇_μ(−H) = λ, and the
    prior's ∇_μ: the pieces of the BLR step shared by OGN and VOGN."""
    th, m, v = sp.symbols("theta m v", real=True)
    phi = sp.exp(-((th - m) ** 2) / (2 * v)) / sp.sqrt(2 * sp.pi * v)
    # ∂_mφ = −∂_θφ and ∂_vφ = ½∂²_θφ: integrating by parts gives ∂_mE[ℓ] = E[ℓ'] (Bonnet) and
    # ∂_vE[ℓ] = ½E[ℓ''] (Price)
    assert sp.simplify(sp.diff(phi, m) + sp.diff(phi, th)) == 0
    assert sp.simplify(sp.diff(phi, v) - sp.diff(phi, th, 2) / 2) == 0
    # in μ = (m, m² + v): ∇_μ₁E = E[∇ℓ] − m⊙E[diag ∇²ℓ], ∇_μ₂E = ½E[diag ∇²ℓ]; checked on a
    # generic quartic ℓ(θ₁, θ₂) (15 free coefficients, cross terms included) by exact moments
    thetas = sp.symbols("theta1 theta2", real=True)
    mu1 = sp.symbols("mu1_1 mu1_2", real=True)
    mu2 = sp.symbols("mu2_1 mu2_2", real=True)
    var = [mu2[j] - mu1[j] ** 2 for j in range(2)]
    ell = sum(
        sp.Symbol(f"c{a}{b}") * thetas[0] ** a * thetas[1] ** b
        for a in range(5)
        for b in range(5 - a)
    )
    e_loss = _expect(ell, thetas, mu1, var)
    for j in range(2):
        e_grad = _expect(sp.diff(ell, thetas[j]), thetas, mu1, var)
        e_hess = _expect(sp.diff(ell, thetas[j], 2), thetas, mu1, var)
        assert sp.expand(sp.diff(e_loss, mu1[j]) - (e_grad - mu1[j] * e_hess)) == 0
        assert sp.expand(sp.diff(e_loss, mu2[j]) - e_hess / 2) == 0
    # −H = −½ log(2πe v), v = μ₂ − μ₁²: ∇_μ(−H) = (m/v, −1/(2v)) = (Sm, −½S) = λ
    a, b = sp.symbols("mu_1 mu_2", real=True)
    neg_entropy = -sp.log(2 * sp.pi * sp.E * (b - a**2)) / 2
    assert sp.simplify(sp.diff(neg_entropy, a) - a / (b - a**2)) == 0
    assert sp.simplify(sp.diff(neg_entropy, b) + 1 / (2 * (b - a**2))) == 0
    # the prior's term (δ/2)θ²: ∇_μE_q = (0, δ/2) = −λ₀
    delta = sp.Symbol("delta", positive=True)
    e_prior = _expect(delta * th**2 / 2, [th], [a], [b - a**2])
    assert [sp.diff(e_prior, a), sp.diff(e_prior, b)] == [0, delta / 2]
    return [
        "φ(θ; m, v): ∂_mφ = −∂_θφ, ∂_vφ = ½∂²_θφ, so ∂_mE_q[ℓ] = E_q[ℓ'] (Bonnet) and "
        "∂_vE_q[ℓ] = ½E_q[ℓ''] (Price)",
        "μ = (m, m² + v): ∇_μ₁E_q[ℓ] = E_q[∇ℓ] − m⊙E_q[diag ∇²ℓ], ∇_μ₂E_q[ℓ] = "
        "½E_q[diag ∇²ℓ] (a generic quartic ℓ(θ₁, θ₂), exact moments)",
        "∇_μ(−H) = (m/v, −1/(2v)) = λ; the prior (δ/2)θ² has ∇_μE_q = (0, δ/2) = −λ₀",
    ]


def derive_step(point: str = "m (delta method)") -> list[str]:
    """The BLR step from (ĝ, ĥ) in per-example units, with the prior and S = N(s + δ̃), is OGN's
    recursion at α = β = ρ; α ≠ β is the mean moved α/β times as far, not a λ-space BLR.
    ``point`` names where ĝ and ĥ are evaluated (in the statements)."""
    n, s, dt, gh, hh, rho, alpha = sp.symbols("N s delta_t g h rho alpha", positive=True)
    m = sp.Symbol("m", real=True)
    big_s, delta = n * (s + dt), n * dt
    lam1, lam2 = big_s * m, -big_s / 2
    lam0 = (0, -delta / 2)
    # ∇_μE_q[Σ_iℓ_i] with E[∇] ≈ Nĝ and E[diag ∇²] ≈ Nĥ (the minibatch means at ``point``)
    grad1, grad2 = n * gh - n * hh * m, n * hh / 2
    lam1_new = (1 - rho) * lam1 + rho * (lam0[0] - grad1)
    lam2_new = (1 - rho) * lam2 + rho * (lam0[1] - grad2)
    s_big_new = -2 * lam2_new
    m_blr = lam1_new / s_big_new
    s_new = (1 - rho) * s + rho * hh
    assert sp.expand(s_big_new / n - dt - s_new) == 0
    assert sp.cancel(m_blr - (m - rho * (gh + dt * m) / (s_new + dt))) == 0
    # the two-rate (m, S)-form: precision at rate β = ρ, mean at rate α
    m_two = m - alpha * (gh + dt * m) / (s_new + dt)
    assert sp.cancel(m_two - (m + alpha / rho * (m_blr - m))) == 0
    # blockwise-λ rates (α on λ₁, β on λ₂) give another mean
    lam1_block = (1 - alpha) * lam1 + alpha * (lam0[0] - grad1)
    assert sp.cancel(lam1_block / s_big_new - m_two) != 0
    return [
        f"λ' = (1 − ρ)λ + ρ(λ₀ − ∇_μE_q[Σℓ_i]) with E[∇] ≈ Nĝ, E[diag ∇²] ≈ Nĥ (the minibatch "
        f"means at {point}), S = N(s + δ̃): s' = (1 − ρ)s + ρĥ, m' = m − ρ(ĝ + δ̃m)/(s' + δ̃) "
        "(the rule at α = β = ρ)",
        "two rates: m − α(ĝ + δ̃m)/(s' + δ̃) = m + (α/β)(m'_BLR − m); rates α on λ₁ and β on λ₂ "
        "give a different mean, so α ≠ β is not a λ-space BLR",
    ]


def derive_ggn() -> list[str]:
    """The Gauss–Newton Hessian of ℓ(f(θ)), its exactness for a GLM, the logistic Λ, and the
    EF's expectation."""
    t1, t2, u = sp.symbols("theta1 theta2 u", real=True)
    link, model = sp.Function("L"), sp.Function("f")(t1, t2)
    hess = sp.hessian(link(model), (t1, t2))
    jac = sp.Matrix([sp.diff(model, t1), sp.diff(model, t2)])
    d1 = sp.diff(link(u), u).subs(u, model)
    d2 = sp.diff(link(u), u, 2).subs(u, model)
    assert (hess - (d2 * jac * jac.T + d1 * sp.hessian(model, (t1, t2)))).applyfunc(
        sp.simplify
    ) == sp.zeros(2, 2)
    # a GLM f = xᵀθ has ∇²f = 0: the GGN JᵀΛJ is the Hessian; logistic Λ = σ(1 − σ)
    x1, x2, y = sp.symbols("x1 x2 y", real=True)
    fv = sp.Symbol("f", real=True)
    bce = sp.log(1 + sp.exp(fv)) - y * fv
    f_glm = x1 * t1 + x2 * t2
    assert sp.hessian(f_glm, (t1, t2)) == sp.zeros(2, 2)
    sig = 1 / (1 + sp.exp(-fv))
    assert sp.simplify(sp.diff(bce, fv, 2) - sig * (1 - sig)) == 0
    hess_glm = sp.hessian(bce.subs(fv, f_glm), (t1, t2))
    xv = sp.Matrix([x1, x2])
    ggn = (sig * (1 - sig)).subs(fv, f_glm) * xv * xv.T
    assert (hess_glm - ggn).applyfunc(sp.simplify) == sp.zeros(2, 2)
    # EF: [∇ℓ_i]² = (σ − y)²x²; over y ~ Bernoulli(σ), E[(σ − y)²] = σ(1 − σ) = Λ
    p = sp.Symbol("p", positive=True)
    grad_f = sp.diff(bce, fv).subs(sp.exp(fv), p / (1 - p))
    ef = sp.simplify(grad_f**2)
    assert sp.simplify(p * ef.subs(y, 1) + (1 - p) * ef.subs(y, 0) - p * (1 - p)) == 0
    return [
        "∇²ℓ(f(θ)) = L''(f)∇f∇fᵀ + L'(f)∇²f; the GGN keeps the first term (diag: Λ(∂_jf)²)",
        "logistic GLM: ∇²f = 0 and Λ = σ(f)(1 − σ(f)), so the per-example GGN is the Hessian "
        "σ(1 − σ)xxᵀ",
        "EF (σ − y)²x²: its mean over y ~ Bernoulli(σ) is σ(1 − σ)x², the GGN",
    ]


def derive() -> list[str]:
    """Bonnet/Price in μ-coordinates, the BLR step to OGN (and the two-rate form), the GGN, and
    the fixed point on linear regression."""
    statements = derive_mean_gradient() + derive_step() + derive_ggn()
    # fixed point on linear regression (3 examples, 2 weights): s* = ĥ, ĝ + δ̃m = 0
    xs = sp.Matrix(3, 2, sp.symbols("a0:6", real=True))
    ys = sp.Matrix(sp.symbols("y0:3", real=True))
    sig2, delta = sp.symbols("sigma2 delta", positive=True)
    s_star = [sum(xs[i, j] ** 2 for i in range(3)) / (3 * sig2) for j in range(2)]
    prec = xs.T * xs / sig2 + delta * sp.eye(2)
    for j in range(2):
        assert sp.expand(3 * (s_star[j] + delta / 3) - prec[j, j]) == 0
    mv = sp.Matrix(sp.symbols("m1 m2", real=True))
    grad_mean = xs.T * (xs * mv - ys) / (3 * sig2) + delta / 3 * mv
    assert sp.expand(3 * grad_mean - (prec * mv - xs.T * ys / sig2)) == sp.zeros(2, 1)
    return [
        *statements,
        "linear regression: N(s* + δ̃) = diag(XᵀX/σ² + δI), ĝ + δ̃m = 0 ⇔ S*m = Xᵀy/σ²",
    ]


# ---------------------------------------------------------------------------- data
def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The logistic-regression data: x ~ N(0, I), y ~ Bernoulli(σ(xᵀw)), N = 50, D = 2."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, dtype=f64, generator=g)
    p = torch.sigmoid(x @ torch.tensor(W_TRUE, dtype=f64))
    y = (torch.rand(N, dtype=f64, generator=g) < p).to(f64)
    return x, y


def linreg_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bayesian linear regression data, N = 20, D = 2, y = xᵀ(1, −0.5) + N(0, σ²)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(LR_N, D, dtype=f64, generator=g)
    noise = LR_SIGMA2**0.5 * torch.randn(LR_N, dtype=f64, generator=g)
    return x, x @ torch.tensor([1.0, -0.5], dtype=f64) + noise


def minibatches(steps: int, n: int = N, size: int = M, seed: int = 1) -> torch.Tensor:
    """A stored sequence of minibatches (``steps`` × ``size`` indices, without replacement)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g)[:size] for _ in range(steps)])


def bce(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The per-example logistic loss ℓ_i = log(1 + e^f) − y f (BCE with logits), elementwise:
    the test problem's loss (no derivative), used by the BLR, kernel and optimizer sides."""
    return F.softplus(f) - y * f


# ---------------------------------------------------------------------------- classical
def classical(
    m0: torch.Tensor,
    s0: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    delta: float,
    hessian: str = "ggn",
    eps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-coded OGN for logistic regression (vectorized over leading copies of ``m0``):
    ĝ = (1/M)Σ_{i∈B}(σ(x_iᵀθ) − y_i)x_i, ĥ = (1/M)Σ_{i∈B} h_i with h_i = σ(1 − σ)x_i² (GGN) or
    (σ − y_i)²x_i² (EF); s ← (1 − β)s + βĥ; m ← m − α(ĝ + δ̃m)/(s + δ̃), δ̃ = δ/N; θ = m, or
    with ``eps`` (one ε_t per step) θ = m + ε_t/√(N(s + δ̃)): VOGN, the same algorithm without the
    delta method. Returns all iterates (m_t, s_t)."""
    n = x.shape[0]
    dt = delta / n
    m, s = m0, s0
    ms, ss = [m], [s]
    for t, idx in enumerate(batches):
        theta = m if eps is None else m + eps[t] / torch.sqrt(n * (s + dt))
        xb, yb = x[idx], y[idx]
        p = torch.sigmoid(theta @ xb.T)
        r = (p - yb).unsqueeze(-1)
        g = (r * xb).mean(-2)
        if hessian == "ggn":
            h = ((p * (1 - p)).unsqueeze(-1) * xb * xb).mean(-2)
        else:
            h = (r * xb).square().mean(-2)
        s = (1 - beta) * s + beta * h
        m = m - alpha * (g + dt * m) / (s + dt)
        ms.append(m)
        ss.append(s)
    return torch.stack(ms, -2), torch.stack(ss, -2)


# ---------------------------------------------------------------------------- BLR instance
def model_loss(
    x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, n: int, link: str = "logistic"
) -> blr.ModelLoss:
    """Σ_i ℓ_i over the whole data estimated by (N/M)Σ_{i∈B}ℓ_i(x_iᵀθ): :func:`bce`
    (``"logistic"``) or (y − f)²/(2σ²) (``"gaussian"``)."""
    xb, yb = x[idx], y[idx]

    def per_example(f: torch.Tensor) -> torch.Tensor:
        f = f.squeeze(-1)
        if link == "logistic":
            return bce(f, yb)
        return (f - yb).square() / (2 * LR_SIGMA2)

    return blr.ModelLoss(
        model=lambda th: (th @ xb.T).unsqueeze(-1), link=per_example, scale=n / len(idx)
    )


def blr_instance(
    m0: torch.Tensor,
    s0: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    delta: float,
    hessian: str = "ggn",
    link: str = "logistic",
    generic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The diagonal-Gaussian BLR with S = N(s + δ̃), prior λ₀ = (0, −½δ), the delta method and
    the per-example GGN (``"ggn"``) or EF (``"per_example"``) Hessian of :class:`blr.Delta`
    (autograd): :func:`blr.gaussian_step` with ``GaussianOptions(lr=α)`` and rate β, or
    (``generic``, needs α = β) :func:`blr.step`. ``m0`` may carry leading batch dimensions
    (copies). Returns all (m_t, s_t) in OGN's units, s = S/N − δ̃."""
    n = x.shape[0]
    dt = delta / n
    fam = expfam.DiagGaussian()
    prior = expfam.DiagNat(torch.zeros_like(m0), torch.full_like(m0, -0.5 * delta))
    nat = fam.from_moments(m0, n * (s0 + dt))
    estimator = blr.Delta(hessian)
    options = blr.GaussianOptions(lr=alpha)

    def moments(nat: expfam.DiagNat) -> tuple[torch.Tensor, torch.Tensor]:
        m, prec = fam.to_moments(nat)
        return m, prec / n - dt

    ms, ss = zip(moments(nat))
    ms, ss = list(ms), list(ss)
    for idx in batches:
        loss = model_loss(x, y, idx, n, link)
        if generic:
            if alpha != beta:
                raise ValueError("blr.step has one rate: alpha must equal beta")
            nat = blr.step(fam, nat, loss, beta, estimator=estimator, prior=prior)
        else:
            est = estimator(fam, nat, loss)
            grad = expfam.DiagNat(est.grad.lam1 - prior.lam1, est.grad.lam2 - prior.lam2)
            nat = blr.gaussian_step(fam, nat, grad, rho=beta, options=options)
        m, s = moments(nat)
        ms.append(m)
        ss.append(s)
    return torch.stack(ms, -2), torch.stack(ss, -2)


# ---------------------------------------------------------------------------- kernel
def autograd_gh(
    theta: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ĝ = ∇_θ(1/M)Σ_iℓ_i(θ) and the GGN diagonal ĥ_j = (1/M)Σ_iΛ_i(∂f_i/∂θ_j)², Λ_i =
    ∂²ℓ_i/∂f_i², for B copies (``theta`` of shape (B, D)), all by autograd (torch.func) of
    :func:`bce` and the model f_i = x_iᵀθ — no hand-written derivative."""
    from torch.func import grad, jacrev, vmap

    def mean_loss(t: torch.Tensor) -> torch.Tensor:
        return bce(xb @ t, yb).mean()

    def outputs(t: torch.Tensor) -> torch.Tensor:
        return xb @ t

    g_hat = vmap(grad(mean_loss))(theta)
    jac = vmap(jacrev(outputs))(theta)  # (B, M, D): ∂f_i/∂θ_j
    curv = vmap(vmap(grad(grad(bce)), in_dims=(0, 0)), in_dims=(0, None))
    lam = curv(vmap(outputs)(theta), yb)  # (B, M): Λ_i
    h_hat = (lam.unsqueeze(-1) * jac.square()).mean(-2)
    return g_hat, h_hat


def kernel_instance(
    m0: torch.Tensor,
    s0: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    delta: float,
    eps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """B copies (``m0``, ``s0`` of shape (B, D) on any device) through
    :func:`blr.kernels.diag_gaussian_step_` with ρ = β, lr = α, δ = δ̃: one call per step, ĝ and
    the GGN ĥ of all copies from :func:`autograd_gh` — at the means (OGN), or with ``eps``
    (steps, B, D) at the draws θ = m + ε/√(N(s + δ̃)) (VOGN: the same recursion without the delta
    method)."""
    n = x.shape[0]
    dt = delta / n
    dev = m0.device
    x, y = x.to(dev), y.to(dev)
    m, s = m0.clone(), s0.clone()
    ms, ss = [m.clone()], [s.clone()]
    for t, idx in enumerate(batches.to(dev)):
        theta = m if eps is None else m + eps[t].to(dev) / torch.sqrt(n * (s + dt))
        g_hat, h_hat = autograd_gh(theta, x[idx], y[idx])
        diag_gaussian_step_(m, s, g_hat, h_hat, rho=beta, lr=alpha, delta=dt)
        ms.append(m.clone())
        ss.append(s.clone())
    return torch.stack(ms, -2), torch.stack(ss, -2)


# ---------------------------------------------------------------------------- blr.optim.OGN
def optimizer_instance(
    m0: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    delta: float,
    s0: float,
    hessian: str = "ggn",
    optimizer: type = OGN,
    **extra: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`blr.optim.OGN` (or ``optimizer``, e.g. VOGN with its ``seed`` in ``extra``) on a
    bias-free linear model (lr = α, β₁ = 0, β₂ = 1 − β, weight_decay = δ̃, hess_init = s₀,
    its own curvature: ``"ggn"`` for BCE or ``"ef"``); the minibatch-mean :func:`bce` is
    backpropagated by autograd. Returns (m_t, s_t)."""
    model = torch.nn.Linear(x.shape[1], 1, bias=False).to(f64)
    with torch.no_grad():
        model.weight.copy_(m0.reshape(1, -1))
    kwargs = dict(curvature="ggn", loss="bce_with_logits") if hessian == "ggn" else {}
    kwargs.setdefault("curvature", "ef")
    opt = optimizer(
        model.parameters(),
        lr=alpha,
        ess=x.shape[0],
        weight_decay=delta / x.shape[0],
        beta1=0.0,
        beta2=1.0 - beta,
        hess_init=s0,
        model=model,
        **kwargs,
        **extra,
    )
    ms, ss = [m0], [torch.full_like(m0, s0)]
    for idx in batches:
        with opt.sampled_params(train=True):
            opt.zero_grad()
            bce(model(x[idx]).squeeze(-1), y[idx]).mean().backward()
        opt.step()
        ms.append(model.weight.detach().reshape(-1).clone())
        ss.append(opt.state_dict()["state"][0]["hess"].reshape(-1).clone())
    return torch.stack(ms), torch.stack(ss)


def _dev(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max((u.cpu() - v.cpu()).abs().max().item() for u, v in zip(a, b))


def check(device: str = "cpu") -> list[Comparison]:
    """BLR vs OGN (GGN and EF, α ≠ β and α = β), blr.optim.OGN vs OGN, the batched kernel, and
    the Bayesian-linear-regression fixed point."""
    x, y = data()
    batches = minibatches(STEPS)
    m0, s0 = torch.tensor(M0, dtype=f64), torch.full((D,), S0, dtype=f64)
    kw = dict(alpha=ALPHA, beta=BETA, delta=DELTA)
    out: list[Comparison] = []
    for hessian, est_name in (("ggn", "ggn"), ("ef", "per_example")):
        ogn = classical(m0, s0, x, y, batches, hessian=hessian, **kw)
        bl = blr_instance(m0, s0, x, y, batches, hessian=est_name, **kw)
        out.append(
            Comparison(f"BLR (m, S)-form vs OGN ({hessian}), 50 steps", _dev(bl, ogn), 1e-10)
        )
        opt = optimizer_instance(m0, x, y, batches, s0=S0, hessian=hessian, **kw)
        out.append(Comparison(f"blr.optim.OGN vs OGN ({hessian}), 50 steps", _dev(opt, ogn), 1e-10))
    same = dict(alpha=BETA, beta=BETA, delta=DELTA)
    ogn = classical(m0, s0, x, y, batches, **same)
    gen = blr_instance(m0, s0, x, y, batches, generic=True, **same)
    out.append(Comparison("blr.step (α = β) vs OGN (ggn), 50 steps", _dev(gen, ogn), 1e-10))
    # batched kernel: 64 copies from different starts and precisions
    g = torch.Generator().manual_seed(2)
    starts = torch.randn(64, D, dtype=f64, generator=g)
    scales = 0.5 + torch.rand(64, D, dtype=f64, generator=g)
    kern = kernel_instance(starts.to(device), scales.to(device), x, y, batches, **kw)
    engine = blr_instance(starts[:8], scales[:8], x, y, batches, **kw)
    batched = classical(starts, scales, x, y, batches, **kw)
    out.append(
        Comparison(
            f"kernel ({device}, 64 copies) vs engine (8 copies)",
            _dev(tuple(k[:8] for k in kern), engine),
            1e-10,
        )
    )
    out.append(Comparison(f"kernel ({device}, 64 copies) vs OGN", _dev(kern, batched), 1e-10))
    # (ii) Bayesian linear regression: the fixed point is the mean-field VI optimum
    xl, yl = linreg_data()
    full = torch.arange(LR_N).expand(LR_STEPS, LR_N)
    m_lr, s_lr = blr_instance(
        torch.zeros(D, dtype=f64),
        torch.ones(D, dtype=f64),
        xl,
        yl,
        full,
        alpha=LR_ALPHA,
        beta=LR_BETA,
        delta=LR_DELTA,
        link="gaussian",
    )
    prec = xl.T @ xl / LR_SIGMA2 + LR_DELTA * torch.eye(D, dtype=f64)
    m_star = torch.linalg.solve(prec, xl.T @ yl / LR_SIGMA2)
    out.append(
        Comparison(
            "linreg: OGN mean after 60 steps vs m* = S*⁻¹Xᵀy/σ²",
            (m_lr[-1] - m_star).abs().max().item(),
            1e-10,
            kind="limit",
        )
    )
    rel = (LR_N * (s_lr[-1] + LR_DELTA / LR_N) / torch.diagonal(prec) - 1).abs().max().item()
    out.append(
        Comparison("linreg: N(s + δ̃) vs diag(S*) (relative), 60 steps", rel, 1e-10, kind="limit")
    )
    return out


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "GaussianOptions(lr=alpha)",
        "GaussianOptions(lr=1.01 * alpha)",
        "engine mean rate α × 1.01 (blr.gaussian_step)",
    ),
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "loss, beta, estimator",
        "loss, 1.01 * beta, estimator",
        "blr.step rate ρ × 1.01",
    ),
    Mutation(
        "blr",
        "constant",
        "kernel_instance",
        "rho=beta, lr=alpha",
        "rho=1.01 * beta, lr=alpha",
        "kernel precision rate β × 1.01",
    ),
    Mutation(
        "blr",
        "constant",
        "optimizer_instance",
        "beta2=1.0 - beta",
        "beta2=1.0 - 1.01 * beta",
        "blr.optim.OGN β₂ = 1 − 1.01β",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "m - alpha * (g",
        "m - 1.01 * alpha * (g",
        "OGN mean rate α × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "(p * (1 - p)).unsqueeze(-1) * xb * xb",
        "xb * xb",
        "OGN's GGN without Λ = σ(1 − σ)",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "/ (s + dt)",
        "/ s",
        "OGN mean step without δ̃ in the denominator",
    ),
    Mutation(
        "blr",
        "term",
        "blr_instance",
        "est.grad.lam2 - prior.lam2",
        "est.grad.lam2",
        "engine without the prior precision (λ₀ dropped from λ₂)",
    ),
    Mutation(
        "blr",
        "term",
        "model_loss",
        "scale=n / len(idx)",
        "scale=1 / len(idx)",
        "ModelLoss without the N of N/M (engine and linreg)",
    ),
    Mutation(
        "blr",
        "term",
        "autograd_gh",
        "(lam.unsqueeze(-1) * jac.square())",
        "jac.square()",
        "kernel's autograd GGN without Λ",
    ),
    Mutation(
        "blr",
        "term",
        "optimizer_instance",
        "weight_decay=delta / x.shape[0]",
        "weight_decay=delta",
        "blr.optim.OGN weight decay δ instead of δ̃ = δ/N",
    ),
)
