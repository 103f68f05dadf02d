r"""Newton's method is the BLR on a full-covariance Gaussian under the delta method, with ρ = 1.

**Family.** q = N(m, S⁻¹): T(θ) = (θ, θθᵀ), λ = (Sm, −½S), μ = (m, S⁻¹ + mmᵀ),
A(λ) = −¼λ₁ᵀλ₂⁻¹λ₁ − ½log|−2λ₂|, h constant, so ∇_μ(−H) = λ and the BLR is
λ ← (1 − ρ)λ − ρ∇_μE_q[ℓ̄].

**Rule.** Bonnet's and Price's theorems with the chain rule to μ give
∇_μE_q[ℓ̄] = (E_q[∇ℓ̄] − E_q[∇²ℓ̄]m, ½E_q[∇²ℓ̄]). The delta method E_q[∇ℓ̄] ≈ ∇ℓ̄(m),
E_q[∇²ℓ̄] ≈ ∇²ℓ̄(m) turns the λ-update into

    S ← (1 − ρ)S + ρ∇²ℓ̄(m),    m ← m − ρS⁻¹∇ℓ̄(m)    (S the NEW precision).

At ρ = 1 the old S drops out: S = ∇²ℓ̄(m), m ← m − [∇²ℓ̄(m)]⁻¹∇ℓ̄(m), Newton's method. For
ρ < 1 it is a damped Newton step preconditioned by an exponential average of the Hessians.
:func:`derive` proves each step in 2-D (the dimension of the test problem) with the symmetric
pairing ⟨λ₂, θθᵀ⟩ = tr(λ₂θθᵀ): μ = ∇A(λ); ∇_μ(−H) = λ; Bonnet/Price in μ for every
ℓ(θ) = e^{aᵀθ} (E_q[e^{aᵀθ}] = e^{aᵀm + ½aᵀΣa} by completing the square; both sides are linear
in ℓ, so the identity extends to every superposition of exponentials) and, in 1-D, for every
quartic; and the delta-method step with symbolic S, m, ĝ, Ĥ.

**Equality conditions.** ρ_t = 1 for every t and m₀ = θ₀ ⇒ m_t = θ_t of Newton's method for every
t, for any S₀ ≻ 0 (it never enters). For ρ < 1 the BLR equals the damped, Hessian-averaging
Newton method above with the same S₀. A quadratic ℓ̄ = ½θᵀAθ − bᵀθ reaches (A⁻¹b, A) in one
step at ρ = 1 from any (m₀, S₀) (ridge regression). The delta method is exact for quadratics
only; for other losses, Newton is the BLR *with* the delta method.

**Test problem.** Logistic regression in 2-D, N = 50 inputs x_i ~ N(0, I) with labels
y_i ~ Bernoulli(σ(x_iᵀw)), w = (1.5, −2) (``numpy.random.default_rng(0)``),
ℓ̄(θ) = Σᵢ[log(1 + e^{x_iᵀθ}) − y_i x_iᵀθ] + ½δ‖θ‖², δ = 0.1 (the prior enters the gradient
and the Hessian). The BLR side never sees a hand-written derivative: the engine
(:func:`blr.step` with :class:`blr.Delta`) and the batched kernel
(:func:`blr.kernels.full_gaussian_step`, ĝ and Ĥ of :func:`loss_fn` by ``torch.autograd``)
differentiate the loss by autograd; the hand-coded Newton method uses the closed forms
Xᵀ(σ − y) + δθ and Xᵀdiag(σ(1 − σ))X + δI (:func:`grad_hess`). Equalities (iterate by
iterate, tolerance 1e-10): 6 BLR steps (ρ = 1, from θ₀ = 0, S₀ = I) and 6 Newton steps;
25 BLR steps with ρ = 0.5 and S₀ = [[2, ½], [½, 1]] (every term of the averaged Hessian
matters) and 25 steps of the hand-coded damped Newton method; the kernel on 64 copies from
θ₀ ~ N(0, 0.25²I) with different S₀ (6 steps at ρ = 1) against the engine on the first 4
copies and against Newton's method on all 64, and on 8 copies at ρ = 0.5 against the damped
Newton method. Limits (convergence): ‖∇ℓ̄‖ < 1e-10 after 6 steps, for the engine and for all
64 kernel copies, with the hand-written gradient. (Pure Newton, and so the ρ = 1 BLR, diverges
from some starts at distance ~1 from the origin on these data; the two still agree step by
step there, but not to 1e-10 once the iterates reach |θ| ~ 100.)

**References.** Khan & Rue (2023), Table 1 row 2 (Newton's method as the BLR with ρ = 1 and
the delta method); Bonnet (1964) and Price (1958) for the Gaussian gradient identities
(Opper & Archambeau 2009 for their use in variational inference).
"""

from __future__ import annotations

import numpy as np
import sympy as sp
import torch

import blr
import expfam
from blr.kernels import full_gaussian_step
from derivations.mutations import Mutation
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
PREC0 = ((2.0, 0.5), (0.5, 1.0))


def data(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The Row-2 data: X ``(50, 2)`` with x_i ~ N(0, I), y_i ~ Bernoulli(σ(x_iᵀw)) in {0, 1},
    w = (1.5, −2), from ``numpy.random.default_rng(0)`` (x first, then u_i ~ U(0, 1),
    y_i = 1[u_i < σ(x_iᵀw)])."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 2))
    y = (rng.random(N) < 1 / (1 + np.exp(-x @ np.array(W_TRUE)))).astype(np.float64)
    return torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype)


def _pairing_grad(f: sp.Expr, vec: tuple, mat: tuple) -> tuple[sp.Matrix, sp.Matrix]:
    """∇f in the pairing ⟨(a, B), (v, M)⟩ = aᵀv + tr(BM), M symmetric with free entries
    (M₁₁, M₁₂, M₂₂): ∂f/∂M₁₂ counts both off-diagonal entries, so it is halved."""
    m11, m12, m22 = mat
    half = sp.diff(f, m12) / 2
    return (
        sp.Matrix([sp.diff(f, v) for v in vec]),
        sp.Matrix([[sp.diff(f, m11), half], [half, sp.diff(f, m22)]]),
    )


def _zero(expr: sp.Matrix | sp.Expr) -> bool:
    """Every entry cancels to 0."""
    entries = expr if isinstance(expr, sp.MatrixBase) else [expr]
    return all(sp.cancel(sp.together(e)) == 0 for e in entries)


def derive_gaussian_mgf() -> str:
    r"""E_{N(m, Σ)}[e^{aᵀθ}] = e^{aᵀm + ½aᵀΣa} by completing the square, in 2-D with a symbolic
    precision S = Σ⁻¹ and a = Sc:

    .. math:: -\tfrac12(\theta - m)^\top S(\theta - m) + a^\top\theta
              = a^\top m + \tfrac12 c^\top S c - \tfrac12(\theta - m - c)^\top S(\theta - m - c),

    so e^{aᵀθ}N(θ; m, Σ) = e^{aᵀm + ½aᵀΣa}N(θ; m + Σa, Σ), which integrates to e^{aᵀm + ½aᵀΣa}.
    Returns the statement; raises AssertionError if the exponents differ.
    """
    s11, s12, s22, m1, m2 = sp.symbols("s11 s12 s22 m1 m2", real=True)
    t1, t2, c1, c2 = sp.symbols("theta1 theta2 c1 c2", real=True)
    smat, mvec = sp.Matrix([[s11, s12], [s12, s22]]), sp.Matrix([m1, m2])
    th, c = sp.Matrix([t1, t2]), sp.Matrix([c1, c2])
    lhs = -((th - mvec).T * smat * (th - mvec))[0] / 2 + ((smat * c).T * th)[0]
    shifted = th - mvec - c
    rhs = ((smat * c).T * mvec)[0] + (c.T * smat * c)[0] / 2 - (shifted.T * smat * shifted)[0] / 2
    assert sp.expand(lhs - rhs) == 0
    return (
        "2-D E_{N(m, Σ)}[e^{aᵀθ}] = e^{aᵀm + ½aᵀΣa}: e^{aᵀθ}N(θ; m, Σ) = "
        "e^{aᵀm + ½aᵀΣa}N(θ; m + Σa, Σ) (completing the square, symbolic S = Σ⁻¹)"
    )


def derive_full_gaussian() -> list[str]:
    r"""The Gaussian identities the full-covariance rows rest on, proved in 2-D with symbolic
    S = [[s₁₁, s₁₂], [s₁₂, s₂₂]] and m (symmetric pairing ⟨λ₂, θθᵀ⟩ = tr(λ₂θθᵀ)):

    - μ = ∇A(λ) = (m, S⁻¹ + mmᵀ) at λ = (Sm, −½S), A(λ) = −¼λ₁ᵀλ₂⁻¹λ₁ − ½log|−2λ₂|;
    - ∇_μ(−H) = λ, with −H = −½log|μ₂ − μ₁μ₁ᵀ| + const;
    - Bonnet/Price in μ: for ℓ(θ) = e^{aᵀθ}, E_q[ℓ] = F = exp(aᵀμ₁ + ½aᵀ(μ₂ − μ₁μ₁ᵀ)a)
      (completing the square: e^{aᵀθ}N(θ; m, Σ) = e^{aᵀm + ½aᵀΣa}N(θ; m + Σa, Σ)), and
      ∇_μF = (E[∇ℓ] − E[∇²ℓ]m, ½E[∇²ℓ]) with E[∇ℓ] = aF, E[∇²ℓ] = aaᵀF. Both sides are linear
      in ℓ, so the identity holds for every ℓ that is a superposition of exponentials.

    Returns the statements; raises AssertionError if an identity fails.
    """
    s11, s12, s22, m1, m2 = sp.symbols("s11 s12 s22 m1 m2", real=True)
    smat, mvec = sp.Matrix([[s11, s12], [s12, s22]]), sp.Matrix([m1, m2])
    cov = smat.inv()
    second = cov + mvec * mvec.T
    # μ = ∇A(λ)
    l1, l2, p, q, r = sp.symbols("l1 l2 p q r", real=True)
    lam1, lam2 = sp.Matrix([l1, l2]), sp.Matrix([[p, q], [q, r]])
    log_partition = -(lam1.T * lam2.inv() * lam1)[0] / 4 - sp.log((-2 * lam2).det()) / 2
    g1, g2 = _pairing_grad(log_partition, (l1, l2), (p, q, r))
    at_lam = dict(zip((l1, l2, p, q, r), (*(smat * mvec), -s11 / 2, -s12 / 2, -s22 / 2)))
    assert _zero(g1.subs(at_lam) - mvec) and _zero(g2.subs(at_lam) - second)
    # ∇_μ(−H) = λ
    u1, u2, v11, v12, v22 = sp.symbols("u1 u2 v11 v12 v22", real=True)
    mu1, mu2 = sp.Matrix([u1, u2]), sp.Matrix([[v11, v12], [v12, v22]])
    h1, h2 = _pairing_grad(-sp.log((mu2 - mu1 * mu1.T).det()) / 2, (u1, u2), (v11, v12, v22))
    at_mu = dict(zip((u1, u2, v11, v12, v22), (m1, m2, second[0, 0], second[0, 1], second[1, 1])))
    assert _zero(h1.subs(at_mu) - smat * mvec) and _zero(h2.subs(at_mu) + smat / 2)
    mgf = derive_gaussian_mgf()
    # Bonnet/Price in μ for ℓ = e^{aᵀθ}: ∇_μ log F = (a − aaᵀμ₁, ½aaᵀ)
    a1, a2 = sp.symbols("a1 a2", real=True)
    avec = sp.Matrix([a1, a2])
    log_f = (avec.T * mu1)[0] + (avec.T * (mu2 - mu1 * mu1.T) * avec)[0] / 2
    f1, f2 = _pairing_grad(log_f, (u1, u2), (v11, v12, v22))
    assert _zero(f1 - (avec - avec * avec.T * mu1)) and _zero(f2 - avec * avec.T / 2)
    return [
        mgf,
        "2-D N(m, S⁻¹), symbolic S and m: μ = ∇A(λ) = (m, S⁻¹ + mmᵀ) at λ = (Sm, −½S)",
        "2-D: ∇_μ(−H) = (Sm, −½S) = λ, from −H = −½log|μ₂ − μ₁μ₁ᵀ| + const",
        "2-D Bonnet/Price in μ: for ℓ = e^{aᵀθ}, with E_q[ℓ] = e^{aᵀm + ½aᵀΣa}, "
        "∇_μE_q[ℓ] = (E_q[∇ℓ] − E_q[∇²ℓ]m, ½E_q[∇²ℓ]); linear in ℓ, so it holds for every "
        "superposition of exponentials",
    ]


def _delta_step(
    lam1: sp.Matrix, lam2: sp.Matrix, g: sp.Matrix, h: sp.Matrix, m: sp.Matrix, rho: sp.Expr
) -> tuple[sp.Matrix, sp.Matrix]:
    """λ' = λ − ρ(∇_μE_q[ℓ̄] + ∇_μ(−H)) with ∇_μE_q[ℓ̄] ≈ (ĝ − Ĥm, ½Ĥ) (Bonnet/Price + delta
    method) and ∇_μ(−H) = λ, returned as (S', λ₁') = (−2λ₂', S'm') (symbolic)."""
    new1 = lam1 - rho * ((g - h * m) + lam1)
    new2 = lam2 - rho * (h / 2 + lam2)
    return -2 * new2, new1


def derive() -> list[str]:
    """The Gaussian identities in 2-D (:func:`derive_full_gaussian`), Bonnet/Price for a 1-D
    quartic, and the delta-method BLR step = (damped) Newton with symbolic S, m, ĝ, Ĥ in 2-D
    and with a symbolic loss in 1-D; one step on a symbolic quadratic lands on (A⁻¹b, A)."""
    statements = derive_full_gaussian()
    rho = sp.Symbol("rho", real=True)
    # Bonnet/Price in μ for ℓ(θ) = Σ_{k≤4} a_k θᵏ in 1-D: E[θᵏ] under N(μ₁, v), v = μ₂ − μ₁²
    u1, u2 = sp.symbols("mu1 mu2", real=True)
    a = sp.symbols("a0:5", real=True)
    v = u2 - u1**2
    moments = [1, u1, u1**2 + v, u1**3 + 3 * u1 * v, u1**4 + 6 * u1**2 * v + 3 * v**2]
    expected = sum(ak * mk for ak, mk in zip(a, moments))
    e_grad = sum(k * a[k] * moments[k - 1] for k in range(1, 5))
    e_hess = sum(k * (k - 1) * a[k] * moments[k - 2] for k in range(2, 5))
    assert sp.expand(sp.diff(expected, u1) - (e_grad - e_hess * u1)) == 0
    assert sp.expand(sp.diff(expected, u2) - e_hess / 2) == 0
    # 2-D delta-method step with symbolic (S, m, ĝ, Ĥ)
    s11, s12, s22, h11, h12, h22 = sp.symbols("s11 s12 s22 h11 h12 h22", real=True)
    m1, m2, g1, g2 = sp.symbols("m1 m2 g1 g2", real=True)
    smat = sp.Matrix([[s11, s12], [s12, s22]])
    hmat = sp.Matrix([[h11, h12], [h12, h22]])
    mvec, gvec = sp.Matrix([m1, m2]), sp.Matrix([g1, g2])
    s_new, lam1_new = _delta_step(smat * mvec, -smat / 2, gvec, hmat, mvec, rho)
    assert (s_new - ((1 - rho) * smat + rho * hmat)).expand() == sp.zeros(2, 2)
    # m' = S'⁻¹λ₁' equals the damped Newton m − ρS'⁻¹ĝ  ⇔  λ₁' = S'm − ρĝ (S' ≻ 0)
    assert (lam1_new - (s_new * mvec - rho * gvec)).expand() == sp.zeros(2, 1)
    # ρ = 1: S' = Ĥ and m' = m − Ĥ⁻¹ĝ (Newton), whatever S was
    s_one, lam1_one = _delta_step(smat * mvec, -smat / 2, gvec, hmat, mvec, 1)
    assert s_one == hmat and _zero(s_one.inv() * lam1_one - (mvec - hmat.inv() * gvec))
    # 1-D with a symbolic loss: m' = m − ℓ'(m)/ℓ''(m) at ρ = 1
    theta, m, s = sp.Symbol("theta"), sp.Symbol("m"), sp.Symbol("S", positive=True)
    ell = sp.Function("ell")(theta)
    d1 = sp.diff(ell, theta).subs(theta, m)
    d2 = sp.diff(ell, theta, 2).subs(theta, m)
    s_1d, lam1_1d = _delta_step(
        sp.Matrix([s * m]), sp.Matrix([-s / 2]), sp.Matrix([d1]), sp.Matrix([d2]), sp.Matrix([m]), 1
    )
    assert sp.cancel(lam1_1d[0] / s_1d[0] - (m - d1 / d2)) == 0
    # quadratic ½θᵀAθ − bᵀθ: ĝ = Am − b, Ĥ = A (exact); ρ = 1 ⇒ (A⁻¹b, A) from any (m₀, S₀)
    a11, a12, a22, b1, b2 = sp.symbols("a11 a12 a22 b1 b2", real=True)
    amat, bvec = sp.Matrix([[a11, a12], [a12, a22]]), sp.Matrix([b1, b2])
    s_q, lam1_q = _delta_step(smat * mvec, -smat / 2, amat * mvec - bvec, amat, mvec, 1)
    assert s_q.expand() == amat and (lam1_q - bvec).expand() == sp.zeros(2, 1)  # S'm' = b
    return [
        *statements,
        "1-D quartic ℓ: ∇_μ₁E_q[ℓ] = E_q[ℓ'] − E_q[ℓ'']m and ∇_μ₂E_q[ℓ] = ½E_q[ℓ''] (Bonnet/Price)",
        "2-D delta method (ĝ = ∇ℓ̄(m), Ĥ = ∇²ℓ̄(m)), λ' = λ − ρ(∇_μE_q[ℓ̄] + λ) with symbolic S, m, "
        "ĝ, Ĥ: S' = (1 − ρ)S + ρĤ and S'm' = S'm − ρĝ, i.e. m' = m − ρS'⁻¹ĝ (damped Newton with "
        "averaged Hessian)",
        "ρ = 1: S' = Ĥ and m' = m − Ĥ⁻¹ĝ, Newton's method, for any S (2-D; 1-D with a symbolic "
        "loss: m' = m − ℓ'(m)/ℓ''(m))",
        "2-D quadratic ½θᵀAθ − bᵀθ, ρ = 1: one step from any (m₀, S₀) gives (A⁻¹b, A)",
    ]


def grad_hess(
    theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, delta: float = DELTA
) -> tuple[torch.Tensor, torch.Tensor]:
    """The classical side's closed forms, batched over θ ``(..., d)``:
    ∇ℓ̄ = Xᵀ(σ(Xθ) − y) + δθ and ∇²ℓ̄ = Xᵀdiag(σ(1 − σ))X + δI."""
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
    averaged Hessian S ← (1 − ρ)S + ρH(θ), θ ← θ − ρS⁻¹∇ℓ̄(θ) (S₀ = ``prec0``), with the
    closed-form :func:`grad_hess`; returns all iterates."""
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
    """θ ``(..., d)`` ↦ ℓ̄(θ) ``(...)`` = Σᵢ softplus(x_iᵀθ) − y_i x_iᵀθ + ½δ‖θ‖²: the loss the BLR
    side differentiates by autograd."""

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
    """The BLR on N(m, S⁻¹) with :class:`blr.Delta` (gradient and Hessian of :func:`loss_fn` at
    m by autograd): all means ``(steps + 1, d)`` and the final precision."""
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
    :func:`blr.kernels.full_gaussian_step`, with ĝ = ∇ℓ̄(m) and Ĥ = ∇²ℓ̄(m) of :func:`loss_fn` by
    ``torch.autograd`` (the copies are independent, so one backward pass of Σ_b ℓ̄(m_b) gives every
    ĝ_b, and d more give the rows of every Ĥ_b): means ``(B, steps + 1, d)``."""
    loss = loss_fn(x, y)
    m, prec = m0, prec0
    out = [m]
    for _ in range(steps):
        theta = m.detach().requires_grad_()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss(theta).sum(), theta, create_graph=True)
            rows = [
                torch.autograd.grad(g[:, i].sum(), theta, retain_graph=True)[0]
                for i in range(m.shape[-1])
            ]
        m, prec, _ = full_gaussian_step(m, prec, g.detach(), torch.stack(rows, -2), rho)
        out.append(m)
    return torch.stack(out, 1)


def _dev(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def check(device: str = "cpu") -> list[Comparison]:
    """BLR (ρ = 1) vs Newton, BLR (ρ = 0.5) vs damped Newton, the batched kernel (64 copies) vs
    the engine and vs Newton (and, on 8 copies, vs damped Newton): equalities; the gradient norm
    after 6 steps for the engine and the kernel: limits."""
    dt = torch.float64
    x, y = data()
    theta0, eye = torch.zeros(2, dtype=dt), torch.eye(2, dtype=dt)
    newton = classical(theta0, x, y, STEPS)
    ours, _ = blr_instance(theta0, eye, x, y, 1.0, STEPS)
    grad_norm = torch.linalg.norm(grad_hess(ours[-1], x, y)[0]).item()
    prec0 = torch.tensor(PREC0, dtype=dt)
    damped = classical(theta0, x, y, DAMPED_STEPS, DAMPED_RHO, prec0)
    ours_damped, _ = blr_instance(theta0, prec0, x, y, DAMPED_RHO, DAMPED_STEPS)

    gen = torch.Generator().manual_seed(1)
    starts = 0.25 * torch.randn(COPIES, 2, dtype=dt, generator=gen)
    scales = 0.5 + torch.rand(COPIES, 1, 1, dtype=dt, generator=gen)
    precs = scales * prec0  # different S₀ per copy: irrelevant at ρ = 1, not at ρ = 0.5
    xd, yd = x.to(device), y.to(device)
    kernel = kernel_instance(starts.to(device), precs.to(device), xd, yd, 1.0, STEPS).cpu()
    engine = torch.stack(
        [blr_instance(s, p, x, y, 1.0, STEPS)[0] for s, p in zip(starts[:4], precs)]
    )
    batched_newton = torch.stack([classical(s, x, y, STEPS) for s in starts])
    kernel_grad = torch.linalg.norm(grad_hess(kernel[:, -1], x, y)[0], dim=-1).max().item()
    kernel_damped = kernel_instance(
        starts[:8].to(device), precs[:8].to(device), xd, yd, DAMPED_RHO, DAMPED_STEPS
    ).cpu()
    batched_damped = torch.stack(
        [classical(s, x, y, DAMPED_STEPS, DAMPED_RHO, p) for s, p in zip(starts[:8], precs)]
    )
    return [
        Comparison("BLR (ρ = 1, delta) vs Newton, 6 steps", _dev(ours, newton), 1e-10),
        Comparison("‖∇ℓ̄(m)‖ after 6 BLR steps (ρ = 1)", grad_norm, 1e-10, kind="limit"),
        Comparison(
            "BLR (ρ = 0.5) vs damped Newton with averaged Hessian, 25 steps",
            _dev(ours_damped, damped),
            1e-10,
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs engine, 6 steps", _dev(kernel[:4], engine), 1e-10
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs Newton, 6 steps", _dev(kernel, batched_newton), 1e-10
        ),
        Comparison(
            "max ‖∇ℓ̄(m)‖ over the 64 kernel copies after 6 steps", kernel_grad, 1e-10, kind="limit"
        ),
        Comparison(
            f"kernel ({device}, 8 copies, ρ = 0.5) vs damped Newton, 25 steps",
            _dev(kernel_damped, batched_damped),
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
        "engine: BLR step ρ × 1.01",
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
        "loss = loss_fn(x, y)",
        "loss = loss_fn(x, y, 0.0)",
        "kernel: prior ½δ‖θ‖² dropped from the loss it differentiates",
    ),
    Mutation(
        "blr",
        "term",
        "loss_fn",
        "data + 0.5 * delta * (theta * theta).sum(-1)",
        "data",
        "engine and kernel: prior ½δ‖θ‖² dropped from ℓ̄",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "theta - rho * torch.linalg.solve",
        "theta - 1.01 * rho * torch.linalg.solve",
        "damped Newton: step ρ × 1.01",
    ),
    Mutation(
        "classical",
        "constant",
        "grad_hess",
        "+ delta * eye",
        "+ 1.01 * delta * eye",
        "Newton: prior δ in the Hessian × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "grad_hess",
        "+ delta * eye",
        "",
        "Newton: prior δI dropped from the Hessian",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "prec = (1 - rho) * prec + rho * h",
        "prec = rho * h",
        "damped Newton: the (1 − ρ)S memory of the averaged Hessian dropped",
    ),
)
