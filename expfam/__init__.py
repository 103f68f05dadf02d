"""expfam: exponential families by natural and expectation parameters.

Every family is stateless math over parameter values (NamedTuples of tensors):
``family.nat_to_mean(nat)``, ``family.entropy(nat)``, ``family.kl(nat_p, nat_q)``,
``family.sample(nat, shape)``, ... . :data:`FAMILIES` maps registry names to family instances; it
drives the contract test suite, so a new family is one file plus one line below.
:class:`Product` builds a family from independent blocks of other families (not registered: its
blocks are the user's choice).
``__version__`` is the version of the package. Besides the families: :mod:`expfam.generic` (the
autograd oracles), :mod:`expfam.tree` (helpers over parameter containers: ``tmap``, ``inner``,
``flatten``, ...) and :mod:`expfam.linalg` (symmetric part, Cholesky with a clear error, PSD
solve).

>>> import torch
>>> import expfam
>>> fam = expfam.FAMILIES["gaussian_diag"]
>>> nat = fam.from_moments(torch.tensor([1.0]), torch.tensor([4.0]))
>>> fam.nat_to_mean(nat).mu1
tensor([1.])
>>> isinstance(expfam.__version__, str)
True
"""

from __future__ import annotations

from expfam import generic, linalg, tree
from expfam.base import ExpFamily, GaussianLike, Tolerances, set_validation, validation_enabled
from expfam.bernoulli import Bernoulli, BernoulliMean, BernoulliNat
from expfam.beta import Beta, BetaMean, BetaNat
from expfam.categorical import Categorical, CategoricalMean, CategoricalNat
from expfam.dirichlet import Dirichlet, DirichletMean, DirichletNat
from expfam.gamma import Gamma, GammaMean, GammaNat
from expfam.gaussian_diag import DiagGaussian, DiagMean, DiagNat
from expfam.gaussian_fixed_cov import FixedCovGaussian, FixedCovMean, FixedCovNat
from expfam.gaussian_full import FullGaussian, FullMean, FullNat
from expfam.generic import GenericFamily
from expfam.mixture import Mixture, MixtureMean, MixtureNat, MixturePoint
from expfam.poisson import Poisson, PoissonMean, PoissonNat
from expfam.product import Product

__version__ = "0.1.0"

FAMILIES: dict[str, ExpFamily] = {}


def register(family: ExpFamily, *, replace: bool = False) -> ExpFamily:
    """Add ``family`` to :data:`FAMILIES` under ``family.name`` and return it.

    Raises ValueError if the name is taken (unless ``replace``) and TypeError if ``family`` is
    not an :class:`ExpFamily` instance.

    >>> import expfam
    >>> expfam.FAMILIES["categorical"].name
    'categorical'
    >>> expfam.register(expfam.Categorical())
    Traceback (most recent call last):
    ...
    ValueError: family name 'categorical' is already registered
    """
    if not isinstance(family, ExpFamily):
        raise TypeError(f"family must be an ExpFamily instance, got {type(family).__name__}")
    if family.name in FAMILIES and not replace:
        raise ValueError(f"family name {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


register(FullGaussian())
register(DiagGaussian())
register(FixedCovGaussian())
register(Bernoulli("01"))
register(Bernoulli("pm1"))
register(Categorical())
register(Beta())
register(Gamma())
register(Dirichlet())
register(Poisson())
register(Mixture(FullGaussian()))
register(Mixture(DiagGaussian()))

__all__ = [
    "FAMILIES",
    "Bernoulli",
    "BernoulliMean",
    "BernoulliNat",
    "Beta",
    "BetaMean",
    "BetaNat",
    "Categorical",
    "CategoricalMean",
    "CategoricalNat",
    "DiagGaussian",
    "DiagMean",
    "DiagNat",
    "Dirichlet",
    "DirichletMean",
    "DirichletNat",
    "ExpFamily",
    "FixedCovGaussian",
    "FixedCovMean",
    "FixedCovNat",
    "FullGaussian",
    "FullMean",
    "FullNat",
    "Gamma",
    "GammaMean",
    "GammaNat",
    "GaussianLike",
    "GenericFamily",
    "Mixture",
    "MixtureMean",
    "MixtureNat",
    "MixturePoint",
    "Poisson",
    "PoissonMean",
    "PoissonNat",
    "Product",
    "Tolerances",
    "generic",
    "linalg",
    "register",
    "set_validation",
    "tree",
    "validation_enabled",
]
