"""Rows 13 and 15 on test problems where every term matters (issue #13): EM learns unequal
weights and variances, and deleting log π from its BLR E-step fails every per-sweep comparison;
VMP's prior mean is non-zero and its cross-term is caught. The BLR side of EM never calls the
hand-written EM or its derivatives."""

from __future__ import annotations

import pytest
import torch

from derivations import em, vmp
from derivations.mutations import MIN_MARGIN, run_mutation


def _mutation(row, description):
    (m,) = [m for m in row.MUTATIONS if m.description == description]
    return m


def test_em_problem_is_not_symmetric():
    """The fixed point has unequal weights and variances, so log π and log σ²_k both matter."""
    pi, _, var = em.em_fixed_point(em.data())
    assert abs(pi[0] - pi[1]) > 0.3
    assert var.max() / var.min() > 3
    assert em.MU0 != 0 and em.KAPPA0 != 1 and em.ALPHA != 1


@pytest.mark.parametrize(
    "name",
    [
        "BLR sweep (θ-block iterated",
        "E-block (ρ = 1) vs EM responsibilities",
        "BLR with one θ-step per sweep vs generalized EM",
        "EM fixed point (step < 1e-15) is a fixed point of the BLR sweep",
    ],
)
def test_deleting_log_pi_from_the_em_e_step_fails_each_comparison(name):
    result = run_mutation("em", _mutation(em, "log π deleted from the BLR E-step"))
    assert result.error is None, result.error
    (c,) = [c for c in result.comparisons if c.name.startswith(name)]
    assert c.ratio >= MIN_MARGIN, f"{c.name}: only {c.ratio:.3g}× the tolerance"


def test_em_blr_side_never_calls_the_hand_written_em(monkeypatch):
    y = em.data()
    theta0 = em.to_theta(*(torch.tensor(v, dtype=em.F64) for v in (em.PI0, em.M0, em.VAR0)))
    want = em.blr_instance(y, theta0, 3)[0]

    def poisoned(*args, **kwargs):
        raise AssertionError("the BLR side called the classical side")

    for name in ("_e_step", "m_step", "q_grad_hess", "classical", "gradient_em"):
        monkeypatch.setattr(em, name, poisoned)
    assert torch.equal(em.blr_instance(y, theta0, 3)[0], want)


def test_vmp_prior_mean_and_scale_keep_the_cross_terms():
    assert vmp.MU0 != 0 and vmp.KAPPA0 != 1 and vmp.A0 != vmp.B0
    result = run_mutation(
        "vmp", _mutation(vmp, "μ₀ cross-term −2κ₀μ₀E[μ] dropped from the BLR's E_q[ℓ̄]")
    )
    assert result.error is None and result.caught and result.margin >= MIN_MARGIN
