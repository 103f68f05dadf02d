"""Helpers over parameter containers (NamedTuples of tensors with batch dimensions in front)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

P = TypeVar("P", bound=tuple)


def tmap(fn: Callable[..., Tensor], tree: P, *rest: Any) -> P:
    """Apply ``fn`` field by field to one or more containers of the same type."""
    return type(tree)(*(fn(*fields) for fields in zip(tree, *rest)))


def sum_event(x: Tensor, event_ndim: int) -> Tensor:
    """Sum the trailing ``event_ndim`` dimensions of ``x``."""
    return x.sum(dim=tuple(range(-event_ndim, 0))) if event_ndim > 0 else x


def inner(a: tuple, b: tuple, event_ndims: Sequence[int]) -> Tensor:
    """<a, b> = Σ_fields Σ_event a ⊙ b (the trace inner product for matrix blocks)."""
    total = None
    for x, y, k in zip(a, b, event_ndims):
        term = sum_event(x * y, k)
        total = term if total is None else total + term
    assert total is not None
    return total


def flatten(tree: tuple, event_ndims: Sequence[int]) -> Tensor:
    """Concatenate the event parts of every field into one vector per batch element.

    Returns a tensor of shape ``(*batch, P)`` where ``P`` is the total event size.
    """
    parts = []
    for x, k in zip(tree, event_ndims):
        batch = x.shape[: x.ndim - k]
        parts.append(x.reshape(*batch, -1))
    return torch.cat(parts, dim=-1)


def unflatten(flat: Tensor, like: P, event_ndims: Sequence[int]) -> P:
    """Inverse of :func:`flatten`, with the field shapes of ``like`` (batch shape from ``flat``)."""
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
