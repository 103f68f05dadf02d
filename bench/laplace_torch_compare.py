"""blr.nn_laplace.NNLaplace against laplace-torch (Daxberger et al. 2021) on real data, float64.

    python bench/laplace_torch_compare.py [--hidden 16] [--delta 1.0] [--iters 200]

A tanh MLP is trained to the MAP (full-batch L-BFGS on the summed NLL + δ‖θ‖²/2) on

- sklearn's digits (1797 8×8 images, 10 classes; 1500 train / 297 test), classification;
- sklearn's diabetes (442 × 10; 400 train / 42 test), regression with noise variance σ²;

then both libraries fit the full, diagonal and last-layer GGN Laplace approximations at the same
MAP and the script prints the max |difference| of the posterior precision, the log marginal
likelihood, the GLM predictive mean and covariance, the probit and Laplace-bridge predictives
(classification), the prior precision that maximizes the marginal likelihood, and fit times.
laplace-torch has no binary (sigmoid) likelihood, so that case is not compared.

laplace-torch is an optional reference, never a dependency of this package; without it the script
says why and exits 0. It installs next to a CPU torch without replacing it by
``pip install --no-deps laplace-torch asdfghjkl==0.1a4 backpack-for-pytorch
curvlinops-for-pytorch einops einconv unfoldNd opt_einsum linear_operator torchmetrics
lightning-utilities`` (torchvision, which backpack lists, is not needed for this comparison).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from blr.nn_laplace import NNLaplace

F64 = torch.float64
STRUCTURES = (
    ("full", "all", "full"),
    ("diag", "all", "diag"),
    ("last_layer", "last_layer", "full"),
)


def load(name: str):
    from sklearn.datasets import load_diabetes, load_digits

    if name == "digits":
        data, n_train = load_digits(), 1500
        y = torch.tensor(data.target)
    else:
        data, n_train = load_diabetes(), 400
        y = torch.tensor(data.target, dtype=F64)
    X = torch.tensor(data.data, dtype=F64)
    mean, std = X[:n_train].mean(0), X[:n_train].std(0).clamp_min(1e-8)
    X = (X - mean) / std
    if name == "diabetes":
        y = ((y - y[:n_train].mean()) / y[:n_train].std()).unsqueeze(-1)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def train_map(model, X, y, likelihood, delta, sigma2, iters):
    opt = torch.optim.LBFGS(
        model.parameters(), max_iter=iters, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure():
        opt.zero_grad()
        out = model(X)
        if likelihood == "classification":
            nll = nn.functional.cross_entropy(out, y, reduction="sum")
        else:
            nll = 0.5 * (out - y).square().sum() / sigma2
        loss = nll + 0.5 * delta * sum(p.square().sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return float(closure().detach())


def maxdiff(a, b) -> float:
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())


def compare(name, args, Laplace):
    from torch.utils.data import DataLoader, TensorDataset

    likelihood = "classification" if name == "digits" else "regression"
    Xtr, ytr, Xte, _ = load(name)
    K = 10 if likelihood == "classification" else 1
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(Xtr.shape[1], args.hidden), nn.Tanh(), nn.Linear(args.hidden, K)
    )
    model = model.to(F64)
    sigma2 = args.sigma2 if likelihood == "regression" else None
    t = time.perf_counter()
    loss = train_map(model, Xtr, ytr, likelihood, args.delta, sigma2 or 1.0, args.iters)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"\n## {name} ({likelihood}, n = {len(Xtr)}, MLP {Xtr.shape[1]}→{args.hidden}→{K}, "
        f"P = {n_params}, δ = {args.delta}"
        + (f", σ² = {sigma2}" if sigma2 else "")
        + f"): MAP loss {loss:.4f} in {time.perf_counter() - t:.1f} s"
    )
    loader = DataLoader(TensorDataset(Xtr, ytr), batch_size=250)
    header = (
        "| structure | max |ΔP| (max |P|) | ΔlogML (logML) | max |Δf*| | max |ΔV| (max |V|) | "
        "probit / bridge max |Δp| | δ* ours / l-t (l-t slope at ours) | fit s ours / l-t | "
        "tune δ s ours / l-t |"
    )
    print(header)
    print("|---" * 9 + "|")
    worst = 0.0
    for ours_structure, subset, hessian in STRUCTURES:
        theirs = Laplace(
            model,
            likelihood,
            subset_of_weights=subset,
            hessian_structure=hessian,
            prior_precision=args.delta,
            sigma_noise=math.sqrt(sigma2) if sigma2 else 1.0,
        )
        t = time.perf_counter()
        theirs.fit(loader)
        t_theirs = time.perf_counter() - t
        t = time.perf_counter()
        ours = NNLaplace(
            model, likelihood, ours_structure, prior_prec=args.delta, sigma2=sigma2
        ).fit(Xtr, ytr)
        t_ours = time.perf_counter() - t
        P_ours, P_theirs = ours.posterior_precision, theirs.posterior_precision
        d_prec = maxdiff(P_ours, P_theirs)
        lml_ours = float(ours.log_marginal_likelihood())
        lml_theirs = float(theirs.log_marginal_likelihood().detach())
        f_ours, V_ours = ours.glm_predictive_distribution(Xte)
        f_theirs, V_theirs = theirs._glm_predictive_distribution(Xte)
        d_f, d_V = maxdiff(f_ours, f_theirs), maxdiff(V_ours, V_theirs)
        rel = [d_prec / float(P_theirs.abs().max()), d_V / float(V_theirs.abs().max())]
        rel.append(abs(lml_ours - lml_theirs) / abs(lml_theirs))
        if likelihood == "classification":
            links = []
            for link in ("probit", "bridge"):
                p_theirs = theirs(Xte, pred_type="glm", link_approx=link)
                links.append(maxdiff(ours.predictive(Xte, link=link), p_theirs))
            rel += links
            link_text = f"{links[0]:.1e} / {links[1]:.1e}"
        else:
            mean, cov = ours.predictive(Xte)
            f_mu, f_var = theirs(Xte, pred_type="glm")
            d_pred = max(
                maxdiff(mean, f_mu), maxdiff(cov - sigma2 * torch.eye(K, dtype=F64), f_var)
            )
            rel.append(d_pred)
            link_text = f"(mean, cov) {d_pred:.1e}"
        t = time.perf_counter()
        delta_ours = ours.optimize_prior_precision()
        t_opt_ours = time.perf_counter() - t
        t = time.perf_counter()
        theirs.optimize_prior_precision(
            method="marglik", n_steps=args.marglik_steps, lr=0.1, init_prior_prec=args.delta
        )
        t_opt_theirs = time.perf_counter() - t
        delta_theirs = float(theirs.prior_precision)
        # laplace-torch's own marginal likelihood is stationary at our δ*: its d/d log δ there
        log_d = torch.tensor(math.log(delta_ours), dtype=F64, requires_grad=True)
        slope = torch.autograd.grad(theirs.log_marginal_likelihood(log_d.exp()), log_d)[0]
        worst = max(worst, *rel)
        print(
            f"| {ours_structure} | {d_prec:.1e} ({float(P_theirs.abs().max()):.3g}) | "
            f"{lml_ours - lml_theirs:.1e} ({lml_theirs:.3f}) | {d_f:.1e} | "
            f"{d_V:.1e} ({float(V_theirs.abs().max()):.3g}) | {link_text} | "
            f"{delta_ours:.6g} / {delta_theirs:.6g} ({float(slope):.0e}) | "
            f"{t_ours:.2f} / {t_theirs:.2f} | {t_opt_ours:.2f} / {t_opt_theirs:.2f} |"
        )
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=16, help="hidden units (default 16)")
    parser.add_argument("--delta", type=float, default=1.0, help="prior precision δ (default 1)")
    parser.add_argument("--sigma2", type=float, default=0.5, help="regression noise variance")
    parser.add_argument("--iters", type=int, default=200, help="L-BFGS iterations for the MAP")
    parser.add_argument(
        "--marglik-steps", type=int, default=300, help="laplace-torch's Adam steps on log δ"
    )
    args = parser.parse_args(argv)
    try:
        import laplace
        from laplace import Laplace
    except Exception as exc:  # ImportError, or a broken optional dependency
        print(f"laplace-torch is not available ({type(exc).__name__}: {exc}); nothing to compare.")
        return 0
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:
        print(f"scikit-learn is not available ({exc}); nothing to compare.")
        return 0
    version = getattr(laplace, "__version__", None)
    if version is None:
        from importlib.metadata import version as _version

        version = _version("laplace-torch")
    # laplace-torch makes some intermediates in the default dtype: float64 throughout
    torch.set_default_dtype(F64)
    print(f"laplace-torch {version}, torch {torch.__version__}, float64, CPU")
    worst = max(compare("digits", args, Laplace), compare("diabetes", args, Laplace))
    print(
        f"\nlargest relative difference (of P, V, logML; absolute for probabilities): {worst:.1e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
