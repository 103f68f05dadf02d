r"""Non-conjugate variational message passing is the BLR with ρ = 1 (damped: ρ < 1) on a node
whose factors are not conjugate, with exact expectations.

**Family.** A Gaussian node q(θ) = N(m, v), v = 1/S (1-D diagonal Gaussian, λ = (Sm, −½S),
μ = (m, m² + v), ∇_μ(−H) = λ).

**Rule.** For a factor f let S_f(m, v) = E_q[log f(θ)], nonlinear in μ. Knowles & Minka's
NCVMP message is V⁻¹∂S_f/∂λ with V = Cov[T] = F, i.e. exactly ∇_μS_f (BLR_SPEC §1.1); for a
Gaussian node it reads 1/v_f = −2∂S_f/∂v, m_f/v_f = ∂S_f/∂m + m/v_f. Summed with the prior,
λ_new = −∇_μE_q[ℓ̄] with ℓ̄ = −Σ_f log f, and NCVMP with damping ρ is
λ ← (1 − ρ)λ + ρλ_new = λ − ρ(∇_μE_q[ℓ̄] + λ): the BLR. In (m, S) (BLR_SPEC §1.5):
S ← (1 − ρ)S + ρE_q[ℓ̄''], m ← m − ρS⁻¹E_q[ℓ̄'] with the new S.

Poisson regression with log link, ℓ_i = exp(x_iθ) − y_ix_iθ + log y_i!, prior N(0, 1/δ):
E_q[exp(x_iθ)] = e_i := exp(x_im + x_i²v/2), so E_q[ℓ̄'] = δm + Σ(x_ie_i − y_ix_i) and
E_q[ℓ̄''] = δ + Σx_i²e_i, all in closed form.

**Equality conditions.** Exact expectations and the same ρ ⇒ the BLR iterates are NCVMP's
(ρ = 1: Knowles & Minka's fixed-point iteration). The fixed points of both are the stationary
points of the ELBO(m, v) = −Σ_i(e_i − y_ix_im) − ½δ(m² + v) + ½log v + const, a strictly
concave function here, so the fixed point is the unique ELBO maximizer. Convergence at ρ = 1 is
not guaranteed in general (damping helps); on this problem both ρ = 1 and ρ = 0.5 converge.

**Test problem** (BLR_SPEC Row 16). x ~ U(−1, 1)³⁰, y ~ Poisson(exp(1.2x)) from
``numpy.random.default_rng(0)``, δ = 1, q₀ = N(0, 1). The BLR (:class:`blr.Exact` on
μ ↦ E_q[ℓ̄]) equals a hand-coded NCVMP at ρ = 1 and ρ = 0.5 (relative ≤ 1e-10, 60 iterations);
both end at m = 1.43832569, S = 22.4628207 (the spec's values, confirmed to their printed digits,
|Δ| ≤ 5e-8; here m = 1.4383256932, S = 22.462820669), and
the closed-form ELBO gradient there is below 1e-10.

**References.** Khan & Rue (2023), Table 1 row 16; Knowles & Minka (2011), "Non-conjugate
variational message passing for multinomial and binary regression", NeurIPS.
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
    key="ncvmp",
    number=16,
    algorithm="Non-conjugate VMP",
    posterior="mean-field exp-family (Gaussian node)",
    approximation="ρ = 1 (or damped)",
    symbolic="✓",
)

F64 = torch.float64
DELTA = 1.0
ITERS = 60
SPEC_FIXED_POINT = (1.43832569, 22.4628207)  # (m, S) as printed in BLR_SPEC Row 16


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ U(−1, 1)³⁰, y ~ Poisson(exp(1.2x)), numpy default_rng(0)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, 30)
    y = rng.poisson(np.exp(1.2 * x))
    return torch.from_numpy(x).to(F64), torch.from_numpy(y).to(F64)


def derive() -> list[str]:
    """The Gaussian MGF in closed form; the NCVMP message = −∇_μE_q[ℓ_f]; the ρ = 1 fixed-point
    equations are an invertible linear map of ∇ELBO(m, v)."""
    th, m, x, y = sp.symbols("theta m x y", real=True)
    v, delta = sp.symbols("v delta", positive=True)
    # completing the square: xθ − (θ−m)²/(2v) = xm + x²v/2 − (θ − m − xv)²/(2v), so
    # E_q[e^{xθ}] = e^{xm + x²v/2} ∫N(θ | m + xv, v)dθ = e^{xm + x²v/2}
    lhs = x * th - (th - m) ** 2 / (2 * v)
    rhs = x * m + x**2 * v / 2 - (th - m - x * v) ** 2 / (2 * v)
    assert sp.expand(lhs - rhs) == 0
    # E_q[ℓ̄] for one Poisson point and the prior, in (m, v) and in μ = (m, m² + v)
    mu1, mu2 = sp.symbols("mu_1 mu_2", real=True)
    e_mv = sp.exp(x * m + x**2 * v / 2) - y * x * m + delta * (m**2 + v) / 2
    e_mu = e_mv.subs({m: mu1, v: mu2 - mu1**2}, simultaneous=True)
    back = {mu1: m, mu2: m**2 + v}
    g1 = sp.diff(e_mu, mu1).subs(back, simultaneous=True)
    g2 = sp.diff(e_mu, mu2).subs(back, simultaneous=True)
    e_m, e_v = sp.diff(e_mv, m), sp.diff(e_mv, v)
    assert sp.simplify(g1 - (e_m - 2 * m * e_v)) == 0 and sp.simplify(g2 - e_v) == 0
    # Bonnet/Price: E_q[ℓ̄'] = ∂E/∂m, E_q[ℓ̄''] = 2∂E/∂v; (G-prec/G-mean) at ρ = 1
    ell = sp.exp(x * th) - y * x * th + delta * th**2 / 2
    mgf = {sp.exp(x * th): sp.exp(x * m + x**2 * v / 2)}  # E_q of each term (linear in e^{xθ})
    e_grad = sp.expand(sp.diff(ell, th)).subs(mgf).subs(th, m)
    e_hess = sp.expand(sp.diff(ell, th, 2)).subs(mgf)
    assert sp.simplify(e_grad - e_m) == 0 and sp.simplify(e_hess - 2 * e_v) == 0
    # Knowles & Minka: S_f = −E_q[ℓ_f]; 1/v_f = −2∂S_f/∂v, m_f/v_f = ∂S_f/∂m + m/v_f is −∇_μE_q[ℓ_f]
    s_f = -(sp.exp(x * m + x**2 * v / 2) - y * x * m)
    prec_f = -2 * sp.diff(s_f, v)
    lam1_f = sp.diff(s_f, m) + m * prec_f
    ef_mu = (-s_f).subs({m: mu1, v: mu2 - mu1**2}, simultaneous=True)
    grad_f = [sp.diff(ef_mu, w).subs(back, simultaneous=True) for w in (mu1, mu2)]
    assert sp.simplify(lam1_f + grad_f[0]) == 0 and sp.simplify(-prec_f / 2 + grad_f[1]) == 0
    # fixed point of λ = −∇_μE_q[ℓ̄] with λ = (m/v, −1/(2v)), vs ELBO = −E + ½log v
    r1, r2 = m / v + g1, -1 / (2 * v) + g2
    elbo = -e_mv + sp.log(v) / 2
    d_m, d_v = sp.diff(elbo, m), sp.diff(elbo, v)
    assert sp.simplify(r1 - (-d_m + 2 * m * d_v)) == 0 and sp.simplify(r2 + d_v) == 0
    return [
        "xθ − (θ−m)²/(2v) = xm + x²v/2 − (θ−m−xv)²/(2v), so E_q[e^{xθ}] = e^{xm + x²v/2}",
        "∇_μE_q[ℓ̄] = (∂_mE − 2m∂_vE, ∂_vE) and ∂_mE = E_q[ℓ̄'], 2∂_vE = E_q[ℓ̄''] (Bonnet/Price) "
        "for the Poisson-exp loss",
        "Knowles–Minka message (1/v_f = −2∂S_f/∂v, m_f/v_f = ∂S_f/∂m + m/v_f) = −∇_μE_q[ℓ_f]",
        "ρ = 1 fixed point: residual (λ₁ + ∇_{μ1}E, λ₂ + ∇_{μ2}E) = "
        "(−∂_mELBO + 2m∂_vELBO, −∂_vELBO), zero iff ∂ELBO/∂m = ∂ELBO/∂v = 0",
    ]


# ---------------------------------------------------------------------------- classical
def classical(x: torch.Tensor, y: torch.Tensor, rho: float, iters: int) -> torch.Tensor:
    """Hand-coded damped NCVMP (Knowles & Minka 2011) on the Gaussian node: S_f(m, v) =
    Σ_i(y_ix_im − e_i), e_i = exp(x_im + x_i²v/2); message 1/v_f = −2∂S_f/∂v,
    m_f/v_f = ∂S_f/∂m + m/v_f; λ_new = prior + message, λ ← (1 − ρ)λ + ρλ_new.
    Returns rows (m, S) per iteration (iters+1)."""
    lam1, lam2 = 0.0 * DELTA, -0.5 * DELTA  # q₀ = prior N(0, 1/δ)
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
        new1, new2 = 0.0 + lam1_f, -0.5 * (DELTA + prec_f)
        lam1, lam2 = (1 - rho) * lam1 + rho * new1, (1 - rho) * lam2 + rho * new2
    return torch.stack(out)


def elbo_grad(x: torch.Tensor, y: torch.Tensor, m: float, prec: float) -> torch.Tensor:
    """∇ of ELBO(m, v) = −Σ(e_i − y_ix_im) − ½δ(m² + v) + ½log v at v = 1/S (closed form)."""
    v = 1 / prec
    e = torch.exp(x * m + x**2 * v / 2)
    d_m = -(x * e).sum() + (y * x).sum() - DELTA * m
    d_v = -0.5 * (x**2 * e).sum() - 0.5 * DELTA + 0.5 / v
    return torch.stack([d_m, d_v])


# ---------------------------------------------------------------------------- BLR
def expected_loss(x: torch.Tensor, y: torch.Tensor):
    """μ ↦ E_q[ℓ̄] = Σ_i(e_i − y_ix_im + log y_i!) + ½δμ₂ + ½log(2π/δ), with m = μ₁,
    v = μ₂ − μ₁² (for :class:`blr.Exact`)."""

    def loss(mean: expfam.DiagMean) -> torch.Tensor:
        m, v = mean.mu1, mean.mu2 - mean.mu1**2  # (1,)
        e = torch.exp(x * m + x**2 * v / 2)
        lik = (e - y * x * m + torch.lgamma(y + 1)).sum()
        return lik + 0.5 * DELTA * mean.mu2.sum() + 0.5 * math.log(2 * math.pi / DELTA)

    return loss


def blr_instance(x: torch.Tensor, y: torch.Tensor, rho: float, iters: int) -> torch.Tensor:
    """The BLR λ ← λ − ρ(∇_μE_q[ℓ̄] + λ) on a 1-D :class:`expfam.DiagGaussian` with exact
    expectations; rows (m, S) per iteration (iters+1)."""
    fam = expfam.DiagGaussian()
    nat = fam.from_moments(torch.zeros(1, dtype=F64), torch.full((1,), DELTA, dtype=F64))
    loss = expected_loss(x, y)
    out = [torch.cat(fam.to_moments(nat))]
    for _ in range(iters):
        nat = blr.step(fam, nat, loss, rho, estimator=blr.Exact())
        out.append(torch.cat(fam.to_moments(nat)))
    return torch.stack(out)


def check(device: str = "cpu") -> list[Comparison]:
    """BLR vs hand-coded NCVMP (ρ = 1 and 0.5), the common fixed point, the spec's values and
    the ELBO gradient there (CPU float64; ``device`` is unused)."""
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
                ((ours - ncvmp).abs() / ncvmp.abs().clamp_min(1.0)).max().item(),
                1e-10,
            )
        )
    spec = torch.tensor(SPEC_FIXED_POINT, dtype=F64)
    m, prec = ends[1.0].tolist()
    comps += [
        Comparison(
            "fixed point, ρ = 1 vs ρ = 0.5 (relative)",
            ((ends[1.0] - ends[0.5]).abs() / ends[1.0].abs()).max().item(),
            1e-12,
        ),
        Comparison(
            f"fixed point vs the spec's (m, S) = {SPEC_FIXED_POINT} (to its printed digits)",
            max((e - spec).abs().max().item() for e in ends.values()),
            5e-8,
            kind="limit",
        ),
        Comparison(
            "|∇ELBO(m, v)| at the BLR fixed point (closed form)",
            elbo_grad(x, y, m, prec).abs().max().item(),
            1e-10,
        ),
    ]
    return comps
