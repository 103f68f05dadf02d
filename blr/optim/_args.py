"""The arguments of the :mod:`blr.optim` constructors, checked in one place.

Each optimizer declares the kind of each of its hyperparameters (``_hyper``, by
:func:`hyper_rules`: ``lr`` ≥ 0, ``ess`` > 0, a rate in [0, 1), ...; the kinds are
:data:`RULES`) and the common base checks the defaults and every param group with them. The
options every optimizer takes (``mc_samples``, ``nonfinite``, ``seed``, ``missing_sample``;
``sync`` and ``process_group`` for the weight-perturbation optimizers) are declared once, as the
keyword dictionaries :class:`RunOptions`, :class:`DistributedOptions` and
:class:`SamplingOptions`, and checked by :func:`check_run_options`. Every error is a ValueError
(a TypeError for a wrong type) that names the argument. :func:`with_defaults` gives a subclass
its own defaults of its base's arguments (VON's of IVON's).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypedDict, TypeVar

try:  # Python ≥ 3.11; before, typing_extensions (a dependency of torch)
    from typing import Unpack
except ImportError:  # pragma: no cover
    from typing_extensions import Unpack

__all__ = [
    "RULES",
    "DistributedOptions",
    "MonteCarloOptions",
    "RunOptions",
    "SamplingOptions",
    "Unpack",
]

Rule = Callable[[Any, str], Any]
"""A check of one hyperparameter: ``rule(value, name)`` raises ValueError naming it."""


class RunOptions(TypedDict, total=False):
    """Keyword options of every :mod:`blr.optim` optimizer.

    - ``nonfinite``: ``"raise"`` (FloatingPointError) or ``"skip"`` (count the step in
      ``skipped_steps``, leave the state alone) on NaN/Inf gradients.
    - ``seed``: seed of the optimizer's own generators (default: drawn from torch's global RNG).
    - ``missing_sample``: ``step()`` without a collected sample: ``"raise"`` or ``"skip"``.
    """

    nonfinite: str
    seed: int | None
    missing_sample: str


class MonteCarloOptions(RunOptions, total=False):
    """:class:`RunOptions` and ``mc_samples``, the draws ``step(closure)`` takes (the keywords
    of the base classes)."""

    mc_samples: int


class DistributedOptions(RunOptions, total=False):
    """:class:`RunOptions` and ``process_group``, the ``torch.distributed`` group whose ranks
    agree on the seed and average the samples (default: the default group)."""

    process_group: Any


class SamplingOptions(DistributedOptions, total=False):
    """:class:`DistributedOptions`, ``sync``: per-rank noise under ``torch.distributed``
    (the optimizer averages ĝ and the statistics itself; docs/distributed.md), and
    ``draw_ahead``: the weights hold a training draw between steps (``IVON``)."""

    sync: bool
    draw_ahead: bool


def check_positive(
    value: float, name: str, *, allow_zero: bool = False, allow_inf: bool = False
) -> float:
    """A positive (or, with ``allow_zero``, non-negative) number, finite unless ``allow_inf``;
    ValueError names it otherwise.

    Example:
        >>> check_positive(0.0, "lr", allow_zero=True)
        0.0
    """
    v = float(value)
    ok = v >= 0 if allow_zero else v > 0
    if not (ok and (math.isfinite(v) or allow_inf)):
        raise ValueError(f"{name} must be {'≥ 0' if allow_zero else '> 0'}, got {value}")
    return v


def check_beta(value: float, name: str, *, closed: bool = False) -> float:
    """A rate in [0, 1) (or [0, 1] with ``closed``); ValueError names it otherwise.

    Example:
        >>> check_beta(1.0, "beta2", closed=True)
        1.0
    """
    v = float(value)
    if not (0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0):
        raise ValueError(f"{name} must lie in [0, 1{']' if closed else ')'}, got {value}")
    return v


def check_choice(value: Any, name: str, choices: tuple) -> Any:
    """One of ``choices``; ValueError names the argument and lists them otherwise.

    Example:
        >>> check_choice("skip", "nonfinite", ("raise", "skip"))
        'skip'
    """
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
        raise ValueError(f"{name} must be {listed}, got {value!r}")
    return value


# --------------------------------------------------------------------------- hyperparameter rules
def _check_rate_pair(value: Any, name: str) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (β₁, β₂), got {value!r}")
    for i, b in enumerate(value):
        check_beta(b, f"{name}[{i}]")


RULES: Mapping[str, Rule] = MappingProxyType(
    {
        "positive": check_positive,  # > 0, finite (ess, hess_init, a temperature, ...)
        "nonnegative": functools.partial(check_positive, allow_zero=True),  # ≥ 0, finite (lr)
        "radius": functools.partial(check_positive, allow_inf=True),  # > 0 or ∞ (clip radius)
        "rate": check_beta,  # in [0, 1) (a moving-average rate)
        "rate_closed": functools.partial(check_beta, closed=True),  # in [0, 1] (IVON's β₁, β₂)
        "rate_pair": _check_rate_pair,  # a pair of rates in [0, 1) (Adam's betas)
    }
)
"""The kinds of hyperparameter an optimizer's ``_hyper`` may name."""


def hyper_rules(**names: tuple[str, ...]) -> Mapping[str, str]:
    """An optimizer's ``_hyper``: its hyperparameters' names under their kind (a key of
    :data:`RULES`), as the mapping name → kind that :func:`check_hyper` reads (read-only).

    Example:
        >>> dict(hyper_rules(nonnegative=("lr", "weight_decay"), positive=("ess",)))
        {'lr': 'nonnegative', 'weight_decay': 'nonnegative', 'ess': 'positive'}
    """
    unknown = sorted(set(names) - set(RULES))
    if unknown:
        raise ValueError(f"unknown hyperparameter kinds {unknown}; known: {sorted(RULES)}")
    kinds = {name: kind for kind, group in names.items() for name in group}
    if len(kinds) != sum(len(group) for group in names.values()):
        raise ValueError(f"a hyperparameter is given two kinds: {names}")
    return MappingProxyType(kinds)


def check_hyper(values: Mapping[str, Any], rules: Mapping[str, str]) -> None:
    """Check each hyperparameter of ``values`` that ``rules`` (:func:`hyper_rules`) names, in
    the rules' order.

    Example:
        >>> rules = hyper_rules(nonnegative=("lr",), positive=("ess",))
        >>> check_hyper({"lr": 0.1, "ess": 0}, rules)
        Traceback (most recent call last):
        ...
        ValueError: ess must be > 0, got 0
    """
    for name, kind in rules.items():
        if name in values:
            RULES[kind](values[name], name)


def check_run_options(mc_samples: int, nonfinite: str, missing_sample: str) -> None:
    """The options every optimizer takes: ``mc_samples`` an integer ≥ 1, the ``nonfinite`` and
    ``missing_sample`` policies ``"raise"`` or ``"skip"``.

    Example:
        >>> check_run_options(0, "raise", "raise")
        Traceback (most recent call last):
        ...
        ValueError: mc_samples must be an integer ≥ 1, got 0
    """
    check_choice(missing_sample, "missing_sample", ("raise", "skip"))
    if int(mc_samples) != mc_samples or mc_samples < 1:
        raise ValueError(f"mc_samples must be an integer ≥ 1, got {mc_samples}")
    check_choice(nonfinite, "nonfinite", ("raise", "skip"))


_F = TypeVar("_F", bound=Callable[..., None])


def with_defaults(init: _F, **defaults: Any) -> _F:
    """``init`` (a base class's ``__init__``) with other default values for some of its
    arguments: a subclass that differs from its base only in defaults states just those
    (its signature shows them; positional and keyword calls bind as the base's).

    Example:
        >>> import inspect
        >>> def init(self, lr, beta1=0.9, *, debias=True): ...
        >>> str(inspect.signature(with_defaults(init, beta1=0.0, debias=False)))
        '(self, lr, beta1=0.0, *, debias=False)'
    """
    sig = inspect.signature(init)
    unknown = sorted(set(defaults) - set(sig.parameters))
    if unknown:
        raise TypeError(f"{init.__qualname__} has no arguments {unknown}")
    sig = sig.replace(
        parameters=[
            p.replace(default=defaults[p.name]) if p.name in defaults else p
            for p in sig.parameters.values()
        ]
    )

    @functools.wraps(init)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        init(*bound.args, **bound.kwargs)

    wrapper.__signature__ = sig  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
