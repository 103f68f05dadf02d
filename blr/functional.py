r"""The functional route: a network's loss as a vectorized θ-loss, so that the engine
(:func:`blr.step`, :class:`blr.BLR` and every estimator) runs on small networks with any family.

For a module f with parameters θ (flattened into one vector of D coordinates by a
:class:`ParameterLayout`), a loss function and a batch (x, y),

.. math:: \bar\ell(\theta) = s\cdot \mathrm{loss\_fn}(f_\theta(x), y),

evaluated for a stack of draws θ ``(*draws, D)`` at once through ``torch.func.functional_call``
and ``torch.func.vmap`` (the draws in front, as every estimator of :mod:`blr.estimators` expects).
:class:`ModuleLoss` is that loss; :class:`blr.optim.BLROptimizer` takes the same steps inside an
ordinary training loop (a test checks they agree step for step).

Example: one Newton step (delta method, ρ = 1) on a linear model's squared error lands on the
least-squares weights:

>>> import torch, expfam, blr
>>> from blr.functional import ModuleLoss
>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> model = torch.nn.Linear(2, 1, bias=False).double()
>>> x = torch.randn(20, 2, dtype=torch.float64)
>>> y = x @ torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
>>> loss = ModuleLoss(model, torch.nn.functional.mse_loss, (x, y), scale=20.0)
>>> fam = expfam.FullGaussian()
>>> nat = fam.from_moments(loss.layout.flatten(model.parameters()),
...                        torch.eye(2, dtype=torch.float64))
>>> nat = blr.step(fam, nat, loss, 1.0, estimator=blr.Delta())
>>> fam.location(nat)
tensor([ 1.0000, -2.0000], dtype=torch.float64)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["ModuleLoss", "ParameterLayout"]


@dataclasses.dataclass(frozen=True)
class ParameterLayout:
    r"""Where each parameter lives in the flat vector θ ∈ R^D: parameter i is
    θ[o_i : o_i + n_i] reshaped to its shape (o_i = Σ_{j<i} n_j, row-major).

    Args:
        names: one name per parameter (``named_parameters`` names, or indices).
        shapes: the parameters' shapes.

    Example:
        >>> import torch
        >>> from blr.functional import ParameterLayout
        >>> model = torch.nn.Linear(3, 2)
        >>> layout = ParameterLayout.from_module(model)
        >>> layout.names, layout.size
        (('weight', 'bias'), 8)
        >>> theta = layout.flatten(model.parameters())
        >>> torch.equal(layout.unflatten(theta)["bias"], model.bias)
        True
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shapes):
            raise ValueError(
                f"names and shapes must have one entry per parameter, got {len(self.names)} "
                f"names and {len(self.shapes)} shapes"
            )
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"names must be distinct, got {self.names}")
        object.__setattr__(self, "shapes", tuple(torch.Size(s) for s in self.shapes))

    @classmethod
    def from_params(
        cls, params: Iterable[Tensor], names: Sequence[str] | None = None
    ) -> ParameterLayout:
        """The layout of ``params`` in order (named ``"0"``, ``"1"``, ... unless ``names``).

        Example:
            >>> import torch
            >>> from blr.functional import ParameterLayout
            >>> ParameterLayout.from_params([torch.zeros(2, 3), torch.zeros(4)]).offsets
            (0, 6, 10)
        """
        params = list(params)
        if names is None:
            names = [str(i) for i in range(len(params))]
        return cls(tuple(names), tuple(p.shape for p in params))

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> ParameterLayout:
        """The layout of ``module``'s trainable parameters (``requires_grad``), in
        ``named_parameters`` order.

        Example:
            >>> import torch
            >>> from blr.functional import ParameterLayout
            >>> ParameterLayout.from_module(torch.nn.Linear(3, 2)).shapes
            (torch.Size([2, 3]), torch.Size([2]))
        """
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        return cls(tuple(n for n, _ in named), tuple(p.shape for _, p in named))

    @property
    def numels(self) -> tuple[int, ...]:
        """n_i, the number of coordinates of each parameter.

        Example:
            >>> import torch
            >>> from blr.functional import ParameterLayout
            >>> ParameterLayout(("w", "b"), ((2, 3), (2,))).numels
            (6, 2)
        """
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def size(self) -> int:
        """D = Σ n_i.

        Example:
            >>> from blr.functional import ParameterLayout
            >>> ParameterLayout(("w", "b"), ((2, 3), (2,))).size
            8
        """
        return sum(self.numels)

    @property
    def offsets(self) -> tuple[int, ...]:
        """o_0 = 0, o_1, ..., o_n = D.

        Example:
            >>> from blr.functional import ParameterLayout
            >>> ParameterLayout(("w", "b"), ((2, 3), (2,))).offsets
            (0, 6, 8)
        """
        out = [0]
        for n in self.numels:
            out.append(out[-1] + n)
        return tuple(out)

    def check(self, params: Sequence[Tensor], name: str = "params") -> None:
        """Raise ValueError (naming ``name``) unless ``params`` have this layout's shapes.

        Example:
            >>> import torch
            >>> from blr.functional import ParameterLayout
            >>> ParameterLayout(("w",), ((2,),)).check([torch.zeros(3)], "model")
            Traceback (most recent call last):
            ...
            ValueError: model do not fit the layout: parameter 'w' has shape (3,), expected (2,)
        """
        if len(params) != len(self.shapes):
            raise ValueError(
                f"{name} do not fit the layout: {len(params)} parameters, expected "
                f"{len(self.shapes)} ({', '.join(self.names)})"
            )
        for n, p, s in zip(self.names, params, self.shapes):
            if p.shape != s:
                raise ValueError(
                    f"{name} do not fit the layout: parameter {n!r} has shape "
                    f"{tuple(p.shape)}, expected {tuple(s)}"
                )

    def flatten(self, params: Iterable[Tensor]) -> Tensor:
        """θ = (vec p_1, vec p_2, ...), a new ``(D,)`` tensor (detached).

        Example:
            >>> import torch
            >>> from blr.functional import ParameterLayout
            >>> layout = ParameterLayout(("w", "b"), ((2, 2), (1,)))
            >>> layout.flatten([torch.eye(2), torch.ones(1)])
            tensor([1., 0., 0., 1., 1.])
        """
        params = list(params)
        self.check(params)
        return torch.cat([p.detach().reshape(-1) for p in params])

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """name → θ[..., o_i : o_i + n_i] reshaped to ``(*lead, *shape_i)`` (views of ``theta``).

        Example:
            >>> import torch
            >>> from blr.functional import ParameterLayout
            >>> layout = ParameterLayout(("w", "b"), ((2, 2), (1,)))
            >>> layout.unflatten(torch.arange(10.0).reshape(2, 5))["w"].shape
            torch.Size([2, 2, 2])
        """
        if theta.ndim < 1 or theta.shape[-1] != self.size:
            raise ValueError(
                f"theta must have {self.size} coordinates in its last dimension, got shape "
                f"{tuple(theta.shape)}"
            )
        lead = theta.shape[:-1]
        out = {}
        for n, s, o, k in zip(self.names, self.shapes, self.offsets, self.numels):
            out[n] = theta[..., o : o + k].reshape(*lead, *s)
        return out


class ModuleLoss:
    r"""ℓ̄(θ) = ``scale`` · ``loss_fn``(f_θ(x), y) for a stack of flattened parameter vectors θ
    ``(*draws, D)``, returning ``(*draws,)``: a network as a loss for :func:`blr.step`,
    :class:`blr.BLR` and the estimators of :mod:`blr.estimators`.

    The parameters not in ``params`` and the buffers keep the module's values. Every draw is an
    independent forward pass (``torch.func.vmap`` over the draws), so the module must not update
    its buffers in the forward pass (put batch normalization in eval mode).

    Args:
        model: the ``torch.nn.Module`` f.
        loss_fn: ``loss_fn(output, target)`` → a scalar (e.g. the mean loss over the batch).
        batch: ``(inputs, target)``; ``inputs`` a tensor or a tuple of the model's arguments.
        scale: s, e.g. N for a mean loss over a minibatch of a set of N examples.
        params: the parameters θ covers (default: every parameter that requires a gradient),
            a subset of ``model``'s.

    Attributes:
        layout: the :class:`ParameterLayout` of θ.

    Example:
        >>> import torch
        >>> from blr.functional import ModuleLoss
        >>> model = torch.nn.Linear(2, 1)
        >>> x, y = torch.ones(4, 2), torch.zeros(4, 1)
        >>> loss = ModuleLoss(model, torch.nn.functional.mse_loss, (x, y), scale=4.0)
        >>> theta = loss.layout.flatten(model.parameters())
        >>> values = loss(torch.stack([theta, torch.zeros_like(theta)]))   # two draws
        >>> values.shape, float(values[1])                                  # f_0 = 0: loss 0
        (torch.Size([2]), 0.0)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[..., Tensor],
        batch: tuple[Any, Any],
        *,
        scale: float = 1.0,
        params: Iterable[Tensor] | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError("batch must be a pair (inputs, target)")
        if not math.isfinite(float(scale)):
            raise ValueError(f"scale must be a finite number, got {scale}")
        named = dict(model.named_parameters())
        if params is None:
            chosen = [(n, p) for n, p in named.items() if p.requires_grad]
        else:
            by_id = {id(p): n for n, p in named.items()}
            chosen = []
            for p in params:
                if id(p) not in by_id:
                    raise ValueError("params must be parameters of model")
                chosen.append((by_id[id(p)], p))
        if not chosen:
            raise ValueError("params is empty: θ must cover at least one parameter")
        self.model, self.loss_fn, self.scale = model, loss_fn, float(scale)
        self.inputs, self.target = batch
        self.layout = ParameterLayout(
            tuple(n for n, _ in chosen), tuple(p.shape for _, p in chosen)
        )
        self.params = [p for _, p in chosen]

    def with_batch(self, batch: tuple[Any, Any], scale: float | None = None) -> ModuleLoss:
        """The same loss on another (mini)batch (and, optionally, another ``scale``).

        Example:
            >>> import torch
            >>> from blr.functional import ModuleLoss
            >>> model = torch.nn.Linear(2, 1)
            >>> loss = ModuleLoss(model, torch.nn.functional.mse_loss,
            ...                   (torch.ones(4, 2), torch.zeros(4, 1)))
            >>> loss.with_batch((torch.ones(3, 2), torch.zeros(3, 1)), scale=3.0).scale
            3.0
        """
        return ModuleLoss(
            self.model,
            self.loss_fn,
            batch,
            scale=self.scale if scale is None else scale,
            params=self.params,
        )

    def flat_params(self) -> Tensor:
        """The module's current θ, ``(D,)`` (detached).

        Example:
            >>> import torch
            >>> from blr.functional import ModuleLoss
            >>> model = torch.nn.Linear(2, 1)
            >>> loss = ModuleLoss(model, torch.nn.functional.mse_loss,
            ...                   (torch.ones(4, 2), torch.zeros(4, 1)))
            >>> loss.flat_params().shape
            torch.Size([3])
        """
        return self.layout.flatten(self.params)

    def _single(self, theta: Tensor) -> Tensor:
        weights = self.layout.unflatten(theta)
        args = self.inputs if isinstance(self.inputs, tuple) else (self.inputs,)
        out = torch.func.functional_call(self.model, weights, args, strict=False)
        return self.loss_fn(out, self.target)

    def __call__(self, theta: Tensor) -> Tensor:
        if not isinstance(theta, Tensor):
            raise TypeError(f"theta must be a tensor, got {type(theta).__name__}")
        if theta.ndim < 2 or theta.shape[-1] != self.layout.size:
            raise ValueError(
                f"theta must have shape (*draws, {self.layout.size}) with the draws in front, "
                f"got {tuple(theta.shape)}"
            )
        lead = theta.shape[:-1]
        values = torch.func.vmap(self._single)(theta.reshape(-1, self.layout.size))
        if values.ndim != 1:
            raise ValueError(
                f"loss_fn must return a scalar per draw, got shape {tuple(values.shape[1:])}"
            )
        return self.scale * values.reshape(lead)
