r"""bSAM (Bayesian sharpness-aware minimization) is the diagonal-Gaussian BLR in (m, S) form,
split into a mean half-step and a precision half-step, with a gradient at a SAM-style
adversarial point and a √s|g| Hessian surrogate from bSAM's relaxation.

**Family.** q = N(m, diag(1/S)), λ = (S⊙m, −½S), ∇_μ(−H) = λ (as for ``ivon``). bSAM's units
(Möllenhoff & Khan 2023, public code): S = N s, where s already contains the prior precision
δ per example (``wdecay``); the total loss is ℓ̄(θ) = N·ℓ_B(θ) + ½Nδ‖θ‖², ℓ_B the minibatch
average, and the prior λ₀ = (0, −½Nδ) is handled exactly (the BLR with a conjugate prior;
Khan & Rue 2023, Table 1 row 11).

**bSAM** (Möllenhoff & Khan 2023, from the public code's ``optim.py`` with m-sharpness 1), one
step:

    θ = m + z/√(Ns);  g₁ = ∇ℓ_B(θ);  ε = r g₁/s;  g = ∇ℓ_B(m + ε);
    ḡ ← β₁ḡ + (1 − β₁)(g + δm);  m ← m − α ḡ/s  (s before its update);
    s ← β₂s + (1 − β₂)(√s|g₁| + c + δ)     (c the damping).

**Which parts are the BLR.** In total units the estimate is ĝ = N(g + δm) (the prior term
exact) and Ĥ = N(√s|g₁| + c + δ) = √(S/N)|∇(Nℓ_B)(θ)| + Nc + Nδ. Given (ĝ, Ĥ), one bSAM step is
two exact BLR steps on the diagonal family:

- a *mean half-step* with Ĥ := S (G = Ĥ − S = 0, so S is unchanged) and rate α:
  λ ← (1 − α)λ − α(ĝ − Sm, ½S) gives m ← m − αS⁻¹ĝ = m − α ḡ/s with the OLD s;
- a *precision half-step* with ĝ := 0 and rate ρ = 1 − β₂: λ ← (1 − ρ)λ − ρ(−Ĥm, ½Ĥ) gives
  S ← (1 − ρ)S + ρĤ and leaves m unchanged,

with ĝ replaced by its exponential average (β₁, no bias correction; it averages ĝ *including*
the prior term Nδm, as bSAM does). Both half-steps are derived symbolically below, and the
adversarial step is the maximizer of the linearized loss with an s-weighted penalty:
argmax_ε εᵀg₁ − ‖ε‖²_s/(2r) = r g₁/s (the constrained form max εᵀg₁ s.t. ‖ε‖_s ≤ ρ' gives the
same direction with r = ρ'/‖g₁‖_{s⁻¹}).

**Not the BLR (typed in: the symbolic column's assumptions).** Using the gradient at the
adversarial point m + ε in place of E_q[∇ℓ̄] and the surrogate √s|g₁| + c in place of
E_q[diag ∇²ℓ_B] come from bSAM's Fenchel-biconjugate relaxation of the expected loss
(Möllenhoff & Khan 2023); they are not expectation identities, so no symbolic reduction from
∇_μE_q[ℓ̄] to them exists. The β₁-average of ĝ (momentum) and the split of one iteration into
two half-steps with substituted estimates (Ĥ := S, then ĝ := 0) and two rates are bSAM's
construction, not one BLR step. Given these four, sympy proves the BLR algebra (and the
adversarial step), and the check shows numerically that the BLR with this estimator *is* bSAM.

**Equality conditions.** Same draws z_t and minibatches, m₀ and s₀ with S₀ = N s₀, the mean
half-step before the precision half-step each iteration (rates α and 1 − β₂), the estimator
above at the current (m, S) and ĝ replaced by its β₁-average ⇒ the BLR iterates equal bSAM's
(m_t, s_t) for every t. The kernel :func:`blr.kernels.diag_gaussian_step_` runs the same two
half-steps: ``rho=0`` (s frozen) with ``g_avg``/``gamma = 1 − β₁`` and ĝ = g + δm for the mean
(``delta=0``: δ is already inside s), then ``rho = 1 − β₂`` with ĝ = 0 for s.

**Test problem.** The 64 logistic regressions of the row ``ivon`` (N = 64, M = 8, 40 steps,
one seeded draw per step and copy), m₀ = 0, s₀ = 1, α = 0.05, β₁ = 0.9, β₂ = 0.9, r = 0.05,
c = 0.01, δ = 0.1. Kind "equality", tolerance 1e-10 in (m, s) over the 40 steps: hand-coded
bSAM (its gradients written out by hand) vs the two BLR half-steps (:func:`blr.gaussian_step`,
all copies as one batched DiagGaussian, :class:`AdversarialEstimator` taking both gradients by
autograd) vs the kernel (64 copies on ``device``, both gradients by autograd of the loss).

**References.** Möllenhoff & Khan, "SAM as an Optimal Relaxation of Bayes", ICLR 2023, and its
public code (team-approx-bayes/bayesian-sam, ``optim.py``); Foret et al., "Sharpness-Aware
Minimization", ICLR 2021; Khan & Rue (2023), Table 1 rows 5 and 11.
"""

from __future__ import annotations

import sympy as sp
import torch
from torch import Tensor

import blr
import expfam
from blr.kernels import diag_gaussian_step_
from derivations.ivon import (
    F64,
    D,
    N,
    Problem,
    diag_family,
    likelihood,
    loss_grad,
    prior_nat,
    problem,
)
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="bsam",
    number=None,
    algorithm="bSAM",
    posterior="Gaussian (diagonal)",
    approximation="MC sample, adversarial (SAM) gradient, √s|g| Hessian surrogate",
    symbolic="~",
    assumptions=(
        "the gradient at the adversarial point m + r g₁/s stands in for E_q[∇ℓ̄] (bSAM's "
        "relaxation, not an expectation identity; derive() proves only that r g₁/s maximizes "
        "the linearized loss with an s-weighted penalty)",
        "the surrogate √s|g₁| + c stands in for E_q[diag ∇²ℓ̄] (bSAM's relaxation)",
        "momentum: ĝ, prior term Nδm included, is replaced by its β₁-average without bias "
        "correction (typed in, as in Adam; not the BLR's natural momentum)",
        "one iteration is two BLR steps with substituted estimates, a mean half-step with "
        "Ĥ := S at rate α and then a precision half-step with ĝ := 0 at rate 1 − β₂ (bSAM's "
        "split and order, not one BLR step); derive() proves each half-step's algebra",
    ),
)

LR, BETA1, BETA2, RADIUS, DAMPING, DELTA, S0 = 0.05, 0.9, 0.9, 0.05, 0.01, 0.1, 1.0


def derive() -> list[str]:
    """The family, the adversarial step as a maximizer, the units of ε and of the surrogate, and
    the two half-steps as λ-space BLR steps in bSAM's units."""
    out = diag_family()
    # the adversarial step: argmax_ε εᵀg − Σ s_j ε_j²/(2r) = r g/s (2-D; negative definite)
    r, s1, s2 = sp.symbols("r s1 s2", positive=True)
    g1, g2, e1, e2 = sp.symbols("g1 g2 epsilon1 epsilon2", real=True)
    phi = e1 * g1 + e2 * g2 - (s1 * e1**2 + s2 * e2**2) / (2 * r)
    at = {e1: r * g1 / s1, e2: r * g2 / s2}
    assert all(sp.cancel(sp.diff(phi, e).subs(at)) == 0 for e in (e1, e2))
    hess = sp.hessian(phi, (e1, e2))
    assert hess == sp.diag(-s1 / r, -s2 / r)  # negative definite: a maximum
    # the constrained form: ε = ρ'(g/s)/‖g‖_{s⁻¹} meets ‖ε‖_s = ρ' and g = 2ν diag(s) ε, ν > 0
    rad = sp.Symbol("rho_prime", positive=True)
    norm = sp.sqrt(g1**2 / s1 + g2**2 / s2)
    ec = [rad * g1 / (s1 * norm), rad * g2 / (s2 * norm)]
    assert sp.cancel(s1 * ec[0] ** 2 + s2 * ec[1] ** 2 - rad**2) == 0
    nu = norm / (2 * rad)
    assert sp.cancel(g1 - 2 * nu * s1 * ec[0]) == 0 and sp.cancel(g2 - 2 * nu * s2 * ec[1]) == 0
    assert sp.cancel(ec[0].subs(rad, r * norm) - r * g1 / s1) == 0
    out += [
        "adversarial step: argmax_ε εᵀg − ‖ε‖²_s/(2r) = r g/s (2-D, Hessian −diag(s)/r ≺ 0)",
        "constrained form: ε = ρ'(g/s)/‖g‖_{s⁻¹} satisfies ‖ε‖_s = ρ' and g = 2ν diag(s)ε with "
        "ν = ‖g‖_{s⁻¹}/(2ρ') > 0 (KKT of max εᵀg, ‖ε‖_s ≤ ρ'); ρ' = r‖g‖_{s⁻¹} gives r g/s",
    ]
    # units: g₁ = ∇(Nℓ_B)/N, s = S/N ⇒ ε = r S⁻¹∇(Nℓ_B), N√s|g₁| = √(S/N)|∇(Nℓ_B)|
    n, big_s = sp.symbols("N S", positive=True)
    g_tot = sp.Symbol("g_total", real=True)
    assert sp.cancel(r * (g_tot / n) / (big_s / n) - r * g_tot / big_s) == 0
    assert (
        sp.expand(n * sp.sqrt(big_s / n) * sp.Abs(g_tot / n) - sp.sqrt(big_s / n) * sp.Abs(g_tot))
        == 0
    )
    out.append(
        "units S = Ns, ∇(Nℓ_B) = Ng₁: ε = r g₁/s = rS⁻¹∇(Nℓ_B)(θ) and N√s|g₁| = √(S/N)|∇(Nℓ_B)(θ)|"
    )
    # the two half-steps as λ-space BLR steps, λ ← (1 − β)λ − β(ĝ − Ĥm, ½Ĥ)
    s, alpha, b2, c, delta = sp.symbols("s alpha beta2 c delta", positive=True)
    m, gbar, g_abs = sp.symbols("m gbar g1_abs", real=True)

    def blr_step(lam1, lam2, g_hat, h_hat, m_, rate):
        return (1 - rate) * lam1 - rate * (g_hat - h_hat * m_), (1 - rate) * lam2 - rate * h_hat / 2

    prec = n * s
    lam1, lam2 = blr_step(prec * m, -prec / 2, n * gbar, prec, m, alpha)  # mean half-step
    assert sp.expand(-2 * lam2 - prec) == 0
    m_half = sp.cancel(lam1 / (-2 * lam2))
    assert sp.cancel(m_half - (m - alpha * gbar / s)) == 0
    h_total = n * (sp.sqrt(s) * g_abs + c + delta)
    lam1, lam2 = blr_step(lam1, lam2, 0, h_total, m_half, 1 - b2)  # precision half-step
    s_new = sp.expand(-2 * lam2 / n)
    assert sp.expand(s_new - (b2 * s + (1 - b2) * (sp.sqrt(s) * g_abs + c + delta))) == 0
    assert sp.cancel(lam1 / (-2 * lam2) - m_half) == 0
    out += [
        "mean half-step (Ĥ := S, rate α, ĝ = Nḡ): S unchanged and m' = m − αḡ/s (old s)",
        "precision half-step (ĝ := 0, rate 1 − β₂, Ĥ = N(√s|g₁| + c + δ)): "
        "s' = β₂s + (1 − β₂)(√s|g₁| + c + δ), m unchanged",
    ]
    # the average of ĝ = N(g + δm) is N times bSAM's ḡ (linearity)
    gm_prev, g_adv = sp.symbols("gm_prev g_adv", real=True)
    b1 = sp.Symbol("beta1", positive=True)
    ema_total = b1 * n * gm_prev + (1 - b1) * n * (g_adv + delta * m)
    assert sp.expand(ema_total - n * (b1 * gm_prev + (1 - b1) * (g_adv + delta * m))) == 0
    out.append("β₁-average of ĝ = N(g + δm) is N·ḡ with bSAM's ḡ ← β₁ḡ + (1 − β₁)(g + δm)")
    return out


def logistic_grad(xb: Tensor, yb: Tensor, theta: Tensor) -> Tensor:
    """∇ℓ_B(θ) = (1/M)Σ_{i∈B} x_i(σ(x_iᵀθ) − y_i) per copy, by hand (the classical bSAM's):
    ``xb`` ``(B, M, D)``, ``yb`` ``(B, M)``, θ ``(B, D)``."""
    residual = torch.sigmoid((xb @ theta.unsqueeze(-1)).squeeze(-1)) - yb
    return (xb * residual.unsqueeze(-1)).mean(-2)


def classical(
    pb: Problem,
    *,
    lr: float = LR,
    beta1: float = BETA1,
    beta2: float = BETA2,
    radius: float = RADIUS,
    damping: float = DAMPING,
    delta: float = DELTA,
    s0: float = S0,
) -> tuple[Tensor, Tensor]:
    """Hand-coded bSAM (Möllenhoff & Khan 2023, public ``optim.py``; m-sharpness 1), batched
    over copies, using neither :mod:`blr` nor :mod:`expfam`:

    θ = m + z/√(Ns);  g₁ = ∇ℓ_B(θ);  ε = r g₁/s;  g = ∇ℓ_B(m + ε);
    ḡ ← β₁ḡ + (1 − β₁)(g + δm);  m ← m − αḡ/s;  s ← β₂s + (1 − β₂)(√(s g₁²) + c + δ).

    Returns the means and s, ``(T + 1, B, D)`` each."""
    steps, copies = pb.z.shape[0], pb.z.shape[1]
    m = torch.zeros(copies, D, dtype=F64, device=pb.z.device)
    s = torch.full_like(m, s0)
    g_mom = torch.zeros_like(m)
    means, scales = [m], [s]
    for t in range(steps):
        theta = m + torch.sqrt(1.0 / (N * s)) * pb.z[t]
        g1 = logistic_grad(pb.xb[t], pb.yb[t], theta)
        eps = radius * g1 / s
        g = logistic_grad(pb.xb[t], pb.yb[t], m + eps)
        gs = torch.sqrt(s * g1**2)
        g_mom = beta1 * g_mom + (1 - beta1) * (g + delta * m)
        m = m - lr * g_mom / s
        s = beta2 * s + (1 - beta2) * (gs + damping + delta)
        means.append(m)
        scales.append(s)
    return torch.stack(means), torch.stack(scales)


class AdversarialEstimator(blr.Estimator):
    r"""bSAM's estimate of ∇_μE_q[ℓ] for a diagonal Gaussian, ℓ the data part Nℓ_B:

    .. math::
        \theta \sim q,\quad \epsilon = r S^{-1}\nabla\ell(\theta),\quad
        \hat g = \nabla\ell(m + \epsilon),\quad
        \hat H = \sqrt{S/N}\,|\nabla\ell(\theta)| + Nc,\quad
        \nabla_\mu \approx (\hat g - \hat H m, \tfrac12\hat H).

    The draw is ``family.sample(nat, (1,), generator)``. Not an expectation identity: the
    adversarial gradient and the surrogate are bSAM's relaxation (module docstring).

    Args:
        radius: r.
        damping: c (per example; Nc in total units).
        ess: N.
    """

    def __init__(self, radius: float, damping: float, ess: float) -> None:
        self.radius, self.damping, self.ess = float(radius), float(damping), float(ess)

    @staticmethod
    def _grad(loss, theta: Tensor) -> tuple[Tensor, Tensor]:
        theta = theta.detach().requires_grad_()
        with torch.enable_grad():
            value = loss(theta)
            (g,) = torch.autograd.grad(value.sum(), theta)
        return g[0], value.detach()[0]

    def __call__(self, family, nat, loss, *, generator=None) -> blr.Estimate:
        m, prec = family.to_moments(nat)
        g1, _ = self._grad(loss, family.sample(nat, (1,), generator))
        eps = self.radius * g1 / prec
        g_adv, value = self._grad(loss, (m + eps).unsqueeze(0))
        h_hat = torch.sqrt(prec / self.ess) * g1.abs() + self.ess * self.damping
        return blr.Estimate(family.mean_grad_from_gh(nat, g_adv, h_hat), value)


def blr_instance(
    pb: Problem,
    *,
    lr: float = LR,
    beta1: float = BETA1,
    beta2: float = BETA2,
    radius: float = RADIUS,
    damping: float = DAMPING,
    delta: float = DELTA,
    s0: float = S0,
) -> tuple[Tensor, Tensor]:
    """The diagonal-Gaussian BLR in (m, S) form on a batch of copies, from :mod:`blr` only:
    :class:`AdversarialEstimator` on Nℓ_B plus the prior (∇_μ − λ₀), ĝ ← β₁-average, then the
    mean half-step ``gaussian_step(Ĥ := S, lr=α)`` and the precision half-step
    ``gaussian_step(ĝ := 0, rho=1 − β₂)``. Returns the means and s = S/N ``(T + 1, B, D)``."""
    steps, copies = pb.z.shape[0], pb.z.shape[1]
    fam = expfam.DiagGaussian()
    zeros = torch.zeros(copies, D, dtype=F64)
    nat = fam.from_moments(zeros, torch.full_like(zeros, N * s0))
    prior = prior_nat(fam, (copies, D), delta)
    estimator = AdversarialEstimator(radius, damping, N)
    mean_options = blr.GaussianOptions(lr=lr)
    gen = torch.Generator().manual_seed(pb.noise_seed)
    g_avg = torch.zeros_like(zeros)
    means, scales = [], []
    for t in range(steps):
        m, prec = fam.to_moments(nat)
        means.append(m)
        scales.append(prec / N)
        grad = estimator(fam, nat, likelihood(pb.xb[t], pb.yb[t]), generator=gen).grad
        grad = expfam.DiagNat(grad.lam1 - prior.lam1, grad.lam2 - prior.lam2)  # + ∇_μE[R]
        g_hat, h_hat = fam.gh_from_mean_grad(nat, grad)  # (N(g + δm), Ĥ + Nδ)
        g_avg = beta1 * g_avg + (1 - beta1) * g_hat
        frozen = fam.mean_grad_from_gh(nat, g_avg, prec)  # Ĥ := S: G = 0
        nat = blr.gaussian_step(fam, nat, frozen, rho=1 - beta2, options=mean_options)
        still = fam.mean_grad_from_gh(nat, torch.zeros_like(g_hat), h_hat)  # ĝ := 0
        nat = blr.gaussian_step(fam, nat, still, rho=1 - beta2)
    m, prec = fam.to_moments(nat)
    return torch.stack([*means, m]), torch.stack([*scales, prec / N])


def kernel_instance(
    pb: Problem,
    *,
    lr: float = LR,
    beta1: float = BETA1,
    beta2: float = BETA2,
    radius: float = RADIUS,
    damping: float = DAMPING,
    delta: float = DELTA,
    s0: float = S0,
) -> tuple[Tensor, Tensor]:
    """All copies through :func:`blr.kernels.diag_gaussian_step_` on ``pb``'s device, two calls
    per step: ``rho=0`` (s frozen), ĝ = g + δm, ``g_avg`` with γ = 1 − β₁, ``lr=α`` (the mean
    with the old s), then ``rho = 1 − β₂`` with ĝ = 0 and ĥ = √s|g₁| + c + δ (s only).
    Returns the means and s ``(T + 1, B, D)``."""
    steps, copies = pb.z.shape[0], pb.z.shape[1]
    m = torch.zeros(copies, D, dtype=F64, device=pb.z.device)
    s = torch.full_like(m, s0)
    g_avg, nothing = torch.zeros_like(m), torch.zeros_like(m)
    means, scales = [m.clone()], [s.clone()]
    for t in range(steps):
        g1 = loss_grad(pb.xb[t], pb.yb[t], m + pb.z[t] * torch.rsqrt(N * s))
        g = loss_grad(pb.xb[t], pb.yb[t], m + radius * g1 / s)
        h_hat = s.sqrt() * g1.abs() + (damping + delta)
        diag_gaussian_step_(m, s, g + delta * m, None, rho=0.0, lr=lr, g_avg=g_avg, gamma=1 - beta1)
        diag_gaussian_step_(m, s, nothing, h_hat, rho=1 - beta2, lr=lr)
        means.append(m.clone())
        scales.append(s.clone())
    return torch.stack(means), torch.stack(scales)


def _dev(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> float:
    """max |Δ| over the means and the scales of two runs."""
    return max((x.cpu() - y.cpu()).abs().max().item() for x, y in zip(a, b))


def check(device: str = "cpu") -> list[Comparison]:
    """Hand-coded bSAM vs the two BLR half-steps (engine) and vs the kernel on ``device``
    (64 copies), 40 steps."""
    pb = problem()
    ref = classical(pb)
    engine = blr_instance(pb)
    kern = kernel_instance(pb.to(device))
    return [
        Comparison(
            "BLR half-steps (gaussian_step, 64 copies) vs bSAM, 40 steps, (m, s)",
            _dev(engine, ref),
            1e-10,
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs engine, 40 steps, (m, s)", _dev(kern, engine), 1e-10
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs bSAM, 40 steps, (m, s)", _dev(kern, ref), 1e-10
        ),
    ]


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "blr.GaussianOptions(lr=lr)",
        "blr.GaussianOptions(lr=1.01 * lr)",
        "BLR mean half-step rate α × 1.01",
    ),
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "AdversarialEstimator(radius, damping, N)",
        "AdversarialEstimator(1.01 * radius, damping, N)",
        "BLR estimator's radius r × 1.01",
    ),
    Mutation(
        "blr",
        "constant",
        "kernel_instance",
        "rho=1 - beta2, lr=lr",
        "rho=1.01 * (1 - beta2), lr=lr",
        "kernel precision rate 1 − β₂ × 1.01",
    ),
    Mutation(
        "blr",
        "term",
        "AdversarialEstimator.__call__",
        " + self.ess * self.damping",
        "",
        "estimator's Ĥ without the damping Nc",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "eps = radius * g1 / s",
        "eps = 1.01 * radius * g1 / s",
        "bSAM radius r × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "(1 - beta1) * (g + delta * m)",
        "(1 - beta1) * g",
        "bSAM momentum without the prior term δm",
    ),
)
