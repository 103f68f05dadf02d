"""Row ``ivon``: blr.optim.IVON on an nn.Linear equals the hand-coded IVON of the row (kept out
of ``check()``: constructing a torch optimizer imports torch._dynamo, ~1.5 s)."""

from __future__ import annotations

from derivations import ivon


def test_blr_optim_ivon_equals_the_hand_coded_ivon_under_the_same_draws():
    one = ivon.single_copy(ivon.problem(), 0, ivon.NOISE_SEED + 1)
    ref_m, ref_h, _ = ivon.classical(one)
    m, h = ivon.optimizer_instance(
        one.xb[:, 0],
        one.yb[:, 0],
        one.noise_seed,
        lr=ivon.LR,
        hess_init=ivon.H0,
        beta1=ivon.BETA1,
        beta2=ivon.BETA2,
        weight_decay=ivon.DELTA,
    )
    assert m.shape == ref_m[:, 0].shape == (ivon.STEPS + 1, ivon.D)
    assert (m - ref_m[:, 0]).abs().max() < 1e-10
    assert (h - ref_h[:, 0]).abs().max() < 1e-10
    assert (m[-1] - m[0]).abs().max() > 0.1  # it moved


def test_other_draws_give_other_iterates():
    """The agreement above depends on the draws: another seed for the optimizer differs."""
    one = ivon.single_copy(ivon.problem(), 0, ivon.NOISE_SEED + 1)
    ref_m, _, _ = ivon.classical(one)
    m, _ = ivon.optimizer_instance(
        one.xb[:, 0],
        one.yb[:, 0],
        one.noise_seed + 1,
        lr=ivon.LR,
        hess_init=ivon.H0,
        beta1=ivon.BETA1,
        beta2=ivon.BETA2,
        weight_decay=ivon.DELTA,
    )
    assert (m - ref_m[:, 0]).abs().max() > 1e-3
