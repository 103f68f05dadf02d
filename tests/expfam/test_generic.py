"""The generic references as a fallback: μ → λ by Newton from A alone recovers the closed forms."""

from __future__ import annotations

import pytest
import torch

from expfam import generic
from expfam.tree import tmap
from tests.expfam.families import ALL, IDS
from tests.expfam.test_contract import nat_for, rel_err


@pytest.mark.parametrize("family", ALL, ids=IDS)
def test_newton_fallback_inverts_the_mean_map(family):
    nat = nat_for(family, batch=(2,), dim=2, seed=3)
    other = nat_for(family, batch=(2,), dim=2, seed=4)
    start = tmap(lambda a, b: 0.5 * a + 0.5 * b, nat, other)  # in the (convex) domain
    mean = family.nat_to_mean(nat)
    got = generic.mean_to_nat_newton(family, mean, start)
    assert rel_err(family.nat_to_mean(got), mean) <= 1e-9


def test_fisher_of_a_diagonal_gaussian_is_the_textbook_one():
    """F = Cov[(θ, θ²)] for N(m, σ²): [[σ², 2mσ²], [2mσ², 2σ⁴ + 4m²σ²]]."""
    fam = ALL[IDS.index("gaussian_diag")]
    m, var = 0.7, 0.3
    nat = fam.from_moments(
        torch.tensor([m], dtype=torch.float64), torch.tensor([1 / var], dtype=torch.float64)
    )
    f = generic.fisher(fam, nat)
    ref = torch.tensor(
        [[var, 2 * m * var], [2 * m * var, 2 * var**2 + 4 * m**2 * var]], dtype=torch.float64
    )
    torch.testing.assert_close(f, ref, rtol=1e-12, atol=0)


def test_generic_functions_do_not_leak_gradients_into_inputs():
    fam = ALL[IDS.index("gaussian_full")]
    nat = tmap(lambda t: t.requires_grad_(), nat_for(fam))
    mean = generic.mean_autograd(fam, nat)
    assert all(not m.requires_grad for m in mean)
    assert all(t.grad is None for t in nat)
