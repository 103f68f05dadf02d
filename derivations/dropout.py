r"""Dropout (DropConnect with weight decay) is the BLR on a spike-and-slab mixture of Gaussians
with the keep probability and the component variance fixed, a sampled mask for the
responsibility, and the delta method σ² → 0.

**Family.** Per weight j, q(θ_j) = p N(θ_j | m_j, σ²) + (1 − p) N(θ_j | 0, σ²) with p and σ² fixed
and m learnable. As a joint family of (θ_j, z_j) (BLR_SPEC §1.9) with p held fixed, the only
block that moves has T = 1[z_j = 1]θ_j (θ_j² in the base measure), natural parameter
λ_j = m_j/σ² and expectation parameter μ_j = p m_j, so ∇_μ = (1/p)∇_m. The objective keeps the
entropy of the marginal q(θ).

**Rule.** The BLR step on that block is m ← m − (ρσ²/p)∇_m(E_q[ℓ̄] − H(q)). Reparameterizing
θ = z⊙m + σε (z ~ Bernoulli(p)^D, ε ~ N(0, I)), ∂θ_j/∂m_j = z_j, so
∇_m E_q[ℓ̄_data] = E_{z,ε}[z⊙∇ℓ̄_data(z⊙m + σε)]; the prior R = (δ/2)‖θ‖² is kept in closed form,
∇_m E_q[R] = pδm. The approximations: one sampled mask z_t (stochastic approximation), the
responsibility q(z_j = 1 | θ_j) replaced by the sampled indicator z_j (unbiased: r(θ)q(θ) =
pN(θ | m, σ²), so E_q[rφ] = E_{z,ε}[zφ]), and the delta method σ² → 0 with α = ρσ²/p held
fixed. In that limit the components separate, the entropy tends to an m-independent constant
(Bernoulli(p) entropy + ½log 2πeσ² per weight) and ∇_m H → 0, which leaves

    m_{t+1} = m_t − α[z_t⊙∇ℓ̄_data(z_t⊙m_t) + pδm_t]:

SGD on the dropped-out loss with weight decay pδ (non-inverted DropConnect).

What is engine and what is row code: the natural parameter λ = m/σ² and its step
λ ← λ − ρ·d with ∇_μ(−H) = 0 are :class:`expfam.FixedCovGaussian` ``(cov=σ²)`` and
:func:`blr.step`; the direction d = (1/p)[z⊙∇ℓ̄_data(z⊙m) + pδm] (mask sample, responsibility ≈ z,
σ² → 0, the 1/p of μ = pm, the closed-form prior) is the row's estimator :class:`MaskedDelta`.
The fixed-covariance family supplies the λ ↔ m map of the slab block and the zero entropy
gradient of the σ² → 0 limit, not the mixture's μ = pm (which the estimator accounts for).

**Why not fully symbolic.** ∇_m H(q) → 0 as σ² → 0 involves the entropy of a mixture, which has
no closed form; it is checked numerically (Gauss–Hermite quadrature of
∂H/∂m = −p E_{N(m,σ²)}[(θ − m)/σ² · log q(θ)] at m = 1, p = 0.8: 0.33 at σ² = 0.25, 1.8e-5 at
σ² = 0.01, 1e-10 at σ² = 0.005, below 1e-15 at σ² = 0.002, i.e. of order e^{−m²/8σ²}). The
limit is pointwise, not uniform: for |m_j| of order σ the two components overlap and ∂H/∂m_j is
of order 1/σ (1.35 at m = 0.1, σ² = 0.01), so the reduction assumes σ ≪ |m_j| for the weights
that are kept away from 0 (∂H/∂m_j = 0 exactly at m_j = 0, by symmetry). Everything else is
proved in :func:`derive`: the 1/p chain rule, the step, and for a 2-D quadratic loss with
symbolic σ² the exact equality of ∇_m E_q[ℓ] with the mask-averaged direction E_z[z⊙∇ℓ(z⊙m)]
(σ² enters E_q[ℓ] only as a constant), and ∇_m E_q[(δ/2)‖θ‖²] = pδm.

**Equality conditions.** Same masks z_t, m₀ = θ₀, α = ρσ²/p held fixed while σ² → 0 (the σ² = 0
limit implemented directly: θ̂ = z⊙m), non-inverted dropout (no 1/p rescaling of the kept
weights), prior gradient in closed form (pδm; evaluating R at the dropped sample instead gives
z⊙δm, with the same expectation). Inverted dropout is the same algorithm in w = pm with step
α/p² (not tested). Unit dropout shares z across a unit's weights (not tested).

**Test problem** (BLR_SPEC Row 6 (f)). Linear regression ℓ̄_data = ½‖Xθ − y‖², X 10×3 and y from
seed 0, p = 0.8, δ = 0.1, α = 0.02, σ² = 0.01 (so ρ = αp/σ² = 1.6), 20 steps along a stored mask
sequence: the BLR equals hand-coded DropConnect-SGD with decay pδ. All 2³ masks enumerated:
Σ_z P(z) (the BLR's direction)·p = ∇_m E_z[ℓ̄_data(z⊙m)] + pδm, and, for the mixture with
σ² = 0.5 (expectation over ε exact by sigma points), ∇_m E_q[ℓ̄_data] = Σ_z P(z) z⊙∇ℓ̄_data(z⊙m)
and ∇_m E_q[(δ/2)‖θ‖²] = pδm. The batched kernel (:func:`blr.kernels.diag_gaussian_step_`,
ρ = 0, s = 1) runs 64 copies with their own starts and mask sequences.

**References.** Khan & Rue (2023), Table 1 row 6; Srivastava et al. (2014); Wan et al.,
"DropConnect" (2013); Gal & Ghahramani (2016) for the weight-decay correspondence; Lin, Khan &
Schmidt (ICML 2019) for mixtures as joint exponential families.
"""

from __future__ import annotations

import itertools

import sympy as sp
import torch

import blr
import expfam
from blr.kernels import diag_gaussian_step_
from blr.quadrature import normal_quadrature, sigma_points
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="dropout",
    number=6,
    algorithm="Dropout",
    posterior="Mixture of Gaussians (spike and slab)",
    approximation="delta, stochastic approx., responsibility ≈ mask",
    symbolic="~",
    assumptions=(
        "∇_m H(q) → 0 as σ² → 0 for the kept weights (a mixture entropy; checked numerically)",
    ),
)

N_DATA = 10
DIM = 3
KEEP = 0.8
DELTA = 0.1
ALPHA = 0.02
SIGMA2 = 0.01
STEPS = 20
COPIES = 64


def derive() -> list[str]:
    """The 1/p chain rule of the joint family, the BLR step → DropConnect-SGD, and (2-D quadratic
    loss, symbolic σ²) ∇_m E_q[ℓ] = E_z[z⊙∇ℓ(z⊙m)], ∇_m E_q[δ/2‖θ‖²] = pδm."""
    p, sigma2, rho, delta = sp.symbols("p sigma^2 rho delta", positive=True)
    mu, m = sp.symbols("mu m")
    f = sp.Function("f")
    # μ = p m with p fixed: ∇_μ f(m(μ)) = f'(m)/p
    d_mu = sp.diff(f(mu / p), mu).subs(mu, p * m).doit()
    assert sp.simplify(d_mu - sp.diff(f(m), m) / p) == 0
    # the step on λ = m/σ²: m' = σ²(λ − ρ(1/p)d) = m − (ρσ²/p)d
    d = sp.Symbol("d")
    m_new = sigma2 * (m / sigma2 - rho * d / p)
    assert sp.expand(m_new - (m - (rho * sigma2 / p) * d)) == 0
    # responsibility: Σ_z P(z)·z·φ(zm + σε) = pφ(m + σε) = E_q[r(θ)φ(θ)] after the change of
    # variables (r·q = pN(θ | m, σ²))
    eps, sig = sp.symbols("epsilon sigma", positive=True)
    phi = sp.Function("phi")
    mask_avg = sum(pz * z * phi(z * m + sig * eps) for z, pz in ((0, 1 - p), (1, p)))
    assert sp.simplify(mask_avg - p * phi(m + sig * eps)) == 0
    # 2-D quadratic ℓ = ½θᵀAθ − bᵀθ, θ_j = z_j m_j + σε_j, z_j ~ Bern(p) independent
    a11, a12, a22, b1, b2, m1, m2 = sp.symbols("a11 a12 a22 b1 b2 m1 m2")
    amat, bvec, mvec = sp.Matrix([[a11, a12], [a12, a22]]), sp.Matrix([b1, b2]), sp.Matrix([m1, m2])
    # exact mixture moments: E θ_j = p m_j, E θ_j² = p m_j² + σ², E θ₁θ₂ = p² m₁m₂
    second = sp.Matrix([[p * m1**2 + sigma2, p**2 * m1 * m2], [p**2 * m1 * m2, p * m2**2 + sigma2]])
    expected = sum(amat.multiply_elementwise(second)) / 2 - (bvec.T * p * mvec)[0]
    grad_exact = sp.Matrix([sp.diff(expected, v) for v in (m1, m2)])
    masked = sp.zeros(2, 1)
    for z1, z2 in itertools.product((0, 1), repeat=2):
        prob = (p if z1 else 1 - p) * (p if z2 else 1 - p)
        zvec = sp.Matrix([z1, z2])
        masked += prob * zvec.multiply_elementwise(amat * zvec.multiply_elementwise(mvec) - bvec)
    assert sp.expand(grad_exact - masked) == sp.zeros(2, 1)
    assert all(sp.diff(g, sigma2) == 0 for g in grad_exact)
    # the prior in closed form: E_q[δ/2‖θ‖²] = δ/2 Σ_j (p m_j² + σ²) ⇒ ∇_m = pδm
    prior = delta / 2 * (second[0, 0] + second[1, 1])
    assert sp.expand(sp.Matrix([sp.diff(prior, v) for v in (m1, m2)]) - p * delta * mvec) == (
        sp.zeros(2, 1)
    )
    return [
        "joint (θ, z) family with p fixed: λ = m/σ², μ = pm ⇒ ∇_μ = (1/p)∇_m",
        "BLR step m' = σ²(λ − ρ(1/p)d) = m − αd with α = ρσ²/p",
        "responsibility ≈ mask is unbiased: Σ_z P(z)·z·φ(zm + σε) = pφ(m + σε) = E_q[r·φ]",
        "2-D quadratic ℓ, symbolic σ²: ∇_m E_q[ℓ] = Σ_z P(z) z⊙∇ℓ(z⊙m) exactly, free of σ²",
        "∇_m E_q[(δ/2)‖θ‖²] = pδm",
    ]


def data(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """X ``(10, 3)`` and y = Xw + noise, seed 0."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_DATA, DIM, dtype=dtype, generator=gen)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
    y = x @ w + 0.1 * torch.randn(N_DATA, dtype=dtype, generator=gen)
    return x, y


def masks(copies: int, steps: int, seed: int) -> torch.Tensor:
    """Stored masks z ~ Bernoulli(p)^D, ``(copies, steps, D)``."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(copies, steps, DIM, dtype=torch.float64, generator=gen)
    return (u < KEEP).to(torch.float64)


def classical(
    theta0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Hand-coded DropConnect-SGD with weight decay pδ:
    θ ← θ − α[z⊙Xᵀ(X(z⊙θ) − y) + pδθ]; ``theta0`` ``(..., D)``, ``z`` ``(..., steps, D)``."""
    theta, out = theta0, [theta0]
    for t in range(z.shape[-2]):
        zt = z[..., t, :]
        resid = (zt * theta) @ x.T - y
        theta = theta - alpha * (zt * (resid @ x) + KEEP * DELTA * theta)
        out.append(theta)
    return torch.stack(out, -2)


def data_loss(x: torch.Tensor, y: torch.Tensor):
    """θ ↦ ½‖Xθ − y‖², vectorized over leading dimensions."""
    return lambda theta: 0.5 * (theta @ x.T - y).square().sum(-1)


class MaskedDelta(blr.Estimator):
    r"""The row's estimator of ∇_μE_q[ℓ̄] for the slab block of the spike-and-slab joint family
    (σ² → 0, responsibility ≈ mask):

    .. math:: \frac1p\big[\nabla_m \ell(z\odot m) + p\,\delta\,m\big]
              = \frac1p\big[z\odot\nabla\ell(z\odot m) + p\,\delta\,m\big].

    Args:
        mask: z, shaped like m (0/1 entries).
        keep: p.
        prior_prec: δ (the prior term is exact: ∇_m E_q[δ/2‖θ‖²] = pδm).
    """

    def __init__(self, mask: torch.Tensor, keep: float, prior_prec: float) -> None:
        self.mask, self.keep, self.prior_prec = mask, float(keep), float(prior_prec)

    def __call__(self, family, nat, loss, *, generator=None) -> blr.Estimate:
        m = family.location(nat).detach().requires_grad_()
        with torch.enable_grad():
            value = loss((self.mask * m).unsqueeze(0))[0]
            (grad_m,) = torch.autograd.grad(value.sum(), m)  # z⊙∇ℓ(z⊙m) by the chain rule
        direction = (grad_m + self.keep * self.prior_prec * m.detach()) / self.keep
        prior_value = 0.5 * self.keep * self.prior_prec * m.detach().square().sum(-1)
        return blr.Estimate(family.nat_type(direction), value.detach() + prior_value)


def blr_instance(
    m0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, alpha: float
) -> torch.Tensor:
    """:func:`blr.step` on λ = m/σ² (:class:`expfam.FixedCovGaussian` ``(cov=σ²)``) with
    ρ = αp/σ² and :class:`MaskedDelta` for mask z_t; returns all means."""
    fam = expfam.FixedCovGaussian(cov=SIGMA2)
    nat = expfam.FixedCovNat(m0 / SIGMA2)
    rho = alpha * KEEP / SIGMA2
    loss = data_loss(x, y)
    out = [fam.location(nat)]
    for t in range(z.shape[0]):
        nat = blr.step(fam, nat, loss, rho, estimator=MaskedDelta(z[t], KEEP, DELTA))
        out.append(fam.location(nat))
    return torch.stack(out)


def kernel_instance(
    m0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, alpha: float
) -> torch.Tensor:
    """The batched kernel on B copies (``m0`` ``(B, D)``, ``z`` ``(B, steps, D)``): s = 1 fixed,
    ĝ = z⊙∇ℓ(z⊙m) (autograd through the mask) + pδm, mean rate α."""
    x, y, z = x.to(m0.device), y.to(m0.device), z.to(m0.device)
    m, s = m0.clone(), torch.ones_like(m0)
    loss = data_loss(x, y)
    out = [m.clone()]
    for t in range(z.shape[1]):
        theta = m.clone().requires_grad_()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss(z[:, t] * theta).sum(), theta)
        diag_gaussian_step_(m, s, g + KEEP * DELTA * m, None, rho=0.0, lr=alpha)
        out.append(m.clone())
    return torch.stack(out, 1)


def _all_masks(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2^D masks and their probabilities Π_j p^{z_j}(1 − p)^{1−z_j}."""
    z = torch.tensor(list(itertools.product((0.0, 1.0), repeat=DIM)), dtype=dtype)
    keep = torch.tensor(KEEP, dtype=dtype)
    prob = torch.where(z > 0, keep, 1 - keep).prod(-1)
    return z, prob


def _mixture_expectation(fn, m: torch.Tensor, sigma2: float) -> torch.Tensor:
    """E_q[fn(θ)] for θ = z⊙m + σε, by enumerating the masks and sigma points in ε (exact for
    polynomials of degree ≤ 3 in ε)."""
    z, prob = _all_masks(m.dtype)
    eps, w = sigma_points(DIM, dtype=m.dtype)
    theta = (z * m).unsqueeze(1) + sigma2**0.5 * eps.unsqueeze(0)  # (2^D, 2D, D)
    return (prob.unsqueeze(1) * w * fn(theta)).sum()


def _entropy_grad(m: float, sigma2: float) -> float:
    """∂H/∂m of the 1-D p N(m, σ²) + (1 − p) N(0, σ²) by 200-point Gauss–Hermite:
    −p E_{N(m,σ²)}[(θ − m)/σ² · log q(θ)]."""
    z, w = normal_quadrature(200)
    sigma = sigma2**0.5
    theta = m + sigma * z
    logn = -0.5 * torch.log(torch.tensor(2 * torch.pi * sigma2, dtype=torch.float64))
    log_q = torch.logaddexp(
        torch.log(torch.tensor(KEEP, dtype=torch.float64)) + logn - 0.5 * z.square(),
        torch.log(torch.tensor(1 - KEEP, dtype=torch.float64))
        + logn
        - 0.5 * theta.square() / sigma2,
    )
    return float(-KEEP * (w * z / sigma * log_q).sum())


def _enumeration(x: torch.Tensor, y: torch.Tensor) -> list[Comparison]:
    m = torch.tensor([0.7, -1.2, 0.4], dtype=torch.float64)
    loss = data_loss(x, y)
    fam = expfam.FixedCovGaussian(cov=SIGMA2)
    nat = expfam.FixedCovNat(m / SIGMA2)
    z, prob = _all_masks(m.dtype)
    directions = torch.stack([MaskedDelta(zk, KEEP, DELTA)(fam, nat, loss).grad.lam1 for zk in z])
    blr_mean = KEEP * (prob.unsqueeze(-1) * directions).sum(0)
    masked = torch.stack([zk * (x.T @ (x @ (zk * m) - y)) for zk in z])
    masked_mean = (prob.unsqueeze(-1) * masked).sum(0)
    leaf = m.clone().requires_grad_()
    (grad_dropped,) = torch.autograd.grad((prob * loss(z * leaf)).sum(), leaf)
    (grad_mixture,) = torch.autograd.grad(_mixture_expectation(loss, leaf, 0.5), leaf)

    def prior(theta: torch.Tensor) -> torch.Tensor:
        return 0.5 * DELTA * theta.square().sum(-1)

    (grad_prior,) = torch.autograd.grad(_mixture_expectation(prior, leaf, 0.5), leaf)
    return [
        Comparison(
            "all 2³ masks: Σ_z P(z)·p·(BLR direction) vs ∇_m E_z[ℓ(z⊙m)] + pδm",
            (blr_mean - grad_dropped - KEEP * DELTA * m).abs().max().item(),
            1e-12,
        ),
        Comparison(
            "all 2³ masks: Σ_z P(z) z⊙∇ℓ(z⊙m) vs ∇_m E_z[ℓ(z⊙m)]",
            (masked_mean - grad_dropped).abs().max().item(),
            1e-12,
        ),
        Comparison(
            "mixture σ² = 0.5: ∇_m E_q[ℓ] vs Σ_z P(z) z⊙∇ℓ(z⊙m)",
            (grad_mixture - masked_mean).abs().max().item(),
            1e-12,
        ),
        Comparison(
            "mixture σ² = 0.5: ∇_m E_q[(δ/2)‖θ‖²] vs pδm",
            (grad_prior - KEEP * DELTA * m).abs().max().item(),
            1e-12,
        ),
    ]


def check(device: str = "cpu") -> list[Comparison]:
    """BLR-dropout vs hand-coded DropConnect-SGD, the mask enumeration, the entropy limit, and the
    batched kernel."""
    x, y = data()
    z_all = masks(COPIES, STEPS, seed=1)
    starts = torch.randn(
        COPIES, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    starts[0] = 0.0
    sgd = classical(starts, x, y, z_all, ALPHA)
    engine = torch.stack([blr_instance(starts[c], x, y, z_all[c], ALPHA) for c in range(3)])
    kernel = kernel_instance(starts.to(device), x, y, z_all, ALPHA).cpu()
    out = [
        Comparison(
            "BLR-dropout vs DropConnect-SGD + decay pδ, 20 steps",
            (engine[0] - sgd[0]).abs().max().item(),
            1e-12,
        ),
        *_enumeration(x, y),
        Comparison(
            "entropy, σ² → 0: |∂H(q)/∂m| at m = 1, σ² = 0.002",
            abs(_entropy_grad(1.0, 0.002)),
            1e-12,
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs engine",
            (kernel[:3] - engine).abs().max().item(),
            1e-12,
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs DropConnect-SGD",
            (kernel - sgd).abs().max().item(),
            1e-12,
        ),
    ]
    return out
