"""BayesBiNN: the optimizer against blr.step (Bernoulli on {−1,+1}, Gumbel-softmax estimator,
uniform prior) with the same uniforms, numerical safety of the relaxed scale, and conventions."""

from __future__ import annotations

import copy

import pytest
import torch

import blr
import expfam
from blr.kernels.bernoulli import relaxed_scale
from blr.optim import BayesBiNN

f64 = torch.float64


def _data(n=40, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, dtype=f64, generator=g)
    y = (x @ torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0], dtype=f64) > 0).to(f64)
    return x, y


def _mean_loss(theta, x, y):  # θ (..., d) ↦ mean BCE over the data, per leading index
    logits = theta @ x.T
    return torch.nn.functional.binary_cross_entropy_with_logits(
        logits, y.expand_as(logits), reduction="none"
    ).mean(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_bayesbinn_is_the_bernoulli_blr_with_gumbel_softmax(temperature):
    x, y = _data()
    n, rho, seed = x.shape[0], 0.05, 17
    lam0 = torch.tensor([0.3, -0.2, 0.1, 0.5, -0.4], dtype=f64)
    w = torch.nn.Parameter(lam0.clone())
    opt = BayesBiNN([w], lr=rho, ess=n, temperature=temperature, seed=seed)
    fam = expfam.Bernoulli("pm1")
    nat = expfam.BernoulliNat(lam0.clone())
    prior = expfam.BernoulliNat(torch.zeros(5, dtype=f64))
    gen = torch.Generator().manual_seed(seed)
    est = blr.GumbelSoftmax(temperature, 1)
    for _ in range(10):

        def closure():
            opt.zero_grad()
            loss = _mean_loss(w, x, y)
            loss.backward()
            return loss

        opt.step(closure)
        nat = blr.step(
            fam,
            nat,
            lambda th: n * _mean_loss(th, x, y),
            rho,
            estimator=est,
            prior=prior,
            generator=gen,
        )
        lam = opt.state_dict()["state"][0]["lam"]
        torch.testing.assert_close(lam.double(), nat.lam1, rtol=1e-5, atol=1e-6)


def test_relaxed_scale_is_finite_where_the_direct_formula_is_0_over_0():
    lam = torch.tensor([0.0, 3.0, 400.0, -800.0], dtype=f64)
    arg = torch.tensor([0.5, 30.0, 401.0, -790.0], dtype=f64)
    s = relaxed_scale(arg, lam, 0.5)
    assert torch.isfinite(s).all()
    direct = (1 - torch.tanh(arg[0]) ** 2) / (0.5 * (1 - torch.tanh(lam[0]) ** 2))
    torch.testing.assert_close(s[0], direct, rtol=1e-12, atol=0)
    # in the tails sech²(a)/sech²(λ) = e^{−2(|a| − |λ|)}(1 + e^{−2|λ|})²/(1 + e^{−2|a|})², where the
    # direct formula rounds 1 − tanh²(30) to 0
    tail = torch.exp(-2 * (arg.abs() - lam.abs())) * (1 + torch.exp(-2 * lam.abs())) ** 2
    tail = tail / (1 + torch.exp(-2 * arg.abs())) ** 2 / 0.5
    torch.testing.assert_close(s[1:], tail[1:], rtol=1e-12, atol=0)


def test_eval_point_state_dict_and_errors():
    x, y = _data()
    xs, ys = x.float(), y.float()
    model = torch.nn.Linear(5, 1, bias=False)
    opt = BayesBiNN(model.parameters(), lr=0.05, ess=40, eval_point="sign", seed=1)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xs).squeeze(-1), ys)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    assert set(model.weight.detach().abs().flatten().tolist()) <= {1.0}
    saved = copy.deepcopy(opt.state_dict())
    twin = torch.nn.Linear(5, 1, bias=False)
    other = BayesBiNN(twin.parameters(), lr=0.05, ess=40, eval_point="sign", seed=99)
    other.load_state_dict(saved)
    assert torch.equal(twin.weight, model.weight)
    with pytest.raises(ValueError, match=r"not from blr\.optim\.BayesBiNN"):
        other.load_state_dict(blr.optim.IVON(twin.parameters(), lr=0.1, ess=1).state_dict())
    with pytest.raises(ValueError, match="temperature must be > 0"):
        BayesBiNN(model.parameters(), lr=0.1, ess=10, temperature=0)
    with pytest.raises(ValueError, match="eval_point"):
        BayesBiNN(model.parameters(), lr=0.1, ess=10, eval_point="mode")
