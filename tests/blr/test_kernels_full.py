"""The batched full-Gaussian kernel equals the generic engine in its BLR limit, the (m, S)-form
with the improved BLR, and a per-problem loop; it fails cleanly on non-PD precisions and keeps
shapes, dtypes and devices."""

from __future__ import annotations

import pytest
import torch

import blr
from blr.kernels import FullGaussianState, full_gaussian_step
from expfam import FullGaussian

F64 = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def spd(batch: tuple, d: int, *, seed: int, dtype=F64, lo: float = 0.5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn((*batch, d, d), dtype=dtype, generator=gen)
    s = a @ a.mT / d + lo * torch.eye(d, dtype=dtype)
    return 0.5 * (s + s.mT)


def problems(batch=(6,), d=4, seed=0, dtype=F64):
    """B independent quadratics ℓ_b(θ) = ½θᵀA_bθ − b_bᵀθ and Gaussians N(m_b, S_b⁻¹)."""
    gen = torch.Generator().manual_seed(seed)
    A = spd(batch, d, seed=seed + 1, dtype=dtype)
    b = torch.randn((*batch, d), dtype=dtype, generator=gen)
    m = torch.randn((*batch, d), dtype=dtype, generator=gen)
    S = spd(batch, d, seed=seed + 2, dtype=dtype)
    return A, b, m, S


def quadratic(A, b):
    """Vectorized: θ (K, *batch, d) ↦ (K, *batch), each problem its own A_b, b_b."""
    return lambda th: 0.5 * (th * (A @ th.unsqueeze(-1)).squeeze(-1)).sum(-1) - (th * b).sum(-1)


def grad_at(A, b, m):
    return (A @ m.unsqueeze(-1)).squeeze(-1) - b


class Precomputed(blr.Estimator):
    """∇_μE_q[ℓ] = (ĝ − Ĥm, ½Ĥ) from a given (ĝ, Ĥ)."""

    def __init__(self, g, h):
        self.g, self.h = g, h

    def __call__(self, family, nat, loss, *, generator=None):
        return blr.Estimate(family.mean_grad_from_gh(nat, self.g, self.h), self.g[..., 0])


@pytest.mark.parametrize("estimator", [blr.Delta(), blr.BonnetPrice(points="sigma")])
@pytest.mark.parametrize("rho", [0.3, 1.0])
def test_equals_blr_step_in_the_blr_limit(estimator, rho):
    fam = FullGaussian()
    A, b, m, S = problems(batch=(6,), d=4)
    nat = fam.from_moments(m, S)
    ref = blr.step(fam, nat, quadratic(A, b), rho, estimator=estimator)
    # quadratic loss: ĝ = E_q[∇ℓ] = A m − b and Ĥ = A exactly, for both estimators
    new = full_gaussian_step(m, S, grad_at(A, b, m), A, rho)
    m_ref, s_ref = fam.to_moments(ref)
    assert rel(new.mean, m_ref) <= 1e-10
    assert rel(new.prec, s_ref) <= 1e-10
    assert rel(new.chol @ new.chol.mT, s_ref) <= 1e-10
    assert rel(new.to_nat().lam1, ref.lam1) <= 1e-10
    assert rel(new.to_nat().lam2, ref.lam2) <= 1e-10


def test_equals_blr_step_with_several_batch_dims_and_a_random_hessian():
    fam = FullGaussian()
    A, b, m, S = problems(batch=(2, 3), d=5, seed=3)
    g = torch.randn(m.shape, dtype=F64, generator=torch.Generator().manual_seed(9))
    h = spd((2, 3), 5, seed=11)
    nat = fam.from_moments(m, S)
    ref = blr.step(fam, nat, quadratic(A, b), 0.2, estimator=Precomputed(g, h))
    new = full_gaussian_step(m, S, g, h, 0.2)
    assert new.mean.shape == (2, 3, 5) and new.prec.shape == new.chol.shape == (2, 3, 5, 5)
    m_ref, s_ref = fam.to_moments(ref)
    assert rel(new.mean, m_ref) <= 1e-10
    assert rel(new.prec, s_ref) <= 1e-10


def test_repeated_steps_follow_blr_step():
    fam = FullGaussian()
    A, b, m, S = problems(batch=(5,), d=3, seed=4)
    loss = quadratic(A, b)
    nat, state = fam.from_moments(m, S), FullGaussianState(m, S, torch.linalg.cholesky(S))
    for _ in range(10):
        nat = blr.step(fam, nat, loss, 0.4, estimator=blr.Delta())
        state = full_gaussian_step(state.mean, state.prec, grad_at(A, b, state.mean), A, 0.4)
    m_ref, s_ref = fam.to_moments(nat)
    assert rel(state.mean, m_ref) <= 1e-10
    assert rel(state.prec, s_ref) <= 1e-10


@pytest.mark.parametrize("lr", [None, 0.05])
@pytest.mark.parametrize("use_chol", [False, True])
def test_improved_equals_gaussian_step(lr, use_chol):
    fam = FullGaussian()
    _, _, m, S = problems(batch=(7,), d=4, seed=5)
    gen = torch.Generator().manual_seed(6)
    g = torch.randn(m.shape, dtype=F64, generator=gen)
    h = torch.randn(S.shape, dtype=F64, generator=gen)
    h = 2.0 * (h + h.mT)  # indefinite: the plain step leaves the domain at this ρ
    rho = 0.8
    with pytest.raises(ValueError, match="prec"):
        full_gaussian_step(m, S, g, h, rho)
    nat = fam.from_moments(m, S)
    ref = blr.gaussian_step(
        fam,
        nat,
        fam.mean_grad_from_gh(nat, g, h),
        rho=rho,
        options=blr.GaussianOptions(improved=True, lr=lr),
    )
    chol = torch.linalg.cholesky(S) if use_chol else None
    new = full_gaussian_step(m, S, g, h, rho, lr=lr, improved=True, prec_chol=chol)
    m_ref, s_ref = fam.to_moments(ref)
    assert rel(new.mean, m_ref) <= 1e-10
    assert rel(new.prec, s_ref) <= 1e-10
    assert rel(new.prec, new.prec.mT) <= 1e-14  # WᵀW: symmetric up to rounding
    assert rel(new.chol @ new.chol.mT, new.prec) <= 1e-12


def test_lr_equals_gaussian_step_with_a_separate_mean_rate():
    fam = FullGaussian()
    A, b, m, S = problems(batch=(4,), d=3, seed=7)
    nat = fam.from_moments(m, S)
    g = grad_at(A, b, m)
    ref = blr.gaussian_step(
        fam, nat, fam.mean_grad_from_gh(nat, g, A), rho=0.3, options=blr.GaussianOptions(lr=0.7)
    )
    new = full_gaussian_step(m, S, g, A, 0.3, lr=0.7)
    m_ref, s_ref = fam.to_moments(ref)
    assert rel(new.mean, m_ref) <= 1e-10
    assert rel(new.prec, s_ref) <= 1e-10


@pytest.mark.parametrize("improved", [False, True])
def test_equals_a_per_problem_loop(improved):
    A, b, m, S = problems(batch=(9,), d=6, seed=8)
    g = grad_at(A, b, m)
    new = full_gaussian_step(m, S, g, A, 0.5, improved=improved)
    for i in range(9):
        one = full_gaussian_step(m[i], S[i], g[i], A[i], 0.5, improved=improved)
        assert one.mean.shape == (6,) and one.prec.shape == one.chol.shape == (6, 6)
        assert rel(new.mean[i], one.mean) <= 1e-12
        assert rel(new.prec[i], one.prec) <= 1e-12
        assert rel(new.chol[i], one.chol) <= 1e-12


@pytest.mark.parametrize("improved", [False, True])
def test_strided_inputs(improved):
    A, b, m, S = problems(batch=(3, 2), d=4, seed=15)
    g = grad_at(A, b, m)
    ref = full_gaussian_step(m, S, g, A, 0.5, improved=improved)
    perm = [t.transpose(0, 1).contiguous().transpose(0, 1) for t in (m, S, g, A)]
    assert not perm[1].is_contiguous()
    new = full_gaussian_step(*perm, 0.5, improved=improved)
    for x, y in zip(new, ref):
        assert rel(x, y) <= 1e-12
    eye = torch.eye(4, dtype=F64).expand(3, 2, 4, 4)  # stride-0 batch
    new = full_gaussian_step(m, eye, g, A, 0.5, improved=improved)
    ref = full_gaussian_step(m, eye.contiguous(), g, A, 0.5, improved=improved)
    for x, y in zip(new, ref):
        assert rel(x, y) <= 1e-12


def test_state_round_trips_through_full_nat():
    fam = FullGaussian()
    _, _, m, S = problems(batch=(3,), d=4, seed=10)
    nat = fam.from_moments(m, S)
    state = FullGaussianState.from_nat(nat)
    assert rel(state.mean, m) <= 1e-12 and rel(state.prec, S) <= 1e-12
    assert rel(state.chol @ state.chol.mT, S) <= 1e-12
    back = state.to_nat()
    assert rel(back.lam1, nat.lam1) <= 1e-12 and rel(back.lam2, nat.lam2) <= 1e-12
    with pytest.raises(ValueError, match=r"nat\.lam2"):
        FullGaussianState.from_nat(type(nat)(nat.lam1, -nat.lam2))


def test_non_pd_update_raises_naming_prec_and_the_batch_index_and_changes_nothing():
    A, b, m, S = problems(batch=(2, 3), d=4, seed=12)
    h = A.clone()
    h[1, 2] = -10 * torch.eye(4, dtype=F64)  # only problem (1, 2) turns indefinite
    inputs = [m, S, grad_at(A, b, m), h]
    before = [t.clone() for t in inputs]
    with pytest.raises(ValueError, match=r"prec.*not positive definite.*\(1, 2\).*1 of 6"):
        full_gaussian_step(*inputs, 0.5)
    assert all(torch.equal(t, u) for t, u in zip(inputs, before))
    with pytest.raises(ValueError, match=r"^prec is not positive definite at batch index \(0, 1\)"):
        bad = S.clone()
        bad[0, 1] = -bad[0, 1]
        full_gaussian_step(m, bad, inputs[2], h, 0.5, improved=True)
    with pytest.raises(ValueError, match="prec"):  # unbatched
        full_gaussian_step(m[0, 0], S[0, 0], inputs[2][0, 0], -S[0, 0], 1.0)


def test_argument_errors():
    A, b, m, S = problems(batch=(3,), d=4)
    g = grad_at(A, b, m)
    with pytest.raises(ValueError, match="rho"):
        full_gaussian_step(m, S, g, A, 0.0)
    with pytest.raises(ValueError, match="lr"):
        full_gaussian_step(m, S, g, A, 0.5, lr=float("nan"))
    with pytest.raises(ValueError, match=r"h_hat must have shape \(3, 4, 4\)"):
        full_gaussian_step(m, S, g, A[:2], 0.5)
    with pytest.raises(ValueError, match="g_hat"):
        full_gaussian_step(m, S, g.float(), A, 0.5)
    with pytest.raises(ValueError, match="prec_chol"):
        full_gaussian_step(m, S, g, A, 0.5, improved=True, prec_chol=S[0])


def test_float32_smoke_and_dtypes_preserved():
    A, b, m, S = problems(batch=(64,), d=8, seed=13)
    g = grad_at(A, b, m)
    ref = full_gaussian_step(m, S, g, A, 0.3, improved=True)
    f32 = [t.float() for t in (m, S, g, A)]
    new = full_gaussian_step(*f32, 0.3, improved=True)
    for x, y in zip(new, ref):
        assert x.dtype == torch.float32 and x.device == y.device and x.shape == y.shape
        assert rel(x.double(), y) <= 1e-4


def test_empty_batch():
    A, b, m, S = problems(batch=(0,), d=3)
    new = full_gaussian_step(m, S, grad_at(A, b, m), A, 0.5, improved=True)
    assert new.mean.shape == (0, 3) and new.chol.shape == (0, 3, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("improved", [False, True])
def test_cuda_equals_cpu(dtype, improved):
    A, b, m, S = problems(batch=(256,), d=16, seed=14, dtype=dtype)
    g = grad_at(A, b, m)
    cpu = full_gaussian_step(m, S, g, A, 0.4, improved=improved)
    gpu = full_gaussian_step(*(t.cuda() for t in (m, S, g, A)), 0.4, improved=improved)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for x, y in zip(gpu, cpu):
        assert x.is_cuda and x.dtype == dtype and x.shape == y.shape
        assert rel(x.cpu(), y) <= tol
    bad = A.clone().cuda()
    bad[17] = -bad[17]
    with pytest.raises(ValueError, match=r"prec.*\(17,\)"):
        full_gaussian_step(*(t.cuda() for t in (m, S, g)), bad, 1.0)
