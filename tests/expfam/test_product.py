"""``expfam.Product``: independent blocks of families over one vector θ. Its log-densities,
entropies and KL divergences against torch.distributions twins of each block on its slice of θ,
the layout helpers (split / join, split_sample / join_sample), sampling moments of a mixed
product, a one-block product against its block, and bad input. The contract suite
(test_contract.py, test_oracles.py, ...) runs on the products listed in families.py."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.distributions as td

import expfam
from expfam import (
    Bernoulli,
    Categorical,
    DiagGaussian,
    Dirichlet,
    FixedCovGaussian,
    FullGaussian,
    Gamma,
    GenericFamily,
    Mixture,
    Product,
    generic,
)
from tests.expfam.families import AutoGamma, AutoLogNormal, _cov

f64 = torch.float64
close = torch.testing.assert_close

FULL, DIAG, PM1, GAMMA = FullGaussian(), DiagGaussian(), Bernoulli("pm1"), Gamma()
# θ ∈ R^9: a full Gaussian on θ[0:3], a diagonal one on θ[3:5], ±1 weights θ[5:7], Gamma θ[7:9]
MIXED = Product([(FULL, 3), (DIAG, 2), (PM1, 2), (GAMMA, 2)])


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _twins(nat):
    """One torch.distributions object per block of MIXED, built from each block's moments (not
    from expfam's densities), with the block's coordinates as the last dimension of its event
    or batch."""
    full, diag, pm1, gamma = MIXED.split(nat)
    m, prec = FULL.to_moments(full)
    m_d, prec_d = DIAG.to_moments(diag)
    shape, rate = GAMMA.shape_rate(gamma)
    return [
        td.MultivariateNormal(m, precision_matrix=prec),
        td.Normal(m_d, prec_d.rsqrt()),
        td.Bernoulli(logits=2 * pm1.lam1),  # p(θ = +1) = σ(2λ)
        td.Gamma(shape, rate),
    ]


def _twin_log_prob(nat, theta):
    twins = _twins(nat)
    parts = [theta[..., 0:3], theta[..., 3:5], (theta[..., 5:7] + 1) / 2, theta[..., 7:9]]
    total = twins[0].log_prob(parts[0])
    for twin, x in zip(twins[1:], parts[1:]):
        total = total + twin.log_prob(x).sum(-1)
    return total


# ---------------------------------------------------------------- (a) log_prob
def test_log_prob_is_the_sum_of_the_blocks_and_of_torch_twins_on_the_slices():
    nat = MIXED.example_nat((2,), generator=_gen(0))
    theta = MIXED.sample(nat, (5,), generator=_gen(1))
    got = MIXED.log_prob(nat, theta)
    assert got.shape == (5, 2)
    by_block = sum(
        fam.log_prob(part, x).reshape(5, 2, -1).sum(-1)
        for fam, part, x in zip(MIXED.families, MIXED.split(nat), MIXED.split_sample(theta))
    )
    close(got, by_block, rtol=1e-12, atol=1e-12)
    close(got, _twin_log_prob(nat, theta), rtol=1e-12, atol=1e-12)
    # the exponential-family form <λ, T(θ)> − A(λ) + log h(θ) of the product agrees too
    ef = (
        expfam.tree.inner(nat, MIXED.suff_stats(theta), MIXED.event_ndims)
        - MIXED.log_partition(nat)
        + MIXED.log_base_measure(theta)
    )
    close(got, ef, rtol=1e-10, atol=1e-10)


def test_log_prob_at_points_not_drawn_from_q():
    """θ chosen by hand (not a draw), so that no sampler bug can hide a density bug."""
    nat = MIXED.example_nat(generator=_gen(2))
    theta = torch.tensor([0.3, -1.2, 2.0, 0.0, 5.0, 1.0, -1.0, 0.5, 3.0], dtype=f64)
    close(MIXED.log_prob(nat, theta), _twin_log_prob(nat, theta), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- (b) entropy and KL
def test_entropy_and_kl_are_the_sums_of_the_blocks_and_of_torch_twins():
    p = MIXED.example_nat((3,), generator=_gen(3))
    q = MIXED.example_nat((3,), generator=_gen(4))
    ent, kl = MIXED.entropy(p), MIXED.kl(p, q)
    assert ent.shape == kl.shape == (3,)
    fams = MIXED.families
    blocks_ent = sum(fam.entropy(a).reshape(3, -1).sum(-1) for fam, a in zip(fams, MIXED.split(p)))
    blocks_kl = sum(
        fam.kl(a, b).reshape(3, -1).sum(-1)
        for fam, a, b in zip(MIXED.families, MIXED.split(p), MIXED.split(q))
    )
    close(ent, blocks_ent, rtol=1e-12, atol=1e-12)
    close(kl, blocks_kl, rtol=1e-12, atol=1e-12)
    tp, tq = _twins(p), _twins(q)
    twin_ent = tp[0].entropy() + sum(t.entropy().sum(-1) for t in tp[1:])
    twin_kl = td.kl_divergence(tp[0], tq[0]) + sum(
        td.kl_divergence(a, b).sum(-1) for a, b in zip(tp[1:], tq[1:])
    )
    close(ent, twin_ent, rtol=1e-10, atol=1e-12)
    close(kl, twin_kl, rtol=1e-10, atol=1e-12)
    assert MIXED.kl(p, p).abs().max() < 1e-12


def test_kl_broadcasts_batch_shapes():
    p = MIXED.example_nat((3,), generator=_gen(5))
    q = MIXED.example_nat((), generator=_gen(6))
    q3 = MIXED.nat_type(*(t.expand(3, *t.shape) for t in q))
    close(MIXED.kl(p, q), MIXED.kl(p, q3), rtol=1e-14, atol=0)


# ---------------------------------------------------------------- (c) μ, Fisher
def test_mean_is_autograd_of_the_log_partition_and_the_fisher_is_block_diagonal():
    nat = MIXED.example_nat((2,), generator=_gen(7))
    close(MIXED.nat_to_mean(nat), generic.mean_autograd(MIXED, nat), rtol=1e-11, atol=1e-12)
    # F(λ) of the product, by autograd over A = Σ A_i, against the blocks' own F_i on the diagonal
    f = generic.fisher(MIXED, nat)
    blocks = []
    for fam, part in zip(MIXED.families, MIXED.split(nat)):
        fb = generic.fisher(fam, part)  # (2, P, P); scalar-event blocks: (2, d, P, P)
        if fb.ndim == 4:  # d independent scalars: field-major order, δ_ij between coordinates
            d, p = fb.shape[1], fb.shape[2]
            eye = torch.eye(d, dtype=f64)
            fb = torch.einsum("bipq,ij->bpiqj", fb, eye).reshape(2, p * d, p * d)
        blocks.append(fb)
    ref = torch.stack([torch.block_diag(*(b[i] for b in blocks)) for i in range(2)])
    close(f, ref, rtol=1e-12, atol=1e-12)
    # and its inverse: ∇_μ(−H) by a Fisher solve is the blocks' closed forms side by side
    got = MIXED.neg_entropy_grad(nat)
    close(got, generic.neg_entropy_grad_fisher(MIXED, nat), rtol=1e-8, atol=1e-9)
    close(
        got,
        MIXED.join([fam.neg_entropy_grad(p) for fam, p in zip(MIXED.families, MIXED.split(nat))]),
    )


def test_mean_to_nat_inverts_nat_to_mean_blockwise():
    nat = MIXED.example_nat((2, 2), generator=_gen(8))
    mean = MIXED.nat_to_mean(nat)
    assert type(mean) is MIXED.mean_type
    assert mean._fields[:2] == ("b0_mu1", "b0_mu2")
    close(MIXED.mean_to_nat(mean), nat, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- (d) layout
def test_field_names_event_ndims_and_shapes():
    assert MIXED.nat_type._fields == (
        "b0_lam1", "b0_lam2", "b1_lam1", "b1_lam2", "b2_lam1", "b3_lam1", "b3_lam2"
    )  # fmt: skip
    assert MIXED.mean_type._fields[-2:] == ("b3_mu1", "b3_mu2")
    # the block's own event dims + its batch dims (the scalar-event blocks' d coordinates)
    assert MIXED.event_ndims == (1, 2, 1, 1, 1, 1, 1)
    assert MIXED.dim == 9 and MIXED.dims == (3, 2, 2, 2)
    assert MIXED.slices == (slice(0, 3), slice(3, 5), slice(5, 7), slice(7, 9))
    nat = MIXED.example_nat((4, 1), generator=_gen(9))
    assert [tuple(t.shape) for t in nat] == [
        (4, 1, 3), (4, 1, 3, 3), (4, 1, 2), (4, 1, 2), (4, 1, 2), (4, 1, 2), (4, 1, 2)
    ]  # fmt: skip
    assert MIXED.batch_shape(nat) == (4, 1)
    assert MIXED.log_partition(nat).shape == (4, 1)


def test_split_join_roundtrip_without_copies():
    nat = MIXED.example_nat((2,), generator=_gen(10))
    parts = MIXED.split(nat)
    assert [type(p) for p in parts] == [
        expfam.FullNat, expfam.DiagNat, expfam.BernoulliNat, expfam.GammaNat
    ]  # fmt: skip
    assert parts[2].lam1 is nat.b2_lam1
    back = MIXED.join(parts)
    assert type(back) is MIXED.nat_type and all(a is b for a, b in zip(back, nat))
    mean = MIXED.nat_to_mean(nat)
    mparts = MIXED.split(mean)
    assert type(mparts[3]) is expfam.GammaMean
    assert type(MIXED.join(mparts)) is MIXED.mean_type
    # a natural gradient (anything of nat_type) splits the same way
    grad = expfam.tree.tmap(torch.zeros_like, nat)
    assert type(MIXED.split(grad)[0]) is expfam.FullNat


def test_split_sample_join_sample_roundtrip():
    theta = torch.randn(4, 2, 9, dtype=f64, generator=_gen(11))
    parts = MIXED.split_sample(theta)
    assert [tuple(p.shape) for p in parts] == [(4, 2, 3), (4, 2, 2), (4, 2, 2), (4, 2, 2)]
    close(parts[1], theta[..., 3:5], rtol=0, atol=0)
    assert torch.equal(MIXED.join_sample(parts), theta)
    again = MIXED.split_sample(MIXED.join_sample(parts))
    assert all(torch.equal(a, b) for a, b in zip(again, parts))
    # θ with no batch dimension
    assert torch.equal(MIXED.join_sample(MIXED.split_sample(theta[0, 0])), theta[0, 0])


def test_split_sample_is_differentiable():
    theta = torch.randn(9, dtype=f64, generator=_gen(12)).requires_grad_()
    parts = MIXED.split_sample(theta)
    (g,) = torch.autograd.grad(sum((i + 1) * p.sum() for i, p in enumerate(parts)), theta)
    close(g, torch.tensor([1.0] * 3 + [2.0] * 2 + [3.0] * 2 + [4.0] * 2, dtype=f64))


# ---------------------------------------------------------------- (e) sampling
def test_mixed_sampling_moments_match_the_blocks():
    """Per coordinate, mean and variance of 40 000 draws against each twin's own moments
    (z-tests, 5 standard errors); the blocks are uncorrelated; the supports are right."""
    nat = MIXED.example_nat(generator=_gen(13))
    n = 40_000
    x = MIXED.sample(nat, (n,), generator=_gen(14))
    assert x.shape == (n, 9) and x.dtype == f64
    assert ((x[:, 5:7] == 1) | (x[:, 5:7] == -1)).all() and (x[:, 7:9] > 0).all()
    twins = _twins(nat)
    mean = torch.cat([twins[0].mean, twins[1].mean, 2 * twins[2].mean - 1, twins[3].mean])
    var = torch.cat(
        [twins[0].variance, twins[1].variance, 4 * twins[2].variance, twins[3].variance]
    )
    se_mean = (var / n).sqrt()
    assert ((x.mean(0) - mean).abs() <= 5 * se_mean).all()
    c = x - x.mean(0)
    sq = c * c
    se_var = sq.std(0) / n**0.5
    assert ((sq.mean(0) - var).abs() <= 5 * se_var).all()
    # the full block's covariance is the twin's; across blocks the correlation is 0
    cov = c.mT @ c / n
    close(cov[:3, :3], twins[0].covariance_matrix, rtol=0.05, atol=0.05 * var[:3].max().item())
    corr = cov / torch.outer(var.sqrt(), var.sqrt())
    across = torch.ones(9, 9, dtype=torch.bool)
    for sl in MIXED.slices:
        across[sl, sl] = False
    assert corr[across].abs().max() < 5 / n**0.5


def test_draws_are_the_blocks_draws_in_order_from_one_generator():
    nat = MIXED.example_nat((2,), generator=_gen(15))
    x = MIXED.sample(nat, (3,), generator=_gen(16))
    gen = _gen(16)
    parts = MIXED.split(nat)
    blocks = [fam.sample(p, (3,), generator=gen) for fam, p in zip(MIXED.families, parts)]
    assert torch.equal(x, MIXED.join_sample(blocks))


def test_rsample_needs_every_block_to_have_one():
    gauss = Product([(FULL, 2), (DIAG, 2), (GAMMA, 1)])
    assert gauss.has_rsample and not MIXED.has_rsample
    nat = expfam.tree.tmap(lambda t: t.requires_grad_(), gauss.example_nat(generator=_gen(17)))
    x = gauss.rsample(nat, (4,), generator=_gen(18))
    grads = torch.autograd.grad(x.sum(), tuple(nat), allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with pytest.raises(NotImplementedError, match=r"block 2 \(bernoulli_pm1\) has none"):
        MIXED.rsample(MIXED.example_nat(generator=_gen(19)))


# ---------------------------------------------------------------- (f) one block
@pytest.mark.parametrize(
    "family,dim",
    [
        (FULL, 3),
        (DIAG, 4),
        (PM1, 3),
        (GAMMA, 2),
        (Dirichlet(), 3),
        (expfam.Poisson(), 2),  # h ≠ 1: ∇_μ(−H) ≠ λ
        (AutoGamma(), 2),
        (AutoLogNormal(), 1),  # h ≠ 1, generic ∇_μ(−H) by a Fisher solve
    ],
    ids=["full", "diag", "pm1", "gamma", "dirichlet", "poisson", "generic_gamma", "lognormal"],
)
def test_a_single_block_product_is_its_block(family, dim):
    fam = Product([(family, dim)])
    assert fam.tolerances == family.tolerances and fam.has_rsample == family.has_rsample
    nat_b = family.example_nat((2,), dim, generator=_gen(20))
    other_b = family.example_nat((2,), dim, generator=_gen(21))
    nat, other = fam.join([nat_b]), fam.join([other_b])
    assert all(a is b for a, b in zip(nat, nat_b))
    assert fam.event_ndims == tuple(k + (t.ndim - k - 1) for t, k in zip(nat, family.event_ndims))

    def reduce(v):  # the block's own batch dimensions (d scalars) are summed by the product
        return v.reshape(2, -1).sum(-1)

    for method in ("log_partition", "entropy", "expected_log_base_measure"):
        close(getattr(fam, method)(nat), reduce(getattr(family, method)(nat_b)), rtol=1e-14, atol=0)
    close(fam.kl(nat, other), reduce(family.kl(nat_b, other_b)), rtol=1e-14, atol=0)
    close(tuple(fam.nat_to_mean(nat)), tuple(family.nat_to_mean(nat_b)), rtol=0, atol=0)
    mean = fam.nat_to_mean(nat)
    close(tuple(fam.mean_to_nat(mean)), tuple(family.mean_to_nat(family.nat_to_mean(nat_b))))
    close(tuple(fam.neg_entropy_grad(nat)), tuple(family.neg_entropy_grad(nat_b)))
    x_b = family.sample(nat_b, (3,), generator=_gen(22))
    x = fam.sample(nat, (3,), generator=_gen(22))
    assert torch.equal(x, x_b.reshape(3, 2, dim))
    close(fam.log_prob(nat, x), family.log_prob(nat_b, x_b).reshape(3, 2, -1).sum(-1))
    close(fam.log_base_measure(x), family.log_base_measure(x_b).reshape(3, 2, -1).sum(-1))


def test_a_product_can_be_a_block():
    inner = Product([(DIAG, 2), (PM1, 1)])
    outer = Product([(inner, 3), (GAMMA, 2)])
    assert outer.nat_type._fields[:3] == ("b0_b0_lam1", "b0_b0_lam2", "b0_b1_lam1")
    nat = outer.example_nat((2,), generator=_gen(23))
    a, b = outer.split(nat)
    close(outer.entropy(nat), inner.entropy(a) + GAMMA.entropy(b).sum(-1), rtol=1e-14, atol=0)
    x = outer.sample(nat, (4,), generator=_gen(24))
    assert x.shape == (4, 2, 5)


def test_a_generic_block_without_a_sampler_keeps_its_layout():
    class NoSampler(AutoGamma):
        _sample = GenericFamily._sample

    fam = Product([(DIAG, 1), (NoSampler(), 2)])
    nat = fam.example_nat((2,), generator=_gen(34))
    assert fam.dim == 3 and fam.event_ndims == (1, 1, 1, 1)
    theta = torch.tensor([[0.5, 1.0, 2.0], [-0.5, 0.5, 3.0]], dtype=f64)
    ref = DIAG.log_prob(fam.split(nat)[0], theta[:, :1]) + GAMMA.log_prob(
        expfam.GammaNat(*fam.split(nat)[1]), theta[:, 1:]
    ).sum(-1)
    close(fam.log_prob(nat, theta), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(NotImplementedError, match="NoSampler declares no sampler"):
        fam.sample(nat)


# ---------------------------------------------------------------- copies and pickles
def test_deepcopy_and_pickle_keep_the_parameter_types():
    nat = MIXED.example_nat((2,), generator=_gen(25))
    assert copy.deepcopy(MIXED) is MIXED and copy.copy(MIXED) is MIXED
    assert type(copy.deepcopy(nat)) is MIXED.nat_type
    fam, back = pickle.loads(pickle.dumps((MIXED, nat)))
    assert repr(fam) == repr(MIXED) and type(back) is fam.nat_type
    close(fam.entropy(back), MIXED.entropy(nat), rtol=0, atol=0)


def test_tolerances_are_the_loosest_of_the_blocks():
    class LooseDiag(DiagGaussian):
        tolerances = expfam.Tolerances(closed64=1e-8, closed32=1e-6, roundtrip=1e-13)

    fam = Product([(LooseDiag(), 2), (FULL, 2), (AutoGamma(), 1), (PM1, 1)])
    assert fam.tolerances == expfam.Tolerances(
        closed64=1e-8, closed32=max(1e-6, FULL.tolerances.closed32), roundtrip=1e-10
    )


def test_repr_and_name():
    assert repr(MIXED) == (
        "Product([(FullGaussian(), 3), (DiagGaussian(), 2), (Bernoulli(support='pm1'), 2), "
        "(Gamma(), 2)])"
    )
    assert MIXED.name == "product(gaussian_full:3, gaussian_diag:2, bernoulli_pm1:2, gamma:2)"
    assert not MIXED.has_torch_twin


# ---------------------------------------------------------------- (g) bad input
@pytest.mark.parametrize(
    "blocks,error,message",
    [
        ([], ValueError, r"blocks must hold at least one \(family, dim\) pair"),
        (DIAG, TypeError, r"blocks must be a sequence of \(family, dim\) pairs"),
        ([(DIAG, 2, 1)], TypeError, r"blocks\[0\] must be a \(family, dim\) pair"),
        ([(DIAG, 2), ("gaussian", 2)], TypeError, r"blocks\[1\]\[0\] \(family\) must be an "),
        ([(DiagGaussian, 2)], TypeError, r"got the class DiagGaussian; pass DiagGaussian\(\)"),
        ([(DIAG, 0)], ValueError, r"blocks\[0\]\[1\] \(dim\) must be a positive int"),
        ([(DIAG, 2.0)], ValueError, r"blocks\[0\]\[1\] \(dim\) must be a positive int"),
        ([(DIAG, True)], ValueError, r"blocks\[0\]\[1\] \(dim\) must be a positive int"),
        ([(DIAG, 1), (Dirichlet(), 1)], ValueError, r"blocks\[1\]\[1\] \(dim\) must be ≥ 2"),
        ([(Mixture(), 2)], TypeError, r"blocks\[0\] .*points of mixture_full are MixturePoint"),
        ([(Categorical(), 3)], ValueError, r"points of shape \(4,\) \(4 coordinates\), not 3"),
        ([(AutoLogNormal(), 3)], ValueError, r"blocks\[0\] \(auto_lognormal on 3 coordinates\)"),
        ([(FixedCovGaussian(cov=_cov), 2)], ValueError, r"points of shape \(3,\) .*not 2"),
    ],
    ids=[
        "empty", "not-a-sequence", "triple", "not-a-family", "a-class", "dim-0", "dim-float",
        "dim-bool", "below-min-dim", "mixture", "categorical", "dim-ignored-by-family",
        "sigma0-of-another-size",
    ],
)  # fmt: skip
def test_bad_blocks_are_rejected_naming_the_argument(blocks, error, message):
    with pytest.raises(error, match=message):
        Product(blocks)


def test_theta_of_the_wrong_size_is_rejected_even_without_validation():
    nat = MIXED.example_nat(generator=_gen(26))
    theta = torch.zeros(3, 10, dtype=f64)
    with pytest.raises(ValueError, match=r"x must have last dimension D = 9 .* shape \(3, 10\)"):
        MIXED.log_prob(nat, theta)
    with pytest.raises(ValueError, match=r"theta must have last dimension D = 9"):
        MIXED.split_sample(theta)
    with pytest.raises(TypeError, match=r"theta must be a torch.Tensor"):
        MIXED.split_sample([0.0] * 9)
    expfam.set_validation(False)
    try:
        with pytest.raises(ValueError, match=r"x must have last dimension D = 9"):
            MIXED.suff_stats(theta)
    finally:
        expfam.set_validation(True)


def test_points_outside_a_blocks_support_name_its_coordinates():
    nat = MIXED.example_nat(generator=_gen(27))
    theta = MIXED.sample(nat, generator=_gen(28))
    theta[6] = 0.5  # a binary weight that is neither −1 nor +1
    with pytest.raises(ValueError, match=r"x\[\.\.\., 5:7\] must take values in \{-1, 1\}"):
        MIXED.log_prob(nat, theta)


def test_a_nat_of_another_product_is_a_type_error():
    other = Product([(FULL, 3), (DIAG, 2), (PM1, 2), (GAMMA, 2)])  # same layout, other instance
    nat = other.example_nat(generator=_gen(29))
    with pytest.raises(TypeError, match=r"nat is a ProductNat of another Product"):
        MIXED.entropy(nat)
    close(MIXED.entropy(MIXED.nat_type(*nat)), other.entropy(nat))  # the documented rebuild
    smaller = Product([(DIAG, 2)])
    with pytest.raises(TypeError, match=r"nat_q is a ProductNat of another Product \(fields "):
        MIXED.kl(MIXED.example_nat(generator=_gen(30)), smaller.example_nat(generator=_gen(31)))
    with pytest.raises(TypeError, match=r"mean is a ProductMean of another Product"):
        MIXED.mean_to_nat(other.nat_to_mean(nat))
    with pytest.raises(TypeError, match=r"nat must be a ProductNat for the product\("):
        MIXED.entropy(expfam.DiagNat(torch.zeros(2), -torch.ones(2)))


def test_field_shapes_and_domains_are_checked_by_product_field_name():
    nat = MIXED.example_nat((2,), generator=_gen(32))
    wrong = nat._replace(b1_lam1=torch.zeros(2, 3, dtype=f64), b1_lam2=-torch.ones(2, 3, dtype=f64))
    with pytest.raises(ValueError, match=r"nat\.b1_lam1 must have shape \(\*batch, 2\) \(block 1"):
        MIXED.entropy(wrong)
    bad = nat._replace(b1_lam2=-nat.b1_lam2)
    with pytest.raises(ValueError, match=r"nat\.b1_lam2 must be < 0"):
        MIXED.entropy(bad)
    bad = nat._replace(b0_lam2=-nat.b0_lam2)
    with pytest.raises(ValueError, match=r"nat\.b0_lam2 must be negative definite"):
        MIXED.log_partition(bad)
    bad = nat._replace(b3_lam1=torch.full_like(nat.b3_lam1, -2.0))
    with pytest.raises(ValueError, match=r"nat_p\.b3_lam1 must be > -1"):
        MIXED.kl(bad, nat)
    mean = MIXED.nat_to_mean(nat)
    bad_mean = mean._replace(b3_mu1=mean.b3_mu1 + 100)
    with pytest.raises(ValueError, match=r"mean\.b3_mu1 must be < log\(mean\.b3_mu2\)"):
        MIXED.mean_to_nat(bad_mean)


def test_split_and_join_reject_foreign_parts():
    nat = MIXED.example_nat(generator=_gen(33))
    parts = MIXED.split(nat)
    with pytest.raises(TypeError, match=r"params must be a ProductNat or ProductMean"):
        MIXED.split(parts[0])
    with pytest.raises(ValueError, match=r"parts must hold one parameter tuple per block \(4\)"):
        MIXED.join(parts[:3])
    with pytest.raises(TypeError, match=r"parts\[1\] must be a DiagNat or DiagMean"):
        MIXED.join([parts[0], parts[0], parts[2], parts[3]])
    mparts = MIXED.split(MIXED.nat_to_mean(nat))
    with pytest.raises(TypeError, match=r"parts mixes natural and mean parameters"):
        MIXED.join([parts[0], mparts[1], parts[2], parts[3]])
    with pytest.raises(TypeError, match=r"parts must be a list of the blocks' parameters"):
        MIXED.join(nat)
    points = MIXED.split_sample(torch.zeros(2, 9, dtype=f64))
    with pytest.raises(ValueError, match=r"parts\[1\] must end in block 1's point shape \(2,\)"):
        MIXED.join_sample([points[0], points[0], points[2], points[3]])
    with pytest.raises(ValueError, match=r"parts\[2\] has batch shape \(1,\) but parts\[0\]"):
        MIXED.join_sample([points[0], points[1], points[2][:1], points[3]])
    with pytest.raises(ValueError, match=r"parts must hold one point per block \(4\)"):
        MIXED.join_sample(points[:2])
