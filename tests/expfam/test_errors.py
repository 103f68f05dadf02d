"""Bad input raises TypeError / ValueError that names the argument and the constraint."""

from __future__ import annotations

import pytest
import torch

import expfam
from expfam import (
    BernoulliNat,
    BetaMean,
    BetaNat,
    CategoricalMean,
    CategoricalNat,
    DiagMean,
    DiagNat,
    DirichletMean,
    DirichletNat,
    FixedCovGaussian,
    FixedCovNat,
    FullMean,
    FullNat,
    GammaMean,
    GammaNat,
    PoissonMean,
    PoissonNat,
)
from tests.expfam.families import ALL, IDS
from tests.expfam.test_contract import nat_for

f64 = torch.float64
MULTI = [(i, f) for i, f in zip(IDS, ALL) if len(f.nat_type._fields) > 1]


def _nat(name):
    fam = expfam.FAMILIES[name]
    return fam, nat_for(fam, batch=(2,), dim=3)


@pytest.mark.parametrize("family", ALL, ids=IDS)
def test_wrong_parameter_type_is_a_type_error_naming_the_argument(family):
    nat = nat_for(family)
    wrong = expfam.DiagNat(torch.zeros(2), -torch.ones(2))
    if isinstance(nat, expfam.DiagNat):
        wrong = expfam.FullNat(torch.zeros(2), -torch.eye(2))
    with pytest.raises(TypeError, match=rf"nat must be a {family.nat_type.__name__}"):
        family.entropy(wrong)
    with pytest.raises(TypeError, match=rf"nat_q must be a {family.nat_type.__name__}"):
        family.kl(nat, tuple(nat))
    with pytest.raises(TypeError, match=rf"mean must be a {family.mean_type.__name__}"):
        family.mean_to_nat(tuple(family.nat_to_mean(nat)))


@pytest.mark.parametrize("family", ALL, ids=IDS)
def test_integer_fields_are_a_type_error(family):
    nat = nat_for(family)
    bad = family.nat_type(*(t.long() if i == 0 else t for i, t in enumerate(nat)))
    field = family.nat_type._fields[0]
    with pytest.raises(TypeError, match=rf"nat\.{field} must be a floating-point tensor"):
        family.log_partition(bad)


@pytest.mark.parametrize("family", [f for _, f in MULTI], ids=[i for i, _ in MULTI])
def test_mixed_dtypes_and_batch_shapes_are_rejected(family):
    nat = nat_for(family, batch=(2,))
    fields = family.nat_type._fields
    mixed = family.nat_type(*(t.float() if i == 1 else t for i, t in enumerate(nat)))
    with pytest.raises(TypeError, match=rf"nat\.{fields[1]} has dtype torch.float32"):
        family.nat_to_mean(mixed)
    short = family.nat_type(*(t[:1] if i == 1 else t for i, t in enumerate(nat)))
    with pytest.raises(ValueError, match=rf"nat\.{fields[1]} has batch shape"):
        family.nat_to_mean(short)


@pytest.mark.parametrize("family", ALL, ids=IDS)
def test_kl_requires_one_dtype(family):
    p = nat_for(family)
    q = family.nat_type(*(t.float() for t in p))
    with pytest.raises(TypeError, match="nat_p and nat_q must share dtype and device"):
        family.kl(p, q)


def _full_bad_prec():
    return FullNat(torch.zeros(2, dtype=f64), torch.tensor([[-1.0, 0], [0, 2.0]], dtype=f64))


def _full_asym():
    return FullNat(torch.zeros(2, dtype=f64), torch.tensor([[-1.0, 0.5], [0, -1.0]], dtype=f64))


DOMAIN_CASES = [
    ("gaussian_full", _full_bad_prec, r"nat\.lam2 must be negative definite"),
    ("gaussian_full", _full_asym, r"nat\.lam2 must be symmetric"),
    (
        "gaussian_full",
        lambda: FullNat(torch.zeros(3, dtype=f64), -torch.eye(2, dtype=f64)),
        r"nat\.lam2 must have event shape \(d, d\) = \(3, 3\)",
    ),
    (
        "gaussian_diag",
        lambda: DiagNat(torch.zeros(2, dtype=f64), torch.tensor([-1.0, 0.0], dtype=f64)),
        r"nat\.lam2 must be < 0",
    ),
    (
        "gaussian_diag",
        lambda: DiagNat(torch.tensor([0.0, float("nan")], dtype=f64), -torch.ones(2, dtype=f64)),
        r"nat\.lam1 must be finite",
    ),
    (
        "bernoulli",
        lambda: BernoulliNat(torch.tensor([0.0, float("inf")], dtype=f64)),
        r"nat\.lam1 must be finite",
    ),
    (
        "categorical",
        lambda: CategoricalNat(torch.tensor([float("nan")], dtype=f64)),
        r"nat\.lam1 must be finite",
    ),
    (
        "beta",
        lambda: BetaNat(torch.tensor([0.5], dtype=f64), torch.tensor([-1.5], dtype=f64)),
        r"nat\.lam2 must be > -1 \(concentration beta = lam2 \+ 1 > 0\)",
    ),
    (
        "gamma",
        lambda: GammaNat(torch.tensor([0.5], dtype=f64), torch.tensor([2.0], dtype=f64)),
        r"nat\.lam2 must be < 0 \(rate b = −lam2 > 0\)",
    ),
    (
        "gamma",
        lambda: GammaNat(torch.tensor([-2.0], dtype=f64), torch.tensor([-1.0], dtype=f64)),
        r"nat\.lam1 must be > -1 \(shape a = lam1 \+ 1 > 0\)",
    ),
    (
        "dirichlet",
        lambda: DirichletNat(torch.tensor([0.5, -3.0], dtype=f64)),
        r"nat\.lam1 must be > -1 \(concentration alpha = lam1 \+ 1 > 0\)",
    ),
    (
        "dirichlet",
        lambda: DirichletNat(torch.tensor([0.5], dtype=f64)),
        r"nat\.lam1 must have K ≥ 2 categories",
    ),
    (
        "poisson",
        lambda: PoissonNat(torch.tensor([30.0], dtype=f64)),
        r"nat\.lam1 must be ≤ log\(1e8\)",
    ),
]

MEAN_CASES = [
    (
        "gaussian_diag",
        lambda: DiagMean(torch.ones(2, dtype=f64), torch.ones(2, dtype=f64)),
        r"mean\.mu2 − mean\.mu1² must be > 0",
    ),
    (
        "gaussian_full",
        lambda: FullMean(torch.ones(2, dtype=f64), torch.eye(2, dtype=f64)),
        r"mean\.mu2 − mean\.mu1 mean\.mu1ᵀ must be positive definite",
    ),
    (
        "categorical",
        lambda: CategoricalMean(torch.tensor([0.6, 0.5], dtype=f64)),
        r"mean\.mu1 must hold K − 1 positive probabilities with sum < 1",
    ),
    ("poisson", lambda: PoissonMean(torch.tensor([0.0], dtype=f64)), r"mean\.mu1 must be > 0"),
    (
        "beta",
        lambda: BetaMean(torch.tensor([-0.1], dtype=f64), torch.tensor([-0.1], dtype=f64)),
        r"exp\(mu1\) \+ exp\(mu2\) < 1",
    ),
    (
        "gamma",
        lambda: GammaMean(torch.tensor([1.0], dtype=f64), torch.tensor([1.0], dtype=f64)),
        r"mean\.mu1 must be < log\(mean\.mu2\)",
    ),
    (
        "dirichlet",
        lambda: DirichletMean(torch.tensor([-0.1, -0.2], dtype=f64)),
        r"logsumexp\(mu1\) < 0",
    ),
]


@pytest.mark.parametrize("name,make,message", DOMAIN_CASES)
def test_nat_outside_the_domain_is_a_value_error(name, make, message):
    fam = expfam.FAMILIES[name]
    with pytest.raises(ValueError, match=message):
        fam.entropy(make())


@pytest.mark.parametrize("name,make,message", MEAN_CASES)
def test_mean_outside_the_domain_is_a_value_error(name, make, message):
    fam = expfam.FAMILIES[name]
    with pytest.raises(ValueError, match=message):
        fam.mean_to_nat(make())


def test_fixed_cov_arguments_are_checked():
    with pytest.raises(ValueError, match="cov must be > 0"):
        FixedCovGaussian(cov=-1.0)
    with pytest.raises(ValueError, match="cov must be symmetric positive definite"):
        FixedCovGaussian(cov=torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    fam = FixedCovGaussian(cov=torch.eye(3))
    with pytest.raises(ValueError, match=r"nat\.lam1 must have event size d = 3"):
        fam.entropy(FixedCovNat(torch.zeros(2)))


def test_mixture_component_precision_is_checked_by_name():
    fam = expfam.FAMILIES["mixture_full"]
    nat = nat_for(fam, batch=(), dim=2)
    bad = nat._replace(lam2=nat.lam2.clone())
    bad.lam2[1] = -bad.lam2[1]
    with pytest.raises(ValueError, match=r"nat\.lam2 must be negative definite"):
        fam.entropy(bad)


def test_validation_can_be_switched_off_and_on():
    fam = expfam.FAMILIES["gaussian_diag"]
    bad = DiagNat(torch.zeros(2, dtype=f64), torch.ones(2, dtype=f64))
    expfam.set_validation(False)
    try:
        assert not expfam.validation_enabled()
        fam.log_partition(bad)  # no check: the caller vouches for λ (the result is NaN)
    finally:
        expfam.set_validation(True)
    with pytest.raises(ValueError):
        fam.log_partition(bad)


def test_register_rejects_duplicates_and_non_families():
    with pytest.raises(ValueError, match="already registered"):
        expfam.register(expfam.DiagGaussian())
    with pytest.raises(TypeError, match="ExpFamily instance"):
        expfam.register("gaussian")


_FULL, _DIAG = expfam.FullGaussian(), expfam.DiagGaussian()


def _t(*values):
    return torch.tensor(values, dtype=f64)


def _z(*shape):
    return torch.zeros(shape, dtype=f64)


_EYE2 = torch.eye(2, dtype=f64)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: _FULL.from_moments(_z(2), _t([2.0, 1.0], [0.0, 2.0])), r"prec must be symmetric"),
        (lambda: _FULL.from_moments(_t(0.0, float("nan")), _EYE2), r"m must be finite"),
        (lambda: _FULL.from_moments(_z(3), _EYE2),
         r"m \(\*batch, d\) and prec \(\*batch, d, d\) must share d"),
        (lambda: _FULL.from_moments(_z(3, 2), _EYE2.expand(4, 2, 2)),
         r"batch shapes of m \(3,\) and prec \(4,\) do not broadcast"),
        (lambda: _FULL.from_moments(_z(2), _t(1.0, 1.0)), r"prec must be square matrices"),
        (lambda: _DIAG.from_moments(_t(float("inf")), _t(1.0)), r"m must be finite"),
        (lambda: _DIAG.from_moments(_z(3), _t(1.0, 1.0)),
         r"m \(3,\) and prec \(2,\) must have broadcastable shapes"),
        (lambda: expfam.Categorical().from_probs(_t(0.5, 0.7, 0.1)), r"probs must sum to one"),
        (lambda: expfam.Categorical().from_probs(_t(1.2, -0.2, 0.0)), r"probs must be > 0"),
        (lambda: expfam.Bernoulli().from_logits(_t(0.0, float("nan"))), r"logits must be finite"),
        (lambda: expfam.Mixture(_DIAG).from_components(
            _t(0.5, 0.6), _DIAG.from_moments(_z(2, 1), _t([1.0], [1.0]))),
         r"weights must sum to one"),
    ],
    ids=["full_nonsymmetric", "full_nan_mean", "full_d", "full_batch", "full_not_square",
         "diag_inf_mean", "diag_shapes", "categorical_sum", "categorical_negative",
         "bernoulli_nan", "mixture_weights"],
)  # fmt: skip
def test_constructors_validate_their_arguments_by_name(make, match):
    """The moment/probability constructors refuse what would give a λ outside the family or a
    raw torch error later (issue: a non-symmetric precision failed only in ``entropy``, naming
    ``nat.lam2``; probabilities off the simplex and NaN logits gave λ silently)."""
    with pytest.raises(ValueError, match=match):
        make()


def test_constructors_accept_what_rounding_leaves_and_broadcast():
    """Nearly symmetric precisions (A Aᵀ + I in float32) and probabilities that sum to one up to
    rounding are accepted; a scalar precision broadcasts over the mean (both fields share the
    shape)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 5, generator=g)
    prec = a @ a.T + torch.eye(5)
    expfam.FullGaussian().from_moments(torch.zeros(5), prec)
    probs = torch.softmax(torch.randn(7, generator=g), -1)
    expfam.Categorical().from_probs(probs)
    nat = expfam.DiagGaussian().from_moments(
        torch.zeros(3, dtype=f64), torch.tensor(2.0, dtype=f64)
    )
    assert nat.lam1.shape == nat.lam2.shape == (3,)
