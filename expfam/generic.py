r"""Generic reference implementations, from the log-partition A alone.

These are the oracles every closed form is tested against, and the fallback for a new family that
lacks a closed form:

- :func:`mean_autograd`: μ = ∇A(λ) by autograd.
- :func:`fisher`: F(λ) = ∇²A(λ) = Cov_q[T(θ)], as a dense matrix over the flattened event
  coordinates; :func:`fisher_vector_product` F v without forming F.
- :func:`kl_bregman`: KL(p‖q) = A(λ_q) − A(λ_p) − <λ_q − λ_p, ∇A(λ_p)> (Bregman divergence of A).
- :func:`entropy_legendre`: H = A(λ) − <λ, ∇A(λ)> − E_q[log h] (Legendre duality).
- :func:`neg_entropy_grad_fisher`: ∇_μ(−H) = F(λ)⁻¹ ∇_λ(−H).
- :func:`mean_to_nat_newton`: λ = (∇A)⁻¹(μ) by damped Newton on A(λ) − <λ, μ>.
- :class:`GenericFamily`: a base class that derives all of the above for a family declared by
  T, A and the domain of λ (prototypes; the tutorial on new BLR variants uses it).

They are slow (autograd, dense Fisher) and obvious on purpose. They use only the family's
``_log_partition`` and ``_expected_log_base_measure``, never its closed-form μ or entropy.

>>> import torch
>>> from expfam import Poisson, generic
>>> fam = Poisson()
>>> nat = fam.example_nat((2,), generator=torch.Generator().manual_seed(0))
>>> torch.allclose(generic.mean_autograd(fam, nat).mu1, fam.nat_to_mean(nat).mu1)
True
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from expfam.base import ExpFamily, Tolerances, check_finite
from expfam.linalg import solve_psd
from expfam.tree import flatten, inner, sum_event, tmap, unflatten


def _leaf(nat: tuple) -> tuple:
    return tmap(lambda t: t.detach().clone().requires_grad_(True), nat)


def mean_autograd(family: ExpFamily, nat: tuple, *, create_graph: bool = False) -> tuple:
    """μ = ∇_λ A(λ) by autograd (batch elements are independent, so ∇ of the sum suffices).

    Example:
        >>> import torch, expfam
        >>> fam = expfam.Bernoulli()
        >>> nat = expfam.BernoulliNat(torch.tensor([0.0, 2.0], dtype=torch.float64))
        >>> torch.allclose(mean_autograd(fam, nat).mu1, torch.sigmoid(nat.lam1))
        True
    """
    family.validate_nat(nat)
    leaf = nat if create_graph else _leaf(nat)
    with torch.enable_grad():
        a = family._log_partition(leaf).sum()
        grads = torch.autograd.grad(a, tuple(leaf), create_graph=create_graph)
    return family.mean_type(*grads)


def fisher_vector_product(family: ExpFamily, nat: tuple, v: tuple) -> tuple:
    """F(λ) v = ∇²A(λ) v by double backward, without forming F. ``v`` is shaped like λ.

    Example:
        >>> import torch, expfam
        >>> fam = expfam.Bernoulli()
        >>> nat = expfam.BernoulliNat(torch.tensor([0.5], dtype=torch.float64))
        >>> fv = fisher_vector_product(fam, nat, nat)
        >>> s = torch.sigmoid(nat.lam1)
        >>> torch.allclose(fv[0], s * (1 - s) * nat.lam1)
        True
    """
    family.validate_nat(nat)
    leaf = _leaf(nat)
    with torch.enable_grad():
        mu = mean_autograd(family, leaf, create_graph=True)
        dot = inner(mu, v, family.event_ndims).sum()
        out = torch.autograd.grad(dot, tuple(leaf))
    return family.mean_type(*out)


def fisher(family: ExpFamily, nat: tuple) -> Tensor:
    """F(λ) = ∇²A(λ) as a dense ``(*batch, P, P)`` matrix, P the flattened event size of λ
    (fields in order, row-major). Costs P backward passes: meant for small problems.

    Example:
        >>> import torch, expfam
        >>> fam = expfam.Poisson()  # F = ∇²e^λ = e^λ = the rate
        >>> fisher(fam, expfam.PoissonNat(torch.log(torch.tensor([3.0], dtype=torch.float64))))
        tensor([[[3.0000]]], dtype=torch.float64)
    """
    family.validate_nat(nat)
    leaf = _leaf(nat)
    with torch.enable_grad():
        mu = mean_autograd(family, leaf, create_graph=True)
        flat_mu = flatten(mu, family.event_ndims)
        rows = []
        for j in range(flat_mu.shape[-1]):
            grads = torch.autograd.grad(
                flat_mu[..., j].sum(), tuple(leaf), retain_graph=True, allow_unused=True
            )
            grads = tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaf))
            rows.append(flatten(family.nat_type(*grads), family.event_ndims))
    return torch.stack(rows, dim=-2)


def kl_bregman(family: ExpFamily, nat_p: tuple, nat_q: tuple) -> Tensor:
    """KL(p‖q) = A(λ_q) − A(λ_p) − <λ_q − λ_p, ∇A(λ_p)>, the Bregman divergence of A.

    Example:
        >>> import torch, expfam
        >>> fam = expfam.DiagGaussian()
        >>> one = torch.ones(1, dtype=torch.float64)
        >>> p, q = fam.from_moments(0 * one, one), fam.from_moments(one, one)
        >>> kl_bregman(fam, p, q)  # ½ (m_p − m_q)² s
        tensor(0.5000, dtype=torch.float64)
    """
    mu_p = mean_autograd(family, nat_p)
    diff = tmap(torch.sub, nat_q, nat_p)
    return (
        family._log_partition(nat_q)
        - family._log_partition(nat_p)
        - inner(diff, mu_p, family.event_ndims)
    )


def entropy_legendre(family: ExpFamily, nat: tuple, *, create_graph: bool = False) -> Tensor:
    """H(q) = A(λ) − <λ, ∇A(λ)> − E_q[log h(θ)] (Legendre duality; μ by autograd).

    Example:
        >>> import torch, expfam
        >>> fam = expfam.Bernoulli()
        >>> entropy_legendre(fam, expfam.BernoulliNat(torch.zeros(1, dtype=torch.float64)))
        tensor([0.6931], dtype=torch.float64)
    """
    mu = mean_autograd(family, nat, create_graph=create_graph)
    return (
        family._log_partition(nat)
        - inner(nat, mu, family.event_ndims)
        - family._expected_log_base_measure(nat)
    )


def neg_entropy_grad_fisher(family: ExpFamily, nat: tuple) -> tuple:
    """∇_μ(−H) = F(λ)⁻¹ ∇_λ(−H(λ)), with H from :func:`entropy_legendre` and F from
    :func:`fisher` (both by autograd).

    Example:
        >>> import torch, expfam
        >>> fam = expfam.FixedCovGaussian()  # the entropy does not depend on m: the answer is 0
        >>> neg_entropy_grad_fisher(fam, expfam.FixedCovNat(torch.ones(2, dtype=torch.float64)))
        FixedCovNat(lam1=tensor([0., 0.], dtype=torch.float64))
    """
    leaf = _leaf(nat)
    with torch.enable_grad():
        neg_h = -entropy_legendre(family, leaf, create_graph=True).sum()
        grads = torch.autograd.grad(neg_h, tuple(leaf), allow_unused=True)
    grads = tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaf))
    g_flat = flatten(family.nat_type(*grads), family.event_ndims)
    f = fisher(family, nat)
    sol = solve_psd(f, g_flat)
    return unflatten(sol, nat, family.event_ndims)


def _inside(family: ExpFamily, nat: tuple, batch: torch.Size) -> Tensor:
    """Which batch elements of λ lie in the domain (``_check_nat`` element by element, when it
    rejects the batch as a whole)."""
    device = nat[0].device
    try:
        family._check_nat(nat, "nat")
        return torch.ones(batch, dtype=torch.bool, device=device)
    except ValueError:
        pass
    n = batch.numel()
    flat = [t.reshape((n, *t.shape[len(batch) :])) for t in nat]
    mask = []
    for i in range(n):
        try:
            family._check_nat(family.nat_type(*(t[i] for t in flat)), "nat")
            mask.append(True)
        except ValueError:
            mask.append(False)
    return torch.tensor(mask, dtype=torch.bool, device=device).reshape(batch)


def mean_to_nat_newton(
    family: ExpFamily,
    mean: tuple,
    nat_init: tuple,
    *,
    max_iter: int = 100,
    tol: float | None = None,
) -> tuple:
    """λ = (∇A)⁻¹(μ): minimise the convex A(λ) − <λ, μ> by Newton steps F(λ)Δ = μ − ∇A(λ).

    Each batch element takes its own step size, halved until λ stays in the domain and the
    objective does not increase. A fallback for families whose μ → λ map has no closed form;
    slow (dense autograd Fisher), meant for small problems and as a test oracle.

    Example:
        >>> import torch, expfam
        >>> fam = expfam.Gamma()
        >>> nat = expfam.GammaNat(torch.tensor([1.0], dtype=torch.float64),
        ...                       torch.tensor([-2.0], dtype=torch.float64))
        >>> start = expfam.GammaNat(torch.tensor([0.5], dtype=torch.float64),
        ...                         torch.tensor([-1.0], dtype=torch.float64))
        >>> back = mean_to_nat_newton(fam, fam.nat_to_mean(nat), start)
        >>> torch.allclose(back.lam1, nat.lam1) and torch.allclose(back.lam2, nat.lam2)
        True
    """
    family.validate_mean(mean)
    family.validate_nat(nat_init, "nat_init")
    tol = tol if tol is not None else 100 * torch.finfo(mean[0].dtype).eps
    nat = tmap(lambda t: t.detach(), nat_init)
    mu_flat = flatten(mean, family.event_ndims)
    batch = family.batch_shape(nat)

    def objective(lam: tuple) -> Tensor:
        value = family._log_partition(lam) - inner(lam, mean, family.event_ndims)
        return torch.where(torch.isfinite(value), value, torch.full_like(value, float("inf")))

    def shaped(t: Tensor) -> tuple:  # a per-element value, broadcastable against each field
        return tuple(t.reshape((*batch, *([1] * (f.ndim - len(batch))))) for f in nat)

    for _ in range(max_iter):
        resid = mu_flat - flatten(mean_autograd(family, nat), family.event_ndims)
        if (resid.abs() <= tol * (1 + mu_flat.abs())).all():
            break
        step = unflatten(solve_psd(fisher(family, nat), resid), nat, family.event_ndims)
        f0 = objective(nat)
        t = torch.ones(batch, dtype=mu_flat.dtype, device=mu_flat.device)
        accepted = torch.zeros(batch, dtype=torch.bool, device=mu_flat.device)
        for _ in range(60):
            ts = shaped(torch.where(accepted, torch.zeros_like(t), t))
            cand = family.nat_type(*(a + tt * s for a, tt, s in zip(nat, ts, step)))
            inside = _inside(family, cand, batch)
            # elements that left the domain are evaluated at their current λ (and rejected)
            safe = family.nat_type(
                *(torch.where(m, c, a) for m, c, a in zip(shaped(inside), cand, nat))
            )
            ok = inside & (objective(safe) <= f0 + 1e-12 * f0.abs())
            newly = ok & ~accepted
            if newly.any():
                take = shaped(newly.to(t.dtype) * t)
                nat = family.nat_type(*(a + tt * s for a, tt, s in zip(nat, take, step)))
                accepted = accepted | newly
            if accepted.all():
                break
            t = torch.where(accepted, t, 0.5 * t)
    return nat


def _needs_graph(*trees: tuple) -> bool:
    return any(t.requires_grad for tree in trees for t in tree)


class GenericFamily(ExpFamily):
    r"""An exponential family declared by its sufficient statistics T(θ), its log-partition
    A(λ) and the domain of λ; everything else comes from the functions of this module:

    .. math::
        \mu &= \nabla A(\lambda)\ \text{(autograd)},\\
        \lambda &= (\nabla A)^{-1}(\mu)
            \ \text{(Newton from } \lambda_0 = \mathtt{\_nat\_init}(\mu)),\\
        H &= A(\lambda) - \langle\lambda,\mu\rangle - \mathbb E_q[\log h],\\
        \mathrm{KL}(p\,\|\,q) &= A(\lambda_q) - A(\lambda_p)
            - \langle\lambda_q-\lambda_p,\mu_p\rangle,\\
        \nabla_\mu(-H) &= \lambda\ \ (h = 1),\quad\text{else } F(\lambda)^{-1}\nabla_\lambda(-H).

    All of them are differentiable: μ and H keep the graph of λ when λ requires grad, and the
    μ → λ map ends with one Newton step taken on the graph of μ, so that ∂λ/∂μ = F(λ)⁻¹ (what
    :class:`blr.Reparam` differentiates through). They are slow (autograd, dense Fisher): meant
    for prototypes and small parameter counts; a closed form that a subclass defines replaces
    its generic counterpart.

    A subclass sets ``name``, ``nat_type``, ``mean_type``, ``event_ndims`` (and
    ``has_rsample``) and implements ``_suff_stats``, ``_log_partition``, ``_check_nat`` (the
    domain, with an error naming the field), ``_nat_init`` (a point of the domain with μ's batch
    shape, where Newton starts; or a closed-form ``_mean_to_nat`` instead) and ``example_nat``;
    optionally ``_sample`` (for :meth:`sample`, and :class:`blr.Reparam` when
    differentiable), ``_check_mean`` (default: finite), ``_to_torch``. The base measure is
    h = 1 unless the subclass defines both ``_log_base_measure`` and
    ``_expected_log_base_measure``.

    Example: the Poisson family declared by T(x) = x, A(λ) = e^λ, h(x) = 1/x!, against the
    closed forms of :class:`expfam.Poisson`:

        >>> import torch, expfam
        >>> class MyPoisson(GenericFamily):
        ...     name, nat_type, mean_type, event_ndims = ("my_poisson", expfam.PoissonNat,
        ...                                               expfam.PoissonMean, (0,))
        ...     def _suff_stats(self, x): return expfam.PoissonMean(x)
        ...     def _log_partition(self, nat): return torch.exp(nat.lam1)
        ...     def _log_base_measure(self, x): return -torch.lgamma(x + 1)
        ...     def _expected_log_base_measure(self, nat):
        ...         return expfam.Poisson()._expected_log_base_measure(nat)
        ...     def _check_nat(self, nat, name): expfam.base.check_finite(nat.lam1, name)
        ...     def _nat_init(self, mean): return expfam.PoissonNat(torch.zeros_like(mean.mu1))
        ...     def example_nat(self, batch_shape=(), dim=3, **kw):
        ...         return expfam.Poisson().example_nat(batch_shape, dim, **kw)
        >>> fam, ref = MyPoisson(), expfam.Poisson()
        >>> nat = expfam.PoissonNat(torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64))
        >>> torch.allclose(fam.nat_to_mean(nat).mu1, ref.nat_to_mean(nat).mu1)
        True
        >>> torch.allclose(fam.mean_to_nat(ref.nat_to_mean(nat)).lam1, nat.lam1)
        True
        >>> torch.allclose(fam.log_prob(nat, torch.tensor(3.0, dtype=torch.float64)),
        ...                ref.log_prob(nat, torch.tensor(3.0, dtype=torch.float64)))
        True
    """

    # μ → λ stops on μ's residual (100 ulp); λ's error is that times the conditioning of ∇A
    tolerances: ClassVar[Tolerances] = Tolerances(roundtrip=1e-10)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        own_h = cls._log_base_measure is not GenericFamily._log_base_measure
        own_eh = cls._expected_log_base_measure is not GenericFamily._expected_log_base_measure
        if own_h != own_eh:
            raise TypeError(
                f"{cls.__name__} defines only one of _log_base_measure and "
                "_expected_log_base_measure; a base measure h ≠ 1 needs both (E_q[log h] "
                "enters the entropy and its natural gradient)"
            )

    # ------------------------------------------------------------- what a subclass declares
    def _nat_init(self, mean: tuple) -> tuple:
        """Where the Newton solve of ∇A(λ) = μ starts: a point of the domain with μ's batch
        shape. Needed unless the subclass gives ``_mean_to_nat`` in closed form."""
        raise NotImplementedError(
            f"{type(self).__name__} needs _nat_init (a starting point of the domain for the "
            "Newton solve of ∇A(λ) = μ) or a closed-form _mean_to_nat"
        )

    def _log_base_measure(self, x: Any) -> Tensor:
        """log h(θ) = 0 (h = 1) unless overridden."""
        first = x[0] if isinstance(x, tuple) else x
        return torch.zeros_like(sum_event(first, self.event_ndims[0]))

    def _expected_log_base_measure(self, nat: tuple) -> Tensor:
        """E_q[log h(θ)] = 0 (h = 1) unless overridden."""
        return torch.zeros_like(sum_event(nat[0], self.event_ndims[0]))

    def _check_mean(self, mean: tuple, name: str) -> None:
        for field, value in zip(mean._fields, mean):
            check_finite(value, f"{name}.{field}")

    def _sample(self, nat: tuple, sample_shape: tuple[int, ...], generator: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} declares no sampler (_sample)")

    # ------------------------------------------------------------- derived generically
    def _mu(self, nat: tuple) -> tuple:
        return mean_autograd(self, nat, create_graph=_needs_graph(nat))

    def _nat_to_mean(self, nat: tuple) -> tuple:
        return self._mu(nat)

    def _mean_to_nat(self, mean: tuple) -> tuple:
        start = self._nat_init(tmap(lambda t: t.detach(), mean))
        nat = mean_to_nat_newton(self, tmap(lambda t: t.detach(), mean), start)
        if not _needs_graph(mean):
            return nat
        # one more Newton step, on the graph of μ: the value stays (the residual is ~0) and
        # ∂λ/∂μ = F(λ)⁻¹, the derivative of the inverse map
        resid = flatten(tmap(torch.sub, mean, self._mu(nat)), self.event_ndims)
        step = solve_psd(fisher(self, nat), resid)
        return tmap(torch.add, nat, unflatten(step, nat, self.event_ndims))

    def _entropy(self, nat: tuple) -> Tensor:
        mu = self._mu(nat)
        return (
            self._log_partition(nat)
            - inner(nat, mu, self.event_ndims)
            - self._expected_log_base_measure(nat)
        )

    def _kl(self, nat_p: tuple, nat_q: tuple) -> Tensor:
        mu_p = self._mu(nat_p)
        return (
            self._log_partition(nat_q)
            - self._log_partition(nat_p)
            - inner(tmap(torch.sub, nat_q, nat_p), mu_p, self.event_ndims)
        )

    def _neg_entropy_grad(self, nat: tuple) -> tuple:
        if type(self)._expected_log_base_measure is GenericFamily._expected_log_base_measure:
            return nat  # h = 1: ∇_μ(−H) = λ
        return neg_entropy_grad_fisher(self, nat)
