r"""Products of independent exponential families: one posterior over a vector θ ∈ R^D whose
coordinates fall into blocks, each block its own family.

A product of exponential families is an exponential family, with the blocks' natural parameters,
sufficient statistics and log-partitions side by side:

.. math::
    q(\theta) = \prod_i q_i(\theta_i),\quad \lambda = (\lambda_1, \lambda_2, \dots),\quad
    T(\theta) = (T_1(\theta_1), T_2(\theta_2), \dots),\quad
    A(\lambda) = \sum_i A_i(\lambda_i),\quad \log h(\theta) = \sum_i \log h_i(\theta_i),

so μ = ∇A is the blocks' μ side by side, the Fisher matrix is block diagonal, and the entropy, the
KL divergence and ∇_μ(−H) are the blocks' ones, summed or side by side. It is a structured
posterior for the BLR (Khan & Rue 2023) over a network whose layers get different families: a full
Gaussian on the last layer, a diagonal Gaussian elsewhere, Bernoulli (±1) on binary weights, a
Gamma on positive weights.

>>> import torch
>>> from expfam import Bernoulli, DiagGaussian, FullGaussian, Product
>>> fam = Product([(FullGaussian(), 2), (DiagGaussian(), 3), (Bernoulli("pm1"), 2)])
>>> fam.dim, fam.slices[1]
(7, slice(2, 5, None))
>>> fam.nat_type._fields
('b0_lam1', 'b0_lam2', 'b1_lam1', 'b1_lam2', 'b2_lam1')
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from expfam.base import ExpFamily, Tolerances

__all__ = ["Product"]


@dataclasses.dataclass(frozen=True)
class _Block:
    """The layout of one block, read off its family's ``example_nat((), dim)`` and one draw."""

    family: ExpFamily
    dim: int
    coords: slice  # the block's coordinates of θ
    fields: slice  # the block's fields among the product's fields
    batch_ndim: int  # the batch dimensions the family lays its ``dim`` coordinates out on
    nat_shapes: tuple[torch.Size, ...]  # each λ field without the product's batch dimensions
    mean_shapes: tuple[torch.Size, ...]
    point_shape: torch.Size  # one point θ_i of the block (numel = dim)


def _family_repr(family: ExpFamily) -> str:
    if type(family).__repr__ is not object.__repr__:
        return repr(family)
    return f"{type(family).__name__}()"


def _sum_inner(value: Tensor, ndim: int) -> Tensor:
    """Sum the trailing ``ndim`` dimensions (a block's own batch dimensions)."""
    return value.sum(dim=tuple(range(-ndim, 0))) if ndim > 0 else value


def _rebuild_params(product: Product, natural: bool, values: tuple) -> tuple:
    """Unpickle / deep-copy a parameter value of a :class:`Product` (its types live on it)."""
    kind = product.nat_type if natural else product.mean_type
    return kind(*values)


def _params_type(product: Product, typename: str, fields: list[str], natural: bool) -> type:
    base = collections.namedtuple(typename, fields)  # type: ignore[misc]

    def __reduce__(self: tuple) -> tuple:
        return (_rebuild_params, (product, natural, tuple(self)))

    what = "natural parameters λ" if natural else "mean parameters μ"
    doc = (
        f"The {what} of {product!r}: the blocks' fields in order, "
        f"``b<i>_<field>`` for field ``<field>`` of block i ({', '.join(fields)})."
    )
    return type(
        typename,
        (base,),
        {"__slots__": (), "__doc__": doc, "__module__": __name__, "__reduce__": __reduce__},
    )


def _parse_blocks(blocks: Any) -> list[tuple[ExpFamily, int]]:
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Iterable):
        raise TypeError(
            f"blocks must be a sequence of (family, dim) pairs, got {type(blocks).__name__}"
        )
    out = []
    for i, pair in enumerate(blocks):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"blocks[{i}] must be a (family, dim) pair, got {pair!r}")
        family, dim = pair
        if isinstance(family, type) and issubclass(family, ExpFamily):
            raise TypeError(
                f"blocks[{i}][0] (family) must be an ExpFamily instance, got the class "
                f"{family.__name__}; pass {family.__name__}()"
            )
        if not isinstance(family, ExpFamily):
            raise TypeError(
                f"blocks[{i}][0] (family) must be an ExpFamily instance, got "
                f"{type(family).__name__}"
            )
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(
                f"blocks[{i}][1] (dim) must be a positive int (the number of coordinates of θ "
                f"the block covers), got {dim!r}"
            )
        if dim < family.min_dim:
            raise ValueError(
                f"blocks[{i}][1] (dim) must be ≥ {family.min_dim} for {family.name}, got {dim}"
            )
        out.append((family, dim))
    if not out:
        raise ValueError("blocks must hold at least one (family, dim) pair, got none")
    return out


class Product(ExpFamily):
    r"""A product of independent exponential families over the blocks of a vector θ ∈ R^D:

    .. math::
        q(\theta) = \prod_i q_i(\theta_i),\quad \theta_i = \theta[o_i : o_i + d_i],\quad
        T(\theta) = (T_1(\theta_1), T_2(\theta_2), \dots),\\
        \lambda = (\lambda_1, \lambda_2, \dots),\quad A(\lambda) = \sum_i A_i(\lambda_i),\quad
        \mu = (\mu_1, \mu_2, \dots),\quad \nabla_\mu(-H) = (\nabla_{\mu_i}(-H_i))_i,

    with H = Σ_i H_i, KL(p‖q) = Σ_i KL(p_i‖q_i) and a block-diagonal Fisher matrix: a structured
    posterior over blocks of a network's parameters for the BLR (Khan & Rue 2023).

    Layout. Block i covers the ``d_i`` coordinates θ[..., o_i : o_i + d_i] (``slices[i]``, in the
    order given; D = Σ d_i = ``dim``) and its parameters are laid out exactly as its family lays
    out ``d_i`` coordinates in ``family.example_nat((), d_i)``: a vector-event family (Gaussians,
    Dirichlet) has one event of size d_i and no batch dimension, a scalar-event family (Bernoulli,
    Gamma, Beta, Poisson) has d_i independent scalars as one batch dimension of size d_i. The
    product's λ is a NamedTuple ``nat_type`` whose fields are the blocks' fields in order, named
    ``b<i>_<field>`` (``b0_lam1, b0_lam2, b1_lam1, ...``; μ: ``mean_type``, ``b0_mu1, ...``),
    each the block's own field unchanged; the block's batch dimensions count as event dimensions
    of the product (``event_ndims`` = the field's event dimensions + the block's batch
    dimensions), so λ may carry leading batch dimensions common to all blocks. A point θ has
    shape ``(*batch, D)``; block i's part is θ[..., o_i : o_i + d_i] reshaped to the block's point
    shape (``(d_i,)`` for every built-in family).

    :meth:`split` / :meth:`join` go between λ (or μ, or anything of the product's ``nat_type``,
    such as a natural gradient) and the blocks' own NamedTuples; :meth:`split_sample` /
    :meth:`join_sample` between θ and the blocks' points. Every method of the contract works block
    by block, the blocks' values summed over their own batch dimensions; draws take the blocks in
    order from the same generator, and :meth:`rsample` exists when every block has one.

    Which families work as blocks: any family whose ``example_nat((), d)`` lays out d
    coordinates whose points are tensors with d entries: the Gaussians (full, diagonal, fixed
    covariance with Σ₀ of size d), Bernoulli, Beta, Gamma, Poisson, Dirichlet, a
    :class:`~expfam.generic.GenericFamily` subclass (without a sampler it keeps the points
    ``(d,)`` and :meth:`sample` raises its NotImplementedError), and a Product itself (with
    d = its D). Not: :class:`~expfam.Mixture` (its points are pairs (θ, z)) and
    :class:`~expfam.Categorical` (``example_nat(dim=k)`` has k + 1 classes, whose one-hot
    points have k + 1 coordinates); the constructor says so.

    Attributes (besides those of :class:`~expfam.base.ExpFamily`, here set per instance:
    ``name``, ``nat_type``, ``mean_type``, ``event_ndims``, ``has_rsample``, ``tolerances``,
    the loosest of the blocks'):
        families: the blocks' families, in order.
        dims: the blocks' numbers of coordinates d_i.
        slices: the blocks' coordinates of θ, ``slice(o_i, o_i + d_i)``.
        dim: D = Σ d_i.

    The parameter types belong to the instance: a λ of one Product does not pass for another
    (rebuild it with ``other.nat_type(*nat)`` where the layouts agree). A Product is immutable:
    ``copy.deepcopy`` returns it unchanged, so that deep copies of its parameters keep their
    types, and pickling it (with its parameters, in one pickle) rebuilds one Product and its
    types.

    Args:
        blocks: a sequence of ``(family, dim)`` pairs: an :class:`~expfam.base.ExpFamily`
            instance and the positive number of coordinates of θ it covers (at least one pair).

    Example:
        >>> import torch
        >>> from expfam import Bernoulli, DiagGaussian, FullGaussian, Gamma, Product
        >>> fam = Product([(FullGaussian(), 2), (DiagGaussian(), 3), (Bernoulli("pm1"), 2),
        ...                (Gamma(), 1)])
        >>> fam.dim, fam.dims, fam.event_ndims
        (8, (2, 3, 2, 1), (1, 2, 1, 1, 1, 1, 1))
        >>> gen = torch.Generator().manual_seed(0)
        >>> nat = fam.example_nat((4,), generator=gen)  # four posteriors (batch shape (4,))
        >>> nat.b0_lam2.shape, nat.b2_lam1.shape
        (torch.Size([4, 2, 2]), torch.Size([4, 2]))
        >>> theta = fam.sample(nat, (5,), generator=gen)
        >>> theta.shape
        torch.Size([5, 4, 8])
        >>> parts, points = fam.split(nat), fam.split_sample(theta)
        >>> by_block = sum(f.log_prob(p, x).reshape(5, 4, -1).sum(-1)
        ...                for f, p, x in zip(fam.families, parts, points))
        >>> torch.allclose(fam.log_prob(nat, theta), by_block)
        True
        >>> torch.allclose(fam.entropy(nat), sum(f.entropy(p).reshape(4, -1).sum(-1)
        ...                                      for f, p in zip(fam.families, parts)))
        True
        >>> fam.has_rsample  # the Bernoulli block has no reparameterization
        False
    """

    def __init__(self, blocks: Sequence[tuple[ExpFamily, int]]) -> None:
        pairs = _parse_blocks(blocks)
        layout: list[_Block] = []
        nat_fields: list[str] = []
        mean_fields: list[str] = []
        event_ndims: list[int] = []
        offset = 0
        gen = torch.Generator().manual_seed(0)
        for i, (family, dim) in enumerate(pairs):
            where = f"blocks[{i}] ({family.name} on {dim} coordinates)"
            example = family.example_nat((), dim, generator=gen)
            mean = family._nat_to_mean(example)
            if len(mean) != len(example) or any(m.ndim != t.ndim for m, t in zip(mean, example)):
                raise ValueError(f"{where}: the fields of λ and μ must match in number and rank")
            batch = family.batch_shape(example)
            point_shape = self._point_shape(family, example, gen, where)
            if math.prod(point_shape) != dim:
                raise ValueError(
                    f"{where}: {family.name}.example_nat(dim={dim}) lays out points of shape "
                    f"{tuple(point_shape)} ({math.prod(point_shape)} coordinates), not {dim}; "
                    "this family cannot cover that many coordinates of θ as a block"
                )
            layout.append(
                _Block(
                    family=family,
                    dim=dim,
                    coords=slice(offset, offset + dim),
                    fields=slice(len(nat_fields), len(nat_fields) + len(example)),
                    batch_ndim=len(batch),
                    nat_shapes=tuple(t.shape for t in example),
                    mean_shapes=tuple(m.shape for m in mean),
                    point_shape=point_shape,
                )
            )
            nat_fields += [f"b{i}_{f}" for f in family.nat_type._fields]
            mean_fields += [f"b{i}_{f}" for f in family.mean_type._fields]
            event_ndims += [t.ndim for t in example]
            offset += dim
        self._blocks = tuple(layout)
        self.families = tuple(b.family for b in layout)
        self.dims = tuple(b.dim for b in layout)
        self.slices = tuple(b.coords for b in layout)
        self.dim = offset
        self.name = "product(" + ", ".join(f"{b.family.name}:{b.dim}" for b in layout) + ")"
        self.event_ndims = tuple(event_ndims)
        self.has_rsample = all(f.has_rsample for f in self.families)
        tols = [f.tolerances for f in self.families]
        self.tolerances = Tolerances(
            closed64=max(t.closed64 for t in tols),
            closed32=max(t.closed32 for t in tols),
            roundtrip=max(t.roundtrip for t in tols),
        )
        self.nat_type = _params_type(self, "ProductNat", nat_fields, natural=True)
        self.mean_type = _params_type(self, "ProductMean", mean_fields, natural=False)

    @staticmethod
    def _point_shape(
        family: ExpFamily, example: tuple, gen: torch.Generator, where: str
    ) -> torch.Size:
        """The shape of one point of the block: from one draw (no gradient, the global RNG
        untouched), or, for a family without a sampler, the first field's batch + event shape."""
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                x = family._sample(example, (), gen)
        except NotImplementedError:
            return example[0].shape
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{where}: the points of {family.name} are {type(x).__name__}, not tensors; a "
                "block's points must be tensors, to be laid out as coordinates of θ"
            )
        return x.shape

    def __repr__(self) -> str:
        inner = ", ".join(f"({_family_repr(b.family)}, {b.dim})" for b in self._blocks)
        return f"Product([{inner}])"

    def __reduce__(self) -> tuple:
        return (Product, ([(b.family, b.dim) for b in self._blocks],))

    def __copy__(self) -> Product:
        return self

    def __deepcopy__(self, memo: dict) -> Product:
        return self

    # ------------------------------------------------------------------ layout
    def _split(self, params: tuple, natural: bool) -> list[tuple]:
        return [
            (b.family.nat_type if natural else b.family.mean_type)(*params[b.fields])
            for b in self._blocks
        ]

    def _join(self, parts: Sequence[tuple], natural: bool) -> tuple:
        kind = self.nat_type if natural else self.mean_type
        return kind(*(t for part in parts for t in part))

    def split(self, params: tuple) -> list[tuple]:
        """The blocks' own parameters: block i's fields of ``params`` (a ``nat_type`` or a
        ``mean_type`` of this product) as its family's ``nat_type`` (or ``mean_type``). No copy:
        the fields are the same tensors.

        Args:
            params: λ, μ, or any container of the product's ``nat_type`` / ``mean_type`` (a
                natural gradient, a ∇_μ E_q[ℓ], ...).

        Returns:
            A list with one NamedTuple per block, in order.

        Example:
            >>> import torch
            >>> from expfam import Bernoulli, DiagGaussian, Product
            >>> fam = Product([(DiagGaussian(), 2), (Bernoulli(), 3)])
            >>> nat = fam.example_nat(generator=torch.Generator().manual_seed(0))
            >>> gauss, coins = fam.split(nat)
            >>> type(gauss).__name__, coins.lam1.shape, coins.lam1 is nat.b1_lam1
            ('DiagNat', torch.Size([3]), True)
            >>> [type(p).__name__ for p in fam.split(fam.nat_to_mean(nat))]
            ['DiagMean', 'BernoulliMean']
        """
        if isinstance(params, self.nat_type):
            return self._split(params, natural=True)
        if isinstance(params, self.mean_type):
            return self._split(params, natural=False)
        raise TypeError(
            f"params must be a {self.nat_type.__name__} or {self.mean_type.__name__} of "
            f"{self!r}, got {type(params).__name__}"
        )

    def join(self, parts: Sequence[tuple]) -> tuple:
        """The product's parameters from the blocks' own (the inverse of :meth:`split`): a
        ``nat_type`` when every part is its block's ``nat_type``, a ``mean_type`` when every part
        is its block's ``mean_type``. Shapes are not checked here (:meth:`validate_nat` does).

        Args:
            parts: one NamedTuple per block, in order.

        Example:
            >>> import torch
            >>> from expfam import Bernoulli, DiagGaussian, Product
            >>> fam = Product([(DiagGaussian(), 2), (Bernoulli(), 3)])
            >>> gauss = DiagGaussian().from_moments(torch.zeros(2), torch.ones(2))
            >>> coins = Bernoulli().from_logits(torch.tensor([0.0, 1.0, -1.0]))
            >>> nat = fam.join([gauss, coins])
            >>> type(nat).__name__, nat.b0_lam2, nat.b1_lam1
            ('ProductNat', tensor([-0.5000, -0.5000]), tensor([ 0.,  1., -1.]))
            >>> fam.split(nat)[1] == coins
            True
        """
        if isinstance(parts, tuple) and hasattr(parts, "_fields"):
            raise TypeError(
                f"parts must be a list of the blocks' parameters, got a {type(parts).__name__}"
            )
        parts = list(parts)
        if len(parts) != len(self._blocks):
            raise ValueError(
                f"parts must hold one parameter tuple per block ({len(self._blocks)}), got "
                f"{len(parts)}"
            )
        for natural in (True, False):
            if all(
                isinstance(p, b.family.nat_type if natural else b.family.mean_type)
                for p, b in zip(parts, self._blocks)
            ):
                return self._join(parts, natural)
        for i, (p, b) in enumerate(zip(parts, self._blocks)):
            if not isinstance(p, (b.family.nat_type, b.family.mean_type)):
                raise TypeError(
                    f"parts[{i}] must be a {b.family.nat_type.__name__} or "
                    f"{b.family.mean_type.__name__} for block {i} ({b.family.name}), got "
                    f"{type(p).__name__}"
                )
        raise TypeError("parts mixes natural and mean parameters: give all of one kind")

    def _check_theta(self, theta: Any, name: str) -> None:
        if not isinstance(theta, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(theta).__name__}")
        if theta.ndim < 1 or theta.shape[-1] != self.dim:
            raise ValueError(
                f"{name} must have last dimension D = {self.dim} (the coordinates of the "
                f"{self.name} family), got shape {tuple(theta.shape)}"
            )

    def _split_sample(self, theta: Tensor) -> list[Tensor]:
        self._check_theta(theta, "x")
        lead = theta.shape[:-1]
        return [theta[..., b.coords].reshape((*lead, *b.point_shape)) for b in self._blocks]

    def split_sample(self, theta: Tensor) -> list[Tensor]:
        """The blocks' points: θ[..., o_i : o_i + d_i], reshaped to block i's point shape.

        Args:
            theta: a tensor of shape ``(*batch, D)``.

        Returns:
            A list with one tensor per block, ``(*batch, *point_shape_i)`` (views where
            possible, differentiable).

        Example:
            >>> import torch
            >>> from expfam import Bernoulli, FullGaussian, Product
            >>> fam = Product([(FullGaussian(), 2), (Bernoulli("pm1"), 3)])
            >>> theta = torch.tensor([[0.5, -0.5, 1.0, -1.0, 1.0]])
            >>> fam.split_sample(theta)
            [tensor([[ 0.5000, -0.5000]]), tensor([[ 1., -1.,  1.]])]
        """
        self._check_theta(theta, "theta")
        return self._split_sample(theta)

    def join_sample(self, parts: Sequence[Tensor]) -> Tensor:
        """θ from the blocks' points (the inverse of :meth:`split_sample`): each block's point,
        flattened, concatenated along the last dimension.

        Args:
            parts: one tensor per block, ``(*batch, *point_shape_i)`` with one ``batch`` for all.

        Example:
            >>> import torch
            >>> from expfam import Bernoulli, FullGaussian, Product
            >>> fam = Product([(FullGaussian(), 2), (Bernoulli("pm1"), 3)])
            >>> fam.join_sample([torch.tensor([0.5, -0.5]), torch.tensor([1.0, -1.0, 1.0])])
            tensor([ 0.5000, -0.5000,  1.0000, -1.0000,  1.0000])
        """
        parts = list(parts)
        if len(parts) != len(self._blocks):
            raise ValueError(
                f"parts must hold one point per block ({len(self._blocks)}), got {len(parts)}"
            )
        flat, lead0 = [], None
        for i, (x, b) in enumerate(zip(parts, self._blocks)):
            if not isinstance(x, Tensor):
                raise TypeError(f"parts[{i}] must be a torch.Tensor, got {type(x).__name__}")
            k = len(b.point_shape)
            if x.ndim < k or x.shape[x.ndim - k :] != b.point_shape:
                raise ValueError(
                    f"parts[{i}] must end in block {i}'s point shape {tuple(b.point_shape)} "
                    f"({b.family.name}), got shape {tuple(x.shape)}"
                )
            lead = x.shape[: x.ndim - k]
            if lead0 is not None and lead != lead0:
                raise ValueError(
                    f"parts[{i}] has batch shape {tuple(lead)} but parts[0] has {tuple(lead0)}"
                )
            lead0 = lead
            flat.append(x.reshape((*lead, b.dim)))
        return torch.cat(flat, dim=-1)

    # ------------------------------------------------------------------ the contract
    def _suff_stats(self, x: Tensor) -> tuple:
        points = self._split_sample(x)
        return self._join(
            [b.family._suff_stats(p) for b, p in zip(self._blocks, points)], natural=False
        )

    def _log_base_measure(self, x: Tensor) -> Tensor:
        points = self._split_sample(x)
        return sum(
            _sum_inner(b.family._log_base_measure(p), b.batch_ndim)
            for b, p in zip(self._blocks, points)
        )

    def _sum_over_blocks(self, method: str, *params: tuple) -> Tensor:
        split = [self._split(p, natural=True) for p in params]
        total = None
        for i, b in enumerate(self._blocks):
            value = _sum_inner(getattr(b.family, method)(*(s[i] for s in split)), b.batch_ndim)
            total = value if total is None else total + value
        assert total is not None
        return total

    def _log_partition(self, nat: tuple) -> Tensor:
        return self._sum_over_blocks("_log_partition", nat)

    def _nat_to_mean(self, nat: tuple) -> tuple:
        parts = self._split(nat, natural=True)
        return self._join(
            [b.family._nat_to_mean(p) for b, p in zip(self._blocks, parts)], natural=False
        )

    def _mean_to_nat(self, mean: tuple) -> tuple:
        parts = self._split(mean, natural=False)
        return self._join(
            [b.family._mean_to_nat(p) for b, p in zip(self._blocks, parts)], natural=True
        )

    def _expected_log_base_measure(self, nat: tuple) -> Tensor:
        return self._sum_over_blocks("_expected_log_base_measure", nat)

    def _neg_entropy_grad(self, nat: tuple) -> tuple:
        parts = self._split(nat, natural=True)
        return self._join(
            [b.family._neg_entropy_grad(p) for b, p in zip(self._blocks, parts)], natural=True
        )

    def _entropy(self, nat: tuple) -> Tensor:
        return self._sum_over_blocks("_entropy", nat)

    def _kl(self, nat_p: tuple, nat_q: tuple) -> Tensor:
        return self._sum_over_blocks("_kl", nat_p, nat_q)

    def _log_prob(self, nat: tuple, x: Tensor) -> Tensor:
        parts, points = self._split(nat, natural=True), self._split_sample(x)
        return sum(
            _sum_inner(b.family._log_prob(p, t), b.batch_ndim)
            for b, p, t in zip(self._blocks, parts, points)
        )

    def _sample(self, nat: tuple, sample_shape: tuple[int, ...], generator: Any) -> Tensor:
        parts = self._split(nat, natural=True)
        batch = self.batch_shape(nat)
        draws = []
        for b, p in zip(self._blocks, parts):
            x = b.family._sample(p, sample_shape, generator)
            draws.append(x.reshape((*sample_shape, *batch, b.dim)))
        return torch.cat(draws, dim=-1)

    def rsample(
        self,
        nat: tuple,
        sample_shape: Sequence[int] = (),
        generator: torch.Generator | None = None,
        *,
        validate: bool = True,
    ) -> Tensor:
        """Reparameterized draws θ ~ q_λ, differentiable in λ: every block's ``rsample``, in
        order, from the same generator. Only when every block has one (``has_rsample``).

        Example:
            >>> import torch
            >>> from expfam import Bernoulli, DiagGaussian, Gamma, Product
            >>> fam = Product([(DiagGaussian(), 2), (Gamma(), 1)])
            >>> nat = fam.example_nat(generator=torch.Generator().manual_seed(0))
            >>> fam.rsample(nat, (3,)).shape
            torch.Size([3, 3])
            >>> Product([(DiagGaussian(), 2), (Bernoulli(), 1)]).rsample(nat)
            Traceback (most recent call last):
                ...
            NotImplementedError: product(gaussian_diag:2, bernoulli:1) has no reparameterized \
sampler: block 1 (bernoulli) has none; use sample() with a score-function or relaxed estimator \
for those blocks
        """
        if not self.has_rsample:
            missing = ", ".join(
                f"{i} ({b.family.name})"
                for i, b in enumerate(self._blocks)
                if not b.family.has_rsample
            )
            plural = "s" if ", " in missing else ""
            raise NotImplementedError(
                f"{self.name} has no reparameterized sampler: block{plural} {missing} "
                f"ha{'ve' if plural else 's'} none; use sample() with a score-function or "
                "relaxed estimator for those blocks"
            )
        return super().rsample(nat, sample_shape, generator, validate=validate)

    # ------------------------------------------------------------------ checks
    def _validate_struct(self, params: Any, kind: type, name: str) -> None:
        if (
            not isinstance(params, kind)
            and isinstance(params, tuple)
            and type(params).__name__ == kind.__name__
            and getattr(params, "_fields", None) is not None
        ):
            raise TypeError(
                f"{name} is a {kind.__name__} of another Product (fields "
                f"{', '.join(params._fields)}); this {self.name} family takes its own "
                f"{kind.__name__} (fields {', '.join(kind._fields)}): build it with this "
                "product's join() or, where the layouts agree, as product.nat_type(*nat)"
            )
        super()._validate_struct(params, kind, name)

    def _check_layout(self, params: tuple, shapes_of: str, name: str) -> None:
        for i, b in enumerate(self._blocks):
            shapes = getattr(b, shapes_of)
            for field, value, shape in zip(params._fields[b.fields], params[b.fields], shapes):
                if value.shape[value.ndim - len(shape) :] != shape:
                    raise ValueError(
                        f"{name}.{field} must have shape (*batch, {', '.join(map(str, shape))}) "
                        f"(block {i}: {b.family.name} on {b.dim} coordinates), got "
                        f"{tuple(value.shape)}"
                    )

    def _check_blocks(self, params: tuple, name: str, natural: bool) -> None:
        for i, (b, part) in enumerate(zip(self._blocks, self._split(params, natural))):
            prefix = f"{name}.b{i}"
            check = b.family._check_nat if natural else b.family._check_mean
            try:
                check(part, prefix)
            except (ValueError, TypeError) as err:
                message = str(err)  # the block names "nat.b1.lam2": the product's "nat.b1_lam2"
                for field in sorted(part._fields, key=len, reverse=True):
                    message = message.replace(f"{prefix}.{field}", f"{name}.b{i}_{field}")
                raise type(err)(message) from None

    def _check_nat(self, nat: tuple, name: str) -> None:
        self._check_layout(nat, "nat_shapes", name)
        self._check_blocks(nat, name, natural=True)

    def _check_mean(self, mean: tuple, name: str) -> None:
        self._check_layout(mean, "mean_shapes", name)
        self._check_blocks(mean, name, natural=False)

    def _check_point(self, x: Any, name: str) -> None:
        self._check_theta(x, name)
        lead = x.shape[:-1]
        for b in self._blocks:
            part = x[..., b.coords].reshape((*lead, *b.point_shape))
            b.family._check_point(part, f"{name}[..., {b.coords.start}:{b.coords.stop}]")

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
        """A random valid λ: every block's ``example_nat(batch_shape, d_i, ...)``, in order, from
        the same generator. ``dim`` is ignored: the blocks fix the layout (D = ``self.dim``).

        Example:
            >>> import torch
            >>> from expfam import Bernoulli, FullGaussian, Product
            >>> fam = Product([(FullGaussian(), 2), (Bernoulli("pm1"), 3)])
            >>> nat = fam.example_nat((4,), generator=torch.Generator().manual_seed(0))
            >>> [tuple(t.shape) for t in nat], fam.batch_shape(nat)
            ([(4, 2), (4, 2, 2), (4, 3)], torch.Size([4]))
        """
        del dim  # the blocks fix the layout
        kw = dict(extreme=extreme, dtype=dtype, device=device, generator=generator)
        parts = [b.family.example_nat(tuple(batch_shape), b.dim, **kw) for b in self._blocks]
        return self._join(parts, natural=True)
