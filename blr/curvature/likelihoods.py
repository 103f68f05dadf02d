r"""The likelihoods: one object per likelihood p(y | f) of a model's outputs f, giving the
per-example negative log-likelihood ℓ(f) = −log p(y | f), its output gradient e = ∂ℓ/∂f, the
output Hessian Λ = ∂²ℓ/∂f² and a factor of it (Λ = Σ_c v_c v_cᵀ), output gradients at labels
sampled from the model (E[g gᵀ] = Λ), and the mean response h(f) with its Jacobian ∂h/∂f.

========================  ============================  ==================  ====================
likelihood                ℓ(f) (constants dropped)      e = ∂ℓ/∂f           Λ = ∂²ℓ/∂f²
========================  ============================  ==================  ====================
:class:`Gaussian` (σ²)    ‖f − y‖²/(2σ²)                (f − y)/σ²          I/σ²
:class:`SquaredError`     ‖f − y‖²                      2(f − y)            2I
:class:`Bernoulli`        softplus(f) − y·f             σ(f) − y            diag(σ(f)σ(−f))
:class:`Categorical`      −log softmax(f)_y             p − onehot(y)       diag(p) − ppᵀ
:class:`Poisson`          eᶠ − y·f                      eᶠ − y              diag(eᶠ)
:class:`ElementwiseLoss`  a callable ℓ(y, f)            by autograd         by autograd
========================  ============================  ==================  ====================

(p = softmax(f), σ the logistic sigmoid.) All but the categorical factorize over the entries of
f (Λ is diagonal); :meth:`Likelihood.nll` adds the constants (½ log 2πσ² per entry for the
Gaussian, log y! for the Poisson), :meth:`Likelihood.loss` leaves them out. The mean responses
are f (Gaussian), σ(f), softmax(f) and eᶠ. Because every likelihood here is an exponential family
in its natural parameter f (the canonical links), Λ does not depend on y and
E_{y~p(y|f)}[e eᵀ] = Λ: the Fisher equals the GGN's Λ (:meth:`Likelihood.sample_grads`).

The names users pass (``likelihood=`` of :class:`~blr.nn_laplace.NNLaplace`, ``loss=`` of
:class:`~blr.curvature.PerExample`, :class:`~blr.optim.VOGN` and the module functions of
:mod:`blr.influence`, ``link=`` of :class:`~blr.glm.GLMQuadrature`, :func:`blr.glm.laplace` and
the GLM functions of :mod:`blr.influence`) are all keys of :data:`NAMES` (module docstring of
:mod:`blr.curvature`), resolved by :func:`resolve`.

>>> import torch
>>> from blr.curvature import resolve
>>> lik = resolve("classification")            # NNLaplace's name of the categorical
>>> f, y = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64), torch.tensor([2])
>>> lik.name, lik.grad(f, y).sum().abs() < 1e-15    # p − onehot(y) sums to zero
('categorical', tensor(True))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "NAMES",
    "Bernoulli",
    "Categorical",
    "ElementwiseLoss",
    "Gaussian",
    "Likelihood",
    "Poisson",
    "SquaredError",
    "loss_hessian_factors",
    "resolve",
    "sampled_output_grads",
]

#: Every accepted name → its likelihood (the canonical name of a class below).
NAMES: dict[str, str] = {
    "gaussian": "gaussian",
    "regression": "gaussian",  # NNLaplace
    "mse": "mse",  # PerExample, VOGN, influence modules: the squared error ‖f − y‖²
    "bernoulli": "bernoulli",
    "binary": "bernoulli",  # NNLaplace
    "bce_with_logits": "bernoulli",  # PerExample, VOGN, influence modules
    "logistic": "bernoulli",  # GLMs
    "categorical": "categorical",
    "classification": "categorical",  # NNLaplace
    "cross_entropy": "categorical",  # PerExample, VOGN, influence modules
    "multinomial": "categorical",  # GLMs (influence)
    "poisson": "poisson",  # GLMs (log link)
}


class Likelihood:
    r"""A likelihood p(y | f) of outputs f (base class; module docstring for the table).

    The per-example methods take outputs ``f`` of shape ``(n, k)`` (k entries per example) and
    targets ``y`` of the same shape (class labels ``(n,)`` for :class:`Categorical`);
    :meth:`hessian_factors` and :meth:`sample_grads` take any ``(n, ...)`` (class dimension 1
    for the categorical, as ``F.cross_entropy``).

    Example:
        >>> import torch
        >>> from blr.curvature import Bernoulli
        >>> f, y = torch.tensor([[0.0]]), torch.tensor([[1.0]])
        >>> lik = Bernoulli()
        >>> lik.nll(f, y), lik.grad(f, y), lik.hessian(f)    # log 2, σ(0) − 1, σ(0)σ(0)
        (tensor([0.6931]), tensor([[-0.5000]]), tensor([[[0.2500]]]))
    """

    name: str = ""
    elementwise: bool = True  # factorizes over the output entries: Λ is diagonal
    has_mean: bool = True  # a known mean response h(f)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def check_targets(
        self, y: Tensor, *, name: str = "y", context: str = "", classes: int | None = None
    ) -> Tensor:
        """``y`` checked against the support of the likelihood (finite; in [0, 1] for the
        Bernoulli, ≥ 0 for the Poisson; integer labels in [0, ``classes``) for the categorical,
        returned as int64), or a ValueError naming ``name`` (and ``context``, e.g.
        ``" for link='logistic'"``).

        Example:
            >>> import torch
            >>> from blr.curvature import Bernoulli
            >>> Bernoulli().check_targets(torch.tensor([2.0]), context=" for link='logistic'")
            Traceback (most recent call last):
            ...
            ValueError: y must lie in [0, 1] for link='logistic' (labels in {0, 1})
        """
        if not torch.isfinite(y).all():
            raise ValueError(f"{name} must be finite")
        return y

    # ---------------------------------------------------------------- elementwise (factorized)
    def value(self, f: Tensor, y: Tensor) -> Tensor:
        """ℓ(f) entry by entry (constants dropped), broadcasting f and y.

        Example:
            >>> import torch
            >>> from blr.curvature import Poisson
            >>> Poisson().value(torch.zeros(2), torch.tensor([0.0, 3.0]))   # e⁰ − y·0
            tensor([1., 1.])
        """
        raise NotImplementedError(f"{type(self).__name__} does not factorize over the entries")

    def first(self, f: Tensor, y: Tensor) -> Tensor:
        """ℓ'(f) = ∂ℓ/∂f entry by entry.

        Example:
            >>> import torch
            >>> from blr.curvature import Poisson
            >>> Poisson().first(torch.zeros(2), torch.tensor([0.0, 3.0]))   # e⁰ − y
            tensor([ 1., -2.])
        """
        raise NotImplementedError(f"{type(self).__name__} does not factorize over the entries")

    def second(self, f: Tensor) -> Tensor:
        """ℓ''(f) = ∂²ℓ/∂f² entry by entry, the diagonal of Λ (independent of y).

        Example:
            >>> import torch
            >>> from blr.curvature import Gaussian
            >>> Gaussian(sigma2=0.5).second(torch.zeros(3))   # 1/σ²
            tensor([2., 2., 2.])
        """
        raise NotImplementedError(f"{type(self).__name__} does not factorize over the entries")

    def log_normalizer(self, y: Tensor) -> Tensor | float:
        """The constant c(y) of ℓ per entry: −log p(y | f) = ℓ(f) + c(y).

        Example:
            >>> import math, torch
            >>> from blr.curvature import Gaussian
            >>> Gaussian(sigma2=1.0).log_normalizer(torch.zeros(1)) == 0.5 * math.log(2 * math.pi)
            True
        """
        return 0.0

    def derivatives(self, f: Tensor, y: Tensor, order: int = 2) -> tuple[Tensor, ...]:
        """(ℓ,) for ``order=0``, else (ℓ, ℓ', ℓ''), entry by entry (constants dropped): what a
        GLM needs at many points at once (f and y broadcast, e.g. ``(n, K)`` against ``(n, 1)``).

        Example:
            >>> import torch
            >>> from blr.curvature import Bernoulli
            >>> value, d1, d2 = Bernoulli().derivatives(torch.zeros(1), torch.ones(1))
            >>> value, d1, d2          # log 2, σ(0) − 1, σ(0)σ(−0)
            (tensor([0.6931]), tensor([-0.5000]), tensor([0.2500]))
        """
        value = self.value(f, y)
        if order == 0:
            return (value,)
        return value, self.first(f, y), self.second(f).expand_as(value)

    # ---------------------------------------------------------------- per example
    def loss(self, f: Tensor, y: Tensor) -> Tensor:
        """ℓ_i = Σ_entries ℓ(f_i) per example ``(n,)``, constants dropped.

        Example:
            >>> import torch
            >>> from blr.curvature import SquaredError
            >>> SquaredError().loss(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2))   # ‖f − y‖²
            tensor([5.])
        """
        return self.value(f, y).sum(-1)

    def nll(self, f: Tensor, y: Tensor) -> Tensor:
        """−log p(y_i | f_i) per example ``(n,)``, constants included.

        Example:
            >>> import math, torch
            >>> from blr.curvature import Gaussian
            >>> nll = Gaussian(sigma2=1.0).nll(torch.zeros(1, 1), torch.ones(1, 1))
            >>> bool(torch.isclose(nll, torch.tensor(0.5 + 0.5 * math.log(2 * math.pi))))
            True
        """
        return (self.value(f, y) + self.log_normalizer(y)).sum(-1)

    def grad(self, f: Tensor, y: Tensor) -> Tensor:
        """e_i = ∂ℓ_i/∂f_i, shape of f.

        Example:
            >>> import torch
            >>> from blr.curvature import Gaussian
            >>> f, y = torch.tensor([[3.0]]), torch.tensor([[1.0]])
            >>> Gaussian(sigma2=2.0).grad(f, y)             # (f − y)/σ²
            tensor([[1.]])
        """
        return self.first(f, y)

    def hessian(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        """Λ_i = ∂²ℓ_i/∂f_i² ``(n, k, k)`` (``y`` is needed only by :class:`ElementwiseLoss`).

        Example:
            >>> import torch
            >>> from blr.curvature import Categorical
            >>> Categorical().hessian(torch.zeros(1, 2))    # diag(p) − ppᵀ, p = (½, ½)
            tensor([[[ 0.2500, -0.2500],
                     [-0.2500,  0.2500]]])
        """
        return torch.diag_embed(self.second(f))

    def mean(self, f: Tensor) -> Tensor:
        """The mean response h(f) = E[y | f] (the inverse link), shape of f.

        Example:
            >>> import torch
            >>> from blr.curvature import Bernoulli
            >>> Bernoulli().mean(torch.zeros(1, 1))
            tensor([[0.5000]])
        """
        raise NotImplementedError

    def mean_jacobian(self, f: Tensor) -> Tensor:
        """∂h/∂f per example ``(n, k, k)`` (for a change of the output, the change of the mean
        response to first order).

        Example:
            >>> import torch
            >>> from blr.curvature import Gaussian
            >>> Gaussian(sigma2=4.0).mean_jacobian(torch.zeros(1, 2))   # the identity, any σ²
            tensor([[[1., 0.],
                     [0., 1.]]])
        """
        raise NotImplementedError

    def hessian_factors(self, f: Tensor) -> Tensor:
        r"""Factors V of the output Hessians: Σ_c V[c, i] V[c, i]ᵀ = Λ_i for every example i,
        each V[c, i] flattened over the entries of example i.

        Λ_i is block diagonal over the positions of a multi-position output, so V has one
        column per output entry of an example: D = prod(f.shape[1:]) columns (C·prod(S) for
        categorical logits ``(n, C, *S)``), each nonzero at one position only.

        Args:
            f: outputs ``(n, ...)`` (logits ``(n, C, *S)`` for the categorical).

        Returns:
            V of shape ``(D, *f.shape)``.

        Example:
            >>> import torch
            >>> from blr.curvature import Bernoulli
            >>> f = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
            >>> V = Bernoulli().hessian_factors(f)[:, 0]                 # (2, 2)
            >>> torch.allclose(V.T @ V, Bernoulli().hessian(f)[0])
            True
        """
        f = _batched(f)
        M = f.shape[0]
        flat = f.reshape(M, -1)
        D = flat.shape[1]
        w = self.second(flat).sqrt()  # (M, D): Λ = diag(w²)
        return torch.diag_embed(w).permute(1, 0, 2).reshape(D, *f.shape)

    def sample_grads(
        self, f: Tensor, samples: int = 1, *, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""Output gradients g_k = ∇_f ℓ(ŷ_k, f) at labels sampled from the model,
        ŷ_k ~ p(y | f), so that E[g_k g_kᵀ] = Λ example by example (the Fisher of the likelihood
        in its natural parameter equals the Hessian of the negative log-likelihood).

        Args:
            f: outputs ``(n, ...)`` (class dimension 1 for the categorical).
            samples: K, the number of sampled gradients.
            generator: random generator for the labels.

        Returns:
            g of shape ``(K, *f.shape)``.

        Example:
            >>> import torch
            >>> from blr.curvature import Categorical
            >>> f = torch.tensor([[0.5, -0.5, 1.0]], dtype=torch.float64)
            >>> gen = torch.Generator().manual_seed(0)
            >>> g = Categorical().sample_grads(f, 20000, generator=gen)[:, 0]
            >>> torch.allclose(g.T @ g / 20000, Categorical().hessian(f)[0], atol=0.01)
            True
        """
        raise NotImplementedError(f"{type(self).__name__} cannot sample output gradients")


def _batched(f: Tensor) -> Tensor:
    f = f.detach()
    if f.dim() < 1:
        raise ValueError("output must have a batch dimension")
    return f


def _samples(samples: int) -> int:
    K = int(samples)
    if K < 1:
        raise ValueError("samples must be >= 1")
    return K


class Gaussian(Likelihood):
    r"""Gaussian regression y ~ N(f, σ²I): ℓ = ‖f − y‖²/(2σ²) (+ ½ log 2πσ² per entry in
    :meth:`nll`), e = (f − y)/σ², Λ = I/σ², mean f.

    Args:
        sigma2: the noise variance σ² > 0.

    Example:
        >>> import torch
        >>> from blr.curvature import Gaussian
        >>> lik = Gaussian(sigma2=0.25)
        >>> f, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]])
        >>> lik.loss(f, y), lik.hessian(f)[0]         # 0.5²/(2·0.25), I/0.25
        (tensor([0.5000]), tensor([[4., 0.],
                [0., 4.]]))
    """

    name = "gaussian"

    def __init__(self, sigma2: float = 1.0) -> None:
        s2 = float(sigma2)
        if not (math.isfinite(s2) and s2 > 0):
            raise ValueError(f"sigma2 must be a positive finite number, got {sigma2}")
        self.sigma2 = s2

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma2={self.sigma2:g})"

    @property
    def root_precision(self) -> float:
        """1/σ, the scale of Λ's factor (Λ = (I/σ)(I/σ)ᵀ).

        Example:
            >>> from blr.curvature import Gaussian
            >>> Gaussian(sigma2=0.25).root_precision
            2.0
        """
        return 1.0 / math.sqrt(self.sigma2)

    def value(self, f, y):
        r = f - y
        return 0.5 * r * r / self.sigma2

    def first(self, f, y):
        return (f - y) / self.sigma2

    def second(self, f):
        return torch.full_like(f, 1.0 / self.sigma2)

    def log_normalizer(self, y):
        return 0.5 * math.log(2 * math.pi * self.sigma2)

    def mean(self, f):
        return f

    def mean_jacobian(self, f):
        n, k = f.shape
        return torch.eye(k, dtype=f.dtype, device=f.device).expand(n, k, k)

    def hessian_factors(self, f):
        f = _batched(f)
        M = f.shape[0]
        D = f[0].numel()
        eye = torch.eye(D, dtype=f.dtype, device=f.device) * self.root_precision
        return eye[:, None, :].expand(D, M, D).reshape(D, *f.shape)

    def sample_grads(self, f, samples=1, *, generator=None):
        f = f.detach()
        K = _samples(samples)
        eps = torch.randn((K, *f.shape), dtype=f.dtype, device=f.device, generator=generator)
        return eps * self.root_precision


class SquaredError(Gaussian):
    r"""The squared error ℓ = ‖f − y‖² (``F.mse_loss(reduction="sum")`` per example): the
    Gaussian with σ² = ½ without its constant (:meth:`nll` = :meth:`loss`), e = 2(f − y),
    Λ = 2I.

    Example:
        >>> import torch
        >>> from blr.curvature import SquaredError
        >>> f, y = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]])
        >>> SquaredError().nll(f, y), SquaredError().grad(f, y)
        (tensor([5.]), tensor([[2., 4.]]))
    """

    name = "mse"

    def __init__(self) -> None:
        super().__init__(0.5)

    def __repr__(self) -> str:
        return "SquaredError()"

    @property
    def root_precision(self) -> float:
        return math.sqrt(2.0)

    def log_normalizer(self, y):
        return 0.0


class Bernoulli(Likelihood):
    r"""Binary labels on one logit per entry, y ∈ {0, 1} (or probabilities in [0, 1]):
    ℓ = softplus(f) − y·f, e = σ(f) − y, Λ = σ(f)σ(−f), mean σ(f) (the logistic link).

    Example:
        >>> import torch
        >>> from blr.curvature import Bernoulli
        >>> lik, f = Bernoulli(), torch.tensor([[2.0]], dtype=torch.float64)
        >>> bool(torch.allclose(lik.hessian(f)[0, 0], lik.mean_jacobian(f)[0, 0]))  # ∂σ/∂f = Λ
        True
    """

    name = "bernoulli"

    def check_targets(self, y, *, name="y", context="", classes=None):
        y = super().check_targets(y, name=name)
        if not ((y >= 0) & (y <= 1)).all():
            raise ValueError(f"{name} must lie in [0, 1]{context} (labels in {{0, 1}})")
        return y

    def value(self, f, y):
        return F.softplus(f) - y * f

    def first(self, f, y):
        return torch.sigmoid(f) - y

    def second(self, f):
        return torch.sigmoid(f) * torch.sigmoid(-f)

    def mean(self, f):
        return torch.sigmoid(f)

    def mean_jacobian(self, f):
        return torch.diag_embed(self.second(f))

    def sample_grads(self, f, samples=1, *, generator=None):
        f = f.detach()
        K = _samples(samples)
        sig = f.sigmoid()
        u = torch.rand((K, *f.shape), dtype=f.dtype, device=f.device, generator=generator)
        return sig[None] - (u < sig[None]).to(f.dtype)


class Poisson(Likelihood):
    r"""Counts y ∈ {0, 1, ...} with the log link, rate eᶠ: ℓ = eᶠ − y·f (+ log y! in
    :meth:`nll`), e = eᶠ − y, Λ = eᶠ, mean eᶠ.

    Example:
        >>> import torch
        >>> from blr.curvature import Poisson
        >>> f, y = torch.zeros(1, 1), torch.full((1, 1), 2.0)
        >>> Poisson().nll(f, y)                    # e⁰ − 0 + log 2!
        tensor([1.6931])
    """

    name = "poisson"

    def check_targets(self, y, *, name="y", context="", classes=None):
        y = super().check_targets(y, name=name)
        if not (y >= 0).all():
            raise ValueError(f"{name} must be ≥ 0{context} (counts)")
        return y

    def value(self, f, y):
        return torch.exp(f) - y * f

    def first(self, f, y):
        return torch.exp(f) - y

    def second(self, f):
        return torch.exp(f)

    def log_normalizer(self, y):
        return torch.lgamma(torch.as_tensor(y) + 1)

    def mean(self, f):
        return torch.exp(f)

    def mean_jacobian(self, f):
        return torch.diag_embed(torch.exp(f))

    def sample_grads(self, f, samples=1, *, generator=None):
        f = f.detach()
        K = _samples(samples)
        rate = torch.exp(f)[None].expand(K, *f.shape).contiguous()
        return rate - torch.poisson(rate, generator=generator)


class Categorical(Likelihood):
    r"""Class labels on logits (softmax cross-entropy): f ``(n, C)``, y ∈ {0, …, C−1} ``(n,)``;
    ℓ = −log softmax(f)_y, e = p − onehot(y), Λ = diag(p) − ppᵀ (p = softmax(f)), mean p.
    :meth:`hessian_factors` and :meth:`sample_grads` also take logits ``(n, C, *S)`` (class
    dimension 1, as ``F.cross_entropy``), with Λ block diagonal over the positions.

    Example:
        >>> import torch
        >>> from blr.curvature import Categorical
        >>> f = torch.tensor([[0.3, -1.0, 2.0]], dtype=torch.float64)
        >>> V = Categorical().hessian_factors(f)[:, 0]                 # v_c = √p_c (e_c − p)
        >>> torch.allclose(V.T @ V, Categorical().hessian(f)[0])
        True
    """

    name = "categorical"
    elementwise = False

    def check_targets(self, y, *, name="y", context="", classes=None):
        if y.is_floating_point() and not torch.equal(y, y.round()):
            raise ValueError(f"{name} must hold integer class labels{context}")
        y = y.long()
        if classes is not None and ((y < 0) | (y >= classes)).any():
            raise ValueError(f"{name} must hold class labels in [0, {classes}){context}")
        return y

    def loss(self, f, y):
        return F.cross_entropy(f, y, reduction="none")

    def nll(self, f, y):
        return self.loss(f, y)

    def grad(self, f, y):
        p = f.softmax(-1)
        return p - F.one_hot(y, f.shape[-1]).to(p)

    def hessian(self, f, y=None):
        p = f.softmax(-1)
        return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)

    def mean(self, f):
        return f.softmax(-1)

    def mean_jacobian(self, f):
        return self.hessian(f)

    def hessian_factors(self, f):
        f = _batched(f)
        if f.dim() < 2:
            raise ValueError("the categorical needs logits of shape (M, C) or (M, C, *S)")
        M, C = f.shape[:2]
        p = f.softmax(1).reshape(M, C, -1)  # (M, C, S)
        S = p.shape[-1]
        eye = torch.eye(C, dtype=f.dtype, device=f.device)
        # W[c, m, c', s] = √p[m, c, s] (δ_cc' − p[m, c', s])
        W = p.sqrt().permute(1, 0, 2)[:, :, None, :] * (eye[:, None, :, None] - p[None])
        if S == 1:
            return W.reshape(C, *f.shape)
        V = f.new_zeros(C, S, M, C, S)
        s = torch.arange(S, device=f.device)
        V[:, s, :, :, s] = W.permute(3, 0, 1, 2)
        return V.reshape(C * S, *f.shape)

    def sample_grads(self, f, samples=1, *, generator=None):
        f = f.detach()
        K = _samples(samples)
        if f.dim() < 2:
            raise ValueError("the categorical needs logits of shape (M, C) or (M, C, *S)")
        C = f.shape[1]
        p = f.softmax(1)
        pm = p.movedim(1, -1)  # (M, *S, C)
        idx = torch.multinomial(pm.reshape(-1, C), K, replacement=True, generator=generator)
        onehot = F.one_hot(idx.T, C).to(f.dtype)  # (K, N, C)
        onehot = onehot.reshape(K, *pm.shape).movedim(-1, 2)  # (K, M, C, *S)
        return p[None] - onehot


class ElementwiseLoss(Likelihood):
    r"""A loss ℓ(y, f) given as an elementwise callable (tensors broadcast to the shape of f),
    its derivatives ℓ' and ℓ'' by autograd; no mean response, no factors (Λ = ℓ''(y, f) may
    depend on y and need not be ≥ 0).

    Args:
        fn: ``fn(y, f)`` returning a tensor of the broadcast shape of y and f.

    Example:
        >>> import torch
        >>> from blr.curvature import ElementwiseLoss
        >>> lik = ElementwiseLoss(lambda y, f: (f - y) ** 4)
        >>> lik.derivatives(torch.tensor([2.0]), torch.tensor([1.0]))   # 1, 4(f − y)³, 12(f − y)²
        (tensor([1.]), tensor([4.]), tensor([12.]))
    """

    name = "callable"
    has_mean = False

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be a callable ℓ(y, f), got {fn!r}")
        self.fn = fn

    def __repr__(self) -> str:
        return f"ElementwiseLoss({getattr(self.fn, '__name__', 'fn')})"

    def derivatives(self, f, y, order=2):
        with torch.enable_grad():
            a = f.detach().requires_grad_()
            value = self.fn(y, a)
            shape = torch.broadcast_shapes(y.shape, a.shape)
            if not isinstance(value, Tensor) or value.shape != shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"link must be elementwise: link(y, a) must return shape {tuple(shape)} for y "
                    f"of shape {tuple(y.shape)} and a of shape {tuple(a.shape)}, got {got}"
                )
            if order == 0:
                return (value.detach(),)
            (d1,) = torch.autograd.grad(value.sum(), a, create_graph=True, allow_unused=True)
            if d1 is None:
                d1 = torch.zeros_like(a)
            if d1.requires_grad:
                (d2,) = torch.autograd.grad(d1.sum(), a, allow_unused=True)
            else:
                d2 = None
        d2 = torch.zeros_like(a) if d2 is None else d2
        return value.detach(), d1.detach(), d2.detach()

    def value(self, f, y):
        return self.fn(y, f)

    def first(self, f, y):
        return self.derivatives(f, y, 2)[1]

    def hessian(self, f, y=None):
        if y is None:
            raise TypeError("the Hessian of a callable loss ℓ(y, f) needs the targets y")
        return torch.diag_embed(self.derivatives(f, y, 2)[2])

    def mean(self, f):
        raise TypeError("a callable loss has no known mean response")

    def mean_jacobian(self, f):
        raise TypeError("a callable loss has no known mean response")

    def hessian_factors(self, f):
        raise TypeError("a callable loss ℓ(y, f) has no label-free factor of its Hessian")

    def sample_grads(self, f, samples=1, *, generator=None):
        raise TypeError("a callable loss ℓ(y, f) has no model to sample labels from")


_CLASSES: dict[str, Callable[[], Likelihood]] = {
    "gaussian": Gaussian,
    "mse": SquaredError,
    "bernoulli": Bernoulli,
    "categorical": Categorical,
    "poisson": Poisson,
}
FACTORED = tuple(_CLASSES)  # the likelihoods with a label-free factor of Λ (no callables)
ALL = (*FACTORED, "callable")


def _accepted(supported: tuple[str, ...]) -> str:
    """'bernoulli' (alias 'binary', ...), ... for an error message."""
    parts = []
    for canon in supported:
        if canon == "callable":
            continue
        aliases = [n for n, c in NAMES.items() if c == canon and n != canon]
        alias = f" (alias {', '.join(map(repr, aliases))})" if aliases else ""
        parts.append(f"{canon!r}{alias}")
    return ", ".join(parts)


def resolve(
    spec: str | Likelihood | Callable[[Tensor, Tensor], Tensor],
    *,
    sigma2: float | None = None,
    supported: tuple[str, ...] = ALL,
    arg: str = "likelihood",
) -> Likelihood:
    r"""The likelihood object for a name of :data:`NAMES`, a :class:`Likelihood` (returned as
    it is) or, where ``"callable"`` is supported, an elementwise callable ℓ(y, f)
    (:class:`ElementwiseLoss`).

    Args:
        spec: the name, object or callable.
        sigma2: σ² of the Gaussian (default 1); validated (positive, finite) when given.
        supported: the canonical names the caller accepts (and ``"callable"``).
        arg: the caller's argument name, for the error messages.

    Raises:
        ValueError: an unknown or unsupported name (the message lists the accepted ones).
        TypeError: neither a name, a likelihood nor (where accepted) a callable.

    Example:
        >>> from blr.curvature import resolve
        >>> resolve("regression", sigma2=0.5), resolve("logistic"), resolve("cross_entropy")
        (Gaussian(sigma2=0.5), Bernoulli(), Categorical())
        >>> try:
        ...     resolve("probit", supported=("poisson", "gaussian"), arg="link")
        ... except ValueError as err:
        ...     print(err)
        link must be one of 'poisson', 'gaussian' (alias 'regression'), got 'probit'
    """
    if sigma2 is not None:
        s2 = float(sigma2)
        if not (math.isfinite(s2) and s2 > 0):
            raise ValueError(f"sigma2 must be a positive finite number, got {sigma2}")
    callable_ok = "callable" in supported
    message = f"{arg} must be one of {_accepted(supported)}" + (
        " or a callable ℓ(y, a)" if callable_ok else ""
    )
    if isinstance(spec, Likelihood):
        if spec.name not in supported:
            raise ValueError(f"{message}, got {spec!r}")
        return spec
    if isinstance(spec, str):
        canon = NAMES.get(spec)
        if canon is None or canon not in supported:
            raise ValueError(f"{message}, got {spec!r}")
        if canon == "gaussian":
            return Gaussian(1.0 if sigma2 is None else sigma2)
        return _CLASSES[canon]()
    if callable_ok and callable(spec):
        return ElementwiseLoss(spec)
    raise TypeError(f"{message}, got {spec!r}")


def loss_hessian_factors(output: Tensor, loss: str | Likelihood, *, sigma2: float = 1.0) -> Tensor:
    r"""Factors V of the output Hessians, Σ_c V[c, i] V[c, i]ᵀ = Λ_i for every example i:
    :meth:`Likelihood.hessian_factors` of the likelihood named ``loss``.

    Args:
        output: model outputs f, shape ``(M, ...)`` (logits for the classification losses).
        loss: a name of :data:`NAMES` (e.g. ``"cross_entropy"``: v_c = √p_c (e_c − p), class
            dimension 1; ``"bce_with_logits"``: √(σ(1−σ)) e_d; ``"gaussian"``: e_d/σ;
            ``"mse"``: √2 e_d) or a :class:`Likelihood`.
        sigma2: σ² of ``"gaussian"``.

    Returns:
        V of shape ``(D, *output.shape)``.

    Example:
        >>> import torch
        >>> from blr.curvature import loss_hessian_factors
        >>> f = torch.tensor([[0.3, -1.0, 2.0]], dtype=torch.float64)
        >>> V = loss_hessian_factors(f, "cross_entropy")          # (3, 1, 3)
        >>> p = f.softmax(-1)[0]
        >>> torch.allclose(torch.einsum("ca,cb->ab", V[:, 0], V[:, 0]),
        ...                torch.diag(p) - torch.outer(p, p))
        True
    """
    lik = resolve(loss, sigma2=sigma2, supported=FACTORED, arg="loss")
    return lik.hessian_factors(output)


def sampled_output_grads(
    output: Tensor,
    loss: str | Likelihood,
    *,
    samples: int = 1,
    sigma2: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Output gradients g_k = ∇_f ℓ(ŷ_k, f) at labels sampled from the model, ŷ_k ~ p(y | f),
    with E[g_k g_kᵀ] = Λ_i example by example: :meth:`Likelihood.sample_grads` of the
    likelihood named ``loss`` (``"cross_entropy"``: g = p − e_ŷ; ``"bce_with_logits"``:
    g = σ(f) − ŷ; ``"gaussian"``: g = ε/σ, ε ~ N(0, I), ``"mse"``: σ² = ½).

    Args:
        output: model outputs f ``(M, ...)``.
        loss: as in :func:`loss_hessian_factors`.
        samples: K, the number of sampled gradients.
        sigma2: σ² of ``"gaussian"``.
        generator: random generator for the labels.

    Returns:
        g of shape ``(K, *output.shape)``.

    Example:
        >>> import torch
        >>> from blr.curvature import loss_hessian_factors, sampled_output_grads
        >>> f = torch.tensor([[0.5, -0.5, 1.0]], dtype=torch.float64)
        >>> gen = torch.Generator().manual_seed(0)
        >>> g = sampled_output_grads(f, "cross_entropy", samples=20000, generator=gen)[:, 0]
        >>> V = loss_hessian_factors(f, "cross_entropy")[:, 0]
        >>> torch.allclose(g.T @ g / 20000, V.T @ V, atol=0.01)   # E[g gᵀ] = Λ
        True
    """
    lik = resolve(loss, sigma2=sigma2, supported=FACTORED, arg="loss")
    return lik.sample_grads(output, samples, generator=generator)
