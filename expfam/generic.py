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

import torch
from torch import Tensor

from expfam._tree import flatten, inner, tmap, unflatten
from expfam.base import ExpFamily


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
    sol = _solve_psd(f, g_flat)
    return unflatten(sol, nat, family.event_ndims)


def _solve_psd(f: Tensor, b: Tensor) -> Tensor:
    """Solve F x = b for symmetric positive semi-definite F (least-norm via pseudo-inverse when
    F is singular, as it is along the antisymmetric directions of a matrix block)."""
    return (torch.linalg.pinv(f, hermitian=True) @ b.unsqueeze(-1)).squeeze(-1)


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

    def shaped(t: Tensor) -> tuple:
        return tuple(t.reshape(*batch, *([1] * k)) for k in family.event_ndims)

    for _ in range(max_iter):
        resid = mu_flat - flatten(mean_autograd(family, nat), family.event_ndims)
        if (resid.abs() <= tol * (1 + mu_flat.abs())).all():
            break
        step = unflatten(_solve_psd(fisher(family, nat), resid), nat, family.event_ndims)
        f0 = objective(nat)
        t = torch.ones(batch, dtype=mu_flat.dtype, device=mu_flat.device)
        accepted = torch.zeros(batch, dtype=torch.bool, device=mu_flat.device)
        for _ in range(60):
            ts = shaped(torch.where(accepted, torch.zeros_like(t), t))
            cand = family.nat_type(*(a + tt * s for a, tt, s in zip(nat, ts, step)))
            try:
                family._check_nat(cand, "nat")
                ok = objective(cand) <= f0 + 1e-12 * f0.abs()
            except ValueError:  # some element left the domain: shrink every pending step
                ok = torch.zeros_like(accepted)
            newly = ok & ~accepted
            if newly.any():
                take = shaped(newly.to(t.dtype) * t)
                nat = family.nat_type(*(a + tt * s for a, tt, s in zip(nat, take, step)))
                accepted = accepted | newly
            if accepted.all():
                break
            t = torch.where(accepted, t, 0.5 * t)
    return nat
