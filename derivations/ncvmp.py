r"""Non-conjugate variational message passing is the BLR with ρ = 1 (damped: ρ < 1) on a node
whose factors are not conjugate, with exact expectations.

**Family.** A Gaussian node q(θ) = N(m, v), v = 1/S (1-D diagonal Gaussian): T(θ) = (θ, θ²),
λ = (Sm, −½S), μ = (m, m² + v), −H = −½log(2πev) and ∇_μ(−H) = λ.

**Rule.** For a factor f let S_f(m, v) = E_q[log f(θ)], nonlinear in μ. Knowles & Minka's (2011)
NCVMP message is V⁻¹∂S_f/∂λ with V = Cov[T] = ∂μ/∂λ, the Fisher matrix, i.e. exactly ∇_μS_f (a
natural gradient in λ is an ordinary gradient in μ; Khan & Rue 2023, §2); for a Gaussian node it
reads 1/v_f = −2∂S_f/∂v, m_f/v_f = ∂S_f/∂m + m/v_f. Summed with the prior's natural parameter
λ₀, λ_new = −∇_μE_q[ℓ̄] with ℓ̄ = −Σ_f log f − log p₀, and NCVMP with damping ρ is
λ ← (1 − ρ)λ + ρλ_new = λ − ρ(∇_μE_q[ℓ̄] + λ) = λ − ρ∇_μ(E_q[ℓ̄] − H): the BLR. In (m, S),
S ← (1 − ρ)S + ρE_q[ℓ̄''], m ← m − ρS⁻¹E_q[ℓ̄'] with the new S (Bonnet's and Price's theorems).

Poisson regression with log link, ℓ_i = exp(x_iθ) − y_ix_iθ + log y_i!, prior N(μ₀, 1/δ):
E_q[exp(x_iθ)] = e_i := exp(x_im + x_i²v/2), so E_q[ℓ̄'] = δ(m − μ₀) + Σ(x_ie_i − y_ix_i) and
E_q[ℓ̄''] = δ + Σx_i²e_i, all in closed form.

**Equality conditions.** Exact expectations and the same ρ ⇒ the BLR iterates are NCVMP's
(ρ = 1: Knowles & Minka's fixed-point iteration). The fixed points of both are the stationary
points of ELBO(m, v) = −Σ_i(e_i − y_ix_im) − ½δ((m − μ₀)² + v) + ½log v + const, a strictly
concave function here, so the fixed point is the unique ELBO maximizer. Convergence at ρ = 1 is
not guaranteed in general (damping helps); on this problem both ρ = 1 and ρ = 0.5 converge.

**Test problem.** x ~ U(−1, 1)³⁰, y ~ Poisson(exp(1.2x)) from ``numpy.random.default_rng(0)``,
prior N(μ₀ = 0.5, 1/δ) with δ = 2 (μ₀ ≠ 0 and δ ≠ 1, so the prior's cross-term δμ₀ and every
factor δ matter), q₀ = the prior. The BLR (:class:`blr.Exact` on μ ↦ E_q[ℓ̄], differentiated by
autograd) equals a hand-coded NCVMP (the messages written out) at ρ = 1 and ρ = 0.5 (equality,
relative ≤ 1e-12, 60 iterations). The rest are limits: both runs end at the same point
(m = 1.41996420, S = 23.1866337; relative 1e-12), where the closed-form ELBO gradient is below
1e-10, and which an independent maximization of the closed-form ELBO over (m, log v)
(``scipy.optimize.minimize``, BFGS) reproduces to 1e-8 (relative).

**References.** Khan & Rue (2023), Table 1 row 16 and §2; Knowles & Minka (2011),
"Non-conjugate variational message passing for multinomial and binary regression", NeurIPS.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.optimize
import sympy as sp
import torch

import blr
import expfam
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="ncvmp",
    number=16,
    algorithm="Non-conjugate VMP",
    posterior="mean-field exp-family (Gaussian node)",
    approximation="ρ = 1 (or damped)",
    symbolic="✓",
)

F64 = torch.float64
DELTA, MU0 = 2.0, 0.5
ITERS = 60


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ U(−1, 1)³⁰, y ~ Poisson(exp(1.2x)), numpy default_rng(0)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, 30)
    y = rng.poisson(np.exp(1.2 * x))
    return torch.from_numpy(x).to(F64), torch.from_numpy(y).to(F64)


def derive() -> list[str]:
    """The Gaussian MGF in closed form; ∇_μ(−H) = λ; the NCVMP message = −∇_μE_q[ℓ_f] and the
    prior's λ₀ = −∇_μE_q[−log p₀]; damped NCVMP = the BLR step; the fixed-point equations are an
    invertible linear map of ∇ELBO(m, v)."""
    th, m, x, y, mu0 = sp.symbols("theta m x y mu_0", real=True)
    v, delta, rho = sp.symbols("v delta rho", positive=True)
    mu1, mu2 = sp.symbols("mu_1 mu_2", real=True)
    to_mu = {m: mu1, v: mu2 - mu1**2}
    back = {mu1: m, mu2: m**2 + v}

    def grad_mu(expr: sp.Expr) -> list[sp.Expr]:  # ∇_μ of a function of (m, v), back in (m, v)
        e = expr.subs(to_mu, simultaneous=True)
        return [sp.diff(e, w).subs(back, simultaneous=True) for w in (mu1, mu2)]

    lam = [m / v, -1 / (2 * v)]
    # completing the square: xθ − (θ−m)²/(2v) = xm + x²v/2 − (θ − m − xv)²/(2v), so
    # E_q[e^{xθ}] = e^{xm + x²v/2} ∫N(θ | m + xv, v)dθ = e^{xm + x²v/2}
    lhs = x * th - (th - m) ** 2 / (2 * v)
    rhs = x * m + x**2 * v / 2 - (th - m - x * v) ** 2 / (2 * v)
    assert sp.expand(lhs - rhs) == 0
    # entropy: −H = −½log(2πev) ⇒ ∇_μ(−H) = λ
    neg_h = -sp.log(2 * sp.pi * sp.E * v) / 2
    assert all(sp.simplify(a - b) == 0 for a, b in zip(grad_mu(neg_h), lam))
    # E_q[ℓ̄] for one Poisson point and the prior N(μ₀, 1/δ), in (m, v)
    e_lik = sp.exp(x * m + x**2 * v / 2) - y * x * m
    e_prior = delta * ((m - mu0) ** 2 + v) / 2
    e_mv = e_lik + e_prior
    g1, g2 = grad_mu(e_mv)
    e_m, e_v = sp.diff(e_mv, m), sp.diff(e_mv, v)
    assert sp.simplify(g1 - (e_m - 2 * m * e_v)) == 0 and sp.simplify(g2 - e_v) == 0
    # Bonnet/Price: E_q[ℓ̄'] = ∂E/∂m, E_q[ℓ̄''] = 2∂E/∂v, each term's expectation in closed form
    ell = sp.exp(x * th) - y * x * th + delta * (th - mu0) ** 2 / 2
    mgf = {sp.exp(x * th): sp.exp(x * m + x**2 * v / 2)}  # E_q of each term (linear in e^{xθ})
    e_grad = sp.expand(sp.diff(ell, th)).subs(mgf).subs(th, m)
    e_hess = sp.expand(sp.diff(ell, th, 2)).subs(mgf)
    assert sp.simplify(e_grad - e_m) == 0 and sp.simplify(e_hess - 2 * e_v) == 0
    # Knowles & Minka: S_f = −E_q[ℓ_f]; 1/v_f = −2∂S_f/∂v, m_f/v_f = ∂S_f/∂m + m/v_f is −∇_μE_q[ℓ_f]
    s_f = -e_lik
    prec_f = -2 * sp.diff(s_f, v)
    msg = [sp.diff(s_f, m) + m * prec_f, -prec_f / 2]
    grad_f = grad_mu(e_lik)
    assert all(sp.simplify(a + b) == 0 for a, b in zip(msg, grad_f))
    # the prior's natural parameter λ₀ = (δμ₀, −½δ) is −∇_μE_q[−log p₀]
    lam0 = [delta * mu0, -delta / 2]
    assert all(sp.simplify(a + b) == 0 for a, b in zip(lam0, grad_mu(e_prior)))
    # damped NCVMP (1 − ρ)λ + ρ(λ₀ + message) = the BLR λ − ρ∇_μ(E_q[ℓ̄] − H)
    ncvmp = [(1 - rho) * a + rho * (b + c) for a, b, c in zip(lam, lam0, msg)]
    blr_step = [a - rho * (b + c) for a, b, c in zip(lam, grad_mu(e_mv), grad_mu(neg_h))]
    assert all(sp.simplify(a - b) == 0 for a, b in zip(ncvmp, blr_step))
    # fixed point of λ = −∇_μE_q[ℓ̄] with λ = (m/v, −1/(2v)), vs ELBO = −E + ½log v
    r1, r2 = lam[0] + g1, lam[1] + g2
    elbo = -e_mv + sp.log(v) / 2
    d_m, d_v = sp.diff(elbo, m), sp.diff(elbo, v)
    assert sp.simplify(r1 - (-d_m + 2 * m * d_v)) == 0 and sp.simplify(r2 + d_v) == 0
    return [
        "xθ − (θ−m)²/(2v) = xm + x²v/2 − (θ−m−xv)²/(2v), so E_q[e^{xθ}] = e^{xm + x²v/2}",
        "N(m, v): ∇_μ(−H) = (m/v, −1/(2v)) = λ",
        "∇_μE_q[ℓ̄] = (∂_mE − 2m∂_vE, ∂_vE) and ∂_mE = E_q[ℓ̄'], 2∂_vE = E_q[ℓ̄''] (Bonnet/Price) "
        "for the Poisson-exp loss with the prior N(μ₀, 1/δ)",
        "Knowles–Minka message (1/v_f = −2∂S_f/∂v, m_f/v_f = ∂S_f/∂m + m/v_f) = −∇_μE_q[ℓ_f]; "
        "the prior's λ₀ = (δμ₀, −½δ) = −∇_μE_q[−log p₀]",
        "damped NCVMP (1 − ρ)λ + ρ(λ₀ + Σ messages) = λ − ρ∇_μ(E_q[ℓ̄] − H), the BLR step",
        "ρ = 1 fixed point: residual (λ₁ + ∇_{μ1}E, λ₂ + ∇_{μ2}E) = "
        "(−∂_mELBO + 2m∂_vELBO, −∂_vELBO), zero iff ∂ELBO/∂m = ∂ELBO/∂v = 0",
    ]


# ---------------------------------------------------------------------------- classical
def classical(x: torch.Tensor, y: torch.Tensor, rho: float, iters: int) -> torch.Tensor:
    """Hand-coded damped NCVMP (Knowles & Minka 2011) on the Gaussian node: S_f(m, v) =
    Σ_i(y_ix_im − e_i), e_i = exp(x_im + x_i²v/2); message 1/v_f = −2∂S_f/∂v,
    m_f/v_f = ∂S_f/∂m + m/v_f; λ_new = λ₀ + message with λ₀ = (δμ₀, −½δ),
    λ ← (1 − ρ)λ + ρλ_new. Returns rows (m, S) per iteration (iters+1)."""
    lam1, lam2 = DELTA * MU0, -0.5 * DELTA  # q₀ = prior N(μ₀, 1/δ)
    out = []
    for _ in range(iters + 1):
        prec = -2 * lam2
        m, v = lam1 / prec, 1 / prec
        out.append(torch.stack([torch.as_tensor(m, dtype=F64), torch.as_tensor(prec, dtype=F64)]))
        e = torch.exp(x * m + x**2 * v / 2)
        ds_dm = (y * x - x * e).sum()
        ds_dv = -0.5 * (x**2 * e).sum()
        prec_f = -2 * ds_dv
        lam1_f = ds_dm + m * prec_f
        new1, new2 = DELTA * MU0 + lam1_f, -0.5 * (DELTA + prec_f)
        lam1, lam2 = (1 - rho) * lam1 + rho * new1, (1 - rho) * lam2 + rho * new2
    return torch.stack(out)


def elbo_grad(x: torch.Tensor, y: torch.Tensor, m: float, prec: float) -> torch.Tensor:
    """∇ of ELBO(m, v) = −Σ(e_i − y_ix_im) − ½δ((m − μ₀)² + v) + ½log v at v = 1/S (closed
    form)."""
    v = 1 / prec
    e = torch.exp(x * m + x**2 * v / 2)
    d_m = -(x * e).sum() + (y * x).sum() - DELTA * (m - MU0)
    d_v = -0.5 * (x**2 * e).sum() - 0.5 * DELTA + 0.5 / v
    return torch.stack([d_m, d_v])


def elbo_maximizer(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(m, S) maximizing the closed-form ELBO, by ``scipy.optimize.minimize`` (BFGS) over
    (m, log v) from (0, 0): an optimizer independent of both iterations."""
    xn, yn = x.numpy(), y.numpy()

    def neg_elbo(p: np.ndarray) -> tuple[float, np.ndarray]:
        m, log_v = p
        v = math.exp(log_v)
        e = np.exp(xn * m + xn**2 * v / 2)
        value = (e - yn * xn * m).sum() + 0.5 * DELTA * ((m - MU0) ** 2 + v) - 0.5 * log_v
        d_m = (xn * e - yn * xn).sum() + DELTA * (m - MU0)
        d_v = 0.5 * (xn**2 * e).sum() + 0.5 * DELTA - 0.5 / v
        return value, np.array([d_m, d_v * v])

    res = scipy.optimize.minimize(
        neg_elbo, np.zeros(2), jac=True, method="BFGS", options={"gtol": 1e-13}
    )
    return float(res.x[0]), math.exp(-res.x[1])


# ---------------------------------------------------------------------------- BLR
def expected_loss(x: torch.Tensor, y: torch.Tensor):
    """μ ↦ E_q[ℓ̄] = Σ_i(e_i − y_ix_im + log y_i!) + ½δ(μ₂ − 2μ₀μ₁ + μ₀²) + ½log(2π/δ), with
    m = μ₁, v = μ₂ − μ₁² (for :class:`blr.Exact`, which differentiates it by autograd)."""

    def loss(mean: expfam.DiagMean) -> torch.Tensor:
        m, v = mean.mu1, mean.mu2 - mean.mu1**2  # (1,)
        e = torch.exp(x * m + x**2 * v / 2)
        lik = (e - y * x * m + torch.lgamma(y + 1)).sum()
        prior = 0.5 * DELTA * (mean.mu2 - 2 * MU0 * mean.mu1 + MU0**2).sum()
        return lik + prior + 0.5 * math.log(2 * math.pi / DELTA)

    return loss


def blr_instance(x: torch.Tensor, y: torch.Tensor, rho: float, iters: int) -> torch.Tensor:
    """The BLR λ ← λ − ρ(∇_μE_q[ℓ̄] + λ) on a 1-D :class:`expfam.DiagGaussian` with exact
    expectations, from the prior; rows (m, S) per iteration (iters+1)."""
    fam = expfam.DiagGaussian()
    nat = fam.from_moments(torch.full((1,), MU0, dtype=F64), torch.full((1,), DELTA, dtype=F64))
    loss = expected_loss(x, y)
    out = [torch.cat(fam.to_moments(nat))]
    for _ in range(iters):
        nat = blr.step(fam, nat, loss, rho, estimator=blr.Exact())
        out.append(torch.cat(fam.to_moments(nat)))
    return torch.stack(out)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs() / b.abs().clamp_min(1.0)).max().item()


def check(device: str = "cpu") -> list[Comparison]:
    """BLR vs hand-coded NCVMP (ρ = 1 and 0.5), the common fixed point, the ELBO gradient there
    and an independent ELBO maximization (CPU float64; ``device`` is unused)."""
    x, y = data()
    comps = []
    ends = {}
    for rho in (1.0, 0.5):
        ours = blr_instance(x, y, rho, ITERS)
        ncvmp = classical(x, y, rho, ITERS)
        ends[rho] = ours[-1]
        comps.append(
            Comparison(
                f"BLR vs hand-coded NCVMP, ρ = {rho:g}, {ITERS} iterations: |Δ(m, S)|/max(1, |·|)",
                _rel(ours, ncvmp),
                1e-12,
            )
        )
    m, prec = ends[1.0].tolist()
    best = torch.tensor(elbo_maximizer(x, y), dtype=F64)
    comps += [
        Comparison(
            "fixed point, ρ = 1 vs ρ = 0.5 (relative)", _rel(ends[1.0], ends[0.5]), 1e-12, "limit"
        ),
        Comparison(
            "|∇ELBO(m, v)| at the BLR fixed point (closed form)",
            elbo_grad(x, y, m, prec).abs().max().item(),
            1e-10,
            kind="limit",
        ),
        Comparison(
            "BLR fixed point vs the ELBO maximizer found by scipy BFGS (relative)",
            max(_rel(e, best) for e in ends.values()),
            1e-8,
            kind="limit",
        ),
    ]
    return comps


MUTATIONS = (
    Mutation(
        "blr", "constant", "blr_instance", "loss, rho,", "loss, 1.01 * rho,", "BLR step ρ × 1.01"
    ),
    Mutation(
        "blr",
        "constant",
        "expected_loss",
        "0.5 * DELTA * (",
        "0.505 * DELTA * (",
        "BLR prior precision δ × 1.01 in E_q[ℓ̄]",
    ),
    Mutation(
        "blr",
        "term",
        "expected_loss",
        " - 2 * MU0 * mean.mu1",
        "",
        "BLR prior without its cross-term −2μ₀μ₁ (prior mean taken as 0)",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "ds_dv = -0.5 *",
        "ds_dv = -0.505 *",
        "NCVMP ∂S_f/∂v × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "new1, new2 = DELTA * MU0 + lam1_f",
        "new1, new2 = lam1_f",
        "NCVMP without the prior's δμ₀",
    ),
)
