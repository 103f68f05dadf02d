r"""Gradient descent is the BLR on a Gaussian with fixed covariance under the delta method.

**Family.** q = N(m, Σ₀) with Σ₀ fixed: T(θ) = θ, λ = Σ₀⁻¹m, μ = m, A(λ) = ½λᵀΣ₀λ. The entropy
does not depend on m, so ∇_μ(−H) = 0 (not λ: the base measure carries the θᵀΣ₀⁻¹θ term).

**Rule.** ∇_μE_q[ℓ̄] = ∇_m E_q[ℓ̄] = E_q[∇ℓ̄] (Bonnet). The delta method E_q[∇ℓ̄] ≈ ∇ℓ̄(m)
gives λ ← λ − ρ∇ℓ̄(m), i.e. m ← m − ρΣ₀∇ℓ̄(m): gradient descent, preconditioned by Σ₀.

**Equality conditions.** Σ₀ = I, ρ_t = α_t and m₀ = θ₀ ⇒ m_t = θ_t of θ ← θ − α∇ℓ̄(θ) for every
t. A gradient descent written for the mean loss with step α' is ρ = α'/N. Without the delta
method the rule is gradient descent on the Gaussian-smoothed loss E_{N(m, I)}[ℓ̄], identical for
a quadratic ℓ̄ (smoothing adds a constant).

**Test problem.** ℓ̄(θ) = ½θᵀAθ − bᵀθ with A = [[3, 1], [1, 2]], b = (1, −1),
θ₀ = 0, α = 0.1, 50 steps: the BLR iterates (delta method, and exact expectations) equal
hand-coded gradient descent; after 250 steps the BLR mean is the limit A⁻¹b = (0.6, −0.8) to
1e-12. The batched kernel (:func:`blr.kernels.diag_gaussian_step_` with the scale frozen at 1)
runs 64 copies from different starts in one call per step and equals the engine on each.

**References.** Khan & Rue (2023), Table 1 row 1 and §1.3.1.
"""

from __future__ import annotations

import sympy as sp
import torch

import blr
import expfam
from blr.kernels import diag_gaussian_step_
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="gradient_descent",
    number=1,
    algorithm="Gradient descent",
    posterior="Gaussian (fixed covariance)",
    approximation="delta method",
    symbolic="✓",
)

A = ((3.0, 1.0), (1.0, 2.0))
B = (1.0, -1.0)
ALPHA = 0.1
STEPS = 50


def derive() -> list[str]:
    """The 1-D and 2-D BLR step under the delta method simplifies to m − ρΣ₀∇ℓ̄(m)."""
    lam, rho, sigma0 = sp.symbols("lambda rho sigma_0", positive=True)
    ell = sp.Function("ell")
    theta = sp.Symbol("theta")
    # N(m, σ₀²) with σ₀ fixed: A(λ) = ½σ₀²λ², μ = A'(λ) = σ₀²λ = m
    log_partition = sigma0**2 * lam**2 / 2
    mu = sp.diff(log_partition, lam)
    m = sp.Symbol("m")
    assert sp.simplify(mu.subs(lam, m / sigma0**2) - m) == 0
    # entropy ½ log(2πe σ₀²) is free of μ ⇒ ∇_μ(−H) = 0
    neg_entropy = -sp.log(2 * sp.pi * sp.E * sigma0**2) / 2
    assert sp.diff(neg_entropy, m) == 0
    # delta method: ∇_μ E_q[ℓ] ≈ ℓ'(m); λ' = λ − ρ ℓ'(m) ⇒ m' = σ₀²λ'
    grad = sp.diff(ell(theta), theta).subs(theta, m)
    lam_new = m / sigma0**2 - rho * grad
    m_new = sp.simplify(sigma0**2 * lam_new)
    assert sp.simplify(m_new - (m - rho * sigma0**2 * grad)) == 0
    # 2-D with a symbolic quadratic loss: exact expectations equal the delta method (smoothing
    # only shifts E_q[ℓ̄] by ½tr(AΣ₀)), and the step is GD preconditioned by Σ₀
    a11, a12, a22, b1, b2, m1, m2, s1, s2 = sp.symbols("a11 a12 a22 b1 b2 m1 m2 s1 s2")
    amat = sp.Matrix([[a11, a12], [a12, a22]])
    bvec, mvec = sp.Matrix([b1, b2]), sp.Matrix([m1, m2])
    cov = sp.diag(s1, s2)
    expected = (mvec.T * amat * mvec / 2 - bvec.T * mvec)[0] + (amat * cov).trace() / 2
    exact_grad = sp.Matrix([sp.diff(expected, v) for v in (m1, m2)])
    assert sp.simplify(exact_grad - (amat * mvec - bvec)) == sp.zeros(2, 1)
    step = cov * (cov.inv() * mvec - rho * exact_grad)
    assert sp.simplify(step - (mvec - rho * cov * (amat * mvec - bvec))) == sp.zeros(2, 1)
    return [
        "N(m, σ₀²): μ = ∇A(λ) = σ₀²λ = m and ∇_μ(−H) = 0",
        "delta method: m' = σ₀²(λ − ρℓ'(m)) = m − ρσ₀²ℓ'(m)",
        "quadratic ℓ̄ in 2-D: ∇_m E_q[ℓ̄] = Am − b exactly, so m' = m − ρΣ₀(Am − b)",
    ]


def classical(theta0: torch.Tensor, alpha: float, steps: int) -> torch.Tensor:
    """Hand-coded gradient descent θ ← θ − α(Aθ − b) on the quadratic; returns all iterates."""
    a = torch.tensor(A, dtype=theta0.dtype)
    b = torch.tensor(B, dtype=theta0.dtype)
    out, theta = [theta0], theta0
    for _ in range(steps):
        theta = theta - alpha * (a @ theta - b)
        out.append(theta)
    return torch.stack(out)


def loss(theta: torch.Tensor) -> torch.Tensor:
    """ℓ̄(θ) = ½θᵀAθ − bᵀθ, vectorized over leading dimensions."""
    a = torch.tensor(A, dtype=theta.dtype, device=theta.device)
    b = torch.tensor(B, dtype=theta.dtype, device=theta.device)
    return 0.5 * ((theta @ a) * theta).sum(-1) - theta @ b


def expected_loss(mean: expfam.FixedCovMean) -> torch.Tensor:
    """E_{N(m, I)}[ℓ̄] = ℓ̄(m) + ½tr A, as a function of μ = m (for :class:`blr.Exact`)."""
    return loss(mean.mu1) + 0.5 * (A[0][0] + A[1][1])


def blr_instance(m0: torch.Tensor, rho: float, steps: int, exact: bool = False) -> torch.Tensor:
    """The BLR on N(m, I) with the delta method (or exact expectations); returns all means."""
    fam = expfam.FixedCovGaussian(cov=1.0)
    nat = expfam.FixedCovNat(m0)
    estimator, objective = (blr.Exact(), expected_loss) if exact else (blr.Delta(), loss)
    out = [fam.nat_to_mean(nat).mu1]
    for _ in range(steps):
        nat = blr.step(fam, nat, objective, rho, estimator=estimator)
        out.append(fam.nat_to_mean(nat).mu1)
    return torch.stack(out)


def kernel_instance(m0: torch.Tensor, rho: float, steps: int) -> torch.Tensor:
    """The batched kernel on B copies (``m0`` is (B, 2)): scale frozen at s = 1, ĝ = ∇ℓ̄(m) by
    autograd of :func:`loss` (not the classical side's hand-written Aθ − b)."""
    m, s = m0.clone(), torch.ones_like(m0)
    out = [m.clone()]
    for _ in range(steps):
        leaf = m.clone().requires_grad_()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss(leaf).sum(), leaf)
        diag_gaussian_step_(m, s, g, None, rho=0.0, lr=rho)
        out.append(m.clone())
    return torch.stack(out, 1)


def check(device: str = "cpu") -> list[Comparison]:
    """BLR vs GD (delta method and exact expectations), the limit, and the batched kernel."""
    theta0 = torch.zeros(2, dtype=torch.float64)
    gd = classical(theta0, ALPHA, STEPS)
    delta = blr_instance(theta0, ALPHA, STEPS)
    exact = blr_instance(theta0, ALPHA, STEPS, exact=True)
    long = blr_instance(theta0, ALPHA, 250)
    limit = torch.linalg.solve(torch.tensor(A, dtype=torch.float64), torch.tensor(B).double())
    starts = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    engine = torch.stack([blr_instance(s, ALPHA, STEPS) for s in starts[:4]])
    kernel = kernel_instance(starts.to(device), ALPHA, STEPS).cpu()
    batched_gd = torch.stack([classical(s, ALPHA, STEPS) for s in starts])
    return [
        Comparison("BLR (delta) vs GD, 50 steps", (delta - gd).abs().max().item(), 1e-12),
        Comparison("BLR (exact E_q) vs GD, 50 steps", (exact - gd).abs().max().item(), 1e-12),
        Comparison(
            "BLR after 250 steps vs A⁻¹b = (0.6, −0.8)",
            (long[-1] - limit).abs().max().item(),
            1e-12,
            kind="limit",
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs engine",
            (kernel[:4] - engine).abs().max().item(),
            1e-12,
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs GD", (kernel - batched_gd).abs().max().item(), 1e-12
        ),
    ]


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "objective, rho,",
        "objective, 1.01 * rho,",
        "BLR step ρ × 1.01",
    ),
    Mutation(
        "blr", "constant", "kernel_instance", "lr=rho", "lr=1.01 * rho", "kernel mean rate × 1.01"
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "theta - alpha *",
        "theta - 1.01 * alpha *",
        "GD step α × 1.01",
    ),
    Mutation(
        "classical", "term", "classical", "(a @ theta - b)", "(a @ theta)", "GD gradient without −b"
    ),
    Mutation("blr", "term", "loss", " - theta @ b", "", "ℓ̄ without −bᵀθ (engine and kernel)"),
)
