"""The family contract: q(θ) = h(θ) exp(<λ, T(θ)> − A(λ)).

A family is stateless math. Its parameters are values: NamedTuples of tensors named after the
paper (``lam1, lam2`` for λ, ``mu1, mu2`` for μ) with batch dimensions in front, passed in and
returned. The public methods of :class:`ExpFamily` check their input (type, dtype, device,
shapes, domain) and then call the underscore methods that each family implements; a family calls
its own underscore methods internally, so validation runs once per public call.

The underscore methods are the family author's side of the contract: families implement them,
and only families and ``expfam`` itself call them. Everyone else (the ``blr`` engine, its
estimators, user code) calls the public methods. A caller that has already checked its input, or
whose parameter is an autograd intermediate (μ as a leaf, mapped to λ inside a graph), passes
``validate=False``: every check is skipped and the implementation is called directly, with the
same result (on valid input) and no extra cost. :func:`set_validation` instead switches off the
domain checks (the ones that read tensor values) of every call, globally.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from expfam.tree import inner

_VALIDATE = True


def set_validation(enabled: bool) -> None:
    """Turn input validation of every family on (default) or off.

    Validation reads tensor values (e.g. ``(x <= 0).any()``), which synchronizes a GPU; hot loops
    that already trust their parameters may switch it off.

    >>> from expfam import set_validation, validation_enabled
    >>> set_validation(False)
    >>> validation_enabled()
    False
    >>> set_validation(True)
    """
    global _VALIDATE
    _VALIDATE = bool(enabled)


def validation_enabled() -> bool:
    """Whether families validate their input (see :func:`set_validation`).

    >>> from expfam import validation_enabled
    >>> validation_enabled()
    True
    """
    return _VALIDATE


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """Relative tolerances a family promises in the contract tests.

    ``closed``: closed forms vs the autograd reference (float64, float32).
    ``roundtrip``: λ → μ → λ in float64 on moderately conditioned parameters.

    >>> from expfam import FullGaussian, Tolerances
    >>> FullGaussian.tolerances.closed64 <= Tolerances().closed32
    True
    """

    closed64: float = 1e-10
    closed32: float = 1e-5
    roundtrip: float = 1e-12


Sample = Any  # a point θ of the family's space: a Tensor, or a NamedTuple for joint families


class ExpFamily(abc.ABC):
    r"""A minimal, regular exponential family

    .. math::  q_\lambda(\theta) = h(\theta)\exp(\langle\lambda, T(\theta)\rangle - A(\lambda)),
               \quad \mu = \nabla A(\lambda) = \mathbb{E}_q[T(\theta)].

    Subclasses set the class attributes and implement the underscore methods; users call the
    public methods, which validate input first. Every public method of the math (``suff_stats``
    … ``to_torch``) takes a keyword ``validate=True``; ``validate=False`` skips all checks of
    the input (the caller vouches for it: e.g. the BLR engine, which checks λ once per step).

    Class attributes:
        name: registry name.
        nat_type, mean_type: the NamedTuple types of λ and μ.
        event_ndims: for each field of λ (and of μ, field by field), how many trailing dimensions
            belong to one event; the rest are batch dimensions.
        has_rsample: whether :meth:`rsample` is differentiable in λ (reparameterization).
        min_dim: the smallest ``dim`` that :meth:`example_nat` accepts.
        tolerances: what the contract tests hold the closed forms to.

    The public methods, on a diagonal Gaussian N(1, 1/4):

    >>> import torch
    >>> from expfam import DiagGaussian
    >>> fam = DiagGaussian()
    >>> nat = fam.from_moments(torch.tensor([1.0]), torch.tensor([4.0]))  # mean m, precision s
    >>> fam.nat_to_mean(nat).mu1
    tensor([1.])
    >>> torch.allclose(fam.mean_to_nat(fam.nat_to_mean(nat)).lam1, nat.lam1)
    True
    >>> float(fam.log_partition(nat)) > 0 and float(fam.entropy(nat)) < 1.42
    True
    >>> fam.kl(nat, nat)
    tensor(0.)
    >>> x = fam.sample(nat, (3,))
    >>> fam.log_prob(nat, x).shape
    torch.Size([3])
    >>> fam.rsample(nat, (3,)).shape
    torch.Size([3, 1])

    Without the checks, for input the caller has already validated (same result):

    >>> fam.entropy(nat, validate=False) == fam.entropy(nat)
    tensor(True)
    """

    name: ClassVar[str]
    nat_type: ClassVar[type]
    mean_type: ClassVar[type]
    event_ndims: ClassVar[tuple[int, ...]]
    has_rsample: ClassVar[bool] = False
    min_dim: ClassVar[int] = 1
    tolerances: ClassVar[Tolerances] = Tolerances()

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def _suff_stats(self, x: Sample) -> tuple:
        """T(θ), as a ``mean_type``."""

    @abc.abstractmethod
    def _log_base_measure(self, x: Sample) -> Tensor:
        """log h(θ)."""

    @abc.abstractmethod
    def _log_partition(self, nat: tuple) -> Tensor:
        """A(λ), one value per batch element."""

    @abc.abstractmethod
    def _nat_to_mean(self, nat: tuple) -> tuple:
        """μ = ∇A(λ) in closed form."""

    @abc.abstractmethod
    def _mean_to_nat(self, mean: tuple) -> tuple:
        """λ = (∇A)⁻¹(μ)."""

    @abc.abstractmethod
    def _expected_log_base_measure(self, nat: tuple) -> Tensor:
        """E_q[log h(θ)]."""

    @abc.abstractmethod
    def _neg_entropy_grad(self, nat: tuple) -> tuple:
        """∇_μ(−H(q)) = λ + ∇_μ E_q[log h(θ)], as a ``nat_type``."""

    @abc.abstractmethod
    def _entropy(self, nat: tuple) -> Tensor:
        """H(q) = −E_q[log q(θ)]."""

    @abc.abstractmethod
    def _kl(self, nat_p: tuple, nat_q: tuple) -> Tensor:
        """KL(p ‖ q)."""

    @abc.abstractmethod
    def _sample(
        self, nat: tuple, sample_shape: tuple[int, ...], generator: torch.Generator | None
    ) -> Sample:
        """Draws of shape ``sample_shape + batch_shape + event_shape``; differentiable in λ
        when ``has_rsample``."""

    @abc.abstractmethod
    def _check_nat(self, nat: tuple, name: str) -> None:
        """Raise ValueError naming ``name`` and the constraint if λ is outside the domain or the
        event shapes of the fields disagree."""

    @abc.abstractmethod
    def _check_mean(self, mean: tuple, name: str) -> None:
        """Raise ValueError naming ``name`` and the constraint if μ is outside the mean domain."""

    @abc.abstractmethod
    def example_nat(
        self,
        batch_shape: Sequence[int] = (),
        dim: int = 3,
        *,
        extreme: bool = False,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple:
        """A random valid λ (for examples and tests). ``dim`` sets the event size of vector
        families; ``extreme=True`` draws from the extreme ranges the family supports (e.g. logits
        ±50, precisions 1e-6…1e6).

        Example:
            >>> import torch
            >>> from expfam import DiagGaussian
            >>> gen = torch.Generator().manual_seed(0)
            >>> nat = DiagGaussian().example_nat((2,), dim=3, generator=gen)
            >>> nat.lam1.shape, nat.lam1.dtype
            (torch.Size([2, 3]), torch.float64)
        """

    def _log_prob(self, nat: tuple, x: Sample) -> Tensor:
        return (
            inner(nat, self._suff_stats(x), self.event_ndims)
            - self._log_partition(nat)
            + self._log_base_measure(x)
        )

    def _check_point(self, x: Sample, name: str) -> None:  # noqa: B027 - optional hook
        """Raise ValueError if ``x`` is outside the support (families with a discrete support)."""

    def _to_torch(self, nat: tuple) -> torch.distributions.Distribution | None:
        """The equivalent ``torch.distributions`` object, or None if there is none."""
        return None

    # ------------------------------------------------------------------ public, validated
    def suff_stats(self, x: Sample, *, validate: bool = True) -> tuple:
        """Sufficient statistics T(θ) as a ``mean_type`` (batch shape of ``x``).

        Example:
            >>> import torch
            >>> from expfam import Gamma
            >>> T = Gamma().suff_stats(torch.tensor([1.0, 4.0], dtype=torch.float64))  # (log θ, θ)
            >>> T.mu1
            tensor([0.0000, 1.3863], dtype=torch.float64)
        """
        if validate:
            self._validate_point(x, "x")
        return self._suff_stats(x)

    def log_base_measure(self, x: Sample, *, validate: bool = True) -> Tensor:
        """log h(θ).

        Example:
            >>> import torch
            >>> from expfam import Poisson
            >>> k = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
            >>> Poisson().log_base_measure(k)  # h(k) = 1/k!
            tensor([-0.0000, -0.0000, -1.7918], dtype=torch.float64)
        """
        if validate:
            self._validate_point(x, "x")
        return self._log_base_measure(x)

    def log_partition(self, nat: tuple, *, validate: bool = True) -> Tensor:
        """A(λ), shape ``batch_shape``.

        Example:
            >>> import torch
            >>> from expfam import Bernoulli
            >>> fam = Bernoulli()
            >>> fam.log_partition(fam.from_logits(torch.zeros(1, dtype=torch.float64)))  # log 2
            tensor([0.6931], dtype=torch.float64)
        """
        if validate:
            self.validate_nat(nat)
        return self._log_partition(nat)

    def nat_to_mean(self, nat: tuple, *, validate: bool = True) -> tuple:
        """μ = ∇A(λ) = E_q[T(θ)].

        Example:
            >>> import torch
            >>> from expfam import Bernoulli, BernoulliNat
            >>> fam = Bernoulli()
            >>> fam.nat_to_mean(BernoulliNat(torch.zeros(2))).mu1  # logit 0: probability 1/2
            tensor([0.5000, 0.5000])
        """
        if validate:
            self.validate_nat(nat)
        return self._nat_to_mean(nat)

    def mean_to_nat(self, mean: tuple, *, validate: bool = True) -> tuple:
        """λ = (∇A)⁻¹(μ) = ∇A*(μ).

        Example:
            >>> import torch
            >>> from expfam import Bernoulli, BernoulliMean
            >>> mean = BernoulliMean(torch.tensor([0.5, 0.75], dtype=torch.float64))
            >>> Bernoulli().mean_to_nat(mean).lam1  # the logits log(p / (1 − p))
            tensor([0.0000, 1.0986], dtype=torch.float64)
        """
        if validate:
            self.validate_mean(mean)
        return self._mean_to_nat(mean)

    def expected_log_base_measure(self, nat: tuple, *, validate: bool = True) -> Tensor:
        """E_q[log h(θ)].

        Example:
            >>> import torch
            >>> from expfam import Poisson, PoissonNat
            >>> nat = PoissonNat(torch.log(torch.tensor([0.5, 4.0], dtype=torch.float64)))
            >>> Poisson().expected_log_base_measure(nat)  # E[−log k!] at rates 0.5 and 4
            tensor([-0.0811, -3.6319], dtype=torch.float64)
        """
        if validate:
            self.validate_nat(nat)
        return self._expected_log_base_measure(nat)

    def neg_entropy_grad(self, nat: tuple, *, validate: bool = True) -> tuple:
        """∇_μ(−H(q)) = λ + ∇_μE_q[log h], the entropy's part of the BLR's natural gradient.

        It is λ for families with a constant base measure and 0 for the fixed-covariance
        Gaussian.

        Example:
            >>> import torch
            >>> from expfam import Gamma
            >>> fam = Gamma()
            >>> nat = fam.from_shape_rate(torch.tensor([2.0]), torch.tensor([3.0]))
            >>> fam.neg_entropy_grad(nat)  # log h = 0, so this is λ = (a − 1, −b)
            GammaNat(lam1=tensor([1.]), lam2=tensor([-3.]))
        """
        if validate:
            self.validate_nat(nat)
        return self._neg_entropy_grad(nat)

    def entropy(self, nat: tuple, *, validate: bool = True) -> Tensor:
        """H(q) = A(λ) − <λ, μ> − E_q[log h], computed in closed form.

        Example:
            >>> import torch
            >>> from expfam import DiagGaussian
            >>> fam, one = DiagGaussian(), torch.ones(1, dtype=torch.float64)
            >>> fam.entropy(fam.from_moments(0 * one, one))  # N(0, 1): ½ log(2πe)
            tensor(1.4189, dtype=torch.float64)
        """
        if validate:
            self.validate_nat(nat)
        return self._entropy(nat)

    def kl(self, nat_p: tuple, nat_q: tuple, *, validate: bool = True) -> Tensor:
        """KL(p ‖ q) for p = q_{λ_p}, q = q_{λ_q} of this family.

        Example:
            >>> import torch
            >>> from expfam import DiagGaussian
            >>> fam, one = DiagGaussian(), torch.ones(1, dtype=torch.float64)
            >>> fam.kl(fam.from_moments(0 * one, one), fam.from_moments(one, one))  # (1 − 0)² / 2
            tensor(0.5000, dtype=torch.float64)
        """
        if validate:
            self.validate_nat(nat_p, "nat_p")
            self.validate_nat(nat_q, "nat_q")
            bp, bq = self.batch_shape(nat_p), self.batch_shape(nat_q)
            try:
                torch.broadcast_shapes(bp, bq)
            except RuntimeError:
                raise ValueError(
                    f"nat_p and nat_q have batch shapes {tuple(bp)} and {tuple(bq)}, which do not "
                    "broadcast"
                ) from None
            if nat_p[0].dtype != nat_q[0].dtype or nat_p[0].device != nat_q[0].device:
                raise TypeError(
                    f"nat_p and nat_q must share dtype and device, got {nat_p[0].dtype} on "
                    f"{nat_p[0].device} and {nat_q[0].dtype} on {nat_q[0].device}"
                )
        return self._kl(nat_p, nat_q)

    def log_prob(self, nat: tuple, x: Sample, *, validate: bool = True) -> Tensor:
        """log q(θ) = <λ, T(θ)> − A(λ) + log h(θ).

        Example:
            >>> import torch
            >>> from expfam import Bernoulli
            >>> fam = Bernoulli()
            >>> nat = fam.from_logits(torch.tensor([0.0, 2.0], dtype=torch.float64))
            >>> fam.log_prob(nat, torch.tensor([1.0, 0.0], dtype=torch.float64))  # log ½, log σ(−2)
            tensor([-0.6931, -2.1269], dtype=torch.float64)
        """
        if validate:
            self.validate_nat(nat)
            self._validate_point(x, "x")
        return self._log_prob(nat, x)

    def sample(
        self,
        nat: tuple,
        sample_shape: Sequence[int] = (),
        generator: torch.Generator | None = None,
        *,
        validate: bool = True,
    ) -> Sample:
        """Draws θ ~ q_λ, shape ``sample_shape + batch_shape + event_shape``, without gradient.

        Example:
            >>> import torch
            >>> from expfam import Bernoulli
            >>> fam = Bernoulli()
            >>> nat = fam.from_logits(torch.zeros(3, dtype=torch.float64))  # three fair coins
            >>> x = fam.sample(nat, (1000,), generator=torch.Generator().manual_seed(0))
            >>> x.shape, bool(((x == 0) | (x == 1)).all())
            (torch.Size([1000, 3]), True)
        """
        if validate:
            self.validate_nat(nat)
        with torch.no_grad():
            return self._sample(nat, tuple(sample_shape), generator)

    def rsample(
        self,
        nat: tuple,
        sample_shape: Sequence[int] = (),
        generator: torch.Generator | None = None,
        *,
        validate: bool = True,
    ) -> Sample:
        """Reparameterized draws: differentiable in λ. Only for families with ``has_rsample``.

        Example:
            >>> import torch
            >>> from expfam import DiagGaussian
            >>> fam, m = DiagGaussian(), torch.zeros(2, dtype=torch.float64, requires_grad=True)
            >>> nat = fam.from_moments(m, torch.ones(2, dtype=torch.float64))
            >>> fam.rsample(nat, (5,), generator=torch.Generator().manual_seed(0)).sum().backward()
            >>> m.grad  # each of the 5 draws moves one-for-one with the mean
            tensor([5., 5.], dtype=torch.float64)
        """
        if not self.has_rsample:
            raise NotImplementedError(
                f"{self.name} has no reparameterized sampler (its support is discrete); use "
                "sample() with a score-function or relaxed estimator instead"
            )
        if validate:
            self.validate_nat(nat)
        return self._sample(nat, tuple(sample_shape), generator)

    def to_torch(self, nat: tuple, *, validate: bool = True) -> torch.distributions.Distribution:
        """The equivalent ``torch.distributions`` object (for interop and as a test oracle).

        Example:
            >>> import torch
            >>> from expfam import Gamma
            >>> fam = Gamma()
            >>> dist = fam.to_torch(fam.from_shape_rate(torch.tensor([2.0]), torch.tensor([4.0])))
            >>> type(dist).__name__, dist.mean  # Gamma(a = 2, b = 4) has mean a / b
            ('Gamma', tensor([0.5000]))
        """
        if validate:
            self.validate_nat(nat)
        dist = self._to_torch(nat)
        if dist is None:
            raise NotImplementedError(f"{self.name} has no torch.distributions equivalent")
        return dist

    @property
    def has_torch_twin(self) -> bool:
        """Whether :meth:`to_torch` is available.

        Example:
            >>> from expfam import DiagGaussian, Mixture
            >>> DiagGaussian().has_torch_twin, Mixture().has_torch_twin
            (True, False)
        """
        return type(self)._to_torch is not ExpFamily._to_torch

    def batch_shape(self, nat: tuple) -> torch.Size:
        """The batch shape of λ (or μ): the leading dimensions of its fields.

        Example:
            >>> import torch
            >>> from expfam import DiagGaussian
            >>> fam = DiagGaussian()
            >>> nat = fam.from_moments(torch.zeros(4, 3), torch.ones(4, 3))  # 4 Gaussians on R^3
            >>> fam.batch_shape(nat)
            torch.Size([4])
        """
        x, k = nat[0], self.event_ndims[0]
        return x.shape[: x.ndim - k]

    # ------------------------------------------------------------------ validation
    def validate_nat(self, nat: tuple, name: str = "nat") -> None:
        """Check type, dtype, device, shapes and domain of λ; raise TypeError / ValueError that
        name ``name`` and the violated constraint.

        Example:
            >>> import torch
            >>> from expfam import Gamma, GammaNat
            >>> Gamma().validate_nat(GammaNat(torch.tensor([1.0]), torch.tensor([2.0])))  # b = −2
            Traceback (most recent call last):
                ...
            ValueError: nat.lam2 must be < 0 (rate b = −lam2 > 0), got max 2
        """
        self._validate_struct(nat, self.nat_type, name)
        if _VALIDATE:
            self._check_nat(nat, name)

    def validate_mean(self, mean: tuple, name: str = "mean") -> None:
        """Check type, dtype, device, shapes and domain of μ.

        Example:
            >>> import torch
            >>> from expfam import Gamma, GammaMean
            >>> Gamma().validate_mean(GammaMean(torch.tensor([0.0]), torch.tensor([2.0])))  # valid
            >>> Gamma().validate_mean(GammaMean(torch.tensor([0.0]), torch.tensor([-2.0])))
            Traceback (most recent call last):
                ...
            ValueError: mean.mu2 must be > 0 (mu2 = E[θ] of a positive θ), got min -2
        """
        self._validate_struct(mean, self.mean_type, name)
        if _VALIDATE:
            self._check_mean(mean, name)

    def _validate_point(self, x: Sample, name: str) -> None:
        if _VALIDATE:
            self._check_point(x, name)

    def _validate_struct(self, params: Any, kind: type, name: str) -> None:
        if not isinstance(params, kind):
            raise TypeError(
                f"{name} must be a {kind.__name__} for the {self.name} family, "
                f"got {type(params).__name__}"
            )
        first = None
        for field, value, k in zip(params._fields, params, self.event_ndims):
            where = f"{name}.{field}"
            if not isinstance(value, Tensor):
                raise TypeError(f"{where} must be a torch.Tensor, got {type(value).__name__}")
            if not value.is_floating_point():
                raise TypeError(f"{where} must be a floating-point tensor, got {value.dtype}")
            if value.ndim < k:
                raise ValueError(
                    f"{where} must have at least {k} (event) dimension(s), got shape "
                    f"{tuple(value.shape)}"
                )
            if first is None:
                first = (field, value, value.shape[: value.ndim - k])
                continue
            f0, v0, batch0 = first
            if value.dtype != v0.dtype:
                raise TypeError(
                    f"{where} has dtype {value.dtype} but {name}.{f0} has {v0.dtype}; "
                    "all fields must share one dtype"
                )
            if value.device != v0.device:
                raise TypeError(
                    f"{where} is on {value.device} but {name}.{f0} is on {v0.device}; "
                    "all fields must share one device"
                )
            batch = value.shape[: value.ndim - k]
            if batch != batch0:
                raise ValueError(
                    f"{where} has batch shape {tuple(batch)} but {name}.{f0} has "
                    f"{tuple(batch0)}; all fields must share one batch shape"
                )


def check_finite(x: Tensor, where: str) -> None:
    """Raise ValueError if ``x`` has a NaN or infinite entry."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{where} must be finite, got NaN or Inf entries")


def check_positive(x: Tensor, where: str, what: str = "> 0") -> None:
    """Raise ValueError unless every entry of ``x`` is finite and positive."""
    check_finite(x, where)
    if not (x > 0).all():
        raise ValueError(f"{where} must be {what}, got min {x.min().item():.6g}")


def check_simplex(p: Tensor, where: str) -> None:
    """Raise ValueError unless every entry of ``p`` is finite and positive and ``p`` sums to one
    along its last dimension (within √ε·K of the dtype: rounding, not a modelling error).

    Example:
        >>> import torch
        >>> from expfam.base import check_simplex
        >>> check_simplex(torch.tensor([0.2, 0.8]), "probs")
        >>> check_simplex(torch.tensor([0.5, 0.7]), "probs")
        Traceback (most recent call last):
        ...
        ValueError: probs must sum to one along the last dimension, got sums from 1.2 to 1.2
    """
    check_positive(p, where, "> 0 (probabilities)")
    total = p.sum(-1)
    tol = math.sqrt(torch.finfo(p.dtype).eps) * p.shape[-1]
    if not bool(((total - 1).abs() <= tol).all()):
        raise ValueError(
            f"{where} must sum to one along the last dimension, got sums from "
            f"{total.min().item():.6g} to {total.max().item():.6g}"
        )


def check_symmetric(x: Tensor, where: str) -> None:
    """Raise ValueError unless the matrices ``x`` (``(*batch, d, d)``) are finite and symmetric
    within √ε of their largest entry.

    Example:
        >>> import torch
        >>> from expfam.base import check_symmetric
        >>> check_symmetric(torch.tensor([[2.0, 1.0], [1.0, 2.0]]), "prec")
        >>> check_symmetric(torch.tensor([[2.0, 1.0], [0.0, 2.0]]), "prec")
        Traceback (most recent call last):
        ...
        ValueError: prec must be symmetric, got max |prec − precᵀ| = 1 (entries up to 2)
    """
    check_finite(x, where)
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{where} must be square matrices (*batch, d, d), got {tuple(x.shape)}")
    dev = (x - x.mT).abs().amax(dim=(-2, -1))
    scale = x.abs().amax(dim=(-2, -1))
    if not bool((dev <= math.sqrt(torch.finfo(x.dtype).eps) * scale).all()):
        raise ValueError(
            f"{where} must be symmetric, got max |{where} − {where}ᵀ| = {dev.max().item():.6g} "
            f"(entries up to {scale.max().item():.6g})"
        )


def check_event_dim(x: Tensor, size: int, where: str, what: str, dim: int = -1) -> None:
    """Raise ValueError unless ``x.shape[dim] == size``."""
    if x.shape[dim] != size:
        raise ValueError(f"{where} must have {what} = {size}, got shape {tuple(x.shape)}")


@runtime_checkable
class GaussianLike(Protocol):
    """Capability of the Gaussian families: the Bonnet/Price chain rule and the reparameterization.

    ``hessian_event_ndim`` is 2 (full Hessians), 1 (diagonal) or None (the fixed-covariance family
    ignores curvature). With ĝ ≈ E_q[∇ℓ] and Ĥ ≈ E_q[∇²ℓ]:

    .. math:: \\nabla_{\\mu_1}\\mathbb{E}_q[\\ell] = \\hat g - \\hat H m,\\qquad
              \\nabla_{\\mu_2}\\mathbb{E}_q[\\ell] = \\tfrac12 \\hat H.

    >>> import torch
    >>> from expfam import DiagGaussian, GaussianLike
    >>> fam = DiagGaussian()
    >>> isinstance(fam, GaussianLike)
    True
    >>> nat = fam.from_moments(torch.tensor([1.0]), torch.tensor([4.0]))
    >>> fam.location(nat)
    tensor([1.])
    """

    hessian_event_ndim: int | None

    def location(self, nat: Any) -> Tensor:
        """The mean m.

        Example:
            >>> import torch
            >>> from expfam import DiagGaussian
            >>> fam = DiagGaussian()
            >>> fam.location(fam.from_moments(torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.5])))
            tensor([ 1., -2.])
        """

    def reparam(self, nat: Any, z: Tensor) -> Tensor:
        """θ = m + Σ^{1/2} z for standard-normal ``z`` (``(*sample, *batch, d)``),
        differentiable in λ.

        Example:
            >>> import torch
            >>> from expfam import DiagGaussian
            >>> fam = DiagGaussian()
            >>> nat = fam.from_moments(torch.tensor([1.0, 2.0]), torch.tensor([4.0, 1.0]))
            >>> fam.reparam(nat, torch.tensor([[0.0, 0.0], [2.0, -1.0]]))  # m + z / √s
            tensor([[1., 2.],
                    [2., 1.]])
        """

    def mean_grad_from_gh(self, nat: Any, g_hat: Tensor, h_hat: Tensor | None) -> Any:
        """∇_μ E_q[ℓ] from (ĝ, Ĥ), as a container of the ``nat_type`` (λ-space shaped).

        Example:
            >>> import torch
            >>> from expfam import DiagGaussian
            >>> fam = DiagGaussian()
            >>> nat = fam.from_moments(torch.tensor([1.0, 2.0]), torch.tensor([4.0, 1.0]))
            >>> fam.mean_grad_from_gh(nat, torch.tensor([1.0, 0.0]), torch.tensor([2.0, 2.0]))
            DiagNat(lam1=tensor([-1., -4.]), lam2=tensor([1., 1.]))
        """

    def gh_from_mean_grad(self, nat: Any, grad: Any) -> tuple[Tensor, Tensor | None]:
        """(ĝ, Ĥ) from ∇_μ E_q[ℓ]: the inverse of :meth:`mean_grad_from_gh`.

        Example:
            >>> import torch
            >>> from expfam import DiagGaussian
            >>> fam = DiagGaussian()
            >>> nat = fam.from_moments(torch.tensor([1.0, 2.0]), torch.tensor([4.0, 1.0]))
            >>> g_hat, h_hat = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 2.0])
            >>> fam.gh_from_mean_grad(nat, fam.mean_grad_from_gh(nat, g_hat, h_hat))
            (tensor([1., 0.]), tensor([2., 2.]))
        """
