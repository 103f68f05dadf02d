r"""Laplace's method is the fixed point of the Newton-BLR (Row 2): a full Gaussian under the delta
method, for any ρ ∈ (0, 1].

**Family.** q = N(m, S⁻¹), λ = (Sm, −½S), μ = (m, S⁻¹ + mmᵀ), ∇_μ(−H) = λ (as in Row 2).

**Rule.** With the delta method, ∇_μE_q[ℓ̄] ≈ (ĝ − Ĥm, ½Ĥ), ĝ = ∇ℓ̄(m), Ĥ = ∇²ℓ̄(m), and the BLR
λ ← λ − ρ(∇_μE_q[ℓ̄] + λ) reads S ← (1 − ρ)S + ρĤ, m ← m − ρS⁻¹ĝ. Its fixed points solve
λ = −∇_μE_q[ℓ̄], i.e. ρ(Sm + ĝ − Ĥm) = 0 and ρ(Ĥ − S)/2 = 0, hence (for any ρ ≠ 0)

    ∇ℓ̄(m*) = 0,    S* = ∇²ℓ̄(m*),

so q* = N(θ_MAP, [∇²ℓ̄(θ_MAP)]⁻¹): the Laplace approximation. ρ changes the path, not the limit;
ρ = 1 (Newton) gets there fastest. For a strictly convex ℓ̄ (here logistic + ridge:
vᵀ∇²ℓ̄v = Σᵢσᵢ(1 − σᵢ)(x_iᵀv)² + δ‖v‖² > 0) the stationary point is the unique minimizer.
:func:`derive` proves, in 2-D with symbolic S, m, ĝ, Ĥ: the Gaussian identities the step rests on
(μ = ∇A(λ), ∇_μ(−H) = λ, Bonnet/Price in μ: :func:`derivations.newton.derive_full_gaussian`),
the fixed-point equations, the closed-form gradient and Hessian of the logistic + ridge loss,
and the positivity of that Hessian.

**Equality conditions.** At convergence (any ρ ∈ (0, 1], any S₀ ≻ 0, any start from which the
iteration converges) m equals the MAP of ℓ̄ and S equals the Hessian ∇²ℓ̄ at the MAP. The
agreement with Laplace's method is of limits, not of iterates: the classical algorithm (a
quasi-Newton optimizer plus the analytic Hessian) takes a different path. With a GGN surrogate
for Ĥ the fixed point is the GGN-Laplace approximation (identical here, since the GGN of a GLM
is its Hessian).

**Test problem.** The Row-2 logistic regression (N = 50, w = (1.5, −2), prior precision
δ = 0.1, ``numpy.random.default_rng(0)``). Classical (numpy and scipy, no autograd): the MAP by
``scipy.optimize.minimize`` (BFGS with the closed-form gradient Xᵀ(σ − y) + δθ, gtol 1e-9) and
the closed-form Hessian Xᵀdiag(σ(1 − σ))X + δI there. BLR: :func:`blr.step` with
:class:`blr.Delta` (gradient and Hessian by autograd) from m₀ = 0, ρ = 1 (10 steps, S₀ = I) and
ρ = 0.5 (60 steps, S₀ = [[2, ½], [½, 1]]). Limits: both fixed points equal scipy's MAP and the
Hessian there to 1e-8 (BFGS stops at ~1e-10), the gradient at the ρ = 0.5 fixed point
vanishes to 1e-10, and the ρ = 1 fixed point equals :func:`blr.glm.laplace` (Newton with a line
search) to 1e-12. The batched kernel (:func:`blr.kernels.full_gaussian_step`, ĝ and Ĥ by
autograd) runs 64 copies from θ₀ ~ N(0, 0.25²I) with different S₀ at ρ = 0.5 (60 steps) and
at ρ = 1 (10 steps): every copy reaches the same (θ_MAP, ∇²ℓ̄(θ_MAP)) to 1e-8 (limits), and
its iterates (m and S, every step) equal the engine's on the first 2 copies to 1e-10
(equalities).

**References.** Khan & Rue (2023), Table 1 row 12 (Laplace's method); Tierney & Kadane (1986),
accurate approximations for posterior moments; MacKay (1992) for the Laplace approximation of
neural networks.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import sympy as sp
import torch

import blr
import expfam
from blr.glm import laplace
from blr.kernels import full_gaussian_step
from derivations.mutations import Mutation
from derivations.newton import DELTA, data, derive_full_gaussian, loss_fn
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


def _fixed_point_equations(
    smat: sp.Matrix, m: sp.Matrix, g: sp.Matrix, h: sp.Matrix, rho: sp.Expr
) -> tuple[sp.Matrix, sp.Matrix]:
    """λ − λ' for the delta-method step λ' = λ − ρ(∇_μE_q[ℓ̄] + ∇_μ(−H)) with
    ∇_μE_q[ℓ̄] ≈ (ĝ − Ĥm, ½Ĥ) and ∇_μ(−H) = λ = (Sm, −½S): the residuals (F₁, F₂)."""
    lam1, lam2 = smat * m, -smat / 2
    return rho * (g - h * m + lam1), rho * (h / 2 + lam2)


def derive() -> list[str]:
    """The Gaussian identities (2-D), the fixed-point equations of the delta-method BLR
    ⇔ ∇ℓ̄(m*) = 0 and S* = ∇²ℓ̄(m*) (2-D symbolic S, m, ĝ, Ĥ; 1-D symbolic loss), the closed-form
    gradient and Hessian of one logistic + ridge term in 2-D, and that Hessian's positivity."""
    statements = derive_full_gaussian()
    rho = sp.Symbol("rho", nonzero=True)
    # 2-D: F₂ = 0 ⇔ S = Ĥ; then F₁ = ρĝ, so F = 0 ⇔ (ĝ = 0, S = Ĥ)
    s11, s12, s22, h11, h12, h22 = sp.symbols("s11 s12 s22 h11 h12 h22", real=True)
    m1, m2, g1, g2 = sp.symbols("m1 m2 g1 g2", real=True)
    smat = sp.Matrix([[s11, s12], [s12, s22]])
    hmat = sp.Matrix([[h11, h12], [h12, h22]])
    mvec, gvec = sp.Matrix([m1, m2]), sp.Matrix([g1, g2])
    f1, f2 = _fixed_point_equations(smat, mvec, gvec, hmat, rho)
    assert sp.expand(f2 - rho * (hmat - smat) / 2) == sp.zeros(2, 2)
    solved = sp.solve(list(f2), [s11, s12, s22], dict=True)
    assert solved == [{s11: h11, s12: h12, s22: h22}]
    assert sp.expand(f1.subs(solved[0]) - rho * gvec) == sp.zeros(2, 1)
    # 1-D, symbolic loss: S* = ℓ''(m*), and then F₁ = ρℓ'(m*)
    theta, m, s = sp.Symbol("theta", real=True), sp.Symbol("m", real=True), sp.Symbol("S")
    ell = sp.Function("ell")(theta)
    d1 = sp.diff(ell, theta).subs(theta, m)
    d2 = sp.diff(ell, theta, 2).subs(theta, m)
    f1, f2 = _fixed_point_equations(
        sp.Matrix([s]), sp.Matrix([m]), sp.Matrix([d1]), sp.Matrix([d2]), rho
    )
    (s_star,) = sp.solve(f2[0], s)
    assert sp.expand(s_star - d2) == 0 and sp.expand(f1[0].subs(s, s_star) - rho * d1) == 0
    # one logistic + ridge term in 2-D: ∇ = x(σ − y) + δθ, ∇² = σ(1 − σ)xxᵀ + δI ≻ 0
    x1, x2, t1, t2, y = sp.symbols("x1 x2 theta1 theta2 y", real=True)
    delta, e = sp.symbols("delta e", positive=True)  # e = exp(xᵀθ), σ = e/(1 + e)
    xv, tv = sp.Matrix([x1, x2]), sp.Matrix([t1, t2])
    f = (xv.T * tv)[0]
    term = sp.log(1 + sp.exp(f)) - y * f + delta * (tv.T * tv)[0] / 2

    def in_e(expr: sp.Expr) -> sp.Expr:  # exp(k·xᵀθ) → eᵏ
        return expr.replace(sp.exp, lambda arg: e ** sp.cancel(arg / f))

    grad = sp.Matrix([sp.diff(term, t) for t in (t1, t2)]).applyfunc(in_e)
    hess = sp.Matrix(2, 2, lambda i, j: in_e(sp.diff(term, (t1, t2)[i], (t1, t2)[j])))
    sig = e / (1 + e)
    assert _zero(grad - (xv * (sig - y) + delta * tv))
    assert _zero(hess - (sig * (1 - sig) * xv * xv.T + delta * sp.eye(2)))
    v1, v2 = sp.symbols("v1 v2", real=True)
    vv = sp.Matrix([v1, v2])
    quad = (vv.T * hess * vv)[0]
    # vᵀ∇²v = σ(1 − σ)(xᵀv)² + δ‖v‖², a sum of a non-negative and a positive term (v ≠ 0)
    assert _zero(quad - (sig * (1 - sig) * (xv.T * vv)[0] ** 2 + delta * (v1**2 + v2**2)))
    return [
        *statements,
        "2-D, symbolic S, m, ĝ, Ĥ: the fixed point of λ' = λ − ρ(∇_μE_q[ℓ̄] + λ) (delta method) "
        "has F₂ = ρ(Ĥ − S)/2, so S* = Ĥ, and then F₁ = ρĝ: for ρ ≠ 0 the fixed points are exactly "
        "∇ℓ̄(m*) = 0, S* = ∇²ℓ̄(m*)",
        "1-D, any ℓ̄: S* = ℓ̄''(m*) and ℓ̄'(m*) = 0",
        "2-D logistic + ridge term log(1 + e^{xᵀθ}) − yxᵀθ + δ‖θ‖²/2: ∇ = x(σ − y) + δθ, "
        "∇² = σ(1 − σ)xxᵀ + δI, and vᵀ∇²v = σ(1 − σ)(xᵀv)² + δ‖v‖² > 0: ℓ̄ is strictly convex, "
        "so the fixed point is (argmin ℓ̄, ∇²ℓ̄(argmin ℓ̄)), the Laplace approximation",
    ]


def _zero(expr: sp.Matrix | sp.Expr) -> bool:
    entries = expr if isinstance(expr, sp.MatrixBase) else [expr]
    return all(sp.cancel(sp.together(x)) == 0 for x in entries)


def classical_gradient(t: np.ndarray, x: np.ndarray, y: np.ndarray, delta: float = DELTA):
    """The closed-form ∇ℓ̄(θ) = Xᵀ(σ(Xθ) − y) + δθ (numpy)."""
    p = 1 / (1 + np.exp(-(x @ t)))
    return x.T @ (p - y) + delta * t


def classical_hessian(t: np.ndarray, x: np.ndarray, delta: float = DELTA) -> np.ndarray:
    """The closed-form ∇²ℓ̄(θ) = Xᵀdiag(σ(1 − σ))X + δI (numpy)."""
    p = 1 / (1 + np.exp(-(x @ t)))
    return (x.T * (p * (1 - p))) @ x + delta * np.eye(x.shape[1])


def classical(x: torch.Tensor, y: torch.Tensor, delta: float = DELTA) -> tuple[np.ndarray, ...]:
    """Laplace's method: θ_MAP = argmin ℓ̄ by ``scipy.optimize.minimize`` (BFGS, the closed-form
    gradient only) and the closed-form Hessian ∇²ℓ̄(θ_MAP) (numpy)."""
    xn, yn = x.numpy(), y.numpy()

    def fun(t: np.ndarray) -> float:
        a = xn @ t
        return float(np.sum(np.logaddexp(0.0, a) - yn * a) + 0.5 * delta * t @ t)

    res = scipy.optimize.minimize(
        fun,
        np.zeros(xn.shape[1]),
        jac=lambda t: classical_gradient(t, xn, yn, delta),
        method="BFGS",
        options={"gtol": 1e-9},
    )
    if not res.success:
        raise RuntimeError(f"scipy.optimize.minimize did not converge: {res.message}")
    return res.x, classical_hessian(res.x, xn, delta)


def blr_instance(
    m0: torch.Tensor, prec0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, rho: float, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` BLR steps (:class:`blr.Delta`, full Gaussian, :func:`derivations.newton.loss_fn`
    with prior precision δ) from N(m₀, S₀⁻¹): every mean ``(steps + 1, d)`` and precision
    ``(steps + 1, d, d)``."""
    fam = expfam.FullGaussian()
    nat = fam.from_moments(m0, prec0)
    loss = loss_fn(x, y, DELTA)
    path = [fam.to_moments(nat)]
    for _ in range(steps):
        nat = blr.step(fam, nat, loss, rho, estimator=blr.Delta())
        path.append(fam.to_moments(nat))
    return torch.stack([p[0] for p in path]), torch.stack([p[1] for p in path])


def kernel_instance(
    m0: torch.Tensor, prec0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, rho: float, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """B copies through :func:`blr.kernels.full_gaussian_step` with ĝ = ∇ℓ̄(m), Ĥ = ∇²ℓ̄(m) by
    ``torch.autograd`` (one backward pass for ĝ, d more for the rows of Ĥ): every mean
    ``(B, steps + 1, d)`` and precision ``(B, steps + 1, d, d)``."""
    loss = loss_fn(x, y, DELTA)
    m, prec = m0, prec0
    means, precs = [m], [prec]
    for _ in range(steps):
        theta = m.detach().requires_grad_()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss(theta).sum(), theta, create_graph=True)
            rows = [
                torch.autograd.grad(g[:, i].sum(), theta, retain_graph=True)[0]
                for i in range(m.shape[-1])
            ]
        m, prec, _ = full_gaussian_step(m, prec, g.detach(), torch.stack(rows, -2), rho)
        means.append(m)
        precs.append(prec)
    return torch.stack(means, 1), torch.stack(precs, 1)


def _dev(a, b) -> float:
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())


def check(device: str = "cpu") -> list[Comparison]:
    """BLR fixed points (ρ = 1, ρ = 0.5; engine and 64-copy kernel) vs scipy's MAP and the
    closed-form Hessian there, the gradient there and :func:`blr.glm.laplace` (limits); the kernel's
    iterates vs the engine's (equalities)."""
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
    m_lap, s_lap = expfam.FullGaussian().to_moments(laplace(x, y, DELTA, "logistic"))
    grad5 = classical_gradient(m5[-1].numpy(), x.numpy(), y.numpy())

    gen = torch.Generator().manual_seed(2)
    starts = 0.25 * torch.randn(COPIES, 2, dtype=dt, generator=gen)
    precs = (0.5 + torch.rand(COPIES, 1, 1, dtype=dt, generator=gen)) * prec0
    xd, yd, sd, pd = x.to(device), y.to(device), starts.to(device), precs.to(device)
    k5m, k5s = (t.cpu() for t in kernel_instance(sd, pd, xd, yd, DAMPED_RHO, DAMPED_STEPS))
    k1m, k1s = (t.cpu() for t in kernel_instance(sd, pd, xd, yd, 1.0, NEWTON_STEPS))
    e5 = [blr_instance(s, p, x, y, DAMPED_RHO, DAMPED_STEPS) for s, p in zip(starts, precs[:2])]
    e1 = [blr_instance(s, p, x, y, 1.0, NEWTON_STEPS) for s, p in zip(starts, precs[:2])]
    map_t = torch.tensor(theta_map)
    return [
        Comparison(
            "BLR (ρ = 1, 10 steps) m vs scipy MAP", _dev(m1[-1], theta_map), 1e-8, kind="limit"
        ),
        Comparison(
            "BLR (ρ = 1) S vs closed-form Hessian at the MAP", _dev(s1[-1], hess), 1e-8, "limit"
        ),
        Comparison(
            "BLR (ρ = 0.5, 60 steps) m vs scipy MAP", _dev(m5[-1], theta_map), 1e-8, kind="limit"
        ),
        Comparison(
            "BLR (ρ = 0.5) S vs closed-form Hessian at the MAP", _dev(s5[-1], hess), 1e-8, "limit"
        ),
        Comparison(
            "‖∇ℓ̄(m)‖ (closed form) at the BLR fixed point (ρ = 0.5)",
            float(np.linalg.norm(grad5)),
            1e-10,
            kind="limit",
        ),
        Comparison(
            "BLR fixed point (ρ = 1) vs blr.glm.laplace (m, S)",
            max(_dev(m1[-1], m_lap), _dev(s1[-1], s_lap)),
            1e-12,
            kind="limit",
        ),
        Comparison(
            f"kernel ({device}, 64 copies, ρ = 0.5) vs scipy MAP and Hessian",
            max(_dev(k5m[:, -1], map_t.expand(COPIES, 2)), _dev(k5s[:, -1], hess)),
            1e-8,
            kind="limit",
        ),
        Comparison(
            f"kernel ({device}, 64 copies, ρ = 1) vs scipy MAP and Hessian",
            max(_dev(k1m[:, -1], map_t.expand(COPIES, 2)), _dev(k1s[:, -1], hess)),
            1e-8,
            kind="limit",
        ),
        Comparison(
            f"kernel ({device}, ρ = 0.5) vs engine, (m, S) at each of 60 steps, 2 copies",
            max(max(_dev(k5m[i], em), _dev(k5s[i], es)) for i, (em, es) in enumerate(e5)),
            1e-10,
        ),
        Comparison(
            f"kernel ({device}, ρ = 1) vs engine, (m, S) at each of 10 steps, 2 copies",
            max(max(_dev(k1m[i], em), _dev(k1s[i], es)) for i, (em, es) in enumerate(e1)),
            1e-10,
        ),
    ]


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "nat, loss, rho,",
        "nat, loss, 1.01 * rho,",
        "engine: BLR step ρ × 1.01 (fixed point unchanged, path moved)",
    ),
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "loss_fn(x, y, DELTA)",
        "loss_fn(x, y, 1.01 * DELTA)",
        "engine: prior precision δ × 1.01 in the loss it differentiates",
    ),
    Mutation(
        "blr",
        "constant",
        "kernel_instance",
        "torch.stack(rows, -2), rho)",
        "torch.stack(rows, -2), 1.01 * rho)",
        "kernel: rate ρ × 1.01",
    ),
    Mutation(
        "blr",
        "term",
        "kernel_instance",
        "loss_fn(x, y, DELTA)",
        "loss_fn(x, y, 0.0)",
        "kernel: prior ½δ‖θ‖² dropped from the loss it differentiates",
    ),
    Mutation(
        "classical",
        "constant",
        "classical_hessian",
        "+ delta * np.eye",
        "+ 1.01 * delta * np.eye",
        "classical: prior δ in the Hessian × 1.01",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "delta: float = DELTA) -> tuple",
        "delta: float = 1.01 * DELTA) -> tuple",
        "classical: prior δ × 1.01 (scipy's objective, gradient and the Hessian)",
    ),
    Mutation(
        "classical",
        "term",
        "classical_hessian",
        "+ delta * np.eye(x.shape[1])",
        "",
        "classical: prior δI dropped from the Hessian",
    ),
)
