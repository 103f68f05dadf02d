r"""Laplace's method is the fixed point of the Newton-BLR (Row 2): a full Gaussian under the delta
method, for any ρ ∈ (0, 1].

**Family.** q = N(m, S⁻¹), λ = (Sm, −½S), μ = (m, S⁻¹ + mmᵀ), ∇_μ(−H) = λ (as in Row 2).

**Rule.** With the delta method, ∇_μE_q[ℓ̄] ≈ (ĝ − Ĥm, ½Ĥ), ĝ = ∇ℓ̄(m), Ĥ = ∇²ℓ̄(m), and the BLR
λ ← (1 − ρ)λ − ρ∇_μE_q[ℓ̄] reads S ← (1 − ρ)S + ρĤ, m ← m − ρS⁻¹ĝ. Its fixed points solve
λ = −∇_μE_q[ℓ̄], i.e. ρ(Sm + ĝ − Ĥm) = 0 and ρ(Ĥ − S)/2 = 0, hence (for any ρ ≠ 0)

    ∇ℓ̄(m*) = 0,    S* = ∇²ℓ̄(m*),

so q* = N(θ_MAP, [∇²ℓ̄(θ_MAP)]⁻¹): the Laplace approximation. ρ changes the path, not the limit;
ρ = 1 (Newton) gets there fastest. For a strictly convex ℓ̄ (here logistic + ridge:
ℓ̄'' = Σx_i²σ(1 − σ) + δ > 0) the stationary point is the unique minimizer.

**Equality conditions.** At convergence (any ρ ∈ (0, 1], any S₀ ≻ 0, any start from which the
iteration converges) m equals the MAP of ℓ̄ and S equals the Hessian ∇²ℓ̄ at the MAP. The equality
is of limits, not of iterates: the classical algorithm (a quasi-Newton optimizer plus the
analytic Hessian) takes a different path. With a GGN surrogate for Ĥ the fixed point is the
GGN-Laplace approximation (identical here, since the GGN of a GLM is its Hessian).

**Test problem** (BLR_SPEC Row 12). The Row-2 logistic regression (N = 50, w = (1.5, −2),
δ = 0.1, ``numpy.random.default_rng(0)``). Classical: the MAP by ``scipy.optimize.minimize``
(BFGS, gradient only, gtol 1e-9) and the analytic Hessian Xᵀdiag(σ(1 − σ))X + δI there. BLR:
:func:`blr.step` with :class:`blr.Delta` from m₀ = 0, ρ = 1 (10 steps, S₀ = I) and ρ = 0.5
(60 steps, S₀ = [[2, ½], [½, 1]]); both fixed points equal the MAP and the Hessian to 1e-8, and
:func:`blr.laplace` (Newton with a line search) to 1e-12. The batched kernel
(:func:`blr.kernels.full_gaussian_step`) runs 64 copies from different starts and different S₀
at ρ = 0.5 and at ρ = 1, all reaching the same (θ_MAP, ∇²ℓ̄(θ_MAP)), and equals the engine on the
first copies.

**References.** Khan & Rue (2023), Table 1 row 12 (Laplace's method); Tierney & Kadane (1986),
accurate approximations for posterior moments; BLR_SPEC §1.4 and Row 12.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import sympy as sp
import torch

import blr
import expfam
from blr.kernels import full_gaussian_step
from derivations.newton import DELTA, data, grad_hess, loss_fn
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="laplace",
    number=12,
    algorithm="Laplace's method",
    posterior="Gaussian (full covariance)",
    approximation="delta method (fixed point)",
    symbolic="✓",
)

NEWTON_STEPS = 10
DAMPED_RHO, DAMPED_STEPS = 0.5, 60
COPIES = 64
PREC0 = ((2.0, 0.5), (0.5, 1.0))


def _fixed_point_equations(s, m, g, h, rho):
    """The BLR fixed point λ = (1 − ρ)λ − ρ(ĝ − Ĥm, ½Ĥ) as residuals (F₁, F₂), λ = (Sm, −½S)."""
    lam1, lam2 = s * m, -s / 2
    return lam1 - ((1 - rho) * lam1 - rho * (g - h * m)), lam2 - ((1 - rho) * lam2 - rho * h / 2)


def derive() -> list[str]:
    """The fixed-point equations of the Row-2 recursion are ℓ̄'(m*) = 0, S* = ℓ̄''(m*) (1-D
    symbolic loss, 1-D logistic + ridge, 2-D symbolic ĝ, Ĥ), for every ρ ≠ 0."""
    rho = sp.Symbol("rho", nonzero=True)
    m, s_sym = sp.symbols("m S", real=True)
    # generic 1-D loss: F₂ = 0 ⇔ S = ℓ''(m); then F₁ = ρℓ'(m)
    theta = sp.Symbol("theta", real=True)
    ell = sp.Function("ell")(theta)
    g1 = sp.diff(ell, theta).subs(theta, m)
    h1 = sp.diff(ell, theta, 2).subs(theta, m)
    f1, f2 = _fixed_point_equations(s_sym, m, g1, h1, rho)
    (s_star,) = sp.solve(f2, s_sym)
    assert sp.expand(s_star - h1) == 0
    assert sp.expand(f1.subs(s_sym, s_star) - rho * g1) == 0
    # the logistic + quadratic-prior loss of one example (x, y), prior precision δ
    x, y = sp.symbols("x y", real=True)
    delta = sp.Symbol("delta", positive=True)
    logistic = sp.log(1 + sp.exp(x * theta)) - y * x * theta + delta * theta**2 / 2
    e = sp.Symbol("e", positive=True)  # e = exp(xm), so σ(xm) = e/(1 + e)
    g_log = sp.diff(logistic, theta).subs(theta, m).subs(sp.exp(x * m), e)
    h_log = sp.diff(logistic, theta, 2).subs(theta, m).subs(sp.exp(x * m), e)
    sig = e / (1 + e)
    assert sp.cancel(g_log - (x * (sig - y) + delta * m)) == 0
    assert sp.cancel(h_log - (x**2 * sig * (1 - sig) + delta)) == 0  # > 0: strictly convex
    f1, f2 = _fixed_point_equations(s_sym, m, g_log, h_log, rho)
    (s_star,) = sp.solve(f2, s_sym)
    assert sp.cancel(s_star - h_log) == 0
    assert sp.cancel(f1.subs(s_sym, s_star) - rho * g_log) == 0
    # 2-D with symbolic S, m, ĝ, Ĥ (matrices): F₂ = ρ(Ĥ − S)/2, and at S = Ĥ, F₁ = ρĝ
    s11, s12, s22, h11, h12, h22 = sp.symbols("s11 s12 s22 h11 h12 h22", real=True)
    m1, m2, gg1, gg2 = sp.symbols("m1 m2 g1 g2", real=True)
    smat = sp.Matrix([[s11, s12], [s12, s22]])
    hmat = sp.Matrix([[h11, h12], [h12, h22]])
    mvec, gvec = sp.Matrix([m1, m2]), sp.Matrix([gg1, gg2])
    lam1, lam2 = smat * mvec, -smat / 2
    f1 = lam1 - ((1 - rho) * lam1 - rho * (gvec - hmat * mvec))
    f2 = lam2 - ((1 - rho) * lam2 - rho * hmat / 2)
    assert sp.expand(f2 - rho * (hmat - smat) / 2) == sp.zeros(2, 2)
    assert sp.expand(f1.subs(dict(zip((s11, s12, s22), (h11, h12, h22)))) - rho * gvec) == (
        sp.zeros(2, 1)
    )
    return [
        "1-D, any ℓ̄ and ρ ≠ 0: the Row-2 fixed point λ = (1 − ρ)λ − ρ∇_μE_q[ℓ̄] (delta) holds iff "
        "S* = ℓ̄''(m*) and ℓ̄'(m*) = 0",
        "1-D logistic + ridge ℓ̄ = log(1 + e^{xθ}) − yxθ + δθ²/2: ℓ̄' = x(σ − y) + δθ, "
        "ℓ̄'' = x²σ(1 − σ) + δ > 0, so the fixed point is (argmin ℓ̄, ℓ̄''(argmin ℓ̄))",
        "2-D, symbolic S, m, ĝ, Ĥ: F₂ = ρ(Ĥ − S)/2 and F₁|_{S = Ĥ} = ρĝ",
    ]


def classical(x: torch.Tensor, y: torch.Tensor, delta: float = DELTA) -> tuple[np.ndarray, ...]:
    """Laplace's method: θ_MAP = argmin ℓ̄ by ``scipy.optimize.minimize`` (BFGS, analytic
    gradient only) and the analytic Hessian ∇²ℓ̄(θ_MAP) = Xᵀdiag(σ(1 − σ))X + δI (numpy)."""
    xn, yn = x.numpy(), y.numpy()

    def fun(t: np.ndarray) -> float:
        a = xn @ t
        return float(np.sum(np.logaddexp(0.0, a) - yn * a) + 0.5 * delta * t @ t)

    def jac(t: np.ndarray) -> np.ndarray:
        p = 1 / (1 + np.exp(-(xn @ t)))
        return xn.T @ (p - yn) + delta * t

    res = scipy.optimize.minimize(
        fun, np.zeros(xn.shape[1]), jac=jac, method="BFGS", options={"gtol": 1e-9}
    )
    if not res.success:
        raise RuntimeError(f"scipy.optimize.minimize did not converge: {res.message}")
    p = 1 / (1 + np.exp(-(xn @ res.x)))
    hess = (xn.T * (p * (1 - p))) @ xn + delta * np.eye(xn.shape[1])
    return res.x, hess


def blr_instance(
    m0: torch.Tensor, prec0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, rho: float, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` BLR steps (:class:`blr.Delta`, full Gaussian) from N(m₀, S₀⁻¹); the final
    (m, S)."""
    fam = expfam.FullGaussian()
    nat = fam.from_moments(m0, prec0)
    loss = loss_fn(x, y)
    for _ in range(steps):
        nat = blr.step(fam, nat, loss, rho, estimator=blr.Delta())
    return fam.to_moments(nat)


def kernel_instance(
    m0: torch.Tensor, prec0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, rho: float, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """B copies through :func:`blr.kernels.full_gaussian_step` with ĝ = ∇ℓ̄(m), Ĥ = ∇²ℓ̄(m):
    the final means ``(B, d)`` and precisions ``(B, d, d)``."""
    m, prec = m0, prec0
    for _ in range(steps):
        g, h = grad_hess(m, x, y)
        m, prec, _ = full_gaussian_step(m, prec, g, h, rho)
    return m, prec


def _dev(a, b) -> float:
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())


def check(device: str = "cpu") -> list[Comparison]:
    """BLR fixed points (ρ = 1, ρ = 0.5; engine and 64-copy kernel) vs scipy's MAP and the
    analytic Hessian there, and vs :func:`blr.laplace`."""
    dt = torch.float64
    x, y = data()
    theta_map, hess = classical(x, y)
    zero, eye, prec0 = (
        torch.zeros(2, dtype=dt),
        torch.eye(2, dtype=dt),
        torch.tensor(PREC0, dtype=dt),
    )
    m1, s1 = blr_instance(zero, eye, x, y, 1.0, NEWTON_STEPS)
    m5, s5 = blr_instance(zero, prec0, x, y, DAMPED_RHO, DAMPED_STEPS)
    m_lap, s_lap = expfam.FullGaussian().to_moments(blr.laplace(x, y, DELTA, "logistic"))

    gen = torch.Generator().manual_seed(2)
    starts = 0.25 * torch.randn(COPIES, 2, dtype=dt, generator=gen)
    precs = (0.5 + torch.rand(COPIES, 1, 1, dtype=dt, generator=gen)) * prec0
    xd, yd = x.to(device), y.to(device)
    k5m, k5s = kernel_instance(starts.to(device), precs.to(device), xd, yd, DAMPED_RHO, 60)
    k1m, k1s = kernel_instance(starts.to(device), precs.to(device), xd, yd, 1.0, NEWTON_STEPS)
    k5m, k5s, k1m, k1s = (t.cpu() for t in (k5m, k5s, k1m, k1s))
    engine = [blr_instance(s, p, x, y, DAMPED_RHO, DAMPED_STEPS) for s, p in zip(starts, precs[:2])]
    kernel_vs_engine = max(
        max(_dev(k5m[i], em), _dev(k5s[i], es)) for i, (em, es) in enumerate(engine)
    )
    return [
        Comparison("BLR (ρ = 1, 10 steps) m vs scipy MAP", _dev(m1, theta_map), 1e-8, kind="limit"),
        Comparison(
            "BLR (ρ = 1) S vs analytic Hessian at the MAP", _dev(s1, hess), 1e-8, kind="limit"
        ),
        Comparison(
            "BLR (ρ = 0.5, 60 steps) m vs scipy MAP", _dev(m5, theta_map), 1e-8, kind="limit"
        ),
        Comparison(
            "BLR (ρ = 0.5) S vs analytic Hessian at the MAP", _dev(s5, hess), 1e-8, kind="limit"
        ),
        Comparison(
            "‖∇ℓ̄(m)‖ at the BLR fixed point (ρ = 0.5)",
            float(torch.linalg.norm(grad_hess(m5, x, y)[0])),
            1e-10,
        ),
        Comparison(
            "BLR fixed point (ρ = 1) vs blr.laplace (m, S)",
            max(_dev(m1, m_lap), _dev(s1, s_lap)),
            1e-12,
        ),
        Comparison(
            f"kernel ({device}, 64 copies, ρ = 0.5) vs scipy MAP and Hessian",
            max(_dev(k5m, torch.tensor(theta_map).expand_as(k5m)), _dev(k5s, hess)),
            1e-8,
            kind="limit",
        ),
        Comparison(
            f"kernel ({device}, 64 copies, ρ = 1) vs scipy MAP and Hessian",
            max(_dev(k1m, torch.tensor(theta_map).expand_as(k1m)), _dev(k1s, hess)),
            1e-8,
            kind="limit",
        ),
        Comparison(
            f"kernel ({device}, 64 copies, ρ = 0.5) vs engine, 60 steps", kernel_vs_engine, 1e-10
        ),
    ]
