"""The public surface that code outside a family uses instead of the underscore methods:
``validate=False`` on every public method (same result, no checks), and the public helper modules
:mod:`expfam.tree` and :mod:`expfam.linalg`."""

from __future__ import annotations

import pytest
import torch

import expfam
from expfam import GammaNat, linalg, tree
from tests.expfam.families import ALL, IDS
from tests.expfam.test_contract import nat_for


def _identical(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return type(a) is type(b) and all(_identical(x, y) for x, y in zip(a, b, strict=True))


def _draws(family, nat, validate):
    g = torch.Generator().manual_seed(3)
    if family.has_rsample:
        return family.rsample(nat, (4,), g, validate=validate)
    return family.sample(nat, (4,), g, validate=validate)


@pytest.mark.parametrize("family", ALL, ids=IDS)
def test_validate_false_gives_the_same_results(family):
    nat = nat_for(family, seed=1)
    other = nat_for(family, seed=2)
    mean = family.nat_to_mean(nat)
    for method, args in [
        ("log_partition", (nat,)),
        ("nat_to_mean", (nat,)),
        ("mean_to_nat", (mean,)),
        ("expected_log_base_measure", (nat,)),
        ("neg_entropy_grad", (nat,)),
        ("entropy", (nat,)),
        ("kl", (nat, other)),
    ]:
        checked = getattr(family, method)(*args)
        unchecked = getattr(family, method)(*args, validate=False)
        assert _identical(checked, unchecked), method
    try:
        x = _draws(family, nat, True)
    except NotImplementedError:  # a generic family without a sampler
        return
    assert _identical(x, _draws(family, nat, False))
    for method in ("suff_stats", "log_base_measure"):
        assert _identical(getattr(family, method)(x), getattr(family, method)(x, validate=False))
    assert _identical(family.log_prob(nat, x), family.log_prob(nat, x, validate=False))
    if family.has_torch_twin:
        a, b = family.to_torch(nat), family.to_torch(nat, validate=False)
        assert type(a) is type(b) and torch.equal(a.mean, b.mean)


def test_validate_false_skips_every_check():
    fam = expfam.Gamma()
    bad = GammaNat(
        torch.tensor([1.0], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match=r"nat\.lam2 must be < 0"):
        fam.entropy(bad)
    fam.entropy(bad, validate=False)  # the caller vouches for λ (here wrongly: the value is NaN)
    with pytest.raises(ValueError, match=r"nat_q\.lam2 must be < 0"):
        fam.kl(bad._replace(lam2=-bad.lam2), bad)
    fam.kl(bad._replace(lam2=-bad.lam2), bad, validate=False)


def test_validate_false_keeps_the_graph_of_an_autograd_leaf():
    """μ as the leaf, mapped to λ and sampled without checks (what blr.Reparam does)."""
    fam = expfam.DiagGaussian()
    nat = fam.from_moments(torch.tensor([0.5], dtype=torch.float64), torch.tensor([4.0]).double())
    mean = tree.tmap(lambda t: t.detach().requires_grad_(), fam.nat_to_mean(nat))
    lam = fam.mean_to_nat(mean, validate=False)
    theta = fam.rsample(lam, (3,), torch.Generator().manual_seed(0), validate=False)
    (g1,) = torch.autograd.grad(theta.sum(), mean.mu1)
    assert torch.isfinite(g1).all()


def test_tree_flatten_unflatten_roundtrip_and_inner():
    fam = expfam.FullGaussian()
    nat = fam.example_nat((2, 3), dim=4, generator=torch.Generator().manual_seed(0))
    flat = tree.flatten(nat, fam.event_ndims)
    assert flat.shape == (2, 3, 4 + 16)
    assert _identical(tree.unflatten(flat, nat, fam.event_ndims), nat)
    manual = (nat.lam1 * nat.lam1).sum(-1) + (nat.lam2 * nat.lam2).sum((-2, -1))
    torch.testing.assert_close(tree.inner(nat, nat, fam.event_ndims), manual)
    torch.testing.assert_close(tree.inner(nat, nat, fam.event_ndims), (flat * flat).sum(-1))


def test_solve_psd_is_the_least_norm_solution():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 6, 4, dtype=torch.float64, generator=g)
    f = a @ a.mT  # 6 × 6 of rank 4: singular
    b = f @ torch.randn(3, 6, 1, dtype=torch.float64, generator=g)  # in the range of F
    x = linalg.solve_psd(f, b.squeeze(-1))
    expected = (torch.linalg.pinv(f, hermitian=True) @ b).squeeze(-1)
    torch.testing.assert_close(x, expected, rtol=1e-8, atol=1e-10)


def test_chol_or_raise_names_the_constraint_and_the_batch_element():
    prec = torch.eye(2, dtype=torch.float64).repeat(3, 1, 1)
    prec[1] = -prec[1]
    with pytest.raises(ValueError, match=r"prec must be PD \(.*index \[1\]\)"):
        linalg.chol_or_raise(prec, "prec must be PD")
    chol = linalg.chol_or_raise(linalg.sym(prec[[0, 2]]), "prec must be PD")
    torch.testing.assert_close(chol, torch.eye(2, dtype=torch.float64).repeat(2, 1, 1))
