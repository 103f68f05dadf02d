"""blr.curvature.BatchedLinear: K independent linear layers in one call. Its closed-form
per-example rule equals PerExample on K separate nn.Linear networks (GGN, empirical Fisher,
the func fallback), and VOGN/OGN, IVON and Adam on the batched network take the steps of K
separate optimizers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from blr.curvature import BatchedLinear, PerExample
from blr.optim import IVON, VOGN

f64 = torch.float64
K, D, H, M = 3, 4, 5, 7


def _pair(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(BatchedLinear(K, D, H), nn.Tanh(), BatchedLinear(K, H, 1)).double()
    singles = []
    for k in range(K):
        m = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, 1)).double()
        with torch.no_grad():
            for i in (0, 2):
                m[i].weight.copy_(net[i].weight[k])
                m[i].bias.copy_(net[i].bias[k])
        singles.append(m)
    return net, singles


def _data(seed=1, m=M):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, K, D, generator=g, dtype=f64), torch.randn(
        m, K, 1, generator=g, dtype=f64
    )


def test_forward_is_k_linear_layers_and_bad_input_is_refused():
    net, singles = _pair()
    x, _ = _data()
    out = net(x)
    for k, m in enumerate(singles):
        torch.testing.assert_close(out[:, k], m(x[:, k]), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match=r"expects inputs \(M, 3, 4\)"):
        net[0](torch.zeros(2, 4))
    with pytest.raises(ValueError, match="models must be a positive integer"):
        BatchedLinear(0, 2, 2)
    assert "models=3" in repr(net[0])


@pytest.mark.parametrize("mode", ["ggn", "ef", "func"])
def test_per_example_squares_equal_k_separate_networks(mode):
    """Σ_i (per-example gradient)² per model: the closed form (sum_sq and per_example, one
    chunk or many) and torch.func's fallback equal PerExample on each nn.Linear network."""
    net, singles = _pair()
    x, y = _data()
    kw = dict(loss="gaussian", sigma2=0.5) if mode != "ef" else dict(reduction="sum")
    pe_mode = "ggn" if mode == "func" else mode
    extra = dict(method="func") if mode == "func" else dict(max_chunk_elements=16)
    with PerExample(net, mode=pe_mode, **kw, **extra) as pe:
        out = net(x)
        if mode == "ef":
            (0.5 * (out - y) ** 2).sum().backward()
    h = pe.squared_grads()
    for k, m in enumerate(singles):
        with PerExample(m, mode=pe_mode, **kw) as pk:
            o = m(x[:, k])
            if mode == "ef":
                (0.5 * (o - y[:, k]) ** 2).sum().backward()
        hk = pk.squared_grads()
        for i in (0, 2):
            torch.testing.assert_close(h[net[i].weight][k], hk[m[i].weight], rtol=0, atol=1e-13)
            torch.testing.assert_close(h[net[i].bias][k], hk[m[i].bias], rtol=0, atol=1e-13)


def _at_draw(model, theta, backward, opt):
    """The gradient at θ (the batched optimizer's draw) inside a separate optimizer's
    sampled_params block, whose own draw is put back before the block restores the mean."""
    own = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, t in zip(model.parameters(), theta):
            p.copy_(t)
    opt.zero_grad()
    backward()
    with torch.no_grad():
        for p, t in zip(model.parameters(), own):
            p.copy_(t)


@pytest.mark.parametrize("sample", [False, True])
def test_vogn_on_the_batched_network_is_k_separate_vogns(sample):
    """OGN (no draw): the batched network trained on the sum of the K models' minibatch-mean
    losses takes the steps of K separate OGNs (1e-12 after 5 steps). VOGN (draws): the same
    with each separate optimizer's noise taken from the batched one's draw."""
    net, singles = _pair()
    kw = dict(lr=0.1, ess=50, loss="gaussian", sigma2=0.5, sample=sample, seed=0)
    opt = VOGN(net.parameters(), model=net, **kw)
    opts = [VOGN(m.parameters(), model=m, **kw) for m in singles]
    for step in range(5):
        x, y = _data(seed=10 + step)
        with opt.sampled_params(train=True):
            draws = [[p.detach().clone() for p in net.parameters()]]
            opt.zero_grad()
            (0.5 * (net(x) - y) ** 2 / 0.5).mean(0).sum().backward()
        opt.step()
        for k, (m, o) in enumerate(zip(singles, opts)):
            with o.sampled_params(train=True):
                _at_draw(
                    m,
                    [d[k] for d in draws[0]],
                    lambda m=m, k=k, x=x, y=y: (
                        (0.5 * (m(x[:, k]) - y[:, k]) ** 2 / 0.5).mean().backward()
                    ),
                    o,
                )
            o.step()
    if not sample:
        for k, m in enumerate(singles):
            for i in (0, 2):
                torch.testing.assert_close(net[i].weight[k], m[i].weight, rtol=0, atol=1e-12)
                torch.testing.assert_close(net[i].bias[k], m[i].bias, rtol=0, atol=1e-12)
    for name in ("hess", "mean"):
        hb = [st[name] for st in opt.state_dict()["state"].values()]
        for k, o in enumerate(opts):
            hs = [st[name] for st in o.state_dict()["state"].values()]
            for a, b in zip(hb, hs):
                torch.testing.assert_close(a[k], b, rtol=0, atol=1e-12)


def test_ivon_and_adam_on_the_batched_network_are_separable():
    """Elementwise optimizers: with the draw of the batched IVON copied into K separate ones
    (``hess_approx="gradsq"``, whose ĥ depends on θ only through the gradient), means and
    Hessians agree after 5 steps (1e-12); Adam the same without draws."""
    net, singles = _pair()
    adam_net, adam_singles = _pair()
    kw = dict(lr=0.05, ess=50, hess_approx="gradsq")
    opt = IVON(net.parameters(), seed=0, **kw)
    opts = [IVON(m.parameters(), seed=1, **kw) for m in singles]
    a_opt = torch.optim.Adam(adam_net.parameters(), lr=0.01)
    a_opts = [torch.optim.Adam(m.parameters(), lr=0.01) for m in adam_singles]
    for step in range(5):
        x, y = _data(seed=20 + step)
        with opt.sampled_params(train=True):
            draw = [p.detach().clone() for p in net.parameters()]
            opt.zero_grad()
            ((net(x) - y) ** 2).mean(0).sum().backward()
        opt.step()
        a_opt.zero_grad()
        ((adam_net(x) - y) ** 2).mean(0).sum().backward()
        a_opt.step()
        for k in range(K):
            m, o = singles[k], opts[k]
            with o.sampled_params(train=True):
                _at_draw(
                    m,
                    [d[k] for d in draw],
                    lambda m=m, k=k, x=x, y=y: ((m(x[:, k]) - y[:, k]) ** 2).mean().backward(),
                    o,
                )
            o.step()
            a_opts[k].zero_grad()
            ((adam_singles[k](x[:, k]) - y[:, k]) ** 2).mean().backward()
            a_opts[k].step()
    for k in range(K):
        for i in (0, 2):
            torch.testing.assert_close(adam_net[i].weight[k], adam_singles[k][i].weight,
                                       rtol=0, atol=1e-12)  # fmt: skip
    for name in ("hess", "mean"):
        hb = [st[name] for st in opt.state_dict()["state"].values()]
        for k, o in enumerate(opts):
            hs = [st[name] for st in o.state_dict()["state"].values()]
            for a, b in zip(hb, hs):
                torch.testing.assert_close(a[k], b, rtol=0, atol=1e-12)
