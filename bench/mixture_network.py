"""The figure of docs/mixture_network.md: a mixture of three Gaussians vs one Gaussian over a
1-8-1 tanh network on a 1-D regression with a gap, both trained by ``blr.optim.BLROptimizer``.

    python bench/mixture_network.py [--out docs/img/mixture_network.png]   # about 15 s
    python bench/mixture_network.py --seeds 6     # the page's table over the draws' seeds

The script runs the ``python`` blocks of docs/mixture_network.md (so the figure is the page's
code), then draws: left, the single Gaussian's f(x) for 30 draws and E f ± 2 sd; middle, each
mixture component separately (f at its mean, 10 draws); right, the standard deviation of f(x)
over draws of the single Gaussian, of each component, of the mixture and of the components
pooled with equal weights. ``--seeds n`` reruns the page with the optimizers' seeds 0, ..., n − 1
and prints the ELBOs of K = 1, K = 3 and K = 1 with three draws per step as the rows of the
page's table.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

PAGE = ROOT / "docs" / "mixture_network.md"


def run_page(seed: int = 0) -> dict:
    """The namespace of the page's python blocks, run in order with ``SEED = seed``."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)
    namespace: dict = {"__name__": "mixture_network_page"}
    for block in blocks:
        block = block.replace("SEED = 0", f"SEED = {seed}")
        exec(compile(block, str(PAGE), "exec"), namespace)
    return namespace


def single_with_draws(ns: dict, draws: int, seed: int):
    """K = 1 trained as on the page but with ``draws`` draws per step."""
    import expfam
    from blr.optim import BLROptimizer

    net = ns["mlp"](0)
    opt = BLROptimizer(net.parameters(), expfam.DiagGaussian(), lr=0.05, ess=ns["N"],
                       weight_decay=ns["delta"], hess_init=1.0, seed=seed,
                       mc_samples=draws)  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = ns["nll"](net(ns["x"]), ns["y"])
        loss.backward()
        return loss

    for _ in range(ns["STEPS"]):
        opt.step(closure)
    return opt.posterior().nat


def functions(model, posterior, thetas: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """f(grid) for each θ: ``(S, G)``."""
    names = posterior.layout.names
    out = []
    with torch.no_grad():
        for theta in thetas:
            params = dict(zip(names, posterior.layout.unflatten(theta).values()))
            out.append(torch.func.functional_call(model, params, (grid,)).squeeze(-1))
    return torch.stack(out)


def plot(ns: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import expfam

    fam, x, y = ns["fam"], ns["x"], ns["y"]
    grid = torch.linspace(-5, 5, 300, dtype=x.dtype).unsqueeze(-1)
    gen = torch.Generator().manual_seed(0)
    single = ns["opt1"].posterior(ns["single"])
    f1 = functions(ns["single"], single, single.sample((300,), gen), grid)
    mix = ns["opt"].posterior(ns["model"])
    q = mix.nat
    m, s = fam.component.to_moments(fam.components(q))
    weights = fam.log_weights(q).exp()
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    xs = grid.squeeze(-1)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharex=True)
    ax = axes[0]
    mean, sd = f1.mean(0), f1.std(0)
    ax.fill_between(xs, mean - 2 * sd, mean + 2 * sd, color="0.8", label="E f ± 2 sd")
    for f in f1[:30]:
        ax.plot(xs, f, color="0.45", lw=0.5, alpha=0.6)
    ax.plot(xs, mean, color="k", lw=1.5, label="E f")
    ax.set_title(f"one Gaussian (K = 1): ELBO {ns['elbo'](single.nat):.1f}")

    ax = axes[1]
    comp_f = []
    for k in range(m.shape[0]):
        z = torch.randn((200, m.shape[1]), generator=gen, dtype=m.dtype)
        fk = functions(ns["model"], mix, m[k] + z * s[k].rsqrt(), grid)
        comp_f.append(fk)
        for f in fk[:10]:
            ax.plot(xs, f, color=colors[k], lw=0.5, alpha=0.5)
        label = f"component {k}: π = {weights[k]:.3f}, ELBO_k = {ns['each'][k]:.1f}"
        ax.plot(xs, functions(ns["model"], mix, m[k : k + 1], grid)[0], color=colors[k], lw=2,
                label=label)  # fmt: skip
    ax.set_title(f"mixture of {m.shape[0]} Gaussians: ELBO {ns['elbo'](q):.1f}")

    ax = axes[2]
    ax.plot(xs, sd, color="k", lw=2, label="one Gaussian")
    for k, fk in enumerate(comp_f):
        ax.plot(xs, fk.std(0), color=colors[k], lw=1, label=f"component {k}")
    f_mix = functions(ns["model"], mix, mix.sample((600,), gen), grid)
    ax.plot(xs, f_mix.std(0), color="tab:purple", lw=2, ls=":", label="the mixture (its π)")
    pooled = torch.cat(comp_f)
    ax.plot(xs, pooled.std(0), color="tab:red", lw=2, ls="--",
            label="components pooled, equal weights")  # fmt: skip
    ax.set_yscale("log")
    ax.set_ylim(0.09, 0.8)  # room for the legend above the curves
    ax.set_title("sd of f(x) over draws")

    for ax in axes[:2]:
        ax.scatter(x.squeeze(-1), y.squeeze(-1), s=10, color="k", zorder=5)
        ax.set_ylim(-2.2, 2.2)
    for ax in axes:
        ax.axvspan(-1, 1, color="0.93", zorder=0)
        ax.set_xlabel("x")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        "1-D regression with a gap (shaded), 1-8-1 tanh network, BLR with "
        f"{expfam.Mixture(expfam.DiagGaussian())!r} vs DiagGaussian()",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "mixture_network.png")
    parser.add_argument("--seeds", type=int, default=0, help="print the table over n seeds")
    args = parser.parse_args(argv)
    if args.seeds:
        for seed in range(args.seeds):
            ns = run_page(seed)
            one = ns["elbo"](ns["opt1"].posterior().nat)
            three = ns["elbo"](ns["opt"].posterior().nat)
            more = ns["elbo"](single_with_draws(ns, 3, seed))
            print(f"| {seed} | {one:.1f} | {three:.1f} | {more:.1f} |", flush=True)
        return 0
    ns = run_page()
    plot(ns, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
