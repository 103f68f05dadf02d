"""docs/bsam.md: the figure's code draws the figure, and the toy's claims made in the prose (not
in an Output block, which tests/test_docs_output.py compares) hold.

``BSAM_FIGURE=docs/img/bsam.png python -m tests.test_docs_bsam`` redraws docs/img/bsam.png (the
page's code writes the PNG only when ``BSAM_FIGURE`` names a file)."""

from __future__ import annotations

import math
import os
import pathlib
import re

import pytest
import torch

from blr.optim import BSAM

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "bsam.md"
FIGURE = ROOT / "docs" / "img" / "bsam.png"
F64 = torch.float64


def run_page() -> dict:
    """The page's python blocks, in order, in one namespace (torch's thread count restored)."""
    namespace: dict = {"__name__": "docs_bsam"}
    threads = torch.get_num_threads()
    try:
        for block in re.findall(r"^```python\n(.*?)^```", PAGE.read_text("utf-8"), re.S | re.M):
            exec(compile(block, str(PAGE), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    return namespace


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The page's namespace after a run that wrote the figure into a temporary folder."""
    pytest.importorskip("matplotlib")
    path = tmp_path_factory.mktemp("bsam") / "bsam.png"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BSAM_FIGURE", str(path))
        return run_page(), path


def _png_size(path: pathlib.Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_the_figure_code_writes_the_documented_figure(page):
    """The page's figure code writes a PNG of the size of docs/img/bsam.png (900 × 650)."""
    _, path = page
    assert path.is_file()
    assert _png_size(path) == _png_size(FIGURE) == (900, 650)


def test_the_toy_claims_of_the_prose(page):
    """The toy loss's sharp minimum and maximum and their curvatures, where SAM at ρ = 0.05
    cycles, that ρ = 1e-4 changes bSAM's runs but not where they end, and bSAM's final sd."""
    ns, _ = page
    loss, toy = ns["toy_loss"], ns["toy"]
    # ℓ's stationary points: the sharp minimum (h ≈ 100), the barrier's top 0.351 (h ≈ −147)
    for where, curvature in ((0.0, 100.0), (0.351, -147.0)):
        theta = torch.tensor(where, dtype=F64, requires_grad=True)
        (g,) = torch.autograd.grad(loss(theta), theta, create_graph=True)
        (h,) = torch.autograd.grad(g, theta)
        g, h = float(g.detach()), float(h)
        assert abs(g) < 0.1 and abs(h - curvature) < 1.0, (where, g, h)
    last = toy["SAM, ρ = 0.05"][0][-50:]
    assert 0.29 <= float(last.min()) and float(last.max()) <= 0.37
    farther = torch.nn.Parameter(torch.tensor([0.18, 0.2], dtype=F64))  # SAM, ρ = 0.01
    opt = ns["sam_toy"](0.01)([farther])

    def closure():
        opt.zero_grad()
        value = loss(farther).sum()
        value.backward()
        return value

    for _ in range(400):
        opt.step(closure)
    torch.testing.assert_close(
        farther.detach(), torch.full((2,), 0.35126, dtype=F64), atol=1e-4, rtol=0
    )
    wide, tiny = toy["bSAM, s₀ = 1"][0], toy["bSAM, s₀ = 1, ρ = 1e-4"][0]
    assert not torch.equal(wide, tiny)  # the radius is used, and all runs end at θ ≈ 2 either way
    for path in (wide, tiny):
        assert bool(((path[-1] - 2).abs() < 0.1).all())
    # the final sd against the quadratic fixed point (π/2)^{1/4} × width (N = 1)
    factor = (math.pi / 2) ** 0.25
    for name, width in (("bSAM, s₀ = 1", 0.6), ("bSAM, s₀ = 100", 0.1)):
        sd = toy[name][1][-1].mean()
        assert float(sd) == pytest.approx(factor * width, rel=0.03), name


def test_the_toy_posterior_masses_and_bounds():
    """81 % of e^{−ℓ}'s mass in the flat basin; −log of the components' masses −0.05 and 1.38;
    −log ∫e^{−ℓ} = −0.27 (by quadrature on a grid against the closed forms)."""
    sharp, flat = 0.1 * math.sqrt(2 * math.pi), 0.7 * 0.6 * math.sqrt(2 * math.pi)
    assert flat / (sharp + flat) == pytest.approx(0.81, abs=0.005)
    assert round(-math.log(flat), 2) == -0.05 and round(-math.log(sharp), 2) == 1.38
    grid = torch.linspace(-4, 7, 200001, dtype=F64)
    density = torch.exp(-0.5 * (grid / 0.1) ** 2) + 0.7 * torch.exp(-0.5 * ((grid - 2) / 0.6) ** 2)
    total = float(torch.trapezoid(density, grid))
    assert total == pytest.approx(sharp + flat, rel=1e-9)
    assert round(-math.log(total), 2) == -0.27


@pytest.mark.parametrize("n", [1, 16])
def test_the_surrogate_fixed_point_on_a_quadratic(n):
    """On ½hθ² with exact gradients and the mean at the minimum, bSAM's s settles at
    √(2/π)h/√N (the page's formula; the surrogate √s|g₁| is h|z|/√N whatever s is): the mean of
    s over 200 runs and the last 200 of 400 steps, from s₀ = h (β₂ = 0.9)."""
    h = 100.0
    theta = torch.nn.Parameter(torch.zeros(200, dtype=F64))
    opt = BSAM([theta], lr=0.01, ess=n, beta1=0.0, beta2=0.9, s_init=h, weight_decay=0.0, seed=0)

    def closure():
        opt.zero_grad()
        loss = (0.5 * h * theta**2).sum()
        loss.backward()
        return loss

    seen = []
    for step in range(400):
        opt.step(closure)
        if step >= 200:
            seen.append(opt.state_dict()["state"][0]["scale"].mean())
    fixed = math.sqrt(2 / math.pi) * h / math.sqrt(n)
    assert float(torch.stack(seen).mean()) == pytest.approx(fixed, rel=0.02)


if __name__ == "__main__":
    if not os.environ.get("BSAM_FIGURE"):
        raise SystemExit("set BSAM_FIGURE to the PNG to write, e.g. docs/img/bsam.png")
    run_page()
    print(f"wrote {os.environ['BSAM_FIGURE']}")
