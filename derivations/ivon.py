r"""IVON is the diagonal-Gaussian BLR with a Price/Stein Hessian estimate at one posterior draw,
made into IVON by three pieces typed in, not derived: the improved-BLR correction that keeps the
precision positive, a mean rate α of its own, and a bias-corrected gradient average as momentum.

**Family.** q = N(m, diag(1/S)), T(θ) = (θ, θ⊙θ), λ = (S⊙m, −½S), μ = (m, m² + 1/S),
A(λ) = Σ_j −λ₁ⱼ²/(4λ₂ⱼ) − ½log(−2λ₂ⱼ), h constant, so ∇_μ(−H) = λ. IVON's units
(Shen et al. 2024): S = N(h + δ), with h the precision of the per-example *average* loss, δ the
prior precision per example (``weight_decay``) and N the effective sample size (``ess``). The
total loss is ℓ̄(θ) = N·ℓ_B(θ) + ½Nδ‖θ‖², ℓ_B the minibatch average, and the prior
N(0, (Nδ)⁻¹I) is conjugate: λ₀ = (0, −½Nδ), handled exactly (the BLR with a conjugate prior,
λ ← (1 − ρ)λ + ρ(λ₀ − ∇_μE_q[Nℓ_B]); Khan & Rue 2023, Table 1 row 11).

**Rule.** Bonnet and Price with the chain rule to μ give ∇_μE_q[ℓ̄] = (ĝ − Ĥ⊙m, ½Ĥ) with
ĝ ≈ E_q[∇ℓ̄], Ĥ ≈ E_q[diag ∇²ℓ̄]. The approximations of the natural gradient (the row's column):

- *MC sample*: one draw θ = m + σ⊙z, σ = (N(h + δ))^{-1/2}, and ĝ = N(∇ℓ_B(θ) + δm) (the prior
  term in closed form);
- *Price/Stein Hessian*: E_q[∇²ℓ] = E_q[∇ℓ(θ)⊙(θ − m)]/σ² (Stein's identity, proved below for a
  polynomial ℓ), estimated at the same draw: ĥ = ∇ℓ_B(θ)⊙(θ − m)/σ², Ĥ = N(ĥ + δ). Unbiased,
  one gradient, but it can be negative.

The pieces typed in (``INFO.assumptions``; derive() proves their algebra, not that they follow
from the BLR):

- *improved BLR* (Lin, Schmidt & Khan 2020): with G = Ĥ − S the precision step
  S' = S + ρG + ½ρ²G S⁻¹G = ½S + ½(S + ρG)S⁻¹(S + ρG) ≻ 0 for every G (the identity is proved);
  the mean uses the new precision, m' = m − α S'⁻¹ĝ;
- *two rates*: α for the mean and ρ = 1 − β₂ for the precision (the (m, S)-form; a λ-space BLR
  step only for α = ρ and without the correction);
- *gradient EMA*: the data part of ĝ is replaced by its exponential average
  ḡ_t = β₁ḡ_{t−1} + (1 − β₁)ĝ_t divided by 1 − β₁^t (the mechanism of Adam's momentum, Khan &
  Rue 2023, Table 1 row 5); derive() proves that this is the BLR-style average with rate
  γ_t = (1 − β₁)/(1 − β₁^t) (:func:`blr.schedules.bias_corrected`).

In IVON's units, with ρ = 1 − β₂, the improved (m, S)-step is exactly Shen et al.'s Algorithm 1:

    h ← β₂h + (1 − β₂)ĥ + ½(1 − β₂)²(h − ĥ)²/(h + δ),    m ← m − α(ḡ_t/(1 − β₁^t) + δm)/(h + δ).

**Equality conditions.** Same draws z_t and minibatches, m₀ and h₀ with S₀ = N(h₀ + δ),
ρ = 1 − β₂ for the precision and α for the mean, the prior λ₀ = (0, −½Nδ) and ĝ replaced by
the bias-corrected average ⇒ the iterates (m_t, h_t) of IVON equal those of the improved BLR
(:func:`blr.gaussian_step` with ``GaussianOptions(improved=True, lr=α)`` and the Stein estimate
of :class:`blr.BonnetPrice`) for every t, up to rounding. IVON's public code (ivon-opt) by
default also rescales α by h₀ + δ and can clip the step; both are off here
(``rescale_lr=False``, clip radius ∞). With β₁ = 0 and α = ρ and without the correction term
it is the plain BLR (row ``von``).

**Test problem.** 64 independent Bayesian logistic regressions (one per copy): N = 64 inputs
x_i = (u_i, 1), u_i ~ N(0, I₂), labels y_i ~ Bernoulli(σ(x_iᵀw)), w ~ N(0, I₃) per copy
(seed 0), minibatches of M = 8 from a random permutation per epoch, 40 steps, m₀ = 0, h₀ = 1,
α = 0.1, β₁ = 0.9, β₂ = 0.8, δ = 0.1, N = 64; one draw per step and copy from a seeded
generator. Three computations of the same iterates (kind "equality", tolerance 1e-10 in (m, h)
over the 40 steps): the hand-coded IVON (its gradient written out by hand); the engine (all 64
copies as one batched DiagGaussian, ĝ and the Stein ĥ from :class:`blr.BonnetPrice` by
autograd, its draws from the same generator); and the flat-buffer kernel
(:func:`blr.kernels.ivon_step_` with :func:`blr.kernels.ivon_hess_estimate`, the 64 copies
concatenated, on ``device``, ĝ by autograd of the loss). Two one-sided claims (kind "bound"):
the Stein ĥ is negative in about 40% of the coordinate updates, yet h + δ stays positive
throughout (violation max(0, −min(h + δ)) = 0); and the same run without the correction term
leaves the family (some h + δ ≤ 0) on most copies (violation max(0, min(h + δ)) = 0), so the
correction is what keeps the iterates valid.

Beyond ``check()`` (a torch optimizer imports torch._dynamo, ~1.5 s, too slow for it; ivon-opt
is GPL-3 and a test-only dependency that the package never imports):
``tests/derivations/test_row_ivon_reference.py`` runs ivon-opt 0.1.3 (``ivon.IVON``, the
authors' public code) on the same 64 problems with the same draws (its noise comes from torch's
global generator, seeded alike) and finds its (m, h) equal to the hand-coded IVON's and the
BLR engine's within 1e-10 over the 40 steps, while a 1% change of a rate on either side moves
them ≥ 100× that; ``tests/derivations/test_row_ivon_optim.py`` checks :class:`blr.optim.IVON`
on an ``nn.Linear(2, 1)`` (copy 0, its own seeded draws) against the hand-coded IVON within 1e-10.

**References.** Shen et al., "Variational Learning is Effective for Large Deep Networks",
ICML 2024 (Algorithm 1), and its public code (ivon-opt 0.1.3); Lin, Schmidt & Khan, "Handling
the Positive-Definite Constraint in the Bayesian Learning Rule", ICML 2020; Khan & Rue (2023),
Table 1 rows 5 and 11.
"""

from __future__ import annotations

import dataclasses
import math

import sympy as sp
import torch
from torch import Tensor

import blr
import expfam
from blr.kernels.diag_gaussian import ivon_hess_estimate, ivon_step_
from blr.optim import IVON
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="ivon",
    number=None,
    algorithm="IVON",
    posterior="Gaussian (diagonal)",
    approximation="MC sample, Price/Stein Hessian, improved BLR, gradient EMA",
    symbolic="~",
    assumptions=(
        "the improved-BLR correction (Lin, Schmidt & Khan 2020) is typed in "
        "(GaussianOptions(improved=True)): S' = S + ρG + ½ρ²GS⁻¹G with G = Ĥ − S, and the mean "
        "step with the new precision S'; derive() proves S' = ½S + ½(S + ρG)S⁻¹(S + ρG) ≻ 0, "
        "not that the BLR step has this second-order term",
        "two rates: the mean moves with its own α (m' = m − αS'⁻¹ĝ, GaussianOptions(lr=α)) and "
        "the precision with ρ = 1 − β₂: the (m, S)-form, a λ-space BLR step only for α = ρ; "
        "ivon-opt's default rescaling of α by h₀ + δ and its clipping are off here",
        "momentum: the data part of ĝ is replaced by its exponential average divided by "
        "1 − β₁ᵗ (the prior term Nδm is not averaged); derive() proves this is an average with "
        "rates γ_t = (1 − β₁)/(1 − β₁ᵗ), not that it is the BLR's natural momentum",
    ),
)

COPIES, N, M, D, STEPS = 64, 64, 8, 3, 40
DATA_SEED, NOISE_SEED = 0, 1000
LR, BETA1, BETA2, DELTA, H0 = 0.1, 0.9, 0.8, 0.1, 1.0
F64 = torch.float64


# ---------------------------------------------------------------------------- the test problem
@dataclasses.dataclass(frozen=True)
class Problem:
    """Minibatches of the copies' logistic regressions and the standard-normal draws.

    Attributes:
        xb: inputs per step and copy, ``(T, B, M, D)`` (last input column 1: the intercept).
        yb: labels in {0, 1}, ``(T, B, M)``.
        z: the draws, ``(T, B, D)``: z[t] is ``torch.randn((1, B, D))`` from a generator seeded
            with ``noise_seed``, one call per step (what a BLR estimator on a batch of B
            diagonal Gaussians draws from that generator).
        noise_seed: the seed of z.
    """

    xb: Tensor
    yb: Tensor
    z: Tensor
    noise_seed: int

    def to(self, device: str) -> Problem:
        """The same problem with its tensors on ``device``."""
        return Problem(self.xb.to(device), self.yb.to(device), self.z.to(device), self.noise_seed)


def draws(steps: int, shape: tuple[int, ...], seed: int) -> Tensor:
    """``steps`` calls of ``torch.randn((1, *shape))`` (float64) from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn((1, *shape), dtype=F64, generator=gen) for _ in range(steps)])


def problem(
    copies: int = COPIES, steps: int = STEPS, seed: int = DATA_SEED, noise_seed: int = NOISE_SEED
) -> Problem:
    """The shared test problem of the IVON, VON and bSAM rows (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(copies, N, D - 1, dtype=F64, generator=gen)
    x = torch.cat([u, torch.ones(copies, N, 1, dtype=F64)], -1)
    w = torch.randn(copies, D, dtype=F64, generator=gen)
    p = torch.sigmoid((x @ w.unsqueeze(-1)).squeeze(-1))
    y = (torch.rand(copies, N, dtype=F64, generator=gen) < p).to(F64)
    epochs = math.ceil(steps * M / N)
    order = torch.stack(
        [torch.cat([torch.randperm(N, generator=gen) for _ in range(epochs)]) for _ in x]
    )[:, : steps * M].reshape(copies, steps, M)
    xb = torch.stack([x[b, order[b]] for b in range(copies)], 1)  # (T, B, M, D)
    yb = torch.stack([y[b, order[b]] for b in range(copies)], 1)
    return Problem(xb, yb, draws(steps, (copies, D), noise_seed), noise_seed)


def minibatch_grad(xb: Tensor, yb: Tensor, theta: Tensor) -> Tensor:
    """∇ℓ_B(θ) = (1/M)Σ_{i∈B} x_i(σ(x_iᵀθ) − y_i) per copy, written out by hand (the classical
    IVON's only): ``xb`` ``(B, M, D)``, ``yb`` ``(B, M)``, θ ``(B, D)``."""
    r = torch.sigmoid(torch.einsum("bmd,bd->bm", xb, theta)) - yb
    return torch.einsum("bmd,bm->bd", xb, r) / xb.shape[-2]


def likelihood(xb: Tensor, yb: Tensor):
    """θ ``(K, B, D)`` ↦ N·ℓ_B(θ) ``(K, B)``, ℓ_B = (1/M)Σ softplus(x_iᵀθ) − y_i x_iᵀθ: the data
    part of ℓ̄ for :mod:`blr` estimators."""

    def loss(theta: Tensor) -> Tensor:
        f = torch.einsum("bmd,kbd->kbm", xb, theta)
        return N * (torch.nn.functional.softplus(f) - yb * f).mean(-1)

    return loss


def loss_grad(xb: Tensor, yb: Tensor, theta: Tensor) -> Tensor:
    """∇ℓ_B(θ) per copy by autograd of :func:`likelihood` (divided by N), for the kernel paths:
    θ ``(B, D)`` ↦ ``(B, D)``. No hand-written derivative."""
    leaf = theta.detach().unsqueeze(0).requires_grad_()
    with torch.enable_grad():
        (g,) = torch.autograd.grad(likelihood(xb, yb)(leaf).sum(), leaf)
    return g[0] / N


def prior_nat(fam: expfam.DiagGaussian, shape: tuple[int, ...], delta: float) -> expfam.DiagNat:
    """λ₀ of the prior N(0, (Nδ)⁻¹I): (0, −½Nδ)."""
    return fam.from_moments(torch.zeros(shape, dtype=F64), torch.full(shape, N * delta, dtype=F64))


# ---------------------------------------------------------------------------- symbolic helpers
def gaussian_expectation(expr: sp.Expr, theta: sp.Symbol, m: sp.Expr, v: sp.Expr) -> sp.Expr:
    """E[expr(θ)] for θ ~ N(m, v) and a polynomial expr: with w = θ − m, E[w^k] = v^{k/2}(k − 1)!!
    for even k, 0 for odd k."""
    w = sp.Symbol("w")  # θ − m = √v z
    poly = sp.Poly(sp.expand(expr.subs(theta, m + w)), w)
    return sp.expand(
        sum(c * v ** (k // 2) * sp.factorial2(k - 1) for (k,), c in poly.terms() if k % 2 == 0)
    )


def stein_and_bonnet_price() -> list[str]:
    """Stein's identity E[ℓ'(θ)(θ − m)]/v = E[ℓ''] and Bonnet/Price in μ for a symbolic quartic
    ℓ (1-D; the diagonal family is a product of these)."""
    theta, m = sp.symbols("theta m", real=True)
    v = sp.Symbol("v", positive=True)
    a = sp.symbols("a0:5", real=True)
    ell = sum(ak * theta**k for k, ak in enumerate(a))
    d1, d2 = sp.diff(ell, theta), sp.diff(ell, theta, 2)
    e1 = gaussian_expectation(d1, theta, m, v)
    e2 = gaussian_expectation(d2, theta, m, v)
    stein = gaussian_expectation(d1 * (theta - m), theta, m, v) / v
    assert sp.expand(stein - e2) == 0
    u1, u2 = sp.symbols("mu1 mu2", real=True)
    expected = gaussian_expectation(ell, theta, m, v).subs({m: u1, v: u2 - u1**2})
    back = {u1: m, u2: v + m**2}
    assert sp.expand(sp.diff(expected, u1).subs(back) - (e1 - e2 * m)) == 0
    assert sp.expand(sp.diff(expected, u2).subs(back) - e2 / 2) == 0
    return [
        "Stein/Price, quartic ℓ under N(m, v): E[ℓ'(θ)(θ − m)]/v = E[ℓ''(θ)]",
        "Bonnet/Price in μ = (m, v + m²): ∇_μ₁E[ℓ] = E[ℓ'] − E[ℓ'']m, ∇_μ₂E[ℓ] = ½E[ℓ'']",
    ]


def diag_family() -> list[str]:
    """μ = ∇A = (m, m² + 1/S) and ∇_μ(−H) = λ for one coordinate of the diagonal Gaussian."""
    lam1, lam2, m = sp.symbols("lambda1 lambda2 m", real=True)
    s = sp.Symbol("S", positive=True)
    log_partition = -(lam1**2) / (4 * lam2) - sp.log(-2 * lam2) / 2
    at = {lam1: s * m, lam2: -s / 2}
    assert sp.cancel(sp.diff(log_partition, lam1).subs(at) - m) == 0
    assert sp.cancel(sp.diff(log_partition, lam2).subs(at) - (m**2 + 1 / s)) == 0
    u1, u2 = sp.symbols("mu1 mu2", real=True)
    neg_entropy = -sp.log(2 * sp.pi * sp.E * (u2 - u1**2)) / 2
    at_mu = {u1: m, u2: 1 / s + m**2}
    assert sp.cancel(sp.diff(neg_entropy, u1).subs(at_mu) - s * m) == 0
    assert sp.cancel(sp.diff(neg_entropy, u2).subs(at_mu) + s / 2) == 0
    return ["diagonal N(m, 1/S), per coordinate: μ = ∇A(λ) = (m, m² + 1/S), ∇_μ(−H) = λ"]


def derive() -> list[str]:
    """The family, Stein/Price, the iBLR identity (scalar and 2×2), the bias-corrected average as
    a rate schedule, and IVON's (m, h)-update = the improved (m, S)-BLR step in IVON's units."""
    out = diag_family() + stein_and_bonnet_price()
    rho = sp.Symbol("rho", positive=True)
    # iBLR, scalar: S + ρG + ρ²G²/(2S) = ½S + ½(S + ρG)²/S (> 0 for S > 0)
    s, g = sp.Symbol("S", positive=True), sp.Symbol("G", real=True)
    assert sp.cancel(s + rho * g + rho**2 * g**2 / (2 * s) - (s + (s + rho * g) ** 2 / s) / 2) == 0
    # iBLR, 2×2 symmetric S and G
    s11, s12, s22, g11, g12, g22 = sp.symbols("s11 s12 s22 g11 g12 g22", real=True)
    smat = sp.Matrix([[s11, s12], [s12, s22]])
    gmat = sp.Matrix([[g11, g12], [g12, g22]])
    adj, det = smat.adjugate(), smat.det()  # S⁻¹ = adj(S)/det(S); both sides times det(S)
    lhs = (smat + rho * gmat) * det + rho**2 / 2 * gmat * adj * gmat
    rhs = smat * det / 2 + (smat + rho * gmat) * adj * (smat + rho * gmat) / 2
    assert (lhs - rhs).applyfunc(sp.expand) == sp.zeros(2, 2)
    out.append("iBLR (scalar and symbolic 2×2 S, G): S + ρG + ½ρ²GS⁻¹G = ½S + ½(S + ρG)S⁻¹(S + ρG)")
    # bias correction = rate schedule: g_t/b_t = (1 − γ_t)g_{t−1}/b_{t−1} + γ_t ĝ_t,
    # b_t = 1 − β₁ᵗ, γ_t = (1 − β₁)/b_t; with p = β₁^{t−1} symbolic (any t ≥ 2)
    b1, p = sp.symbols("beta1 p", positive=True)
    g_prev, g_new = sp.symbols("gbar_prev ghat", real=True)
    b_prev, b_t = 1 - p, 1 - b1 * p
    ema = b1 * g_prev + (1 - b1) * g_new
    gamma = (1 - b1) / b_t
    assert sp.cancel(ema / b_t - ((1 - gamma) * g_prev / b_prev + gamma * g_new)) == 0
    assert sp.cancel(((1 - b1) / (1 - b1)) - 1) == 0  # γ₁ = 1: the start ḡ₀ is irrelevant
    out.append(
        "bias correction is a rate: ḡ_t/(1 − β₁ᵗ) = (1 − γ_t)ḡ_{t−1}/(1 − β₁^{t−1}) + γ_t ĝ_t, "
        "γ_t = (1 − β₁)/(1 − β₁ᵗ), γ₁ = 1"
    )
    # IVON units: S = N(h + δ), Ĥ = N(ĥ + δ), ĝ_total = N(ḡ + δm); ρ = 1 − β₂
    n, delta, h, alpha = sp.symbols("N delta h alpha", positive=True)
    h_hat, m, gbar, b2 = sp.symbols("hhat m gbar beta2", real=True)
    s_old = n * (h + delta)
    big_g = n * (h_hat + delta) - s_old
    r = 1 - b2
    s_new = s_old + r * big_g + r**2 / 2 * big_g**2 / s_old
    h_ivon = b2 * h + (1 - b2) * h_hat + (1 - b2) ** 2 * (h - h_hat) ** 2 / (2 * (h + delta))
    assert sp.cancel(s_new / n - delta - h_ivon) == 0
    m_blr = m - alpha * n * (gbar + delta * m) / s_new
    m_ivon = m - alpha * (gbar + delta * m) / (h_ivon + delta)
    assert sp.cancel(m_blr - m_ivon) == 0
    # the Stein estimate in IVON's units: Nĥ = ∇(Nℓ_B)(θ)(θ − m)·S with σ² = 1/S
    gsample, zz = sp.symbols("g_theta z", real=True)
    sigma = 1 / sp.sqrt(s_old)
    h_stein_total = n * gsample * (sigma * zz) * s_old  # ∇ℓ_lik(θ)(θ − m)/σ²
    h_stein_ivon = gsample * (sigma * zz) / sigma**2  # ĝ(θ − m)/σ²
    assert sp.simplify(h_stein_total - n * h_stein_ivon) == 0
    out += [
        "IVON units (S = N(h + δ), Ĥ = N(ĥ + δ), ĝ = N(ḡ + δm), ρ = 1 − β₂): the improved "
        "(m, S)-step is h' = β₂h + (1 − β₂)ĥ + ½(1 − β₂)²(h − ĥ)²/(h + δ), "
        "m' = m − α(ḡ + δm)/(h' + δ)",
        "the Stein Hessian of Nℓ_B at θ = m + σz is N·ĥ with IVON's ĥ = ĝ(θ − m)/σ²",
    ]
    return out


# ---------------------------------------------------------------------------- the three IVONs
def classical(
    pb: Problem,
    *,
    lr: float = LR,
    beta1: float = BETA1,
    beta2: float = BETA2,
    delta: float = DELTA,
    h0: float = H0,
    ess: float = N,
) -> tuple[Tensor, Tensor, Tensor]:
    """Hand-coded IVON (Shen et al. 2024, Algorithm 1, no lr rescaling), batched over copies:

    θ = m + σz, σ = (N(h + δ))^{-1/2};  ĝ = ∇ℓ_B(θ);  ĥ = ĝ(θ − m)/σ²;
    g ← β₁g + (1 − β₁)ĝ;  h ← β₂h + (1 − β₂)ĥ + ½(1 − β₂)²(h − ĥ)²/(h + δ);
    m ← m − α(g/(1 − β₁ᵗ) + δm)/(h + δ).

    Returns the means and h, ``(T + 1, B, D)`` each, and every ĥ ``(T, B, D)``.
    """
    steps, copies = pb.z.shape[0], pb.z.shape[1]
    m = torch.zeros(copies, D, dtype=F64, device=pb.z.device)
    h = torch.full_like(m, h0)
    g = torch.zeros_like(m)
    means, hs, hhats = [m], [h], []
    for t in range(1, steps + 1):
        sigma = 1.0 / torch.sqrt(ess * (h + delta))
        theta = m + sigma * pb.z[t - 1]
        g_hat = minibatch_grad(pb.xb[t - 1], pb.yb[t - 1], theta)
        h_hat = g_hat * (theta - m) / sigma**2
        g = beta1 * g + (1 - beta1) * g_hat
        h = (
            beta2 * h
            + (1 - beta2) * h_hat
            + 0.5 * (1 - beta2) ** 2 * (h - h_hat) ** 2 / (h + delta)
        )
        m = m - lr * (g / (1 - beta1**t) + delta * m) / (h + delta)
        means.append(m)
        hs.append(h)
        hhats.append(h_hat)
    return torch.stack(means), torch.stack(hs), torch.stack(hhats)


def blr_instance(
    pb: Problem,
    *,
    lr: float = LR,
    beta1: float = BETA1,
    beta2: float = BETA2,
    delta: float = DELTA,
    h0: float = H0,
) -> tuple[Tensor, Tensor]:
    """The improved BLR on a batch of diagonal Gaussians (one per copy), from :mod:`blr` only:
    ĝ, Ĥ from :class:`blr.BonnetPrice` (one draw, Stein Hessian) on the data part Nℓ_B,
    ĝ ← bias-corrected average (rate :func:`blr.schedules.bias_corrected`), prior λ₀ added as
    ∇_μ − λ₀, then :func:`blr.gaussian_step` with ρ = 1 − β₂, ``improved=True``, α = ``lr``.
    Returns the means and h = S/N − δ, ``(T + 1, B, D)`` each."""
    steps, copies = pb.z.shape[0], pb.z.shape[1]
    fam = expfam.DiagGaussian()
    zeros = torch.zeros(copies, D, dtype=F64)
    nat = fam.from_moments(zeros, torch.full_like(zeros, N * (h0 + delta)))
    prior = prior_nat(fam, (copies, D), delta)
    estimator = blr.BonnetPrice(1, hessian="stein")
    options = blr.GaussianOptions(improved=True, lr=lr)
    rate = blr.schedules.bias_corrected(beta1)
    gen = torch.Generator().manual_seed(pb.noise_seed)
    g_avg = torch.zeros_like(zeros)
    means, hs = [], []
    for t in range(1, steps + 1):
        m, s = fam.to_moments(nat)
        means.append(m)
        hs.append(s / N - delta)
        est = estimator(fam, nat, likelihood(pb.xb[t - 1], pb.yb[t - 1]), generator=gen)
        g_hat, h_hat = fam.gh_from_mean_grad(nat, est.grad)
        g_avg = g_avg + rate(t) * (g_hat - g_avg)
        grad = fam.mean_grad_from_gh(nat, g_avg, h_hat)
        grad = expfam.DiagNat(grad.lam1 - prior.lam1, grad.lam2 - prior.lam2)  # + ∇_μE[R]
        nat = blr.gaussian_step(fam, nat, grad, rho=1 - beta2, options=options)
    m, s = fam.to_moments(nat)
    return torch.stack([*means, m]), torch.stack([*hs, s / N - delta])


def kernel_instance(
    pb: Problem,
    *,
    lr: float = LR,
    beta1: float = BETA1,
    beta2: float = BETA2,
    delta: float = DELTA,
    h0: float = H0,
    correction: bool = True,
) -> tuple[Tensor, Tensor]:
    """All copies concatenated into flat buffers (m, ḡ, h) of length B·D on ``pb``'s device:
    per step θ = m + σ⊙z, ĝ = ∇ℓ_B(θ) by autograd (:func:`loss_grad`), ĥ by
    :func:`blr.kernels.ivon_hess_estimate` from (θ − m)⊙ĝ, and one :func:`blr.kernels.ivon_step_`
    (``correction=False`` drops the improved-BLR term). Returns means and h
    ``(T + 1, B, D)``."""
    steps, copies = pb.z.shape[0], pb.z.shape[1]
    mean = torch.zeros(copies * D, dtype=F64, device=pb.z.device)
    momentum, hess = torch.zeros_like(mean), torch.full_like(mean, h0)
    means, hs = [mean.clone()], [hess.clone()]
    for t in range(1, steps + 1):
        offset = pb.z[t - 1].reshape(-1) * torch.rsqrt(N * (hess + delta))
        theta = (mean + offset).view(copies, D)
        g_hat = loss_grad(pb.xb[t - 1], pb.yb[t - 1], theta).reshape(-1)
        h_hat = ivon_hess_estimate(
            offset * g_hat, hess, ess=N, weight_decay=delta, hess_approx="price"
        )
        ivon_step_(
            mean,
            momentum,
            hess,
            g_hat,
            h_hat,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=delta,
            step=t,
            correction=correction,
        )
        means.append(mean.clone())
        hs.append(hess.clone())
    shape = (steps + 1, copies, D)
    return torch.stack(means).view(shape), torch.stack(hs).view(shape)


def optimizer_instance(
    xb: Tensor, yb: Tensor, seed: int, optimizer: type = IVON, **kwargs: float
) -> tuple[Tensor, Tensor]:
    """An ``nn.Linear(2, 1)`` (float64, zero init; θ = (weight, bias)) trained by ``optimizer``
    (:class:`blr.optim.IVON` or :class:`blr.optim.VON`, ``seed`` for its draws) on the
    minibatches ``xb`` ``(T, M, D)``, ``yb`` ``(T, M)`` with the mean logistic loss ℓ_B. Returns the
    means and h ``(T + 1, D)``."""
    model = torch.nn.Linear(D - 1, 1, dtype=F64)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = optimizer(model.parameters(), ess=N, seed=seed, rescale_lr=False, **kwargs)

    def flat() -> tuple[Tensor, Tensor]:
        m = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
        state = opt.state_dict()["state"]
        h = torch.cat([state[k]["hess"].reshape(-1) for k in sorted(state)]) if state else None
        return m.clone(), h

    means, hs = [flat()[0]], [torch.full((D,), kwargs["hess_init"], dtype=F64)]
    for t in range(xb.shape[0]):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            f = model(xb[t, :, : D - 1]).squeeze(-1)
            (torch.nn.functional.softplus(f) - yb[t] * f).mean().backward()
        opt.step()
        m, h = flat()
        means.append(m)
        hs.append(h)
    return torch.stack(means), torch.stack(hs)


def single_copy(pb: Problem, copy: int, seed: int) -> Problem:
    """Copy ``copy`` of ``pb`` alone, with draws ``torch.randn((1, D))`` per step from ``seed``
    (what :class:`blr.optim` draws for one 3-parameter bucket)."""
    steps = pb.z.shape[0]
    return Problem(
        pb.xb[:, copy : copy + 1],
        pb.yb[:, copy : copy + 1],
        draws(steps, (D,), seed).unsqueeze(1),
        seed,
    )


def _dev(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> float:
    """max |Δ| over the means and the h's of two runs."""
    return max((x.cpu() - y.cpu()).abs().max().item() for x, y in zip(a, b))


def check(device: str = "cpu") -> list[Comparison]:
    """Hand-coded IVON vs the improved BLR (engine) and vs the flat-buffer kernel on ``device``
    (64 copies, kind "equality"); two bounds: h + δ > 0 throughout although Stein ĥ < 0 occurs,
    and the same run without the correction term leaves the family (so the correction is what
    keeps it valid). ivon-opt and :class:`blr.optim.IVON` are compared in
    ``tests/derivations/test_row_ivon_reference.py`` and ``test_row_ivon_optim.py`` (module
    docstring)."""
    pb = problem()
    ref_m, ref_h, h_hats = classical(pb)
    engine = blr_instance(pb)
    kernel = kernel_instance(pb.to(device))
    negative = (h_hats < 0).double().mean().item()
    low = (ref_h + DELTA).min().item()
    positivity = max(0.0, -low) if negative > 0 else math.inf
    _, plain_h = kernel_instance(pb.to(device), correction=False)  # VON-like, same draws
    plain = plain_h.cpu() + DELTA  # NaN after a step left the family (σ of a negative h + δ)
    failed = int(((plain <= 0) | plain.isnan()).any(-1).any(0).sum())
    return [
        Comparison(
            "improved BLR (engine, 64 copies) vs IVON, 40 steps, (m, h)",
            _dev(engine, (ref_m, ref_h)),
            1e-10,
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs engine, 40 steps, (m, h)", _dev(kernel, engine), 1e-10
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs IVON, 40 steps, (m, h)",
            _dev(kernel, (ref_m, ref_h)),
            1e-10,
        ),
        Comparison(
            f"iBLR keeps h + δ > 0 (min {low:.3g}) though {100 * negative:.0f}% of Stein ĥ < 0: "
            "max(0, −min(h + δ))",
            positivity,
            0.0,
            kind="bound",
        ),
        Comparison(
            f"without the correction the run leaves the family on {failed}/64 copies: "
            "max(0, min(h + δ))",
            max(0.0, plain[plain.isfinite()].min().item()),
            0.0,
            kind="bound",
        ),
    ]


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "rho=1 - beta2",
        "rho=1.01 * (1 - beta2)",
        "BLR precision rate ρ = 1 − β₂ × 1.01",
    ),
    Mutation("blr", "constant", "kernel_instance", "lr=lr,", "lr=1.01 * lr,", "kernel α × 1.01"),
    Mutation(
        "blr",
        "term",
        "blr_instance",
        "grad.lam2 - prior.lam2",
        "grad.lam2",
        "BLR without the prior λ₀ (no Nδ in S, no Nδm in ĝ)",
    ),
    Mutation(
        "blr",
        "term",
        "blr_instance",
        "g_avg = g_avg + rate(t) * (g_hat - g_avg)",
        "g_avg = g_hat",
        "BLR without the gradient average (momentum)",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "m = m - lr *",
        "m = m - 1.01 * lr *",
        "IVON mean rate α × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "g / (1 - beta1**t)",
        "g",
        "IVON without the bias correction 1/(1 − β₁ᵗ)",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "h_hat = g_hat * (theta - m) / sigma**2",
        "h_hat = g_hat * (theta - m)",
        "Stein ĥ without its 1/σ²",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "+ 0.5 * (1 - beta2) ** 2",
        "+ 1.0 * (1 - beta2) ** 2",
        "IVON's improved-BLR term with 1 in place of ½",
    ),
)
