"""``expfam.GenericFamily``: a family declared by T, A and its domain gets μ, the μ → λ map, the
entropy, the KL and ∇_μ(−H) generically. Checked against closed-form families (Gamma), against
torch.distributions (log-normal, whose base measure is not 1), and through blr.step."""

from __future__ import annotations

import pytest
import torch

import blr
import expfam
from expfam.generic import GenericFamily, fisher
from tests.expfam.families import AutoGamma, AutoLogNormal, LogMeanT, LogNatT

f64 = torch.float64
close = torch.testing.assert_close


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_generic_gamma_equals_the_closed_form_family():
    fam, ref = AutoGamma(), expfam.Gamma()
    nat = ref.example_nat((2, 3), generator=_gen(0))
    other = ref.example_nat((2, 3), generator=_gen(1))
    mean = ref.nat_to_mean(nat)
    close(fam.nat_to_mean(nat), mean, rtol=1e-12, atol=0)
    close(fam.mean_to_nat(mean), nat, rtol=1e-10, atol=1e-12)
    close(fam.entropy(nat), ref.entropy(nat), rtol=1e-12, atol=1e-12)
    close(fam.kl(nat, other), ref.kl(nat, other), rtol=1e-10, atol=1e-12)
    close(fam.neg_entropy_grad(nat), ref.neg_entropy_grad(nat))
    x = ref.sample(nat, (4,), generator=_gen(2))
    close(fam.log_prob(nat, x), ref.log_prob(nat, x), rtol=1e-12, atol=1e-12)


def test_a_base_measure_other_than_one_enters_the_entropy_and_its_natural_gradient():
    fam = AutoLogNormal()
    nat = fam.example_nat((5,), generator=_gen(3))
    other = fam.example_nat((5,), generator=_gen(4))
    twin, twin_q = fam.to_torch(nat), fam.to_torch(other)
    x = fam.sample(nat, (7,), generator=_gen(5))
    close(fam.log_prob(nat, x), twin.log_prob(x), rtol=1e-12, atol=1e-12)
    close(fam.entropy(nat), twin.entropy(), rtol=1e-12, atol=1e-12)
    # KL is invariant under θ ↦ log θ: the KL of the two Gaussians
    normal = torch.distributions.Normal
    kl = torch.distributions.kl_divergence(
        normal(twin.loc, twin.scale), normal(twin_q.loc, twin_q.scale)
    )
    close(fam.kl(nat, other), kl, rtol=1e-12, atol=1e-12)
    # μ = E[T]: m and m² + v
    m, v = twin.loc, twin.scale**2
    close(fam.nat_to_mean(nat), LogMeanT(m, m**2 + v), rtol=1e-12, atol=1e-12)
    # ∇_μ(−H) = λ + ∇_μ E[log h] = λ + ∇_μ(−μ₁) = (λ₁ − 1, λ₂): NOT λ
    close(fam.neg_entropy_grad(nat), LogNatT(nat.lam1 - 1, nat.lam2), rtol=1e-9, atol=1e-12)
    close(fam.mean_to_nat(fam.nat_to_mean(nat)), nat, rtol=1e-10, atol=1e-12)


def test_the_maps_are_differentiable_with_the_right_derivatives():
    fam, ref = AutoGamma(), expfam.Gamma()
    nat = ref.from_shape_rate(torch.tensor(2.5, dtype=f64), torch.tensor(1.5, dtype=f64))
    mean = ref.nat_to_mean(nat)
    # ∂λ/∂μ = F(λ)⁻¹ = (∂μ/∂λ)⁻¹
    flat_mu = torch.stack(tuple(mean))

    def to_nat(mu):
        return torch.stack(tuple(fam.mean_to_nat(expfam.GammaMean(mu[0], mu[1]))))

    def to_mean(lam):
        return torch.stack(tuple(fam.nat_to_mean(expfam.GammaNat(lam[0], lam[1]))))

    jac_inv = torch.autograd.functional.jacobian(to_nat, flat_mu)
    jac = torch.autograd.functional.jacobian(to_mean, torch.stack(tuple(nat)))
    close(jac_inv @ jac, torch.eye(2, dtype=f64), rtol=0, atol=1e-9)
    close(jac, fisher(fam, nat), rtol=1e-10, atol=1e-12)
    # the entropy's gradient in λ keeps its graph
    leaf = expfam.GammaNat(*(t.clone().requires_grad_() for t in nat))
    (g,) = torch.autograd.grad(fam.entropy(leaf), leaf.lam2)
    leaf_ref = expfam.GammaNat(*(t.clone().requires_grad_() for t in nat))
    (g_ref,) = torch.autograd.grad(ref.entropy(leaf_ref), leaf_ref.lam2)
    close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_blr_steps_with_reparam_match_the_closed_form_family():
    """The whole chain blr.Reparam differentiates (μ → λ → rsample → loss) agrees with the
    closed-form Gamma family given the same draws."""
    fam, ref = AutoGamma(), expfam.Gamma()
    prior = ref.from_shape_rate(torch.tensor(2.0, dtype=f64), torch.tensor(1.0, dtype=f64))

    def loss(x):  # a Poisson likelihood for the rate θ, 7 counts summing to 20
        return 7 * x - 20 * torch.log(x)

    q, q_ref = prior, prior
    for t in range(5):
        q = blr.step(fam, q, loss, 0.5, estimator=blr.Reparam(64), prior=prior, generator=_gen(t))
        q_ref = blr.step(
            ref, q_ref, loss, 0.5, estimator=blr.Reparam(64), prior=prior, generator=_gen(t)
        )
        close(q, q_ref, rtol=1e-9, atol=1e-12)


def test_declaration_errors_are_clear():
    with pytest.raises(TypeError, match="_expected_log_base_measure"):

        class HalfH(AutoGamma):  # h ≠ 1 but no E[log h]
            def _log_base_measure(self, x):
                return -x

    class NoInit(AutoGamma):
        _nat_init = GenericFamily._nat_init
        _sample = GenericFamily._sample

    fam = NoInit()
    mean = expfam.GammaMean(torch.tensor([0.1], dtype=f64), torch.tensor([2.0], dtype=f64))
    with pytest.raises(NotImplementedError, match="_nat_init"):
        fam.mean_to_nat(mean)
    nat = expfam.Gamma().example_nat((1,), generator=_gen(0))
    with pytest.raises(NotImplementedError, match="no sampler"):
        fam.sample(nat, (2,))
    with pytest.raises(ValueError, match=r"nat\.lam2 must be < 0"):
        AutoGamma().nat_to_mean(expfam.GammaNat(nat.lam1, -nat.lam2))

    class NoA(GenericFamily):
        name, nat_type, mean_type, event_ndims = "no_a", LogNatT, LogMeanT, (0, 0)

    with pytest.raises(TypeError, match="abstract"):
        NoA()
