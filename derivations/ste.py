r"""The straight-through estimator (STE) for binary weights is the BLR on a Bernoulli
distribution over {−1, +1} with the delta method at the mode and minibatch gradients, in the
limit where the entropy's shrinkage vanishes.

**Family.** q(θ) = Π_j Bernoulli on θ_j ∈ {−1, +1} (:class:`expfam.Bernoulli` ``("pm1")``):
T(θ) = θ, λ_j = ½log(p_j/(1 − p_j)), A(λ) = Σ_j log(2cosh λ_j), μ = tanh λ, h = 1, so
∇_μ(−H) = atanh μ = λ and the BLR is λ ← (1 − ρ)λ − ρ∇_μE_q[ℓ̄] (uniform prior λ₀ = 0; a Bernoulli
prior adds ρλ₀).

**Rule.** The approximations that give STE, exactly:

1. the delta method at the mode: E_q[ℓ̄(θ)] is replaced by ℓ̄ at θ̂ = sign(λ) (the most probable
   binary weight; also the τ → 0 limit of the noise-free relaxed sample tanh(λ/τ));
2. the straight-through Jacobian: the derivative of θ̂ with respect to μ (0 almost everywhere)
   is replaced by 1, so ∇_μE_q[ℓ̄] ≈ ∇_θℓ̄(θ)|_{θ = sign λ} (estimator :class:`DeltaAtMode`);
3. the stochastic approximation: ∇ℓ̄ ≈ N ĝ with ĝ the minibatch gradient of the mean loss;
4. the shrinkage −ρλ (entropy) and +ρλ₀ (prior) vanish: with ρ = α/N the rule is
   λ ← (1 − α/N)λ + (α/N)λ₀ − αĝ(sign λ), which tends to λ ← λ − αĝ(sign λ) as N → ∞ with α
   fixed.

That limit is STE with the latent real weights w_r ≡ λ: w_b = sign(w_r),
w_r ← w_r − α∇_{w_b}ℓ(w_b). The BLR instance takes the step with the direction ∇_μE_q[ℓ̄] alone
(:func:`blr.engine.apply_step`, i.e. :func:`blr.step` without the ∇_μ(−H) term; the N → ∞
form), and, to show the limit, the complete rule :func:`blr.step` with ρ = α/N: equal to its
closed form (1 − α/N)λ − αĝ for N = 10, within 1e-10 of STE for N = 10¹², with N·|Δ| constant
(Δ = O(1/N)). Delta at the mean instead of the mode, θ̂ = μ = tanh λ, needs no straight-through
step (∂θ̂/∂μ = 1 exactly): E_q[ℓ̄] ≈ ℓ̄(μ) is a closed-form expected loss, so :class:`blr.Exact`
applies, and the complete rule is the deterministic BCVI-D update of BayesBiNN,
λ ← (1 − ρ)λ − ρN∇ℓ(tanh λ).

**Equality conditions.** Delta at the mode with the straight-through Jacobian, entropy and prior
terms dropped (equivalently N → ∞ with α = ρN fixed), the same minibatches, the initial λ equal
to the initial w_r, and no weight exactly at 0 (sign(0) = 0 is neither binary value) ⇒ the BLR
iterates equal STE's. The
BCVI-D variant (delta at the mean, complete rule, uniform prior) equals its closed form for any
ρ, N. **[unverified-paper-detail]** The paper lists only "delta method, stochastic approx." for
this row; the straight-through Jacobian, the mode (rather than the mean) and the vanishing
shrinkage are this reconstruction's (BLR_SPEC Row 7).

**Test problem** (BLR_SPEC Row 7 (f)). ℓ(θ) = ½‖Aθ − b‖² on θ ∈ {±1}⁴, A 6×4 and b from seed
0, α = 0.01, 30 steps from w_r = (0.3, −0.2, 0.1, −0.4): BLR-STE equals hand-coded STE with the
full loss and with minibatches of M = 3 of the 6 rows (ĝ = (6/3)Σ_{i∈B}∇ℓ_i, a stored index
sequence). BCVI-D: ρ = 0.01, N = 10 (ℓ̄ = 10ℓ), 30 steps from the same λ.

**References.** Khan & Rue (2023), Table 1 row 7; Bengio, Léonard & Courville (2013);
Courbariaux et al., "BinaryConnect" (2015); Meng, Bachmann & Khan, "Training binary neural
networks using the Bayesian learning rule" (ICML 2020) for BayesBiNN and BCVI-D.
"""

from __future__ import annotations

import sympy as sp
import torch

import blr
import expfam
from blr.engine import apply_step
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="ste",
    number=7,
    algorithm="STE",
    posterior="Bernoulli (±1)",
    approximation="delta method (at the mode), stochastic approx.",
    symbolic="✓",
)

ROWS_A = 6
DIM = 4
ALPHA = 0.01
STEPS = 30
W0 = (0.3, -0.2, 0.1, -0.4)
BATCH = 3
N_SCALE = 10.0
RHO_BCVI = 0.01


def derive() -> list[str]:
    """Bernoulli(±1): μ = tanh λ, F = 1 − tanh²λ, ∇_μ(−H) = λ; ∇_μ = F⁻¹∇_λ; the relaxed sample's
    derivative and its τ → 0 limit sign(λ); the BCVI-D step; ρ = α/N, N → ∞ gives STE."""
    lam, mu, tau, eps = sp.symbols("lambda mu tau epsilon", real=True)
    x = sp.Symbol("x", positive=True)

    def is_zero(expr: sp.Expr) -> bool:
        """A hyperbolic expression in λ is 0: with x = e^λ it is a rational function of x."""
        return sp.cancel(sp.together(expr.rewrite(sp.exp).subs(lam, sp.log(x)))) == 0

    log_partition = sp.log(2 * sp.cosh(lam))
    mean = sp.diff(log_partition, lam)
    assert is_zero(mean - sp.tanh(lam))
    fisher = sp.diff(mean, lam)
    assert is_zero(fisher - (1 - sp.tanh(lam) ** 2))
    # −H(μ) = Σ_θ P(θ) log P(θ), P(±1) = (1 ± μ)/2; d/dμ = atanh μ = ½log((1 + μ)/(1 − μ)) = λ
    p_plus, p_minus = (1 + mu) / 2, (1 - mu) / 2
    neg_entropy = p_plus * (sp.log(1 + mu) - sp.log(2)) + p_minus * (sp.log(1 - mu) - sp.log(2))
    atanh = (sp.log(1 + mu) - sp.log(1 - mu)) / 2
    assert sp.cancel(sp.expand(sp.diff(neg_entropy, mu) - atanh)) == 0
    assert is_zero(((1 + mu) / (1 - mu)).subs(mu, sp.tanh(lam)) - sp.exp(2 * lam))  # = e^{2λ}
    # natural gradient = ∇_μ: F⁻¹ ∂_λ L(tanh λ) = L'(tanh λ)
    big_l = sp.Function("L")
    nat_grad = sp.diff(big_l(sp.tanh(lam)), lam) / sp.diff(sp.tanh(lam), lam)
    assert sp.cancel(nat_grad - sp.Subs(sp.Derivative(big_l(mu), mu), mu, sp.tanh(lam))) == 0
    # relaxed sample θ_τ = tanh((λ + ε)/τ): ∂θ_τ/∂λ = (1 − θ_τ²)/τ
    theta_tau = sp.tanh((lam + eps) / tau)
    assert sp.expand(sp.diff(theta_tau, lam) - (1 - theta_tau**2) / tau) == 0
    # τ → 0⁺ without noise: tanh(λ/τ) → sign λ (the mode)
    lp, t0 = sp.Symbol("l", positive=True), sp.Symbol("t", positive=True)
    assert sp.limit(sp.tanh(lp / t0), t0, 0, "+") == 1  # λ = l > 0
    assert sp.limit(sp.tanh(-lp / t0), t0, 0, "+") == -1  # λ = −l < 0
    # the rule λ' = λ − ρ(∇_μE_q[ℓ̄] + λ) with ∇_μE_q[ℓ̄] ≈ N ĝ(θ̂)
    rho, alpha, n, g = sp.symbols("rho alpha N ghat", positive=True)
    ell = sp.Function("ell")
    # BCVI-D: θ̂ = μ ⇒ ∇_μ ℓ̄(μ) = Nℓ'(μ) and λ' = (1 − ρ)λ − ρNℓ'(tanh λ)
    grad_mean = sp.diff(n * ell(mu), mu).subs(mu, sp.tanh(lam))
    bcvi = lam - rho * (grad_mean + lam)
    want = (1 - rho) * lam - rho * n * sp.Subs(sp.Derivative(ell(mu), mu), mu, sp.tanh(lam))
    assert sp.expand(bcvi.doit() - want.doit()) == 0
    # STE: θ̂ = sign λ with ∂θ̂/∂μ := 1, ρ = α/N: λ' = (1 − α/N)λ − αĝ → λ − αĝ as N → ∞
    ste = lam - (alpha / n) * (n * g + lam)
    assert sp.expand(ste - ((1 - alpha / n) * lam - alpha * g)) == 0
    assert sp.limit(ste, n, sp.oo) == lam - alpha * g
    return [
        "Bernoulli(±1): A = log(2cosh λ), μ = A' = tanh λ, F = A'' = 1 − tanh²λ",
        "−H(μ) = Σ P log P with P(±1) = (1 ± μ)/2: ∇_μ(−H) = atanh μ = λ",
        "natural gradient: F⁻¹∂_λL(tanh λ) = L'(μ) (= ∇_μ)",
        "relaxed sample θ_τ = tanh((λ + ε)/τ): ∂θ_τ/∂λ = (1 − θ_τ²)/τ; "
        "tanh(λ/τ) → sign λ as τ → 0⁺",
        "BCVI-D (delta at the mean): λ' = (1 − ρ)λ − ρNℓ'(tanh λ)",
        "STE (delta at the mode, straight-through, ρ = α/N): λ' = (1 − α/N)λ − αĝ → λ − αĝ "
        "as N → ∞",
    ]


def problem(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``(6, 4)`` and b ``(6,)`` from seed 0."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(ROWS_A, DIM, dtype=dtype, generator=gen)
    b = torch.randn(ROWS_A, dtype=dtype, generator=gen)
    return a, b


def index_sequence(steps: int, seed: int) -> torch.Tensor:
    """Stored minibatches of M = 3 of the 6 rows, ``(steps, M)``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(steps, ROWS_A, generator=gen).argsort(-1)[:, :BATCH]


def loss_fn(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor | None = None, scale: float = 1.0):
    """θ ↦ scale·(N_A/M)·Σ_{i∈B} ½(a_iᵀθ − b_i)² (all rows when ``rows`` is None), vectorized."""
    if rows is not None:
        a, b, scale = a[rows], b[rows], scale * ROWS_A / rows.shape[0]
    return lambda theta: scale * 0.5 * (theta @ a.T - b).square().sum(-1)


def classical(
    w0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor | None
) -> torch.Tensor:
    """Hand-coded STE: w_b = sign(w_r), w_r ← w_r − α(N_A/M)Σ_{i∈B} a_i(a_iᵀw_b − b_i) (all rows
    when ``idx`` is None); returns all latent weights."""
    w, out = w0, [w0]
    for t in range(STEPS):
        rows = torch.arange(ROWS_A) if idx is None else idx[t]
        ab, bb = a[rows], b[rows]
        w_b = torch.sign(w)
        w = w - ALPHA * (ROWS_A / rows.shape[0]) * ab.T @ (ab @ w_b - bb)
        out.append(w)
    return torch.stack(out)


def bcvi_closed_form(lam0: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hand-coded BCVI-D: λ ← (1 − ρ)λ − ρN Aᵀ(A tanh λ − b); returns all λ."""
    lam, out = lam0, [lam0]
    for _ in range(STEPS):
        mu = torch.tanh(lam)
        lam = (1 - RHO_BCVI) * lam - RHO_BCVI * N_SCALE * a.T @ (a @ mu - b)
        out.append(lam)
    return torch.stack(out)


def shrink_closed_form(
    lam0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, n: float
) -> torch.Tensor:
    """The complete rule with ρ = α/N written out: λ ← (1 − α/N)λ − α Aᵀ(A sign λ − b)."""
    lam, out = lam0, [lam0]
    for _ in range(STEPS):
        lam = (1 - ALPHA / n) * lam - ALPHA * a.T @ (a @ torch.sign(lam) - b)
        out.append(lam)
    return torch.stack(out)


class DeltaAtMode(blr.Estimator):
    r"""∇_μE_q[ℓ] ≈ ∇_θℓ(θ)|_{θ = sign λ}: the delta method at the mode of a ±1 Bernoulli with
    the straight-through Jacobian (∂θ̂/∂μ := 1). The loss takes θ ``(K, D)`` (D binary weights
    held as a batch of D Bernoullis) and returns ``(K,)``."""

    def __call__(self, family, nat, loss, *, generator=None) -> blr.Estimate:
        if not (isinstance(family, expfam.Bernoulli) and family.support == "pm1"):
            raise TypeError(f"DeltaAtMode needs a Bernoulli on {{−1, +1}}, got {family!r}")
        theta = torch.sign(nat.lam1).detach().unsqueeze(0).requires_grad_()
        with torch.enable_grad():
            value = loss(theta)
            (grad,) = torch.autograd.grad(value.sum(), theta)
        return blr.Estimate(family.nat_type(grad[0]), value.detach()[0])


def blr_ste(
    w0: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    idx: torch.Tensor | None,
    n: float | None = None,
) -> torch.Tensor:
    """The BLR on Bernoulli(±1) with :class:`DeltaAtMode` on ℓ̄ = Nℓ (minibatch B_t when ``idx``)
    and ρ = α/N: with ``n=None`` the step λ − ρ∇_μE_q[ℓ̄] (the entropy term dropped, the N → ∞
    form; N = 1 then), else the complete rule :func:`blr.step`. Returns all λ."""
    fam = expfam.Bernoulli("pm1")
    nat = expfam.BernoulliNat(w0.clone())
    scale = 1.0 if n is None else n
    out = [nat.lam1]
    for t in range(STEPS):
        loss = loss_fn(a, b, None if idx is None else idx[t], scale)
        if n is None:
            est = DeltaAtMode()(fam, nat, loss)
            nat = apply_step(fam, nat, est.grad, ALPHA)
        else:
            nat = blr.step(fam, nat, loss, ALPHA / n, estimator=DeltaAtMode())
        out.append(nat.lam1)
    return torch.stack(out)


def blr_bcvi(lam0: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """BCVI-D through the engine: :func:`blr.step` with :class:`blr.Exact` on the delta-at-the-mean
    expected loss μ ↦ Nℓ(μ), ρ = 0.01, uniform prior."""
    fam = expfam.Bernoulli("pm1")
    nat = expfam.BernoulliNat(lam0.clone())
    loss = loss_fn(a, b, None, N_SCALE)

    def expected_loss(mean: expfam.BernoulliMean) -> torch.Tensor:
        return loss(mean.mu1)  # E_q[ℓ̄] ≈ ℓ̄(μ)

    out = [nat.lam1]
    for _ in range(STEPS):
        nat = blr.step(fam, nat, expected_loss, RHO_BCVI, estimator=blr.Exact())
        out.append(nat.lam1)
    return torch.stack(out)


def check(device: str = "cpu") -> list[Comparison]:
    """BLR-STE vs STE (full loss and minibatches), the complete rule's shrinkage and its
    N → ∞ limit, and BCVI-D vs its closed form. (Not a Gaussian row: no batched kernel; the
    device is unused.)"""
    a, b = problem()
    idx = index_sequence(STEPS, seed=1)
    w0 = torch.tensor(W0, dtype=torch.float64)
    ste_full, ste_mb = classical(w0, a, b, None), classical(w0, a, b, idx)
    assert (torch.sign(ste_full[1:]) != torch.sign(ste_full[:-1])).any()  # the signs do flip
    blr_full, blr_mb = blr_ste(w0, a, b, None), blr_ste(w0, a, b, idx)
    shrink = blr_ste(w0, a, b, None, n=N_SCALE)
    far = blr_ste(w0, a, b, None, n=1e12)
    dev5 = (blr_ste(w0, a, b, None, n=1e5) - ste_full).abs().max().item() * 1e5
    dev7 = (blr_ste(w0, a, b, None, n=1e7) - ste_full).abs().max().item() * 1e7
    bcvi = blr_bcvi(w0, a, b)
    return [
        Comparison(
            "BLR-STE vs STE, full loss, 30 steps", (blr_full - ste_full).abs().max().item(), 1e-12
        ),
        Comparison(
            "BLR-STE vs STE, minibatches M = 3, 30 steps",
            (blr_mb - ste_mb).abs().max().item(),
            1e-12,
        ),
        Comparison(
            "complete rule ρ = α/N, N = 10 vs (1 − α/N)λ − αĝ",
            (shrink - shrink_closed_form(w0, a, b, N_SCALE)).abs().max().item(),
            1e-12,
        ),
        Comparison(
            "complete rule ρ = α/N, N = 10¹² vs STE", (far - ste_full).abs().max().item(), 1e-10
        ),
        Comparison(
            "N·max|Δ| at N = 10⁵ vs N = 10⁷ (relative; Δ = O(1/N))",
            abs(dev5 - dev7) / dev7,
            1e-3,
            kind="limit",
        ),
        Comparison(
            "BCVI-D (Exact on ℓ̄(μ)) vs closed form, 30 steps",
            (bcvi - bcvi_closed_form(w0, a, b)).abs().max().item(),
            1e-12,
        ),
    ]
