"""blr.functional: ModuleLoss against the module itself (the parameters written in, one draw at a
time), its gradients against backward, and ParameterLayout's bookkeeping."""

from __future__ import annotations

import pytest
import torch

from blr.functional import ModuleLoss, ParameterLayout

f64 = torch.float64


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    model = model.double()
    x = torch.randn(7, 3, dtype=f64)
    y = torch.randint(0, 2, (7,))
    return model, x, y


def _loop_value(model, loss_fn, x, y, theta, layout):
    """The oracle: write θ into the module and call it."""
    with torch.no_grad():
        for p, v in zip(model.parameters(), layout.unflatten(theta).values()):
            p.copy_(v)
    return loss_fn(model(x), y)


def test_values_and_gradients_equal_the_module_called_draw_by_draw():
    model, x, y = _setup()
    loss_fn = torch.nn.functional.cross_entropy
    loss = ModuleLoss(model, loss_fn, (x, y), scale=3.0)
    theta = loss.flat_params() + 0.3 * torch.randn(2, 4, loss.layout.size, dtype=f64)
    theta.requires_grad_()
    values = loss(theta)
    assert values.shape == (2, 4)
    (grad,) = torch.autograd.grad(values.sum(), theta)
    for i in range(2):
        for k in range(4):
            model.zero_grad()
            v = _loop_value(model, loss_fn, x, y, theta[i, k].detach(), loss.layout)
            v.backward()
            torch.testing.assert_close(values[i, k], 3.0 * v.detach(), rtol=1e-13, atol=0)
            g = 3.0 * torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            torch.testing.assert_close(grad[i, k], g, rtol=1e-12, atol=1e-14)


def test_a_subset_of_parameters_keeps_the_others_fixed():
    model, x, y = _setup()
    last = model[2]
    loss = ModuleLoss(model, torch.nn.functional.cross_entropy, (x, y), params=last.parameters())
    assert loss.layout.names == ("2.weight", "2.bias")
    theta = loss.flat_params().unsqueeze(0)
    torch.testing.assert_close(loss(theta)[0], torch.nn.functional.cross_entropy(model(x), y))
    assert float(loss(torch.zeros_like(theta))[0].detach()) == pytest.approx(
        float(torch.log(torch.tensor(2.0)))
    )


def test_layout_roundtrip_and_offsets():
    model, _, _ = _setup()
    layout = ParameterLayout.from_module(model)
    assert layout.offsets == (0, 15, 20, 30, 32) and layout.size == 32
    theta = layout.flatten(model.parameters())
    for (name, p), v in zip(model.named_parameters(), layout.unflatten(theta).items()):
        assert v[0] == name and torch.equal(v[1], p)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, x, y: ModuleLoss(m, torch.nn.functional.mse_loss, (x,)), "batch must be a pair"),
        (lambda m, x, y: ModuleLoss(m, 3, (x, y)), "loss_fn must be callable"),
        (lambda m, x, y: ModuleLoss("m", torch.nn.functional.mse_loss, (x, y)), "model must be"),
        (
            lambda m, x, y: ModuleLoss(
                m, torch.nn.functional.mse_loss, (x, y), params=[torch.zeros(2)]
            ),
            "params must be parameters of model",
        ),
        (
            lambda m, x, y: ModuleLoss(m, torch.nn.functional.cross_entropy, (x, y))(
                torch.zeros(31, dtype=f64)
            ),
            r"theta must have shape \(\*draws, 32\)",
        ),
    ],
)
def test_bad_input_names_the_argument(call, match):
    model, x, y = _setup()
    with pytest.raises((TypeError, ValueError), match=match):
        call(model, x, y)
