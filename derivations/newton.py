r"""Newton's method is the BLR on a full-covariance Gaussian under the delta method, with ρ = 1.

**Family.** q = N(m, S⁻¹): T(θ) = (θ, θθᵀ), λ = (Sm, −½S), μ = (m, S⁻¹ + mmᵀ),
A(λ) = −¼λ₁ᵀλ₂⁻¹λ₁ − ½log|−2λ₂|, h constant, so ∇_μ(−H) = λ and the BLR is
λ ← (1 − ρ)λ − ρ∇_μE_q[ℓ̄].

**Rule.** Bonnet and Price with the chain rule to μ give ∇_μE_q[ℓ̄] = (E_q[∇ℓ̄] − E_q[∇²ℓ̄]m,
½E_q[∇²ℓ̄]). The delta method E_q[∇ℓ̄] ≈ ∇ℓ̄(m), E_q[∇²ℓ̄] ≈ ∇²ℓ̄(m) turns the λ-update into

    S ← (1 − ρ)S + ρ∇²ℓ̄(m),    m ← m − ρS⁻¹∇ℓ̄(m)    (S the NEW precision).

At ρ = 1 the old S drops out: S = ∇²ℓ̄(m), m ← m − [∇²ℓ̄(m)]⁻¹∇ℓ̄(m), Newton's method. For
ρ < 1 it is a damped Newton step preconditioned by an exponential average of the Hessians.

**Equality conditions.** ρ_t = 1 for every t and m₀ = θ₀ ⇒ m_t = θ_t of Newton's method for every
t, for any S₀ ≻ 0 (it never enters). For ρ < 1 the BLR equals the damped, Hessian-averaging
Newton method above with the same S₀. A quadratic ℓ̄ = ½θᵀAθ − bᵀθ reaches (A⁻¹b, A) in one
step at ρ = 1 from any (m₀, S₀) (ridge regression). The delta method is exact for quadratics
only; for other losses, Newton is the BLR *with* the delta method.

**Test problem** (BLR_SPEC Row 2). Logistic regression in 2-D, N = 50 inputs x_i ~ N(0, I) with
labels y_i ~ Bernoulli(σ(x_iᵀw)), w = (1.5, −2) (``numpy.random.default_rng(0)``),
ℓ̄(θ) = Σᵢ[log(1 + e^{x_iᵀθ}) − y_i x_iᵀθ] + ½δ‖θ‖², δ = 0.1: 6 BLR steps (ρ = 1, from θ₀ = 0,
S₀ = I) equal 6 hand-coded Newton steps and end at ‖∇ℓ̄‖ < 1e-10; 25 BLR steps with ρ = 0.5 and
S₀ = [[2, ½], [½, 1]] equal 25 steps of the hand-coded damped Newton method with averaged
Hessian. The batched kernel (:func:`blr.kernels.full_gaussian_step`) runs 64 copies from
starts θ₀ ~ N(0, 0.25²I) with different S₀ in one call per step and equals the engine and
Newton's method on each copy; all 64 reach ‖∇ℓ̄‖ < 1e-10 in 6 steps. (Pure Newton, and so the
ρ = 1 BLR, diverges from some starts at distance ~1 from the origin on these data; the two
still agree step by step there, but not to 1e-10 once the iterates reach |θ| ~ 100.)

**References.** Khan & Rue (2023), Table 1 row 2 (Newton's method as the BLR with ρ = 1);
BLR_SPEC §1.5 (the Gaussian BLR in (m, S) form) and Row 2.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
import torch

import blr
import expfam
from blr.kernels import full_gaussian_step
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="newton",
    number=2,
    algorithm="Newton's method",
    posterior="Gaussian (full covariance)",
    approximation="delta method",
    symbolic="✓",
)

N = 50
W_TRUE = (1.5, -2.0)
DELTA = 0.1
STEPS = 6
DAMPED_RHO, DAMPED_STEPS = 0.5, 25
COPIES = 64


def data(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The Row-2 data: X ``(50, 2)`` with x_i ~ N(0, I), y_i ~ Bernoulli(σ(x_iᵀw)) in {0, 1},
    w = (1.5, −2), from ``numpy.random.default_rng(0)`` (x first, then u_i ~ U(0, 1),
    y_i = 1[u_i < σ(x_iᵀw)])."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 2))
    y = (rng.random(N) < 1 / (1 + np.exp(-x @ np.array(W_TRUE)))).astype(np.float64)
    return torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype)


def _sym_delta_step(
    lam1: sp.Matrix, lam2: sp.Matrix, g: sp.Matrix, h: sp.Matrix, m: sp.Matrix, rho: sp.Expr
) -> tuple[sp.Matrix, sp.Matrix]:
    """λ ← (1 − ρ)λ − ρ(ĝ − Ĥm, ½Ĥ), returned as (S', λ₁') = (−2λ₂', S'm') (symbolic)."""
    new1 = (1 - rho) * lam1 - rho * (g - h * m)
    new2 = (1 - rho) * lam2 - rho * h / 2
    return -2 * new2, new1


def derive() -> list[str]:
    """μ = ∇A and ∇_μ(−H) = λ (1-D), Bonnet/Price in μ for a quartic loss, and the delta-method
    BLR step = (damped) Newton in 1-D and 2-D; one step on a symbolic quadratic lands on
    (A⁻¹b, A)."""
    lam1, lam2 = sp.symbols("lambda1 lambda2", real=True)
    m, rho = sp.symbols("m rho", real=True)
    s = sp.Symbol("S", positive=True)
    # 1-D: A(λ) = −λ₁²/(4λ₂) − ½log(−2λ₂); at λ = (Sm, −S/2): μ = (m, 1/S + m²)
    log_partition = -(lam1**2) / (4 * lam2) - sp.log(-2 * lam2) / 2
    at = {lam1: s * m, lam2: -s / 2}
    mu1 = sp.diff(log_partition, lam1).subs(at)
    mu2 = sp.diff(log_partition, lam2).subs(at)
    assert sp.cancel(mu1 - m) == 0 and sp.cancel(mu2 - (1 / s + m**2)) == 0
    # entropy ½log(2πe/S) written in μ: S = 1/(μ₂ − μ₁²); ∇_μ(−H) = (Sm, −S/2) = λ
    u1, u2 = sp.symbols("mu1 mu2", real=True)
    neg_entropy = -sp.log(2 * sp.pi * sp.E * (u2 - u1**2)) / 2
    at_mu = {u1: m, u2: 1 / s + m**2}
    assert sp.cancel(sp.diff(neg_entropy, u1).subs(at_mu) - s * m) == 0
    assert sp.cancel(sp.diff(neg_entropy, u2).subs(at_mu) + s / 2) == 0
    # Bonnet/Price in μ for ℓ(θ) = Σ_{k≤4} a_k θᵏ: E[θᵏ] under N(μ₁, v), v = μ₂ − μ₁²
    a = sp.symbols("a0:5", real=True)
    v = u2 - u1**2
    moments = [1, u1, u1**2 + v, u1**3 + 3 * u1 * v, u1**4 + 6 * u1**2 * v + 3 * v**2]
    expected = sum(ak * mk for ak, mk in zip(a, moments))
    e_grad = sum(k * a[k] * moments[k - 1] for k in range(1, 5))
    e_hess = sum(k * (k - 1) * a[k] * moments[k - 2] for k in range(2, 5))
    assert sp.expand(sp.diff(expected, u1) - (e_grad - e_hess * u1)) == 0
    assert sp.expand(sp.diff(expected, u2) - e_hess / 2) == 0
    # 1-D delta-method step with a symbolic loss
    theta = sp.Symbol("theta")
    ell = sp.Function("ell")(theta)
    g1 = sp.diff(ell, theta).subs(theta, m)
    h1 = sp.diff(ell, theta, 2).subs(theta, m)
    s_new, lam1_new = _sym_delta_step(
        sp.Matrix([s * m]),
        sp.Matrix([-s / 2]),
        sp.Matrix([g1]),
        sp.Matrix([h1]),
        sp.Matrix([m]),
        rho,
    )
    m_new = lam1_new[0] / s_new[0]
    assert sp.expand(s_new[0] - ((1 - rho) * s + rho * h1)) == 0
    assert sp.cancel(m_new - (m - rho * g1 / s_new[0])) == 0
    assert sp.cancel(m_new.subs(rho, 1) - (m - g1 / h1)) == 0
    # 2-D with symbolic (S, m, ĝ, Ĥ): m' = m − ρS'⁻¹ĝ, S' = (1 − ρ)S + ρĤ
    s11, s12, s22, h11, h12, h22 = sp.symbols("s11 s12 s22 h11 h12 h22", real=True)
    m1, m2, gg1, gg2 = sp.symbols("m1 m2 g1 g2", real=True)
    smat = sp.Matrix([[s11, s12], [s12, s22]])
    hmat = sp.Matrix([[h11, h12], [h12, h22]])
    mvec, gvec = sp.Matrix([m1, m2]), sp.Matrix([gg1, gg2])
    s_new, lam1_new = _sym_delta_step(smat * mvec, -smat / 2, gvec, hmat, mvec, rho)
    assert (s_new - ((1 - rho) * smat + rho * hmat)).expand() == sp.zeros(2, 2)
    # m' = S'⁻¹λ₁' = m − ρS'⁻¹ĝ  ⇔  λ₁' = S'm − ρĝ (S' ≻ 0)
    assert (lam1_new - (s_new * mvec - rho * gvec)).expand() == sp.zeros(2, 1)
    # quadratic ½θᵀAθ − bᵀθ: ĝ = Am − b, Ĥ = A (exact); ρ = 1 ⇒ (A⁻¹b, A) from any (m₀, S₀)
    a11, a12, a22, b1, b2 = sp.symbols("a11 a12 a22 b1 b2", real=True)
    amat, bvec = sp.Matrix([[a11, a12], [a12, a22]]), sp.Matrix([b1, b2])
    s_new, lam1_new = _sym_delta_step(smat * mvec, -smat / 2, amat * mvec - bvec, amat, mvec, 1)
    assert s_new.expand() == amat and (lam1_new - bvec).expand() == sp.zeros(2, 1)  # S'm' = b
    return [
        "N(m, 1/S): μ = ∇A(λ) = (m, 1/S + m²) and ∇_μ(−H) = (Sm, −S/2) = λ",
        "quartic ℓ: ∇_μ₁E_q[ℓ] = E_q[ℓ'] − E_q[ℓ'']m and ∇_μ₂E_q[ℓ] = ½E_q[ℓ''] (Bonnet/Price)",
        "1-D delta method: S' = (1 − ρ)S + ρℓ''(m), m' = m − ρℓ'(m)/S'; ρ = 1: "
        "m' = m − ℓ'(m)/ℓ''(m)",
        "2-D, symbolic S, m, ĝ, Ĥ: S' = (1 − ρ)S + ρĤ and S'(m' − m) = −ρĝ",
        "2-D quadratic ½θᵀAθ − bᵀθ, ρ = 1: one step from any (m₀, S₀) gives (A⁻¹b, A)",
    ]


def grad_hess(
    theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, delta: float = DELTA
) -> tuple[torch.Tensor, torch.Tensor]:
    """∇ℓ̄ = Xᵀ(σ(Xθ) − y) + δθ and ∇²ℓ̄ = Xᵀdiag(σ(1 − σ))X + δI, batched over θ ``(..., d)``."""
    p = torch.sigmoid(theta @ x.mT)
    g = (p - y) @ x + delta * theta
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    h = torch.einsum("...n,ni,nj->...ij", p * (1 - p), x, x) + delta * eye
    return g, h


def classical(
    theta0: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    rho: float = 1.0,
    prec0: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hand-coded Newton's method θ ← θ − H(θ)⁻¹∇ℓ̄(θ) (ρ = 1), or its damped form with the
    averaged Hessian S ← (1 − ρ)S + ρH(θ), θ ← θ − ρS⁻¹∇ℓ̄(θ) (S₀ = ``prec0``); all iterates."""
    theta, out = theta0, [theta0]
    prec = torch.eye(theta0.shape[-1], dtype=theta0.dtype) if prec0 is None else prec0
    for _ in range(steps):
        g, h = grad_hess(theta, x, y)
        if rho == 1.0:
            theta = theta - torch.linalg.solve(h, g)
        else:
            prec = (1 - rho) * prec + rho * h
            theta = theta - rho * torch.linalg.solve(prec, g)
        out.append(theta)
    return torch.stack(out)


def loss_fn(x: torch.Tensor, y: torch.Tensor, delta: float = DELTA):
    """θ ``(K, d)`` ↦ ℓ̄(θ) ``(K,)`` = Σᵢ softplus(x_iᵀθ) − y_i x_iᵀθ + ½δ‖θ‖²."""

    def loss(theta: torch.Tensor) -> torch.Tensor:
        a = theta @ x.mT
        data = (torch.nn.functional.softplus(a) - y * a).sum(-1)
        return data + 0.5 * delta * (theta * theta).sum(-1)

    return loss


def blr_instance(
    m0: torch.Tensor,
    prec0: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    rho: float,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The BLR on N(m, S⁻¹) with :class:`blr.Delta` (gradient and Hessian at m by autograd):
    all means ``(steps + 1, d)`` and the final precision."""
    fam = expfam.FullGaussian()
    nat = fam.from_moments(m0, prec0)
    loss = loss_fn(x, y)
    out = [fam.location(nat)]
    for _ in range(steps):
        nat = blr.step(fam, nat, loss, rho, estimator=blr.Delta())
        out.append(fam.location(nat))
    return torch.stack(out), fam.to_moments(nat)[1]


def kernel_instance(
    m0: torch.Tensor, prec0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, rho: float, steps: int
) -> torch.Tensor:
    """B copies (``m0`` ``(B, d)``, ``prec0`` ``(B, d, d)``) through
    :func:`blr.kernels.full_gaussian_step`, ĝ = ∇ℓ̄(m), Ĥ = ∇²ℓ̄(m): means ``(B, steps + 1, d)``."""
    m, prec = m0, prec0
    out = [m]
    for _ in range(steps):
        g, h = grad_hess(m, x, y)
        m, prec, _ = full_gaussian_step(m, prec, g, h, rho)
        out.append(m)
    return torch.stack(out, 1)


def check(device: str = "cpu") -> list[Comparison]:
    """BLR (ρ = 1) vs Newton, the final gradient, BLR (ρ = 0.5) vs damped Newton, and the batched
    kernel on 64 copies vs the engine and vs Newton."""
    dt = torch.float64
    x, y = data()
    theta0, eye = torch.zeros(2, dtype=dt), torch.eye(2, dtype=dt)
    newton = classical(theta0, x, y, STEPS)
    ours, _ = blr_instance(theta0, eye, x, y, 1.0, STEPS)
    grad_norm = torch.linalg.norm(grad_hess(ours[-1], x, y)[0]).item()
    prec0 = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=dt)
    damped = classical(theta0, x, y, DAMPED_STEPS, DAMPED_RHO, prec0)
    ours_damped, _ = blr_instance(theta0, prec0, x, y, DAMPED_RHO, DAMPED_STEPS)

    gen = torch.Generator().manual_seed(1)
    starts = 0.25 * torch.randn(COPIES, 2, dtype=dt, generator=gen)
    scales = 0.5 + torch.rand(COPIES, 1, 1, dtype=dt, generator=gen)
    precs = scales * prec0  # different S₀ per copy: irrelevant at ρ = 1
    kernel = kernel_instance(
        starts.to(device), precs.to(device), x.to(device), y.to(device), 1.0, STEPS
    ).cpu()
    engine = torch.stack(
        [blr_instance(s, p, x, y, 1.0, STEPS)[0] for s, p in zip(starts[:4], precs)]
    )
    batched_newton = torch.stack([classical(s, x, y, STEPS) for s in starts])
    kernel_grad = torch.linalg.norm(grad_hess(kernel[:, -1], x, y)[0], dim=-1).max().item()
    kernel_damped = kernel_instance(
        starts[:8].to(device),
        precs[:8].to(device),
        x.to(device),
        y.to(device),
        DAMPED_RHO,
        DAMPED_STEPS,
    ).cpu()
    batched_damped = torch.stack(
        [classical(s, x, y, DAMPED_STEPS, DAMPED_RHO, p) for s, p in zip(starts[:8], precs)]
    )
    return [
        Comparison(
            "BLR (ρ = 1, delta) vs Newton, 6 steps", (ours - newton).abs().max().item(), 1e-10
        ),
        Comparison("‖∇ℓ̄(m)‖ after 6 BLR steps", grad_norm, 1e-10),
        Comparison(
            "BLR (ρ = 0.5) vs damped Newton with averaged Hessian, 25 steps",
            (ours_damped - damped).abs().max().item(),
            1e-10,
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs engine, 6 steps",
            (kernel[:4] - engine).abs().max().item(),
            1e-10,
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs Newton, 6 steps",
            (kernel - batched_newton).abs().max().item(),
            1e-10,
        ),
        Comparison("max ‖∇ℓ̄(m)‖ over the 64 kernel copies after 6 steps", kernel_grad, 1e-10),
        Comparison(
            f"kernel ({device}, 8 copies, ρ = 0.5) vs damped Newton, 25 steps",
            (kernel_damped - batched_damped).abs().max().item(),
            1e-10,
        ),
    ]
