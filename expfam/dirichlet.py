"""Dirichlet distribution on the probability simplex, with the digamma machinery it shares with the
Beta family: stable digamma differences, a log-space Gamma sampler and the μ → α solver."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from expfam.base import ExpFamily, check_finite, check_positive
from expfam.tree import sum_event

_EULER = 0.5772156649015329
# B_2k / (2k), k = 1..8, for the asymptotic series ψ(x) ~ log x − 1/(2x) − Σ_k B_2k / (2k x^{2k})
_PSI_SERIES = (
    1 / 12,
    -1 / 120,
    1 / 252,
    -1 / 240,
    1 / 132,
    -691 / 32760,
    1 / 12,
    -3617 / 8160,
)
_SERIES_FROM = 10.0  # the series above is accurate to ~1e-17 relative for x ≥ 10


class DirichletNat(NamedTuple):
    """λ of a Dirichlet: ``lam1 = α − 1`` (shape ``(*batch, K)``, concentrations α > 0)."""

    lam1: Tensor


class DirichletMean(NamedTuple):
    """μ of a Dirichlet: ``mu1 = E[log θ] = ψ(α) − ψ(Σα)`` (shape ``(*batch, K)``)."""

    mu1: Tensor


def work_dtype(x: Tensor) -> Tensor:
    """``x`` in float64 where the device has it (a differentiable cast).

    The lgamma/digamma expressions of the Gamma-type families cancel heavily at large
    concentrations (lgamma(1e4) ≈ 8e4 against results of order 1), which float32 cannot afford;
    these families compute in float64 and round the result to the input's dtype.
    """
    if x.dtype == torch.float64 or x.device.type == "mps":
        return x
    return x.to(torch.float64)


def digamma_diff(x: Tensor, r: Tensor) -> Tensor:
    """ψ(x + r) − ψ(x) for x > 0, r ≥ 0, accurate to a few ulps relative even when r ≪ x.

    The plain difference of two digammas loses all digits of a small difference (ψ(1e4 + 1e-3) −
    ψ(1e4) ≈ 1e-7 from values ≈ 9.2). Here x is shifted to x + m ≥ 10 by the recurrence
    ψ(x + 1) = ψ(x) + 1/x, whose terms r / ((x + i)(x + i + r)) are positive, and the rest is the
    difference of the asymptotic series written with log1p/expm1.
    """
    acc = torch.zeros_like(x + r)
    big = x
    for _ in range(int(_SERIES_FROM)):
        small = big < _SERIES_FROM
        acc = acc + torch.where(small, r / (big * (big + r)), 0.0)
        big = torch.where(small, big + 1, big)
    ratio = torch.log1p(r / big)  # log((X + r) / X)
    acc = acc + ratio + 0.5 * r / (big * (big + r))
    inv2 = 1 / (big * big)
    power = torch.ones_like(inv2)
    for k, coef in enumerate(_PSI_SERIES, start=1):
        power = power * inv2  # X^{-2k}
        acc = acc - coef * power * torch.expm1(-2 * k * ratio)  # coef (X^{-2k} − (X+r)^{-2k})
    return acc


def _exclusive_sums(alpha: Tensor) -> Tensor:
    """Σ_{j≠k} α_j along the last dimension, as sums of positive terms (no cancellation)."""
    zero = torch.zeros_like(alpha[..., :1])
    left = torch.cat([zero, alpha[..., :-1].cumsum(-1)], dim=-1)
    right = torch.cat([alpha.flip(-1)[..., :-1].cumsum(-1).flip(-1), zero], dim=-1)
    return left + right


def dirichlet_mean_from_concentration(alpha: Tensor) -> Tensor:
    """E[log θ] = ψ(α) − ψ(Σα) of Dirichlet(α), computed as −(ψ(α_k + Σ_{j≠k} α_j) − ψ(α_k))
    with :func:`digamma_diff` (full relative precision, also for a dominant α_k)."""
    return -digamma_diff(alpha, _exclusive_sums(alpha))


def _inv_digamma(y: Tensor, iters: int = 5) -> Tensor:
    """x > 0 with ψ(x) = y: Newton in log x from Minka's start.

    ψ(e^z) is increasing and concave in z (x ψ'(x) decreases), so Newton converges from either
    side; five steps reach full float64 precision for x in [1e-300, 1e250].
    """
    z = torch.where(
        y >= -2.22,
        y + torch.log1p(0.5 * torch.exp(-y.clamp(min=-2.22))),  # log(e^y + 1/2)
        -torch.log(-(y.clamp(max=-2.22) + _EULER)),  # log(−1/(y − ψ(1)))
    )
    for _ in range(iters):
        x = torch.exp(z)
        z = (z - (torch.digamma(x) - y) / _x_trigamma(x)).clamp(-700.0, 700.0)
    return torch.exp(z)


def _x_trigamma(x: Tensor) -> Tensor:
    """x ψ'(x), without overflow for tiny x (ψ'(x) = 1/x² + ψ'(x + 1))."""
    tiny = x < 1
    xs = torch.where(tiny, x + 1, x)
    return torch.where(tiny, 1 / x, 0.0) + x * torch.polygamma(1, xs)


def _fisher_solve(alpha: Tensor, v: Tensor) -> Tensor:
    """J⁻¹ v for the Jacobian J = ∂μ/∂α = diag(ψ'(α)) − ψ'(α₀) 11ᵀ (Sherman–Morrison)."""
    d = torch.polygamma(1, alpha)
    c = torch.polygamma(1, alpha.sum(-1, keepdim=True))
    vd = v / d
    den = 1 - (c / d).sum(-1, keepdim=True)  # > 0: J is a covariance matrix
    return vd + (c * vd.sum(-1, keepdim=True) / den) / d


def _solve_total(mu: Tensor, max_iter: int) -> Tensor:
    """Stage 1: the total α₀ = Σα, by safeguarded Newton on s = log α₀ for
    g(s) = log Σ_k ψ⁻¹(μ_k + ψ(α₀)) − s, which falls from log K (α₀ → 0) to logsumexp(μ) < 0
    (α₀ → ∞). Returns α_k = ψ⁻¹(μ_k + ψ(α₀)) at the root (about 1e-8 accurate where one α_k
    dominates, since μ_k + ψ(α₀) rounds away the small μ_k; stage 2 fixes that)."""
    eps = torch.finfo(mu.dtype).eps
    k = mu.shape[-1]
    lse = torch.logsumexp(mu, -1)
    # large-α asymptotics ψ(x) ≈ log x − 1/(2x) give logsumexp(μ) ≈ −(K − 1)/(2α₀)
    s = torch.log((k - 1) / (-2 * lse)).clamp(-700.0, 700.0)
    lo = torch.full_like(s, -math.inf)
    hi = torch.full_like(s, math.inf)
    done = torch.zeros_like(s, dtype=torch.bool)
    prev = torch.full_like(s, math.inf)
    for _ in range(max_iter):
        a0 = torch.exp(s)
        alpha = _inv_digamma(mu + torch.digamma(a0).unsqueeze(-1))
        total = alpha.sum(-1)
        g = torch.log(total) - s
        dg = _x_trigamma(a0) * (alpha / _x_trigamma(alpha)).sum(-1) / total - 1  # < 0
        step = -g / dg
        # converged: a negligible step, or Newton stalled at the rounding level of g
        noise = 8 * eps * (1 + torch.digamma(a0).abs() + mu.abs().amax(-1))
        stalled = (g.abs() <= noise) & (step.abs() >= 0.25 * prev)
        done = done | (step.abs() <= 1e-12) | stalled
        if bool(done.all()):
            break
        prev = step.abs()
        lo = torch.where(g > 0, torch.maximum(lo, s), lo)
        hi = torch.where(g < 0, torch.minimum(hi, s), hi)
        cand = s + step.clamp(-5.0, 5.0)
        outside = (cand <= lo) | (cand >= hi) | ~torch.isfinite(cand)
        bracketed = torch.isfinite(lo) & torch.isfinite(hi)
        cand = torch.where(outside & bracketed, 0.5 * (lo + hi), cand)
        cand = torch.where(outside & ~bracketed, s + torch.where(g > 0, 2.0, -2.0), cand)
        s = torch.where(done, s, cand.clamp(-700.0, 700.0))
    return _inv_digamma(mu + torch.digamma(torch.exp(s)).unsqueeze(-1))


def _polish(alpha: Tensor, mu: Tensor, max_iter: int) -> Tensor:
    """Stage 2: Newton on log α with the exact Jacobian and the stable residual
    μ(α) − μ; a step is kept only where it lowers the largest relative residual."""
    eps = torch.finfo(mu.dtype).eps
    scale = mu.abs()
    resid = dirichlet_mean_from_concentration(alpha) - mu
    worst = (resid.abs() / scale).amax(-1)
    for _ in range(max_iter):
        step = -_fisher_solve(alpha, resid) / alpha
        cand = alpha * torch.exp(step.clamp(-2.0, 2.0))
        cand_resid = dirichlet_mean_from_concentration(cand) - mu
        cand_worst = (cand_resid.abs() / scale).amax(-1)
        better = (cand_worst < worst) & torch.isfinite(cand).all(-1)
        alpha = torch.where(better.unsqueeze(-1), cand, alpha)
        resid = torch.where(better.unsqueeze(-1), cand_resid, resid)
        worst = torch.where(better, cand_worst, worst)
        if not bool(better.any()) or bool((step.abs() <= 4 * eps).all()):
            break
    return alpha


def dirichlet_mean_to_concentration(mu1: Tensor, *, max_iter: int = 100) -> Tensor:
    """The concentrations α of the Dirichlet with E[log θ] = ``mu1`` (shape ``(*batch, K)``),
    i.e. the solution of ψ(α_k) − ψ(Σ_j α_j) = μ_k; this is also the Dirichlet maximum-likelihood
    fit given the average log-observations.

    Requires K ≥ 2, μ < 0 and logsumexp(μ) < 0 (the mean domain; not checked here). Vectorized over
    the batch; computed in float64 (see :func:`work_dtype`) and returned in the dtype of ``mu1``.

    1. Minka's fixed point α_k = ψ⁻¹(μ_k + ψ(α₀)) reduces the system to one equation in the total
       α₀, solved by bracketed Newton on log α₀ from the large-α estimate α₀ ≈ (K − 1) /
       (−2 logsumexp(μ)).
    2. Newton on log α with the Jacobian diag(ψ'(α)) − ψ'(α₀) 11ᵀ (inverted by Sherman–Morrison) and
       the residual from :func:`dirichlet_mean_from_concentration` then restores full relative
       precision (about 1e-14 on α where μ determines α well; near the boundary of the mean domain,
       at large α₀, the error grows like eps · α₀ / (K − 1), which is μ's own conditioning).

    Differentiable in ``mu1``: the gradient is the implicit one, dα/dμ = J(α)⁻¹.

    Example:
        >>> import torch
        >>> from expfam.dirichlet import dirichlet_mean_to_concentration
        >>> alpha = torch.tensor([0.5, 2.0, 30.0], dtype=torch.float64)
        >>> mu = torch.digamma(alpha) - torch.digamma(alpha.sum())
        >>> dirichlet_mean_to_concentration(mu)
        tensor([ 0.5000,  2.0000, 30.0000], dtype=torch.float64)
    """
    mu = work_dtype(mu1)
    with torch.no_grad():
        fixed = mu.detach()
        alpha = _solve_total(fixed, max_iter)
        alpha = _polish(alpha, fixed, 8)
    if torch.is_grad_enabled() and mu.requires_grad:
        alpha = alpha + _fisher_solve(alpha, mu - fixed)  # value unchanged; dα/dμ = J⁻¹
    return alpha.to(mu1.dtype)


def sample_log_gamma(alpha: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """log X for X ~ Gamma(α, 1), finite even where X itself underflows (α ≪ 1).

    Uses X = G · U^{1/α} with G ~ Gamma(α + 1) and U ~ Uniform(0, 1] for α < 1, so log X =
    log G + log(U)/α never forms the tiny X. Differentiable in α (reparameterized: the implicit
    gradient of ``torch._standard_gamma`` for G, and U held fixed).
    """
    boost = alpha < 1
    g = torch._standard_gamma(torch.where(boost, alpha + 1, alpha), generator)
    u = torch.rand(alpha.shape, dtype=alpha.dtype, device=alpha.device, generator=generator)
    log_u = torch.log1p(-u)  # log of a uniform on (0, 1]: finite
    return torch.log(g) + torch.where(boost, log_u / alpha, 0.0)


class Dirichlet(ExpFamily):
    r"""Dirichlet distribution on the simplex {θ ∈ (0, 1)^K : Σθ = 1}, θ ~ Dir(α).

    .. math::
        T(\theta) = \log\theta,\quad \lambda = \alpha - 1,\quad
        \mu = \psi(\alpha) - \psi(\alpha_0),\quad \alpha_0 = \textstyle\sum_k \alpha_k,\\
        A(\lambda) = \sum_k \log\Gamma(\alpha_k) - \log\Gamma(\alpha_0),\quad
        \log h(\theta) = 0,\quad \nabla_\mu(-H) = \lambda.

    h is constant with respect to the Lebesgue measure on the simplex (the density of the first
    K − 1 coordinates), so :meth:`log_prob` equals ``torch.distributions.Dirichlet.log_prob``.
    Events are vectors of size K ≥ 2 (the last dimension); leading dimensions are batch
    dimensions. μ → λ has no closed form: see :func:`dirichlet_mean_to_concentration`. Special
    functions are evaluated in float64 for float32 input (see :func:`work_dtype`).

    Example:
        >>> import torch
        >>> from expfam.dirichlet import Dirichlet, DirichletNat
        >>> fam = Dirichlet()
        >>> nat = fam.from_concentration(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> mean = fam.nat_to_mean(nat)
        >>> mean.mu1
        tensor([-2.2833, -1.2833, -0.7833], dtype=torch.float64)
        >>> fam.concentration(fam.mean_to_nat(mean))
        tensor([1.0000, 2.0000, 3.0000], dtype=torch.float64)
    """

    name = "dirichlet"
    nat_type = DirichletNat
    mean_type = DirichletMean
    event_ndims = (1,)
    has_rsample = True
    min_dim = 2

    # conversions to and from α
    def from_concentration(self, alpha: Tensor) -> DirichletNat:
        """λ from the concentrations ``alpha`` > 0 (shape ``(*batch, K)``).

        Example:
            >>> import torch, expfam
            >>> expfam.Dirichlet().from_concentration(torch.tensor([1.0, 2.0, 3.0]))
            DirichletNat(lam1=tensor([0., 1., 2.]))
        """
        check_positive(alpha, "alpha", "> 0 (concentrations)")
        return DirichletNat(alpha - 1)

    def concentration(self, nat: DirichletNat) -> Tensor:
        """α = λ + 1.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Dirichlet()
            >>> nat = fam.from_concentration(torch.tensor([1.0, 2.0, 3.0]))
            >>> fam.concentration(nat)
            tensor([1., 2., 3.])
        """
        self.validate_nat(nat)
        return nat.lam1 + 1

    # the contract
    def _suff_stats(self, x: Tensor) -> DirichletMean:
        return DirichletMean(torch.log(x))

    def _log_base_measure(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x[..., 0])

    def _log_partition(self, nat: DirichletNat) -> Tensor:
        alpha = work_dtype(nat.lam1) + 1
        out = sum_event(torch.lgamma(alpha), 1) - torch.lgamma(alpha.sum(-1))
        return out.to(nat.lam1.dtype)

    def _nat_to_mean(self, nat: DirichletNat) -> DirichletMean:
        alpha = work_dtype(nat.lam1) + 1
        return DirichletMean(dirichlet_mean_from_concentration(alpha).to(nat.lam1.dtype))

    def _mean_to_nat(self, mean: DirichletMean) -> DirichletNat:
        return DirichletNat(dirichlet_mean_to_concentration(mean.mu1) - 1)

    def _expected_log_base_measure(self, nat: DirichletNat) -> Tensor:
        return torch.zeros_like(nat.lam1[..., 0])

    def _neg_entropy_grad(self, nat: DirichletNat) -> DirichletNat:
        return nat

    def _entropy(self, nat: DirichletNat) -> Tensor:
        # H = A − <λ, μ>
        lam = work_dtype(nat.lam1)
        mu = dirichlet_mean_from_concentration(lam + 1)
        return (self._log_partition(DirichletNat(lam)) - sum_event(lam * mu, 1)).to(nat.lam1.dtype)

    def _kl(self, nat_p: DirichletNat, nat_q: DirichletNat) -> Tensor:
        # KL = A(λ_q) − A(λ_p) − <λ_q − λ_p, μ_p>
        lp, lq = work_dtype(nat_p.lam1), work_dtype(nat_q.lam1)
        mu_p = dirichlet_mean_from_concentration(lp + 1)
        kl = (
            self._log_partition(DirichletNat(lq))
            - self._log_partition(DirichletNat(lp))
            - sum_event((lq - lp) * mu_p, 1)
        )
        return kl.to(nat_p.lam1.dtype)

    def _log_prob(self, nat: DirichletNat, x: Tensor) -> Tensor:
        lam = work_dtype(nat.lam1)
        out = sum_event(lam * torch.log(work_dtype(x)), 1) - self._log_partition(DirichletNat(lam))
        return out.to(torch.promote_types(nat.lam1.dtype, x.dtype))

    def _sample(self, nat: DirichletNat, sample_shape, generator) -> Tensor:
        alpha = nat.lam1 + 1
        shape = tuple(sample_shape) + tuple(alpha.shape)
        # normalize Gammas in log space (a softmax), then keep every coordinate ≥ the smallest
        # normal number so that log θ stays finite where tiny concentrations underflow
        theta = torch.softmax(sample_log_gamma(alpha.expand(shape), generator), dim=-1)
        theta = theta.clamp_min(torch.finfo(theta.dtype).tiny)
        return theta / theta.sum(-1, keepdim=True)

    def _check_nat(self, nat: DirichletNat, name: str) -> None:
        lam = nat.lam1
        if lam.shape[-1] < 2:
            raise ValueError(
                f"{name}.lam1 must have K ≥ 2 categories in its last dimension, got shape "
                f"{tuple(lam.shape)}"
            )
        check_finite(lam, f"{name}.lam1")
        if not (lam > -1).all():
            raise ValueError(
                f"{name}.lam1 must be > -1 (concentration alpha = lam1 + 1 > 0), got min "
                f"{lam.min().item():.6g}"
            )

    def _check_mean(self, mean: DirichletMean, name: str) -> None:
        mu = mean.mu1
        if mu.shape[-1] < 2:
            raise ValueError(
                f"{name}.mu1 must have K ≥ 2 categories in its last dimension, got shape "
                f"{tuple(mu.shape)}"
            )
        check_finite(mu, f"{name}.mu1")
        if not (mu < 0).all():
            raise ValueError(
                f"{name}.mu1 must be < 0 (mu1 = E[log θ] for θ on the simplex), got max "
                f"{mu.max().item():.6g}"
            )
        lse = torch.logsumexp(mu, -1)
        if not (lse < 0).all():
            raise ValueError(
                f"{name}.mu1 must satisfy logsumexp(mu1) < 0 (Jensen: Σ_k exp E[log θ_k] < "
                f"Σ_k E[θ_k] = 1), got max {lse.max().item():.6g}"
            )

    def _to_torch(self, nat: DirichletNat) -> torch.distributions.Distribution:
        return torch.distributions.Dirichlet(nat.lam1 + 1, validate_args=False)

    def example_nat(
        self,
        batch_shape: Sequence[int] = (),
        dim: int = 3,
        *,
        extreme: bool = False,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> DirichletNat:
        """Random λ of ``dim`` ≥ 2 categories with concentrations α log-uniform in [0.3, 30]
        ([1e-3, 1e4] with ``extreme``).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Dirichlet()
            >>> nat = fam.example_nat((2,), dim=4, generator=torch.Generator().manual_seed(0))
            >>> alpha = fam.concentration(nat)
            >>> alpha.shape, bool((alpha > 0).all())
            (torch.Size([2, 4]), True)
        """
        if dim < 2:
            raise ValueError(f"dim must be ≥ 2 for the Dirichlet, got {dim}")
        lo, hi = (math.log(1e-3), math.log(1e4)) if extreme else (math.log(0.3), math.log(30.0))
        u = torch.rand((*batch_shape, dim), dtype=dtype, device=device, generator=generator)
        return DirichletNat(torch.exp(lo + (hi - lo) * u) - 1)
