"""The optimizers' models saved by the checkpoint formats people use: safetensors
(``save_model``/``save_file``, Hugging Face's default) and ``accelerate``'s ``save_state`` with
its default settings. Before parameters kept their own storage, every fp32 parameter was a view
of one flat buffer: ``save_model`` refused ("None is covering the entire storage") and
``save_state`` wrote only the first tensor ("Removed shared tensor ...") and failed to load."""

from __future__ import annotations

import pytest
import torch

import expfam
from blr.optim import IVON, OGN, VOGN, BayesBiNN, BayesByBackprop, BLROptimizer, Vadam

safetensors_torch = pytest.importorskip("safetensors.torch")

MAKERS = {
    "IVON": lambda m: IVON(m.parameters(), lr=0.1, ess=64, seed=0),
    "IVON_sync": lambda m: IVON(m.parameters(), lr=0.1, ess=64, seed=0, sync=True),
    "VOGN": lambda m: VOGN(m.parameters(), lr=0.1, ess=64, seed=0, model=m, curvature="ef"),
    "OGN": lambda m: OGN(m.parameters(), lr=0.1, ess=64, seed=0, model=m, curvature="ef"),
    "Vadam": lambda m: Vadam(m.parameters(), lr=0.1, ess=64, seed=0),
    "BayesBiNN": lambda m: BayesBiNN(m.parameters(), lr=0.1, ess=64, seed=0),
    "BayesByBackprop": lambda m: BayesByBackprop(m.parameters(), lr=0.01, ess=64, seed=0),
    "BLROptimizer": lambda m: BLROptimizer(m.parameters(), expfam.DiagGaussian(), lr=0.1, ess=64),
}


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _train(model, opt, steps=3, wrapped=None):
    """``steps`` steps; ``wrapped``: accelerate's optimizer, which zeroes and steps."""
    wrapped = opt if wrapped is None else wrapped
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
    for _ in range(steps):
        with opt.sampled_params(train=True):
            wrapped.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
        wrapped.step()


@pytest.mark.parametrize("name", list(MAKERS))
def test_safetensors_round_trips_the_trained_model(name, tmp_path):
    model = _model()
    _train(model, MAKERS[name](model))
    safetensors_torch.save_model(model, str(tmp_path / "model.safetensors"))
    safetensors_torch.save_file(model.state_dict(), str(tmp_path / "file.safetensors"))
    for path in ("model.safetensors", "file.safetensors"):
        other = _model(seed=7)
        safetensors_torch.load_model(other, str(tmp_path / path))
        for a, b in zip(model.state_dict().values(), other.state_dict().values()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["IVON", "VOGN", "Vadam", "BLROptimizer"])
def test_accelerate_save_state_and_load_state_with_the_default_format(name, tmp_path):
    """``accelerator.save_state()`` (safetensors by default) and ``load_state()`` into a fresh
    model and optimizer: the weights and the optimizer's state come back bit for bit, and the
    next step is the same."""
    accelerate = pytest.importorskip("accelerate")
    runs = []
    for resume in (False, True):
        acc = accelerate.Accelerator(cpu=True)
        model = _model()
        opt = MAKERS[name](model)
        model, wrapped = acc.prepare(model, opt)
        _train(model, opt, steps=2, wrapped=wrapped)
        if resume:
            acc.save_state(str(tmp_path / "ckpt"))
            acc2 = accelerate.Accelerator(cpu=True)
            model2 = _model(seed=3)
            opt2 = MAKERS[name](model2)
            model2, wrapped2 = acc2.prepare(model2, opt2)
            acc2.load_state(str(tmp_path / "ckpt"))
            for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
                assert torch.equal(a, b)
            model, opt, wrapped = model2, opt2, wrapped2
        _train(model, opt, steps=1, wrapped=wrapped)
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
