"""The batched diagonal (m, s)-form kernel against the engine (blr.gaussian_step / blr.step)."""

from __future__ import annotations

import warnings

import pytest
import torch

import blr
import expfam
from blr.kernels import diag_gaussian_step_

F64 = torch.float64


def _engine(m, s, g, h, rho, delta, sqrt=False, eps=0.0, lr=None):
    """(m, s+δ) through blr.gaussian_step on the total ĝ + δm, Ĥ = ĥ + δ."""
    fam = expfam.DiagGaussian()
    nat = fam.from_moments(m, s + delta)
    grad_mean = fam.mean_grad_from_gh(nat, g + delta * m, h + delta)
    opts = blr.GaussianOptions(lr=lr, sqrt_scaling=sqrt, damping=eps)
    new = blr.gaussian_step(fam, nat, grad_mean, rho=rho, options=opts)
    m2, s2 = fam.to_moments(new)
    return m2, s2 - delta


@pytest.mark.parametrize("delta", [0.0, 0.3])
def test_equals_the_engine_for_a_batch_of_problems(delta):
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(5, 4, dtype=F64, generator=gen)
    s = torch.rand(5, 4, dtype=F64, generator=gen) + 0.5
    g = torch.randn(5, 4, dtype=F64, generator=gen)
    h = torch.rand(5, 4, dtype=F64, generator=gen) + 0.1
    want_m, want_s = _engine(m, s, g, h, 0.3, delta)
    km, ks = m.clone(), s.clone()
    diag_gaussian_step_(km, ks, g, h, rho=0.3, delta=delta)
    torch.testing.assert_close(km, want_m, rtol=0, atol=1e-14)
    torch.testing.assert_close(ks, want_s, rtol=0, atol=1e-14)


def test_sqrt_scaling_damping_and_separate_rate_equal_the_engine():
    gen = torch.Generator().manual_seed(1)
    m, g = torch.randn(2, 3, 6, dtype=F64, generator=gen).unbind(0)
    s, h = (torch.rand(2, 3, 6, dtype=F64, generator=gen) + 0.2).unbind(0)
    want_m, want_s = _engine(m, s, g, h, 0.1, 0.0, sqrt=True, eps=1e-3, lr=0.05)
    km, ks = m.clone(), s.clone()
    diag_gaussian_step_(km, ks, g, h, rho=0.1, lr=0.05, eps=1e-3, sqrt=True)
    torch.testing.assert_close(km, want_m, rtol=0, atol=1e-14)
    torch.testing.assert_close(ks, want_s, rtol=0, atol=1e-14)


def test_gradient_average_is_adam_with_bias_correction_as_rates():
    torch.manual_seed(0)
    w = torch.randn(7, dtype=F64, requires_grad=True)
    adam = torch.optim.Adam([w], lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    m, s, avg = w.detach().clone(), torch.zeros(7, dtype=F64), torch.zeros(7, dtype=F64)
    for t in range(1, 31):
        g = torch.randn(7, dtype=F64)
        w.grad = g.clone()
        adam.step()
        rho, gamma = 0.001 / (1 - 0.999**t), 0.1 / (1 - 0.9**t)
        diag_gaussian_step_(
            m, s, g, g * g, rho=rho, lr=0.01, g_avg=avg, gamma=gamma, sqrt=True, eps=1e-8
        )
    torch.testing.assert_close(m, w.detach(), rtol=0, atol=1e-12)


def test_float32_and_errors_name_the_argument():
    m, s = torch.zeros(3), torch.ones(3)
    diag_gaussian_step_(m, s, torch.ones(3), torch.ones(3), rho=0.5)
    assert m.dtype == torch.float32 and torch.allclose(m, torch.full((3,), -0.5))
    with pytest.raises(ValueError, match="g_hat"):
        diag_gaussian_step_(m, s, torch.ones(4), None, rho=0.0, lr=0.1)
    with pytest.raises(ValueError, match="h_hat"):
        diag_gaussian_step_(m, s, torch.ones(3), torch.ones(3, dtype=F64), rho=0.5)
    with pytest.raises(ValueError, match="g_avg"):
        diag_gaussian_step_(m, s, torch.ones(3), None, rho=0.0, lr=0.1, gamma=0.5)
    with pytest.raises(ValueError, match="rho"):
        diag_gaussian_step_(m, s, torch.ones(3), torch.ones(3), rho=-0.5)
    before = m.clone()
    with pytest.raises(ValueError, match="h_hat"):
        diag_gaussian_step_(m, s, torch.ones(3), None, rho=0.5)
    assert torch.equal(m, before)


def test_a_failed_torch_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    """``fused=True`` must not end a training run when Inductor cannot compile (no compiler, a
    broken cache): the same formulas run eagerly, after a RuntimeWarning, with equal results."""
    import torch._dynamo.exc

    from blr.kernels import diag_gaussian as dg

    def broken_compile(fn, **kwargs):
        def call(*args):
            raise torch._dynamo.exc.TorchRuntimeError("C++ compile error: at::vec not declared")

        return call

    monkeypatch.setattr(dg.torch, "compile", broken_compile)
    monkeypatch.setattr(dg, "_COMPILED", {})
    gen = torch.Generator().manual_seed(0)
    mean, mom, hess, grad, stat = (torch.randn(50, generator=gen) for _ in range(5))
    hess = hess.abs() + 1
    hp = torch.tensor([0.1, 0.9, 0.999, 1e-3, 100.0, 0.1])
    want = [t.clone() for t in (mean, mom, hess)]
    dg._ivon_fused_update(*want, grad, stat, hp)
    with pytest.warns(RuntimeWarning, match="torch.compile of the fused 'update' step failed"):
        dg.compiled("update")(mean, mom, hess, grad, stat, hp)
    for got, ref in zip((mean, mom, hess), want):
        assert torch.equal(got, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; eager from then on
        dg.compiled("update")(mean, mom, hess, grad, stat, hp)
    with pytest.raises(TypeError):  # errors of the function itself are not swallowed
        dg.compiled("update")(mean, mom)
