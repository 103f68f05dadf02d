r"""VON is the plain diagonal-Gaussian BLR with one posterior draw and the Price/Stein Hessian
estimate at that draw.

**Family.** q = N(m, diag(1/S)), λ = (S⊙m, −½S), μ = (m, m² + 1/S), ∇_μ(−H) = λ (as for
``ivon``). VON's units (Khan et al. 2018): S = N(s + δ), s the precision of the per-example
average loss, δ the prior precision per example, N the number of examples; the total loss is
ℓ̄(θ) = N·ℓ_B(θ) + ½Nδ‖θ‖² with the conjugate prior λ₀ = (0, −½Nδ) handled exactly.

**Rule.** With ∇_μE_q[Nℓ_B] ≈ (ĝ − Ĥ⊙m, ½Ĥ) (Bonnet/Price), the BLR with a conjugate prior,
λ ← (1 − ρ)λ + ρ(λ₀ − ∇_μE_q[Nℓ_B]), is exactly

    S ← (1 − ρ)S + ρ(Ĥ + Nδ),    m ← m − ρ(ĝ + Nδm)/S    (S the new precision).

The approximations: *MC sample*, one draw θ = m + σ⊙z, σ = (N(s + δ))^{-1/2}, ĝ = N∇ℓ_B(θ); and
the *Price/Stein Hessian* at the same draw, Ĥ = N ĥ with ĥ = ∇ℓ_B(θ)⊙(θ − m)/σ² (unbiased for
E_q[diag ∇²ℓ_B] by Stein's identity, proved below for a polynomial ℓ). Divided by N:

    s ← (1 − ρ)s + ρĥ,    m ← m − ρ(∇ℓ_B(θ) + δm)/(s + δ):

VON (Khan et al. 2018, with the reparameterization Hessian) with one rate. It is IVON without
the improved-BLR correction and without momentum (:class:`blr.optim.VON`); the Stein ĥ can be
negative, and without the correction nothing keeps s + δ > 0 (see the row ``ivon``).

**Equality conditions.** Same draws z_t and minibatches, m₀ and s₀ with S₀ = N(s₀ + δ), the
prior λ₀ and one rate ρ for both parameters ⇒ VON's iterates (m_t, s_t) equal those of
:func:`blr.step` with :class:`blr.BonnetPrice` (``hessian="stein"``, one draw) for every t, as
long as every s_t + δ > 0 (else the BLR step leaves the family and :func:`blr.step` raises).
VON as published has two rates, α for the mean and ρ for s (:class:`blr.optim.VON`'s ``lr`` and
1 − ``beta2``); with α ≠ ρ it is the (m, S)-form m' = m − αS'⁻¹ĝ, which :func:`blr.gaussian_step`
offers as ``GaussianOptions(lr=α)``: not a λ-space BLR step, so that form is typed in, the one
assumption of the symbolic column (the one-rate comparisons assume nothing).

**Test problem.** The 64 logistic regressions of the row ``ivon`` (N = 64, M = 8, 40 steps,
one seeded draw per step and copy), m₀ = 0, s₀ = 1, δ = 0.1, ρ = 0.05 (s + δ stays ≥ 0.1 on
every copy; with ρ = 0.1 it does not). Kind "equality", tolerance 1e-10 in (m, s) over the 40
steps: the hand-coded VON (its gradient written out by hand) vs :func:`blr.step` (all copies as
one batched DiagGaussian, ĝ and ĥ by autograd in :class:`blr.BonnetPrice`) vs the flat-buffer
kernel :func:`blr.kernels.ivon_step_` with ``correction=False, beta1=0`` (64 copies
concatenated, on ``device``, ĝ by autograd of the loss); and the two-rate VON (α = 0.1,
ρ = 0.05) vs :func:`blr.gaussian_step` and the kernel. Kind "bound": s + δ stays positive along
both runs (violation max(0, −min(s + δ)) = 0), and with ρ = 0.1 the same draws take VON out of
the family on some copies (violation max(0, min(s + δ)) = 0): the condition s + δ > 0 is not
automatic. :class:`blr.optim.VON` on an ``nn.Linear(2, 1)`` equals the hand-coded VON on copy 0,
with one rate and with two, in ``tests/derivations/test_row_von_optim.py`` (a torch optimizer
imports torch._dynamo, ~1.5 s, too slow for ``check()``).

**References.** Khan, Nielsen, Tangkaratt, Lin, Gal & Srivastava, "Fast and Scalable Bayesian
Deep Learning by Weight-Perturbation in Adam", ICML 2018 (VON); Khan & Rue (2023), Table 1 row
11 (the conjugate prior) and row 5 (a separate rate for the mean).
"""

from __future__ import annotations

import sympy as sp
import torch
from torch import Tensor

import blr
import expfam
from derivations.ivon import (
    F64,
    D,
    N,
    Problem,
    diag_family,
    kernel_instance,
    likelihood,
    prior_nat,
    problem,
    stein_and_bonnet_price,
)
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="von",
    number=None,
    algorithm="VON",
    posterior="Gaussian (diagonal)",
    approximation="MC sample, Price/Stein Hessian",
    symbolic="~",
    assumptions=(
        "two rates (the two-rate comparisons only): with a mean rate α ≠ ρ the step is the "
        "(m, S)-form m' = m − αS'⁻¹ĝ (blr.gaussian_step with GaussianOptions(lr=α)), typed in: "
        "not a λ-space BLR step. With one rate (α = ρ) derive() proves the whole reduction",
    ),
)

RHO, LR2, DELTA, S0 = 0.05, 0.1, 0.1, 1.0


def derive() -> list[str]:
    """The family and Stein/Price (as ``ivon``), the λ-space BLR step with a conjugate prior in
    VON's units, and the two-rate (m, S)-form."""
    out = diag_family() + stein_and_bonnet_price()
    n, delta, s, rho, alpha = sp.symbols("N delta s rho alpha", positive=True)
    m, g, h = sp.symbols("m g hhat", real=True)  # g = ∇ℓ_B(θ), h = ĥ
    prec = n * (s + delta)
    lam1, lam2 = prec * m, -prec / 2
    lam0_1, lam0_2 = 0, -n * delta / 2
    big_g, big_h = n * g, n * h  # ĝ and Ĥ of the data part Nℓ_B
    grad1, grad2 = big_g - big_h * m, big_h / 2  # ∇_μE_q[Nℓ_B] (Bonnet/Price)
    new1 = (1 - rho) * lam1 + rho * (lam0_1 - grad1)
    new2 = (1 - rho) * lam2 + rho * (lam0_2 - grad2)
    prec_new = -2 * new2
    s_new = (1 - rho) * s + rho * h
    assert sp.expand(prec_new - n * (s_new + delta)) == 0
    m_new = new1 / prec_new
    assert sp.cancel(m_new - (m - rho * (g + delta * m) / (s_new + delta))) == 0
    out.append(
        "λ-space BLR with prior λ₀ = (0, −½Nδ), ∇_μE_q[Nℓ_B] = (N(g − ĥm), ½Nĥ), "
        "S = N(s + δ): s' = (1 − ρ)s + ρĥ and m' = m − ρ(g + δm)/(s' + δ) (VON)"
    )
    # the (m, S)-form with rates (α, ρ): S' as above, m' = m − αS'⁻¹(ĝ + Nδm)
    m_two = m - alpha * n * (g + delta * m) / prec_new
    assert sp.cancel(m_two - (m - alpha * (g + delta * m) / (s_new + delta))) == 0
    out.append("(m, S)-form with rates (α, ρ): m' = m − α(g + δm)/(s' + δ), s' as above")
    return out


def logistic_grad(xb: Tensor, yb: Tensor, theta: Tensor) -> Tensor:
    """∇ℓ_B(θ) = (1/M)Σ_{i∈B} x_i(σ(x_iᵀθ) − y_i) per copy, by hand (the classical VON's):
    ``xb`` ``(B, M, D)``, ``yb`` ``(B, M)``, θ ``(B, D)``."""
    residual = torch.sigmoid((xb @ theta.unsqueeze(-1)).squeeze(-1)) - yb
    return (xb * residual.unsqueeze(-1)).mean(-2)


def classical(
    pb: Problem, *, rho: float = RHO, lr: float | None = None, delta: float = DELTA, s0: float = S0
) -> tuple[Tensor, Tensor]:
    """Hand-coded VON (Khan et al. 2018, reparameterization Hessian), batched over copies:

    θ = m + σz, σ = (N(s + δ))^{-1/2};  ĝ = ∇ℓ_B(θ);  ĥ = ĝ(θ − m)/σ²;
    s ← (1 − ρ)s + ρĥ;  m ← m − α(ĝ + δm)/(s + δ)   (α = ``lr``, default ρ).

    Uses neither :mod:`blr` nor :mod:`expfam`. Returns the means and s, ``(T + 1, B, D)``
    each."""
    alpha = rho if lr is None else lr
    steps, copies = pb.z.shape[0], pb.z.shape[1]
    m = torch.zeros(copies, D, dtype=F64, device=pb.z.device)
    s = torch.full_like(m, s0)
    means, scales = [m], [s]
    for t in range(steps):
        sigma = 1.0 / torch.sqrt(N * (s + delta))
        theta = m + sigma * pb.z[t]
        g_hat = logistic_grad(pb.xb[t], pb.yb[t], theta)
        h_hat = g_hat * (theta - m) / sigma**2
        s = (1 - rho) * s + rho * h_hat
        m = m - alpha * (g_hat + delta * m) / (s + delta)
        means.append(m)
        scales.append(s)
    return torch.stack(means), torch.stack(scales)


def blr_instance(
    pb: Problem, *, rho: float = RHO, lr: float | None = None, delta: float = DELTA, s0: float = S0
) -> tuple[Tensor, Tensor]:
    """The BLR on a batch of diagonal Gaussians (one per copy) with :class:`blr.BonnetPrice`
    (one draw from a generator seeded like ``pb.z``, Stein Hessian) on the data part Nℓ_B and
    the prior λ₀: :func:`blr.step` (``lr`` None: one rate ρ) or the (m, S)-form
    :func:`blr.gaussian_step` with ``GaussianOptions(lr=α)``. Returns the means and
    s = S/N − δ, ``(T + 1, B, D)`` each."""
    steps, copies = pb.z.shape[0], pb.z.shape[1]
    fam = expfam.DiagGaussian()
    zeros = torch.zeros(copies, D, dtype=F64)
    nat = fam.from_moments(zeros, torch.full_like(zeros, N * (s0 + delta)))
    prior = prior_nat(fam, (copies, D), delta)
    estimator = blr.BonnetPrice(1, hessian="stein")
    gen = torch.Generator().manual_seed(pb.noise_seed)
    means, scales = [], []
    for t in range(steps):
        m, prec = fam.to_moments(nat)
        means.append(m)
        scales.append(prec / N - delta)
        loss = likelihood(pb.xb[t], pb.yb[t])
        if lr is None:
            nat = blr.step(fam, nat, loss, rho, estimator=estimator, prior=prior, generator=gen)
        else:
            grad = estimator(fam, nat, loss, generator=gen).grad
            grad = expfam.DiagNat(grad.lam1 - prior.lam1, grad.lam2 - prior.lam2)
            nat = blr.gaussian_step(fam, nat, grad, rho=rho, options=blr.GaussianOptions(lr=lr))
    m, prec = fam.to_moments(nat)
    return torch.stack([*means, m]), torch.stack([*scales, prec / N - delta])


def kernel(
    pb: Problem, *, rho: float = RHO, lr: float | None = None, delta: float = DELTA, s0: float = S0
) -> tuple[Tensor, Tensor]:
    """IVON's flat-buffer kernel driver (:func:`derivations.ivon.kernel_instance`: one
    :func:`blr.kernels.ivon_step_` per step, ĝ = ∇ℓ_B(θ) by autograd, ĥ from (θ − m)⊙ĝ) with
    ``correction=False, beta1=0``, β₂ = 1 − ρ, α = ``lr`` (default ρ) and h₀ = s₀. Returns the
    means and s ``(T + 1, B, D)``."""
    alpha = rho if lr is None else lr
    return kernel_instance(
        pb,
        lr=alpha,
        beta1=0.0,
        beta2=1 - rho,
        delta=delta,
        h0=s0,
        correction=False,
    )


def _dev(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> float:
    """max |Δ| over the means and the scales of two runs."""
    return max((x.cpu() - y.cpu()).abs().max().item() for x, y in zip(a, b))


def check(device: str = "cpu") -> list[Comparison]:
    """Hand-coded VON vs :func:`blr.step` and vs the flat-buffer kernel on ``device`` (64 copies,
    one rate ρ), the two-rate version vs :func:`blr.gaussian_step` and the kernel (kind
    "equality"); s + δ > 0 along both runs, and with ρ = 0.1 it is not (kind "bound")."""
    pb = problem()
    ref = classical(pb)
    engine = blr_instance(pb)
    kern = kernel(pb.to(device))
    ref2 = classical(pb, lr=LR2)
    engine2 = blr_instance(pb, lr=LR2)
    kern2 = kernel(pb.to(device), lr=LR2)
    low = min((ref[1] + DELTA).min().item(), (ref2[1] + DELTA).min().item())
    fast = kernel(pb.to(device), rho=2 * RHO)[1].cpu() + DELTA  # ρ = 0.1: s + δ ≤ 0 occurs
    failed = int(((fast <= 0) | fast.isnan()).any(-1).any(0).sum())
    return [
        Comparison(
            "BLR (blr.step, 64 copies) vs VON, ρ = 0.05, 40 steps, (m, s)", _dev(engine, ref), 1e-10
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs engine, 40 steps, (m, s)", _dev(kern, engine), 1e-10
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs VON, 40 steps, (m, s)", _dev(kern, ref), 1e-10
        ),
        Comparison(
            "(m, S)-form (gaussian_step, α = 0.1, ρ = 0.05) vs two-rate VON, (m, s)",
            _dev(engine2, ref2),
            1e-10,
        ),
        Comparison(
            f"kernel ({device}, 64 copies, α = 0.1) vs two-rate VON, (m, s)",
            _dev(kern2, ref2),
            1e-10,
        ),
        Comparison(
            f"s + δ stays positive (min {low:.3g}): max(0, −min(s + δ))",
            max(0.0, -low),
            0.0,
            kind="bound",
        ),
        Comparison(
            f"with ρ = 0.1 (same draws) VON leaves the family on {failed}/64 copies: "
            "max(0, min(s + δ))",
            max(0.0, fast[fast.isfinite()].min().item()),
            0.0,
            kind="bound",
        ),
    ]


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "nat = blr.step(fam, nat, loss, rho,",
        "nat = blr.step(fam, nat, loss, 1.01 * rho,",
        "BLR step ρ × 1.01 (blr.step)",
    ),
    Mutation(
        "blr",
        "constant",
        "kernel",
        "beta2=1 - rho,",
        "beta2=1 - 1.01 * rho,",
        "kernel scale rate ρ × 1.01",
    ),
    Mutation(
        "blr",
        "term",
        "blr_instance",
        "grad.lam2 - prior.lam2",
        "grad.lam2",
        "(m, S)-form without the prior λ₀ (no Nδ in S, no Nδm in ĝ)",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "m = m - alpha *",
        "m = m - 1.01 * alpha *",
        "VON mean rate × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "(g_hat + delta * m)",
        "g_hat",
        "VON mean step without the prior term δm",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "h_hat = g_hat * (theta - m) / sigma**2",
        "h_hat = g_hat * (theta - m)",
        "Stein ĥ without its 1/σ²",
    ),
)
