r"""Posteriors as objects: a family of :mod:`expfam`, its natural parameter λ and the layout of
the flattened parameters θ ∈ R^D it is over (:class:`~blr.functional.ParameterLayout`).

Every optimizer of :mod:`blr.optim` hands its posterior back as a :class:`ParameterPosterior`
(``optimizer.posterior()``); the object draws into the module (``sampled_params()``, so
:mod:`blr.predict` averages over it), gives the KL divergence to another posterior of the same
layout, saves as plain tensors (``state_dict()``, which ``torch.load(weights_only=True)`` reads)
and is accepted as ``prior=`` by the optimizers: the next task's prior is the last task's
posterior (variational continual learning, Nguyen et al. 2018; Khan & Rue 2023, Section 5).

>>> import torch, expfam
>>> from blr.posterior import ParameterPosterior
>>> model = torch.nn.Linear(2, 1)
>>> fam = expfam.DiagGaussian()
>>> q = ParameterPosterior(fam, fam.from_moments(torch.zeros(3), torch.ones(3)), model)
>>> q.layout.names, q.mean().tolist()
(('weight', 'bias'), [0.0, 0.0, 0.0])
>>> float(q.kl(q))
0.0
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import expfam
from blr.functional import ParameterLayout
from expfam import ExpFamily, GaussianLike, Mixture, MixturePoint, Product
from expfam.tree import tmap

__all__ = ["ParameterPosterior", "as_prior", "expected_theta", "identity_statistic"]


def identity_statistic(family: ExpFamily, x: Tensor) -> int | None:
    """The index i of the sufficient statistic with T_i(θ) = θ (so that μ_i = E_q[θ]), found at
    the point ``x`` of the family's support; None if there is none.

    Example:
        >>> import torch, expfam
        >>> from blr.posterior import identity_statistic
        >>> identity_statistic(expfam.Gamma(), torch.tensor([0.5, 2.0]))   # T = (log θ, θ)
        1
    """
    stats = family.suff_stats(x, validate=False)
    for i, t in enumerate(stats):
        if t.shape == x.shape and torch.equal(t, x):
            return i
    return None


def expected_theta(family: ExpFamily, nat: tuple) -> Tensor:
    """E_q[θ]: the mean m of a Gaussian, the blocks' E_q[θ_i] side by side for a
    :class:`~expfam.Product`, else the mean parameter of the identity statistic.

    Example:
        >>> import torch, expfam
        >>> from blr.posterior import expected_theta
        >>> fam = expfam.Bernoulli("pm1")
        >>> expected_theta(fam, expfam.BernoulliNat(torch.tensor([0.0, 100.0])))   # tanh λ
        tensor([0., 1.])
    """
    if isinstance(family, GaussianLike):
        return family.location(nat)
    if isinstance(family, Mixture):  # Σ_k π_k m_k
        weights = torch.exp(family.log_weights(nat)).unsqueeze(-1)
        return (weights * family.component.location(family.components(nat))).sum(-2)
    if isinstance(family, Product):
        return family.join_sample(
            [expected_theta(f, part) for f, part in zip(family.families, family.split(nat))]
        )
    # a point of the support to find the identity statistic at: drawn from a generator of its
    # own, so that E_q[θ] leaves the global random state alone
    gen = torch.Generator(device=nat[0].device).manual_seed(0)
    field = identity_statistic(family, family.sample(nat, (), gen, validate=False))
    if field is None:
        raise TypeError(
            f"{family.name} has no sufficient statistic T_i(θ) = θ, so E_q[θ] is not one of its "
            "mean parameters"
        )
    return family.nat_to_mean(nat, validate=False)[field]


def as_prior(
    value: Any, family: str, shapes: Sequence[Sequence[int]], whose: str = "this optimizer's"
) -> ParameterPosterior:
    """``value`` checked as a ``prior=``: a :class:`ParameterPosterior` of the family named
    ``family`` over parameters of exactly these ``shapes`` (in order); a TypeError or ValueError
    naming ``prior`` otherwise.

    Example:
        >>> import torch, expfam
        >>> from blr.posterior import ParameterPosterior, as_prior
        >>> fam = expfam.DiagGaussian()
        >>> q = ParameterPosterior(fam, fam.from_moments(torch.zeros(3), torch.ones(3)),
        ...                        torch.nn.Linear(2, 1))
        >>> as_prior(q, "gaussian_diag", [(1, 2), (1,)]) is q
        True
        >>> as_prior(q, "gaussian_diag", [(1, 3), (1,)])
        Traceback (most recent call last):
        ...
        ValueError: prior is a posterior over another model: its parameters have shapes [(1, 2), (1,)], this optimizer's [(1, 3), (1,)]
    """  # noqa: E501
    if not isinstance(value, ParameterPosterior):
        raise TypeError(f"prior must be a blr.ParameterPosterior, got {type(value).__name__}")
    if value.family.name != family:
        raise ValueError(
            f"prior must be a {family} posterior, got a posterior of another family "
            f"({value.family.name})"
        )
    theirs = [tuple(s) for s in value.layout.shapes]
    mine = [tuple(s) for s in shapes]
    if theirs != mine:
        raise ValueError(
            f"prior is a posterior over another model: its parameters have shapes {theirs}, "
            f"{whose} {mine}"
        )
    return value


def _family_spec(family: ExpFamily) -> Any:
    """A description of ``family`` made of strings, numbers and lists (for a state_dict)."""
    if isinstance(family, Product):
        return {"product": [[_family_spec(f), d] for f, d in zip(family.families, family.dims)]}
    return family.name


def _family_from_spec(spec: Any) -> ExpFamily:
    if isinstance(spec, dict) and "product" in spec:
        return Product([(_family_from_spec(s), int(d)) for s, d in spec["product"]])
    if isinstance(spec, str) and spec in expfam.FAMILIES:
        return expfam.FAMILIES[spec]
    raise ValueError(
        f"the state_dict's family {spec!r} is not a registered expfam family: pass family="
    )


class ParameterPosterior:
    r"""A posterior q_λ over a model's parameters, flattened in ``layout`` order.

    Args:
        family: the family (an :class:`~expfam.ExpFamily` whose draws are ``(D,)`` vectors: a
            Gaussian over D coordinates, D Bernoulli or Gamma coordinates, a
            :class:`~expfam.Product`, ...).
        nat: λ, a ``family.nat_type``.
        params: the module or the parameters q is over (their order is the layout's); None for
            a posterior not bound to parameters yet (:meth:`bind`).
        layout: the :class:`~blr.functional.ParameterLayout` (default: that of ``params``).
        generator: the random generator of the draws.

    Example: draws into the module, restored on exit:

        >>> import torch, expfam
        >>> from blr.posterior import ParameterPosterior
        >>> model, fam = torch.nn.Linear(2, 1), expfam.DiagGaussian()
        >>> q = ParameterPosterior(fam, fam.from_moments(torch.zeros(3), torch.ones(3)), model,
        ...                        generator=torch.Generator().manual_seed(0))
        >>> before = model.weight.detach().clone()
        >>> with q.sampled_params():
        ...     changed = not torch.equal(model.weight, before)
        >>> changed, torch.equal(model.weight, before)
        (True, True)
    """

    def __init__(
        self,
        family: ExpFamily,
        nat: tuple,
        params: nn.Module | Iterable[Tensor] | None = None,
        *,
        layout: ParameterLayout | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(family, ExpFamily):
            raise TypeError(f"family must be an expfam.ExpFamily, got {type(family).__name__}")
        family.validate_nat(nat, "nat")
        bound = None
        if params is not None:
            if isinstance(params, nn.Module):
                named = list(params.named_parameters())
                bound = [p for _, p in named]
                own = ParameterLayout(tuple(n for n, _ in named), tuple(p.shape for _, p in named))
            else:
                bound = list(params)
                own = ParameterLayout.from_params(bound)
            if layout is None:
                layout = own
            else:
                layout.check(bound, "params")
        if layout is None:
            raise ValueError("a ParameterPosterior needs params or a layout")
        mean = expected_theta(family, nat)
        if mean.shape != (layout.size,):
            raise ValueError(
                f"nat must describe one distribution over the {layout.size} parameters of the "
                f"layout; its draws have shape {tuple(mean.shape)}"
            )
        self.family, self.nat, self.layout = family, nat, layout
        self.params, self.generator = bound, generator

    def __repr__(self) -> str:
        bound = "bound" if self.params is not None else "unbound"
        return f"ParameterPosterior({self.family.name}, D={self.layout.size}, {bound})"

    # ------------------------------------------------------------------ values
    def mean(self) -> Tensor:
        """E_q[θ], ``(D,)``.

        Example:
            >>> import torch, expfam
            >>> from blr.posterior import ParameterPosterior
            >>> from blr.functional import ParameterLayout
            >>> fam = expfam.Bernoulli("pm1")
            >>> q = ParameterPosterior(fam, expfam.BernoulliNat(torch.zeros(2)),
            ...                        layout=ParameterLayout(("w",), ((2,),)))
            >>> q.mean()
            tensor([0., 0.])
        """
        return expected_theta(self.family, self.nat)

    def sample(
        self, sample_shape: Sequence[int] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        """Draws θ ~ q, ``(*sample_shape, D)``.

        Example:
            >>> import torch, expfam
            >>> from blr.posterior import ParameterPosterior
            >>> fam = expfam.DiagGaussian()
            >>> q = ParameterPosterior(fam, fam.from_moments(torch.zeros(3), torch.ones(3)),
            ...                        torch.nn.Linear(2, 1))
            >>> q.sample((5,)).shape
            torch.Size([5, 3])
        """
        gen = self.generator if generator is None else generator
        draws = self.family.sample(self.nat, tuple(sample_shape), gen, validate=False)
        return draws.theta if isinstance(draws, MixturePoint) else draws  # (θ, z) of a mixture

    def kl(self, other: ParameterPosterior) -> Tensor:
        """KL(q ‖ p) to another posterior of the same family and layout (a scalar).

        Example:
            >>> import torch, expfam
            >>> from blr.posterior import ParameterPosterior
            >>> fam, model = expfam.DiagGaussian(), torch.nn.Linear(1, 1)
            >>> q = ParameterPosterior(fam, fam.from_moments(torch.ones(2), torch.ones(2)), model)
            >>> p = ParameterPosterior(fam, fam.from_moments(torch.zeros(2), torch.ones(2)), model)
            >>> float(q.kl(p))   # ½‖m_q − m_p‖² with unit precisions
            1.0
        """
        self.check_compatible(other, "other")
        kl = self.family.kl(self.nat, other.nat)
        return kl.sum() if kl.ndim else kl

    def check_compatible(self, other: Any, name: str) -> None:
        """Raise (naming ``name``) unless ``other`` is a posterior of the same family over the
        same parameter layout.

        Example:
            >>> import torch, expfam
            >>> from blr.posterior import ParameterPosterior
            >>> fam = expfam.DiagGaussian()
            >>> q = ParameterPosterior(fam, fam.from_moments(torch.zeros(3), torch.ones(3)),
            ...                        torch.nn.Linear(2, 1))
            >>> p = ParameterPosterior(fam, fam.from_moments(torch.zeros(4), torch.ones(4)),
            ...                        torch.nn.Linear(3, 1))
            >>> q.check_compatible(p, "prior")
            Traceback (most recent call last):
            ...
            ValueError: prior is a posterior over another model: parameter 'weight' has shape (1, 3), here (1, 2)
        """  # noqa: E501
        if not isinstance(other, ParameterPosterior):
            raise TypeError(f"{name} must be a ParameterPosterior, got {type(other).__name__}")
        if _family_spec(other.family) != _family_spec(self.family):
            raise ValueError(
                f"{name} is a posterior of another family ({other.family.name}, here "
                f"{self.family.name})"
            )
        if other.layout.names != self.layout.names or len(other.layout.shapes) != len(
            self.layout.shapes
        ):
            raise ValueError(
                f"{name} is a posterior over another model: parameters {other.layout.names}, "
                f"here {self.layout.names}"
            )
        for n, a, b in zip(self.layout.names, other.layout.shapes, self.layout.shapes):
            if a != b:
                raise ValueError(
                    f"{name} is a posterior over another model: parameter {n!r} has shape "
                    f"{tuple(a)}, here {tuple(b)}"
                )

    # ------------------------------------------------------------------ the module
    def bind(self, params: nn.Module | Iterable[Tensor]) -> ParameterPosterior:
        """The same posterior over ``params`` (a module or its parameters, of this layout).

        Example:
            >>> import torch, expfam
            >>> from blr.posterior import ParameterPosterior
            >>> fam, model = expfam.DiagGaussian(), torch.nn.Linear(2, 1)
            >>> q = ParameterPosterior(fam, fam.from_moments(torch.zeros(3), torch.ones(3)),
            ...                        layout=ParameterPosterior.layout_of(model))
            >>> q.bind(model).params[0] is model.weight
            True
        """
        return ParameterPosterior(
            self.family, self.nat, params, layout=self.layout, generator=self.generator
        )

    @staticmethod
    def layout_of(module: nn.Module) -> ParameterLayout:
        """The layout of all of ``module``'s parameters (``named_parameters`` order).

        Example:
            >>> import torch
            >>> from blr.posterior import ParameterPosterior
            >>> ParameterPosterior.layout_of(torch.nn.Linear(2, 1)).size
            3
        """
        named = list(module.named_parameters())
        return ParameterLayout(tuple(n for n, _ in named), tuple(p.shape for _, p in named))

    def _bound(self) -> list[Tensor]:
        if self.params is None:
            raise RuntimeError("this posterior is not bound to parameters: call bind(model)")
        return self.params

    @contextlib.contextmanager
    def _holding(self, flat: Tensor) -> Iterator[None]:
        params = self._bound()
        saved = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                for p, v in zip(params, self.layout.unflatten(flat).values()):
                    p.copy_(v)
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)

    def sampled_params(self) -> contextlib.AbstractContextManager:
        """Within the context the parameters hold one draw θ ~ q (restored exactly on exit):
        the :class:`~blr.predict.Posterior` protocol of :mod:`blr.predict`.

        Example:
            >>> import torch, expfam
            >>> from blr.posterior import ParameterPosterior
            >>> model, fam = torch.nn.Linear(2, 1), expfam.DiagGaussian()
            >>> nat = fam.from_moments(torch.zeros(3), torch.ones(3))
            >>> q = ParameterPosterior(fam, nat, model, generator=torch.Generator().manual_seed(0))
            >>> with q.sampled_params():   # weight, then bias: one draw of the family
            ...     theta = torch.cat([model.weight.flatten(), model.bias]).detach()
            >>> torch.equal(theta, fam.sample(nat, (), generator=torch.Generator().manual_seed(0)))
            True
        """
        return self._holding(self.sample())

    def mean_params(self) -> contextlib.AbstractContextManager:
        """Within the context the parameters hold E_q[θ].

        Example:
            >>> import torch, expfam
            >>> from blr.posterior import ParameterPosterior
            >>> model, fam = torch.nn.Linear(2, 1), expfam.DiagGaussian()
            >>> q = ParameterPosterior(fam, fam.from_moments(torch.zeros(3), torch.ones(3)), model)
            >>> with torch.no_grad(), q.mean_params():   # E_q[θ] = 0: weight and bias zero
            ...     out = model(torch.ones(1, 2))
            >>> out.tolist(), bool(model.weight.abs().sum() > 0)   # restored on exit
            ([[0.0]], True)
        """
        return self._holding(self.mean())

    # ------------------------------------------------------------------ saving
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, strings and lists (``torch.load(weights_only=True)`` reads them):
        the family's name (its blocks for a Product), λ and the layout.

        Example:
            >>> import io, torch, expfam
            >>> from blr.posterior import ParameterPosterior
            >>> model, fam = torch.nn.Linear(2, 1), expfam.DiagGaussian()
            >>> q = ParameterPosterior(fam, fam.from_moments(torch.zeros(3), torch.ones(3)), model)
            >>> buf = io.BytesIO(); torch.save(q.state_dict(), buf); _ = buf.seek(0)
            >>> back = ParameterPosterior.from_state_dict(torch.load(buf, weights_only=True), model)
            >>> float(back.kl(q))
            0.0
        """
        return {
            "family": _family_spec(self.family),
            "nat": tuple(t.detach().clone() for t in self.nat),
            "names": list(self.layout.names),
            "shapes": [list(s) for s in self.layout.shapes],
        }

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, Any],
        params: nn.Module | Iterable[Tensor] | None = None,
        *,
        family: ExpFamily | None = None,
        generator: torch.Generator | None = None,
    ) -> ParameterPosterior:
        """A posterior from :meth:`state_dict` (``family`` is needed for a family not in
        :data:`expfam.FAMILIES`, e.g. a fixed-covariance Gaussian with its Σ₀; its name is
        checked).

        Example:
            >>> import torch, expfam
            >>> from blr.posterior import ParameterPosterior
            >>> fam = expfam.DiagGaussian()
            >>> q = ParameterPosterior(fam, fam.from_moments(torch.zeros(3), torch.ones(3)),
            ...                        torch.nn.Linear(2, 1))
            >>> ParameterPosterior.from_state_dict(q.state_dict()).layout == q.layout
            True
        """
        missing = {"family", "nat", "names", "shapes"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}")
        if family is None:
            family = _family_from_spec(state["family"])
        elif _family_spec(family) != state["family"]:
            raise ValueError(f"family {family.name!r} is not the state_dict's {state['family']!r}")
        layout = ParameterLayout(tuple(state["names"]), tuple(tuple(s) for s in state["shapes"]))
        nat = family.nat_type(*state["nat"])
        return cls(family, nat, params, layout=layout, generator=generator)

    def fields_per_parameter(self) -> list[tuple[Tensor, ...]]:
        """λ's fields cut into one tuple per parameter of the layout, each shaped like it.

        Example:
            >>> import torch, expfam
            >>> from blr.posterior import ParameterPosterior
            >>> fam = expfam.DiagGaussian()
            >>> q = ParameterPosterior(fam, fam.from_moments(torch.zeros(3), torch.ones(3)),
            ...                        torch.nn.Linear(2, 1))
            >>> [tuple(tuple(t.shape) for t in fields) for fields in q.fields_per_parameter()]
            [((1, 2), (1, 2)), ((1,), (1,))]
        """
        return [
            tuple(f[a : a + n].reshape(shape) for f in self.nat)
            for a, n, shape in zip(self.layout.offsets, self.layout.numels, self.layout.shapes)
        ]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """The same posterior with λ on another device or dtype.

        Example:
            >>> import torch, expfam
            >>> from blr.posterior import ParameterPosterior
            >>> fam = expfam.DiagGaussian()
            >>> q = ParameterPosterior(fam, fam.from_moments(torch.zeros(3), torch.ones(3)),
            ...                        torch.nn.Linear(2, 1))
            >>> q.to(dtype=torch.float64).nat.lam1.dtype
            torch.float64
        """
        nat = tmap(lambda t: t.to(device=device, dtype=dtype), self.nat)
        return ParameterPosterior(
            self.family, nat, self.params, layout=self.layout, generator=self.generator
        )
