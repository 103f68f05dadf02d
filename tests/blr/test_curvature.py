"""Per-example curvature (blr/optim/curvature.py) against brute force: one backward per example
for the squared gradients, torch.func.jacrev per example for the GGN diagonal (in the tests only).

The Monte Carlo test repeats the estimator R times and compares the mean with the exact GGN at
5 standard errors per coordinate (a failure rate below 6e-7 per coordinate under the null)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

from blr.optim.curvature import PerExample, loss_hessian_factors, sampled_output_grads

f64 = torch.float64


@pytest.fixture(autouse=True)
def _f64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(f64)
    yield
    torch.set_default_dtype(before)


# ------------------------------------------------------------------ models
class Scale(nn.Module):
    """A module with a parameter and no closed-form rule."""

    def __init__(self, d):
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x):
        return x * self.s + self.s.square()


class Functional(nn.Module):
    """Uses its child's weight through F.linear without calling the child (like MHA)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return F.linear(x, self.lin.weight, self.lin.bias)


class EmbedModel(nn.Module):
    def __init__(self, vocab=5, d=4, out=3, padding_idx=0):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=padding_idx)
        self.lin = nn.Linear(d, out)

    def forward(self, idx):
        return self.lin(torch.tanh(self.emb(idx))).sum(1)  # Linear on (M, T, d)


class SeqModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x))).mean(1)


class Shared(nn.Module):
    """The same Linear called twice, and an Embedding tied to the output layer."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.mid = nn.Linear(4, 4)
        self.out = nn.Linear(4, 6, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, idx):
        h = self.emb(idx).mean(1)
        return self.out(torch.tanh(self.mid(torch.tanh(self.mid(h)))))


def mlp():
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 3))


def cnn():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding="same", padding_mode="reflect", groups=2, dilation=2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )


def cnn1d():
    return nn.Sequential(
        nn.Conv1d(3, 4, 3, stride=2, padding=2, dilation=2),
        nn.Tanh(),
        nn.Conv1d(4, 2, 2, padding_mode="circular", padding=1, bias=False),
        nn.Flatten(),
        nn.Linear(2 * 7, 3),
    )


def normed():
    m = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.GroupNorm(2, 4),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.Flatten(),
        nn.LayerNorm(4 * 3 * 3),
        nn.Linear(4 * 3 * 3, 3),
    )
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
        m[2].running_mean.normal_()
        m[2].running_var.uniform_(0.5, 2.0)
    return m.eval()


def data(name, M=6):
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (M,), generator=g)
    if name == "mlp":
        return torch.randn(M, 5, generator=g), y
    if name in ("cnn", "normed"):
        hw = 8 if name == "cnn" else 5
        return torch.randn(M, 2, hw, hw, generator=g), y
    if name == "cnn1d":
        return torch.randn(M, 3, 11, generator=g), y
    if name == "embed":
        return torch.randint(0, 5, (M, 7), generator=g), y
    if name == "seq":
        return torch.randn(M, 4, 4, generator=g), y
    if name == "shared":
        return torch.randint(0, 6, (M, 3), generator=g), torch.randint(0, 6, (M,), generator=g)
    raise KeyError(name)


MODELS = {"mlp": mlp, "cnn": cnn, "cnn1d": cnn1d, "embed": EmbedModel, "seq": SeqModel}


def make(name, seed=0):
    torch.manual_seed(seed)
    return {**MODELS, "normed": normed, "shared": Shared}[name]()


# ------------------------------------------------------------------ brute force
def brute_ef(model, x, y, loss=F.cross_entropy):
    params = [p for p in model.parameters() if p.requires_grad]
    acc = [torch.zeros_like(p) for p in params]
    for i in range(x.shape[0]):
        gs = torch.autograd.grad(
            loss(model(x[i : i + 1]), y[i : i + 1], reduction="sum"), params, allow_unused=True
        )
        for a, g in zip(acc, gs):
            if g is not None:
                a += g.square()
    return dict(zip(params, acc))


def brute_ggn(model, x, loss_i):
    """Σ_i J_iᵀ Λ_i J_i (diagonal) with Λ_i = hessian of loss_i at f_i, J_i by jacrev."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(x.shape[0]):

        def f(ps, i=i):
            return functional_call(model, ps, (x[i : i + 1],)).reshape(-1)

        out = f(params)
        J = jacrev(f)(params)
        Lam = hessian(loss_i)(out.detach())
        for n in names:
            Jn = J[n].reshape(out.numel(), -1)
            acc[n] += torch.einsum("dj,de,ej->j", Jn, Lam, Jn).reshape(acc[n].shape)
    return {p: acc[n] for n, p in model.named_parameters() if p.requires_grad}


def assert_close(got: dict, want: dict, rtol=1e-9, atol=1e-12):
    assert set(map(id, got)) == set(map(id, want))
    for p, w in want.items():
        torch.testing.assert_close(got[p], w, rtol=rtol, atol=atol)


# ------------------------------------------------------------------ empirical Fisher
@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn1d", "embed", "seq", "normed", "shared"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_ef_matches_brute_force(name, reduction):
    model = make(name)
    x, y = data(name)
    with PerExample(model, mode="ef", reduction=reduction) as pe:
        F.cross_entropy(model(x), y, reduction=reduction).backward()
    assert pe.num_examples == x.shape[0]
    assert_close(pe.squared_grads(), brute_ef(model, x, y))


def test_ef_float_reduction_small_chunks_and_two_minibatches():
    model = make("seq")
    x, y = data("seq", M=8)
    with PerExample(model, reduction=0.25, max_chunk_elements=7) as pe:
        for sl in (slice(0, 3), slice(3, 8)):
            (0.25 * F.cross_entropy(model(x[sl]), y[sl], reduction="sum")).backward()
    assert pe.num_examples == 8
    assert_close(pe.squared_grads(), brute_ef(model, x, y))
    pe.reset()
    assert all(h.abs().max() == 0 for h in pe.squared_grads().values())


def test_ef_regression_loss_and_attr():
    model = mlp()
    x, _ = data("mlp")
    t = torch.randn(x.shape[0], 3)
    with PerExample(model) as pe:
        F.mse_loss(model(x), t, reduction="sum").backward()
    h = pe.squared_grads(attr="sq_grad")
    assert_close(h, brute_ef(model, x, t, F.mse_loss))
    assert all(p.sq_grad is h[p] for p in model.parameters())


@pytest.mark.parametrize("name", ["mlp", "cnn", "embed", "seq", "shared"])
def test_func_fallback_matches_hooks(name):
    model = make(name)
    x, y = data(name)
    res = {}
    for method in ("hooks", "func"):
        with PerExample(model, method=method) as pe:
            F.cross_entropy(model(x), y, reduction="sum").backward()
        res[method] = pe.squared_grads()
    assert_close(res["func"], res["hooks"])


def test_auto_uses_func_for_modules_without_rule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Scale(4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    with pytest.raises(TypeError, match=r"1 \(Scale\).*method='auto'"):
        PerExample(model)
    with PerExample(model, method="auto") as pe:
        F.cross_entropy(model(x), y).backward()  # default reduction="sum": wrong on purpose
    h_mean_as_sum = pe.squared_grads()
    with PerExample(model, method="auto", reduction="mean") as pe:
        F.cross_entropy(model(x), y).backward()
    want = brute_ef(model, x, y)
    assert_close(pe.squared_grads(), want)
    assert_close({p: 25 * h for p, h in h_mean_as_sum.items()}, want)


# ------------------------------------------------------------------ GGN
def ce_i(f, C=3):
    y = torch.zeros(1, f.numel() // C, dtype=torch.long)  # Λ does not depend on the label
    return F.cross_entropy(f.reshape(1, C, -1), y, reduction="sum")


GGN_CASES = {
    "cross_entropy": (dict(loss="cross_entropy"), ce_i),
    "bce_with_logits": (
        dict(loss="bce_with_logits"),
        lambda f: F.binary_cross_entropy_with_logits(f, torch.ones_like(f), reduction="sum"),
    ),
    "mse": (dict(loss="mse"), lambda f: (f - 1.0).square().sum()),
    "gaussian": (dict(loss="gaussian", sigma2=0.3), lambda f: (f - 1.0).square().sum() / 0.6),
}


@pytest.mark.parametrize(
    "name, loss",
    [(n, loss) for n in ("mlp", "cnn", "embed") for loss in GGN_CASES]
    + [("normed", "cross_entropy"), ("seq", "gaussian"), ("shared", "cross_entropy")],
)
def test_ggn_matches_jacobian_brute_force(name, loss):
    model = make(name)
    x, _ = data(name, M=4)
    kw, loss_i = GGN_CASES[loss]
    if name == "shared":  # 6 classes
        loss_i = lambda f: ce_i(f, C=6)  # noqa: E731
    with PerExample(model, mode="ggn", **kw) as pe:
        model(x)
    assert_close(pe.squared_grads(), brute_ggn(model, x, loss_i))


def test_ggn_sequence_cross_entropy_unvectorized_and_chunked():
    """Logits (M, C, L): Λ_i is block diagonal over positions (C·L seeds)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv1d(3, 3, 1))
    x = torch.randn(3, 2, 4)
    want = brute_ggn(model, x, ce_i)
    for kw in (dict(), dict(vectorize=False), dict(pass_chunk=5)):
        with PerExample(model, mode="ggn", loss="cross_entropy", **kw) as pe:
            model(x)
        assert_close(pe.squared_grads(), want)


@pytest.mark.parametrize("loss", ["cross_entropy", "bce_with_logits", "gaussian"])
def test_loss_hessian_factors(loss):
    f = torch.randn(3, 3, 2)
    kw, loss_i = GGN_CASES[loss]
    V = loss_hessian_factors(f, loss, sigma2=kw.get("sigma2", 1.0)).reshape(-1, 3, 6)
    for i in range(3):
        torch.testing.assert_close(V[:, i].T @ V[:, i], hessian(loss_i)(f[i].reshape(-1)))


def test_mc_fisher_is_unbiased_for_ggn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(4, 3)
    gen = torch.Generator().manual_seed(0)
    for loss, (kw, loss_i) in GGN_CASES.items():
        if loss == "mse":
            continue
        want = brute_ggn(model, x, loss_i)
        runs = []
        for _ in range(40):
            with PerExample(model, mode="mc_fisher", mc_samples=50, generator=gen, **kw) as pe:
                model(x)
            runs.append(torch.cat([h.reshape(-1) for h in pe.squared_grads().values()]))
        runs = torch.stack(runs)
        w = torch.cat([want[p].reshape(-1) for p in pe.squared_grads()])
        se = runs.std(0) / runs.shape[0] ** 0.5
        assert ((runs.mean(0) - w).abs() <= 5 * se + 1e-12).all(), loss


def test_sampled_output_grads_shapes():
    f = torch.randn(2, 3, 4)
    g = sampled_output_grads(f, "cross_entropy", samples=5)
    assert g.shape == (5, 2, 3, 4)
    torch.testing.assert_close(g.sum(2), torch.zeros(5, 2, 4))  # p − e_ŷ sums to 0 over classes
    assert sampled_output_grads(f, "bce_with_logits", samples=2).shape == (2, 2, 3, 4)


# ------------------------------------------------------------------ hygiene
@pytest.mark.parametrize("mode", ["ef", "ggn", "mc_fisher"])
def test_grads_unchanged_and_hooks_removed(mode):
    model = make("cnn")
    x, y = data("cnn")
    ref = make("cnn")
    F.cross_entropy(ref(x), y).backward()
    with PerExample(model, mode=mode, loss="cross_entropy") as pe:
        F.cross_entropy(model(x), y).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    for p in model.parameters():
        assert not p._backward_hooks
    h = {p: t.clone() for p, t in pe.squared_grads().items()}
    F.cross_entropy(model(x), y).backward()  # outside: no effect
    assert_close(pe.squared_grads(), h, rtol=0, atol=0)


def test_backward_after_exit_is_ignored():
    model = mlp()
    x, y = data("mlp")
    with PerExample(model) as pe:
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert all(h.abs().max() == 0 for h in pe.squared_grads().values())


def test_no_grad_forward_is_ignored():
    model = mlp()
    x, _ = data("mlp")
    with PerExample(model, mode="ggn", loss="cross_entropy") as pe, torch.no_grad():
        model(x)
    assert pe.num_examples == 0
    assert all(h.abs().max() == 0 for h in pe.squared_grads().values())


def test_frozen_parameters_are_skipped():
    model = mlp()
    model[0].weight.requires_grad_(False)
    x, y = data("mlp")
    with PerExample(model) as pe:
        F.cross_entropy(model(x), y, reduction="sum").backward()
    h = pe.squared_grads()
    assert model[0].weight not in h
    assert_close(h, brute_ef(model, x, y))


# ------------------------------------------------------------------ errors
def test_batchnorm_training_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    with pytest.raises(RuntimeError, match=r"BatchNorm1d.*batch statistics"), PerExample(model):
        model(x)
    # allowed: per-example contributions b_i x̂_i to the minibatch gradient of the BN scale
    with PerExample(model, allow_batch_coupling=True) as pe:
        z = model[0](x)
        zn = model[1](z)
        zn.retain_grad()
        F.cross_entropy(model[2](zn), y, reduction="sum").backward()
    xh = (z - z.mean(0)) / (z.var(0, unbiased=False) + model[1].eps).sqrt()
    b = zn.grad
    torch.testing.assert_close(
        pe.squared_grads()[model[1].weight], (b * xh.detach()).square().sum(0)
    )
    with pytest.raises(RuntimeError, match="batch statistics"), PerExample(model, method="func"):
        model(x)


class InPlaceInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        h = x.clone()
        out = self.lin(h)
        h.mul_(2.0)  # the input the Linear saw is changed before the backward
        return out


@pytest.mark.parametrize("mode", ["ef", "ggn"])
def test_input_modified_in_place_is_detected(mode):
    model = InPlaceInput()
    with pytest.raises(RuntimeError, match="modified in place"):
        with PerExample(model, mode=mode, loss="mse"):
            model(torch.randn(4, 3)).sum().backward()


def test_error_messages():
    model = mlp()
    with pytest.raises(ValueError, match="needs loss="):
        PerExample(model, mode="ggn")
    with pytest.raises(ValueError, match="mode must be"):
        PerExample(model, mode="hessian")
    with pytest.raises(TypeError, match=r"Conv3d"):
        PerExample(nn.Sequential(nn.Conv3d(1, 1, 1)))
    emb = nn.Embedding(4, 2, scale_grad_by_freq=True)
    with pytest.raises(ValueError, match="scale_grad_by_freq"), PerExample(emb):
        emb(torch.tensor([[0, 1]]))
    tup = nn.Sequential(nn.Linear(2, 2))
    with (
        pytest.raises(TypeError, match="output_fn"),
        PerExample(tup, mode="ggn", loss="mse", output_fn=lambda out: (out,)),
    ):
        tup(torch.randn(3, 2))
    fn = Functional()
    with PerExample(fn, method="auto") as pe:
        fn(torch.randn(3, 4)).sum().backward()
    with pytest.raises(RuntimeError, match=r"lin\.weight.*never called"):
        pe.squared_grads()
