"""Gamma distribution on (0, ∞), with shape a and rate b."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from expfam.base import ExpFamily, check_finite, check_positive
from expfam.dirichlet import work_dtype

# Bernoulli numbers B_2k, k = 1..8: ψ(x) ~ log x − 1/(2x) − Σ B_2k / (2k x^{2k}) and
# ψ'(x) ~ 1/x + 1/(2x²) + Σ B_2k / x^{2k+1}, accurate to ~1e-17 relative for x ≥ 10
_BERNOULLI = (1 / 6, -1 / 30, 1 / 42, -1 / 30, 5 / 66, -691 / 2730, 7 / 6, -3617 / 510)
_SERIES_FROM = 10.0
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class GammaNat(NamedTuple):
    """λ of a Gamma: ``lam1 = a − 1``, ``lam2 = −b`` (shape a > 0, rate b > 0; same shape)."""

    lam1: Tensor
    lam2: Tensor


class GammaMean(NamedTuple):
    """μ of a Gamma: ``mu1 = E[log θ] = ψ(a) − log b``, ``mu2 = E[θ] = a / b``."""

    mu1: Tensor
    mu2: Tensor


def digamma_minus_log(x: Tensor) -> Tensor:
    """ψ(x) − log x (< 0), without the cancellation of the plain difference at large x
    (≈ −1/(2x): the asymptotic series for x ≥ 10)."""
    big = x.clamp(min=_SERIES_FROM)
    inv2 = 1 / (big * big)
    series = torch.zeros_like(big)
    for k in reversed(range(1, len(_BERNOULLI) + 1)):
        series = (series + _BERNOULLI[k - 1] / (2 * k)) * inv2
    asym = -0.5 / big - series
    small = x.clamp(max=_SERIES_FROM)
    return torch.where(x >= _SERIES_FROM, asym, torch.digamma(small) - torch.log(small))


def _lgamma_stirling_remainder(x: Tensor) -> Tensor:
    """log Γ(x) − ((x − ½) log x − x + ½ log 2π) (≈ 1/(12x) for large x)."""
    big = x.clamp(min=_SERIES_FROM)
    inv2 = 1 / (big * big)
    series = torch.zeros_like(big)
    for k in reversed(range(1, len(_BERNOULLI) + 1)):
        series = series * inv2 + _BERNOULLI[k - 1] / (2 * k * (2 * k - 1))
    small = x.clamp(max=_SERIES_FROM)
    direct = torch.lgamma(small) - ((small - 0.5) * torch.log(small) - small + _HALF_LOG_2PI)
    return torch.where(x >= _SERIES_FROM, series / big, direct)


def _x_trigamma_minus_one(x: Tensor) -> Tensor:
    """x ψ'(x) − 1 (> 0): d/d log x of ψ(x) − log x; stable for tiny and large x."""
    big = x.clamp(min=_SERIES_FROM)
    inv2 = 1 / (big * big)
    series = torch.zeros_like(big)
    for k in reversed(range(1, len(_BERNOULLI) + 1)):
        series = (series + _BERNOULLI[k - 1]) * inv2
    asym = 0.5 / big + series
    small = x.clamp(max=_SERIES_FROM)
    tiny = small < 1  # ψ'(x) = 1/x² + ψ'(x + 1)
    direct = torch.where(tiny, 1 / small, 0.0) + small * torch.polygamma(
        1, torch.where(tiny, small + 1, small)
    )
    return torch.where(x >= _SERIES_FROM, asym, direct - 1)


def gamma_mean_to_shape(mu1: Tensor, mu2: Tensor, *, max_iter: int = 100) -> Tensor:
    """The shape a of the Gamma with E[log θ] = ``mu1`` and E[θ] = ``mu2`` (the rate is then
    a / mu2): the root of ψ(a) − log a = mu1 − log mu2 (< 0 on the mean domain; not checked
    here). Computed in float64 and returned in the dtype of ``mu1``; differentiable (implicit
    gradient).

    ψ(e^z) − z is increasing and concave in z = log a, and a₀ = 1 / (2 (log mu2 − mu1)) lies left
    of the root (ψ(a) < log a − 1/(2a)), so Newton on z from a₀ increases monotonically to the
    root. The residual uses :func:`digamma_minus_log`; a is accurate to ~1e-15 relative given the
    gap mu1 − log mu2, whose rounding costs about eps · |mu1| · 2a relative in a at large a.

    Example:
        >>> import torch
        >>> from expfam.gamma import gamma_mean_to_shape
        >>> a = torch.tensor([1e-3, 2.0, 1e4], dtype=torch.float64)
        >>> gamma_mean_to_shape(torch.digamma(a) - torch.log(a), torch.ones(3, dtype=torch.float64))
        tensor([1.0000e-03, 2.0000e+00, 1.0000e+04], dtype=torch.float64)
    """
    m1, m2 = work_dtype(mu1), work_dtype(mu2)
    gap = m1 - torch.log(m2)
    with torch.no_grad():
        c = gap.detach()
        eps = torch.finfo(c.dtype).eps
        z = torch.log(-0.5 / c).clamp(-700.0, 700.0)
        done = torch.zeros_like(z, dtype=torch.bool)
        for it in range(max_iter):
            a = torch.exp(z)
            step = -(digamma_minus_log(a) - c) / _x_trigamma_minus_one(a)
            # from the left the steps are positive; a non-positive one means rounding level
            done = done | (step.abs() <= 4 * eps * z.abs().clamp(min=1)) | ((step <= 0) & (it > 0))
            if bool(done.all()):
                break
            z = torch.where(done, z, (z + step).clamp(-700.0, 700.0))
        a = torch.exp(z)
    if torch.is_grad_enabled() and gap.requires_grad:
        a = a + (gap - c) * a / _x_trigamma_minus_one(a)  # value unchanged; da/dgap = 1/f'(a)
    return a.to(mu1.dtype)


class Gamma(ExpFamily):
    r"""Gamma distribution θ ~ Gamma(a, b) on (0, ∞) with shape a and rate b (density
    b^a θ^{a−1} e^{−bθ} / Γ(a)), scalar events.

    .. math::
        T(\theta) = (\log\theta, \theta),\quad \lambda = (a - 1, -b),\quad
        \mu = (\psi(a) - \log b, a/b),\\
        A(\lambda) = \log\Gamma(a) - a\log b,\quad \log h(\theta) = 0,\quad
        \nabla_\mu(-H) = \lambda.

    μ → λ solves ψ(a) − log a = μ₁ − log μ₂ for a by Newton (:func:`gamma_mean_to_shape`), then
    b = a/μ₂. Special functions are evaluated in float64 for float32 input.

    Example:
        >>> import torch
        >>> from expfam.gamma import Gamma, GammaNat
        >>> fam = Gamma()
        >>> nat = fam.from_shape_rate(torch.tensor([2.0, 0.5], dtype=torch.float64),
        ...                           torch.tensor([4.0, 1.0], dtype=torch.float64))
        >>> fam.nat_to_mean(nat).mu2
        tensor([0.5000, 0.5000], dtype=torch.float64)
        >>> shape, rate = fam.shape_rate(fam.mean_to_nat(fam.nat_to_mean(nat)))
        >>> shape
        tensor([2.0000, 0.5000], dtype=torch.float64)
        >>> rate
        tensor([4.0000, 1.0000], dtype=torch.float64)
    """

    name = "gamma"
    nat_type = GammaNat
    mean_type = GammaMean
    event_ndims = (0, 0)
    has_rsample = True

    # conversions to and from (a, b)
    def from_shape_rate(self, shape: Tensor, rate: Tensor) -> GammaNat:
        """λ from the shape a > 0 and the rate b > 0.

        Example:
            >>> import torch, expfam
            >>> expfam.Gamma().from_shape_rate(torch.tensor(2.0), torch.tensor(3.0))
            GammaNat(lam1=tensor(1.), lam2=tensor(-3.))
        """
        check_positive(shape, "shape", "> 0")
        check_positive(rate, "rate", "> 0")
        return GammaNat(shape - 1, -rate)

    def shape_rate(self, nat: GammaNat) -> tuple[Tensor, Tensor]:
        """(a, b) = (λ₁ + 1, −λ₂).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Gamma()
            >>> nat = fam.from_shape_rate(torch.tensor(2.0), torch.tensor(3.0))
            >>> fam.shape_rate(nat)
            (tensor(2.), tensor(3.))
        """
        self.validate_nat(nat)
        return nat.lam1 + 1, -nat.lam2

    # the contract
    def _suff_stats(self, x: Tensor) -> GammaMean:
        return GammaMean(torch.log(x), x)

    def _log_base_measure(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def _log_partition(self, nat: GammaNat) -> Tensor:
        a, b = work_dtype(nat.lam1) + 1, -work_dtype(nat.lam2)
        return (torch.lgamma(a) - a * torch.log(b)).to(nat.lam1.dtype)

    def _nat_to_mean(self, nat: GammaNat) -> GammaMean:
        a, b = work_dtype(nat.lam1) + 1, -work_dtype(nat.lam2)
        mean = a / b
        # ψ(a) − log b = (ψ(a) − log a) + log(a/b): no cancellation at large a
        mu1 = digamma_minus_log(a) + torch.log(mean)
        return GammaMean(mu1.to(nat.lam1.dtype), mean.to(nat.lam1.dtype))

    def _mean_to_nat(self, mean: GammaMean) -> GammaNat:
        a = gamma_mean_to_shape(mean.mu1, mean.mu2)
        return GammaNat(a - 1, -a / mean.mu2)

    def _expected_log_base_measure(self, nat: GammaNat) -> Tensor:
        return torch.zeros_like(nat.lam1)

    def _neg_entropy_grad(self, nat: GammaNat) -> GammaNat:
        return nat

    def _entropy(self, nat: GammaNat) -> Tensor:
        # H = a − log b + log Γ(a) + (1 − a) ψ(a), with Stirling's log Γ(a) and ψ(a) = log a +
        # (ψ(a) − log a): = ½ log(2π a) − log b + remainder(a) + (1 − a)(ψ(a) − log a), whose
        # terms stay O(1) at large a (the plain form cancels terms of size a log a)
        a, b = work_dtype(nat.lam1) + 1, -work_dtype(nat.lam2)
        h = (
            0.5 * torch.log(a)
            - torch.log(b)
            + _HALF_LOG_2PI
            + _lgamma_stirling_remainder(a)
            + (1 - a) * digamma_minus_log(a)
        )
        return h.to(nat.lam1.dtype)

    def _kl(self, nat_p: GammaNat, nat_q: GammaNat) -> Tensor:
        ap, bp = work_dtype(nat_p.lam1) + 1, -work_dtype(nat_p.lam2)
        aq, bq = work_dtype(nat_q.lam1) + 1, -work_dtype(nat_q.lam2)
        kl = (
            (ap - aq) * torch.digamma(ap)
            - torch.lgamma(ap)
            + torch.lgamma(aq)
            + aq * torch.log(bp / bq)
            + ap * (bq - bp) / bp
        )
        return kl.to(nat_p.lam1.dtype)

    def _log_prob(self, nat: GammaNat, x: Tensor) -> Tensor:
        l1, l2, x64 = work_dtype(nat.lam1), work_dtype(nat.lam2), work_dtype(x)
        a, b = l1 + 1, -l2
        out = l1 * torch.log(x64) + l2 * x64 - torch.lgamma(a) + a * torch.log(b)
        return out.to(torch.promote_types(nat.lam1.dtype, x.dtype))

    def _check_point(self, x: Tensor, name: str) -> None:
        check_positive(x, name, "> 0 (a Gamma variable is positive)")

    def _sample(self, nat: GammaNat, sample_shape, generator) -> Tensor:
        shape = tuple(sample_shape) + tuple(nat.lam1.shape)
        x = torch._standard_gamma((nat.lam1 + 1).expand(shape), generator) / -nat.lam2
        return x.clamp_min(torch.finfo(x.dtype).tiny)  # keep log θ finite

    def _check_nat(self, nat: GammaNat, name: str) -> None:
        if nat.lam1.shape != nat.lam2.shape:
            raise ValueError(
                f"{name}.lam1 and {name}.lam2 must have the same shape, got "
                f"{tuple(nat.lam1.shape)} and {tuple(nat.lam2.shape)}"
            )
        check_finite(nat.lam1, f"{name}.lam1")
        if not (nat.lam1 > -1).all():
            raise ValueError(
                f"{name}.lam1 must be > -1 (shape a = lam1 + 1 > 0), got min "
                f"{nat.lam1.min().item():.6g}"
            )
        check_finite(nat.lam2, f"{name}.lam2")
        if not (nat.lam2 < 0).all():
            raise ValueError(
                f"{name}.lam2 must be < 0 (rate b = −lam2 > 0), got max {nat.lam2.max().item():.6g}"
            )

    def _check_mean(self, mean: GammaMean, name: str) -> None:
        if mean.mu1.shape != mean.mu2.shape:
            raise ValueError(
                f"{name}.mu1 and {name}.mu2 must have the same shape, got "
                f"{tuple(mean.mu1.shape)} and {tuple(mean.mu2.shape)}"
            )
        check_finite(mean.mu1, f"{name}.mu1")
        check_positive(mean.mu2, f"{name}.mu2", "> 0 (mu2 = E[θ] of a positive θ)")
        gap = mean.mu1 - torch.log(mean.mu2)
        if not (gap < 0).all():
            raise ValueError(
                f"{name}.mu1 must be < log({name}.mu2) (Jensen: E[log θ] < log E[θ]), got max "
                f"mu1 − log(mu2) = {gap.max().item():.6g}"
            )

    def _to_torch(self, nat: GammaNat) -> torch.distributions.Distribution:
        return torch.distributions.Gamma(nat.lam1 + 1, -nat.lam2, validate_args=False)

    def example_nat(
        self,
        batch_shape: Sequence[int] = (),
        dim: int = 3,
        *,
        extreme: bool = False,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> GammaNat:
        """Random λ with shape a log-uniform in [0.3, 30] and rate b in [0.1, 10] (a in
        [1e-3, 1e4], b in [1e-3, 1e3] with ``extreme``). ``dim`` is appended to ``batch_shape``
        (independent variables).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Gamma()
            >>> nat = fam.example_nat((2,), generator=torch.Generator().manual_seed(0))
            >>> shape, rate = fam.shape_rate(nat)
            >>> shape.shape, bool((shape > 0).all() and (rate > 0).all())
            (torch.Size([2, 3]), True)
        """
        if extreme:
            a_lo, a_hi, b_lo, b_hi = math.log(1e-3), math.log(1e4), math.log(1e-3), math.log(1e3)
        else:
            a_lo, a_hi, b_lo, b_hi = math.log(0.3), math.log(30.0), math.log(0.1), math.log(10.0)
        shape = (*batch_shape, dim)
        kw = dict(dtype=dtype, device=device, generator=generator)
        a = torch.exp(a_lo + (a_hi - a_lo) * torch.rand(shape, **kw))
        b = torch.exp(b_lo + (b_hi - b_lo) * torch.rand(shape, **kw))
        return GammaNat(a - 1, -b)
