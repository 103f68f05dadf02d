r"""Helpers over parameter containers: the NamedTuples of tensors (λ, μ, and anything shaped like
them, e.g. ∇_μE_q[ℓ]) with batch dimensions in front and, per field, ``event_ndims`` trailing
event dimensions (a family's ``event_ndims``).

- :func:`tmap`: apply a function field by field (λ − ρ·d, detach, ...).
- :func:`sum_event`: sum the event dimensions of one field.
- :func:`inner`: the pairing <a, b> = Σ_fields Σ_event a ⊙ b of the exponential family
  (<λ, T(θ)>, with the trace inner product for matrix blocks).
- :func:`flatten` / :func:`unflatten`: one vector per batch element and back (for dense Fisher
  solves over all coordinates of λ).

>>> import torch
>>> from expfam import DiagGaussian, tree
>>> fam = DiagGaussian()
>>> nat = fam.from_moments(torch.tensor([1.0, 2.0]), torch.tensor([4.0, 1.0]))
>>> tree.tmap(lambda lam: 2 * lam, nat)
DiagNat(lam1=tensor([8., 4.]), lam2=tensor([-4., -1.]))
>>> tree.flatten(nat, fam.event_ndims)
tensor([ 4.0000,  2.0000, -2.0000, -0.5000])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["flatten", "inner", "sum_event", "tmap", "unflatten"]

P = TypeVar("P", bound=tuple)


def tmap(fn: Callable[..., Tensor], tree: P, *rest: Any) -> P:
    """Apply ``fn`` field by field to one or more containers of the same type; the result has the
    type of ``tree``.

    Example:
        >>> import torch
        >>> from expfam import DiagNat
        >>> from expfam.tree import tmap
        >>> a = DiagNat(torch.tensor([1.0]), torch.tensor([-1.0]))
        >>> b = DiagNat(torch.tensor([0.5]), torch.tensor([-0.5]))
        >>> tmap(lambda x, y: x - 2 * y, a, b)  # λ − ρ·d, field by field
        DiagNat(lam1=tensor([0.]), lam2=tensor([0.]))
    """
    return type(tree)(*(fn(*fields) for fields in zip(tree, *rest)))


def sum_event(x: Tensor, event_ndim: int) -> Tensor:
    """Sum the trailing ``event_ndim`` dimensions of ``x`` (none when ``event_ndim`` is 0).

    Example:
        >>> import torch
        >>> from expfam.tree import sum_event
        >>> x = torch.ones(2, 3, 4)
        >>> sum_event(x, 2)  # two batch elements, 3 × 4 event
        tensor([12., 12.])
        >>> sum_event(x, 0).shape
        torch.Size([2, 3, 4])
    """
    return x.sum(dim=tuple(range(-event_ndim, 0))) if event_ndim > 0 else x


def inner(a: tuple, b: tuple, event_ndims: Sequence[int]) -> Tensor:
    """<a, b> = Σ_fields Σ_event a ⊙ b (the trace inner product for matrix blocks), one value per
    batch element.

    Example:
        >>> import torch
        >>> from expfam import FullGaussian
        >>> from expfam.tree import inner
        >>> fam = FullGaussian()
        >>> nat = fam.from_moments(torch.zeros(2), torch.eye(2))  # λ = (0, −½ I)
        >>> x = torch.tensor([1.0, 2.0])
        >>> inner(nat, fam.suff_stats(x), fam.event_ndims)  # <λ, T(x)> = −½ ‖x‖²
        tensor(-2.5000)
    """
    total = None
    for x, y, k in zip(a, b, event_ndims):
        term = sum_event(x * y, k)
        total = term if total is None else total + term
    assert total is not None
    return total


def flatten(tree: tuple, event_ndims: Sequence[int]) -> Tensor:
    """Concatenate the event parts of every field into one vector per batch element.

    Returns a tensor of shape ``(*batch, P)`` where ``P`` is the total event size.

    Example:
        >>> import torch
        >>> from expfam import FullNat
        >>> from expfam.tree import flatten
        >>> nat = FullNat(torch.zeros(5, 2), -0.5 * torch.eye(2).expand(5, 2, 2))
        >>> flatten(nat, (1, 2)).shape  # 2 + 2·2 coordinates per batch element
        torch.Size([5, 6])
    """
    parts = []
    for x, k in zip(tree, event_ndims):
        batch = x.shape[: x.ndim - k]
        parts.append(x.reshape(*batch, -1))
    return torch.cat(parts, dim=-1)


def unflatten(flat: Tensor, like: P, event_ndims: Sequence[int]) -> P:
    """Inverse of :func:`flatten`, with the field shapes of ``like`` (batch shape from ``flat``).

    Example:
        >>> import torch
        >>> from expfam import FullNat
        >>> from expfam.tree import flatten, unflatten
        >>> nat = FullNat(torch.tensor([1.0, 2.0]), torch.tensor([[-1.0, 0.0], [0.0, -2.0]]))
        >>> back = unflatten(flatten(nat, (1, 2)), nat, (1, 2))
        >>> torch.equal(back.lam2, nat.lam2), type(back).__name__
        (True, 'FullNat')
    """
    out, start = [], 0
    batch = flat.shape[:-1]
    for x, k in zip(like, event_ndims):
        event = x.shape[x.ndim - k :]
        size = 1
        for s in event:
            size *= s
        out.append(flat[..., start : start + size].reshape((*batch, *event)))
        start += size
    return type(like)(*out)
