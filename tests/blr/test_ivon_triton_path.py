"""IVON(fused="triton"): the optimizer driving the fused Triton kernels (draw, undo, step with
noise regenerated from a Philox counter) equals the CPU path of the same update, computed here
with the same normals (``philox_randn``) and ``ivon_step_``/``ivon_hess_estimate``, within
float32 rounding. On CPU the kernels run in Triton's interpreter (conftest sets
TRITON_INTERPRET=1 when there is no GPU); on a GPU on CUDA tensors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call

from blr.kernels import triton_ivon as T
from blr.kernels.diag_gaussian import ivon_hess_estimate, ivon_step_
from blr.optim import IVON

_INTERPRETED = T.triton_interpreted()
DEVICE = "cuda" if torch.cuda.is_available() and not _INTERPRETED else "cpu"
pytestmark = pytest.mark.skipif(
    not T.triton_available() or (DEVICE == "cpu" and not _INTERPRETED),
    reason="needs triton with a GPU or TRITON_INTERPRET=1",
)
HYP = dict(lr=0.05, ess=50.0, hess_init=0.5, beta1=0.9, beta2=0.999, weight_decay=1e-2)


def _problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 2))
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    return model.to(DEVICE), x.to(DEVICE), y.to(DEVICE)


def _loss(model, params, x, y):
    return torch.nn.functional.mse_loss(functional_call(model, params, (x,)), y)


def _reference(model, x, y, seed, steps, samples=1, clip=float("inf"), hess_approx="price"):
    """The same run on the torch path: flat fp32 (m, ḡ, h), normals from philox_randn."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    m = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    n = m.numel()
    mom, hess = torch.zeros_like(m), torch.full_like(m, HYP["hess_init"])
    ess, wd = HYP["ess"], HYP["weight_decay"]
    draw = 0
    for t in range(1, steps + 1):
        grads, stats = [], []
        for _ in range(samples):
            sigma = torch.rsqrt((hess + wd) * ess)
            z = T.philox_randn(n, seed=seed, draw=draw, device=m.device)
            draw += 1
            theta = (m + z * sigma).requires_grad_(True)
            params = dict(
                zip(
                    names,
                    [v.view(s) for v, s in zip(theta.split([s.numel() for s in shapes]), shapes)],
                )
            )
            (g,) = torch.autograd.grad(_loss(model, params, x, y), theta)
            m = (m + z * sigma) - z * sigma  # the optimizer's in-place round trip
            grads.append(g)
            stats.append(z * sigma * g if hess_approx == "price" else g * g)
        g_hat = torch.stack(grads).mean(0)
        h_hat = ivon_hess_estimate(
            torch.stack(stats).mean(0), hess, ess=ess, weight_decay=wd, hess_approx=hess_approx
        )
        ivon_step_(
            m,
            mom,
            hess,
            g_hat,
            h_hat,
            lr=HYP["lr"] * (HYP["hess_init"] + wd),
            beta1=HYP["beta1"],
            beta2=HYP["beta2"],
            weight_decay=wd,
            step=t,
            clip_radius=clip,
        )
    return m, mom, hess


def _flat(opt, name):
    """State ``name`` of the first bucket as one flat tensor (the mean: the weights)."""
    return torch.cat([t.reshape(-1) for t in opt._all_buckets()[0][0].param_state(name)])


def _train(model, opt, x, y, steps):
    for _ in range(steps):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("hess_approx", ["price", "gradsq"])
def test_triton_path_equals_the_torch_path_with_the_same_noise(hess_approx):
    model, x, y = _problem()
    ref_model = copy.deepcopy(model)
    opt = IVON(model.parameters(), fused="triton", seed=3, hess_approx=hess_approx, **HYP)
    _train(model, opt, x, y, 6)
    bucket = opt._all_buckets()[0][0]
    assert bucket.counter is not None and bucket._noise is None  # no noise buffer was needed
    m, mom, hess = _reference(ref_model, x, y, bucket.counter.seed, 6, hess_approx=hess_approx)
    torch.testing.assert_close(_flat(opt, "mean"), m, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_flat(opt, "momentum"), mom, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(_flat(opt, "hess"), hess, rtol=1e-5, atol=1e-6)
    # the weights are the mean between steps
    flat_w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(flat_w, _flat(opt, "mean"))


def test_several_samples_and_clipping_use_the_regenerated_noise():
    model, x, y = _problem(1)
    ref_model = copy.deepcopy(model)
    opt = IVON(model.parameters(), fused="triton", seed=5, mc_samples=2, clip_radius=0.05, **HYP)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    for _ in range(4):
        opt.step(closure)
    seed = opt._all_buckets()[0][0].counter.seed
    m, mom, hess = _reference(ref_model, x, y, seed, 4, samples=2, clip=0.05)
    torch.testing.assert_close(_flat(opt, "mean"), m, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_flat(opt, "momentum"), mom, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(_flat(opt, "hess"), hess, rtol=1e-5, atol=1e-6)


def test_state_dict_resumes_bit_exactly_with_the_draw_counter():
    model, x, y = _problem(2)
    opt = IVON(model.parameters(), fused="triton", seed=7, **HYP)
    _train(model, opt, x, y, 2)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, x, y, 3)
    model2, _, _ = _problem(9)
    model2.load_state_dict(saved_model)
    opt2 = IVON(model2.parameters(), fused="triton", seed=123, **HYP)
    opt2.load_state_dict(saved_opt)
    _train(model2, opt2, x, y, 3)
    for name in ("mean", "momentum", "hess"):
        assert torch.equal(_flat(opt, name), _flat(opt2, name)), name


def test_an_exception_inside_the_draw_restores_the_mean():
    model, x, y = _problem(3)
    opt = IVON(model.parameters(), fused="triton", seed=1, **HYP)
    _train(model, opt, x, y, 1)
    before = _flat(opt, "mean").clone()
    with pytest.raises(RuntimeError, match="boom"), opt.sampled_params(train=True):
        raise RuntimeError("boom")
    torch.testing.assert_close(_flat(opt, "mean"), before, rtol=0, atol=1e-6)
    before = _flat(opt, "mean").clone()
    with opt.sampled_params():  # prediction draws restore exactly
        assert not torch.equal(_flat(opt, "mean"), before)
    assert torch.equal(_flat(opt, "mean"), before)


def test_refuses_what_it_cannot_run_before_touching_anything():
    model = torch.nn.Linear(3, 1).double().to(DEVICE)
    with pytest.raises(ValueError, match=r"fused='triton'.*float64"):
        IVON(model.parameters(), lr=0.1, ess=10, fused="triton")
    with pytest.raises(ValueError, match="sync"):
        IVON(
            torch.nn.Linear(3, 1).to(DEVICE).parameters(), lr=0.1, ess=10, fused="triton", sync=True
        )
    with pytest.raises(ValueError, match="fused must be"):
        IVON(model.parameters(), lr=0.1, ess=10, fused="cuda")
    opt = IVON(torch.nn.Linear(3, 1).to(DEVICE).parameters(), lr=0.1, ess=10, fused="triton")
    with pytest.raises(ValueError, match="float64"):
        opt.add_param_group({"params": model.parameters()})
    extra = torch.nn.Linear(2, 2).to(DEVICE)
    opt.add_param_group({"params": extra.parameters()})  # a generator is consumed only once
    assert len(opt.param_groups[-1]["params"]) == 2


def _state(opt):
    return {k: _flat(opt, k).clone() for k in ("momentum", "hess")}


@pytest.mark.parametrize("samples", [1, 2])
def test_draw_ahead_gives_the_same_trajectory_in_one_pass_per_step(samples):
    model, x, y = _problem(4)
    model2 = copy.deepcopy(model)
    plain = IVON(model.parameters(), fused="triton", seed=11, mc_samples=samples, **HYP)
    ahead = IVON(
        model2.parameters(), fused="triton", seed=11, mc_samples=samples, draw_ahead=True, **HYP
    )

    def closure_for(m, o):
        def closure():
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            return loss

        return closure

    for _ in range(5):
        plain.step(closure_for(model, plain))
        ahead.step(closure_for(model2, ahead))
    b = ahead._all_buckets()[0][0]
    assert b.counter.pending is not None and b.counter.fresh  # the weights hold the next draw
    flat_w = torch.cat([p.detach().reshape(-1) for p in model2.parameters()])
    assert not torch.equal(flat_w, _flat(plain, "mean"))
    with ahead.mean_params():
        flat_m = torch.cat([p.detach().reshape(-1) for p in model2.parameters()])
        torch.testing.assert_close(flat_m, _flat(plain, "mean"), rtol=0, atol=1e-6)
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in model2.parameters()]), flat_w)
    for k, v in _state(plain).items():
        torch.testing.assert_close(_state(ahead)[k], v, rtol=0, atol=1e-6)


def test_draw_ahead_checkpoint_resumes_bit_exactly_and_frozen_params_stay():
    model, x, y = _problem(5)
    opt = IVON(model.parameters(), fused="triton", seed=13, draw_ahead=True, **HYP)
    _train(model, opt, x, y, 2)
    saved_opt = copy.deepcopy(opt.state_dict())
    with opt.mean_params():
        saved_model = copy.deepcopy(model.state_dict())
    _train(model, opt, x, y, 3)
    model2, _, _ = _problem(9)
    model2.load_state_dict(saved_model)
    opt2 = IVON(model2.parameters(), fused="triton", seed=1, draw_ahead=True, **HYP)
    opt2.load_state_dict(saved_opt)
    _train(model2, opt2, x, y, 3)
    for name in ("mean", "momentum", "hess"):
        assert torch.equal(_flat(opt, name), _flat(opt2, name)), name
    # a parameter that gets no gradient keeps its mean (the draw moves, the mean does not)
    bias = model[2].bias
    with opt.mean_params():
        before = bias.detach().clone()
    for _ in range(2):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model[:2](x) @ model[2].weight.T, y).backward()
        opt.step()
    with opt.mean_params():
        torch.testing.assert_close(bias.detach(), before, rtol=0, atol=1e-6)
