r"""The UCI protocol that chooses every setting from training data only, with all splits of a
data set (and every prior precision) trained at once as one batched network.

For each split k, a hold-out of 20 % of the TRAINING rows (:meth:`UCIDataset.validation_split`,
seed k) is the validation set; every candidate setting is trained on the other 80 % and scored
by the validation log-likelihood (20 posterior draws) at four checkpoints, 1/8, 1/4, 1/2 and all
of the epoch budget. The best (δ, c, learning rate, epochs) of each split — candidates that
diverged excluded — is retrained on all of the split's training rows and scored on its test
rows, which no choice ever sees; should it diverge there, the split's next best candidate is
retrained instead (at most :data:`RETRAINS` times) and the diverged choice is reported.
Chosen per split:

- δ, the prior precision of every weight, from :data:`PRIOR_PRECS`;
- for VOGN, IVON and Bayes by backprop (:data:`TEMPERED`), c, the weight of the likelihood in
  the tempered posterior q ∝ p(D|θ)ᶜ p(θ), from :data:`LIKELIHOOD_WEIGHTS`: network k's loss is
  c_k times its minibatch-mean loss, which for IVON equals ``ess`` = c·N with h₀/c (a test
  checks it). Vadam keeps c = 1 (its squared-gradient h would scale by c², not c), and so do
  the MAP baselines, for which a weight c is the prior δ/c, already a candidate;
- the learning rate, the method's base rate × :data:`LR_SCALES`;
- the epochs, from the checkpoints of a budget of about :data:`STEP_BUDGET` steps (the data
  set's ``n_epochs.txt`` at least): more epochs on the small sets, whose 40 epochs are a few
  hundred steps;
- for MC dropout the dropout rate p from :data:`DROPOUT_RATES` (in place of the learning rate).

The noise variance σ² is learned by type-II maximum likelihood (Adam on log σ² on the same
minibatch loss, from σ² = 0.1), as in :mod:`blr.apps.uci`: one treatment for every method, and
no candidate grid.

**Batched training.** A run trains one network per (split, δ, c[, p][, member]) as a
:class:`blr.curvature.BatchedLinear` MLP (the splits' training sets have the same size, so
every network takes the same number of steps; each its own minibatches and initialization, the
one :func:`blr.apps.uci.mlp` gets from the split's seed). The loss is the sum of the networks'
minibatch-mean losses, so the elementwise optimizers (IVON, Vadam, VOGN, Bayes by backprop, Adam)
update every network as if alone; δ differs per network through ``prior=`` (a per-coordinate
prior), c through the loss's weights, the learning rate per run. A network whose minibatch
loss exceeds :data:`DIVERGED_LOSS` (per example, standardized units: a blown-up network) is
stopped — its loss masked, so its gradient is exactly zero and it cannot disturb the others —
and its candidate counts as diverged for its split (reported per split). Should a loss turn NaN/Inf
before that, the optimizers raise and every candidate of the run counts as diverged.

**β₂ = 0.99 for IVON and VOGN** (the curvature's averaging horizon, 100 steps instead of 1 000).
The noise variance is learned, and on the nearly noiseless sets it falls 20-fold (yacht: σ² from
0.1 to 0.005), so the likelihood's curvature, ∝ 1/σ², grows during training; an average over
1 000 steps lags behind it, the step α(ḡ + δm)/(h + δ) outgrows the curvature and the mean
blows up (yacht, 429 epochs, δ = 1, lr 0.03: 2 of 8 splits at RMSE 48 and 1 056 with
β₂ = 0.999, none with 0.99; docs/uci.md).

**VOGN starts h at max(h₀, ĥ₁)** (``hess_start="max"``): a loss weighted by c with σ² = 0.1
has a curvature of order c/σ², and from h₀ = 1 the first steps are up to that many times the
Newton step (yacht, c = 10, δ = 100: test RMSE 13 141 from h₀).

Methods (:data:`METHODS`): the four BLR methods of :mod:`blr.apps.uci` and two non-BLR baselines
with the same network and protocol: MC dropout (Gal & Ghahramani 2016: dropout before the output
layer, Adam on the MAP loss with ½δ‖θ‖², 100 dropout masks at test time) and a deep ensemble of
5 (Lakshminarayanan et al. 2017, with the shared homoscedastic σ² of the other methods; members
differ by initialization and minibatch order). Predictions: the Gaussian N(mean, σ² + var) over
draws, masks or members, un-standardized.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from blr.apps.uci import Split, UCIDataset, _gaussian_nll, _summary, mlp
from blr.curvature import BatchedLinear, Gaussian

__all__ = [
    "BASELINES",
    "BASE_LR",
    "DIVERGED_LOSS",
    "DROPOUT_RATES",
    "LIKELIHOOD_WEIGHTS",
    "LR_SCALES",
    "METHODS",
    "PRIOR_PRECS",
    "RETRAINS",
    "STEP_BUDGET",
    "TEMPERED",
    "ProtocolConfig",
    "plot",
    "run_benchmark",
    "run_protocol",
    "summary_table",
]

METHODS = ("vogn", "vadam", "ivon", "bbb", "mcdropout", "ensemble")
BASE_LR = {"vogn": 0.03, "vadam": 0.1, "ivon": 0.03, "bbb": 0.003, "mcdropout": 1e-3,
           "ensemble": 1e-3}  # fmt: skip
"""The base learning rates (those chosen on bostonHousing for the first four, docs/uci.md;
Adam's default for the baselines)."""
PRIOR_PRECS = (0.1, 1.0, 10.0, 100.0)
LR_SCALES = (1.0, 1.0 / 3.0)
DROPOUT_RATES = (0.05, 0.2)
LIKELIHOOD_WEIGHTS = (1.0, 10.0)
"""The candidates of c in the tempered posterior q ∝ p(D|θ)ᶜ p(θ) (c = 1: the posterior)."""
TEMPERED = ("vogn", "ivon", "bbb")
"""The methods for which c is a candidate setting (:data:`LIKELIHOOD_WEIGHTS`); the others
keep c = 1 (module docstring)."""
STEP_BUDGET = 3000
DIVERGED_LOSS = 1e5
"""A network whose minibatch loss (per example, standardized units) exceeds this is stopped."""
RETRAINS = 2
"""How many times a split's choice that diverges on all its training rows gives way to its next
best candidate (reported as ``retrain_diverged``)."""
ENSEMBLE = 5


@dataclass(frozen=True)
class ProtocolConfig:
    """Settings of the protocol (module docstring).

    Attributes:
        prior_precs, lr_scales, dropout_rates, likelihood_weights: the candidate grids (the
            last for the methods of :data:`TEMPERED` only).
        step_budget: the epoch budget is max(n_epochs, ⌈step_budget / steps per epoch⌉).
        epochs: a fixed budget instead (quick runs).
        holdout: the validation fraction of the training rows.
        batch_size, n_hidden, hess_init, beta2, noise_var_init, noise_lr: as in
            :class:`blr.apps.uci.BenchConfig`.
        val_samples, test_samples: draws (masks) of the validation and test predictives.
        seed: base seed; split k uses seed + 1000·k.
    """

    prior_precs: tuple[float, ...] = PRIOR_PRECS
    lr_scales: tuple[float, ...] = LR_SCALES
    dropout_rates: tuple[float, ...] = DROPOUT_RATES
    likelihood_weights: tuple[float, ...] = LIKELIHOOD_WEIGHTS
    step_budget: int = STEP_BUDGET
    epochs: int | None = None
    holdout: float = 0.2
    batch_size: int = 32
    n_hidden: int = 50
    hess_init: float = 1.0
    beta2: float = 0.99
    noise_var_init: float = 0.1
    noise_lr: float = 0.01
    val_samples: int = 20
    test_samples: int = 100
    seed: int = 0


# ------------------------------------------------------------------------------ the network
class _Dropout(nn.Module):
    """Dropout with one rate per network: inputs ``(M, K, H)``, rates ``(K,)``; the masks come
    from the module's own generator (seeded by the run's first network seed), so a method's
    numbers do not depend on what else ran in the process."""

    def __init__(self, rates: Tensor, seed: int) -> None:
        super().__init__()
        self.register_buffer("rates", rates)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.rates[:, None]
        u = torch.rand(x.shape, generator=self.generator, dtype=x.dtype)
        return x * (u < keep).to(x.dtype) / keep


class _Scale(nn.Module):
    """f/σ_k: the output in units of each network's noise scale, so that the Gaussian GGN with
    σ² = 1 is J²/σ_k² (VOGN's curvature; the loss multiplies σ_k back)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.register_buffer("inv_sigma", torch.ones(k, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.inv_sigma


def _network(seeds: Sequence[int], d: int, h: int, rates: Tensor | None) -> nn.Sequential:
    """One MLP per seed, each initialized as :func:`blr.apps.uci.mlp` under that seed."""
    k = len(seeds)
    layers: list[nn.Module] = [BatchedLinear(k, d, h), nn.ReLU()]
    if rates is not None:
        layers.append(_Dropout(rates, seeds[0] + 7))
    layers += [BatchedLinear(k, h, 1), _Scale(k)]
    net = nn.Sequential(*layers)
    first, last = net[0], net[-2]
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for j, s in enumerate(seeds):
            torch.manual_seed(s)
            ref = mlp(d, h)
            first.weight[j].copy_(ref[0].weight)
            first.bias[j].copy_(ref[0].bias)
            last.weight[j].copy_(ref[2].weight)
            last.bias[j].copy_(ref[2].bias)
    return net


def _stack(splits: Sequence[Split], attr: str) -> Tensor:
    return torch.stack([getattr(s, attr) for s in splits], 1)  # (n, K, ...)


@dataclass
class _Batch:
    """K networks' data: split ``members[j]`` of the list of splits for network j."""

    splits: list[Split]
    members: list[int]  # network j → index into splits
    priors: list[float]  # δ per network
    weights: list[float]  # c per network (the likelihood's weight)
    rates: list[float] | None  # dropout rate per network
    seeds: list[int]

    def x(self, attr: str) -> Tensor:
        return _stack([self.splits[i] for i in self.members], attr)


class _SeparableGaussian(Gaussian):
    """The Gaussian likelihood (σ² = 1 on the scaled outputs) of K networks, network k's
    weighted by c_k, with ONE factor of Λ = diag(c) per example, the column √c, in place of
    K columns. VVᵀ = √c√cᵀ is not Λ, but for K networks with disjoint parameters the Jacobian
    of output k is zero outside network k, so the cross terms J_kᵀJ_l (k ≠ l) vanish on the
    diagonal and the diagonal GGN is the same, c_k J_kᵀJ_k, from one backward pass per step
    instead of K."""

    def __init__(self, weights: Tensor) -> None:
        super().__init__(1.0)
        self.root_weights = weights.sqrt()  # (K,)

    def hessian_factors(self, f: Tensor) -> Tensor:  # f: (B, K, 1)
        root = self.root_weights.to(f.dtype).reshape(1, 1, -1, 1)
        return root.expand(1, *f.shape).to(device=f.device)


def _optimizer(method: str, net: nn.Module, n: int, lr: float, priors: Tensor,
               weights: Tensor, config):  # fmt: skip
    """The method's optimizer over the batched network, δ per network through ``prior=``
    (and VOGN's curvature weighted by c per network)."""
    from blr.optim import IVON, VOGN, BayesByBackprop, Vadam
    from blr.posterior import ParameterPosterior
    from expfam import DiagGaussian

    if method in ("mcdropout", "ensemble"):
        return torch.optim.Adam(net.parameters(), lr=lr)
    per_coord = torch.cat([
        priors.to(p.dtype).reshape(-1, *([1] * (p.dim() - 1))).expand_as(p).reshape(-1)
        for p in net.parameters()
    ])  # fmt: skip
    fam = DiagGaussian()
    prior = ParameterPosterior(fam, fam.from_moments(torch.zeros_like(per_coord), per_coord), net)
    h0, b2 = config.hess_init, config.beta2
    if method == "vogn":
        return VOGN(net.parameters(), lr=lr, ess=n, beta2=b2, hess_init=h0, curvature="ggn",
                    loss=_SeparableGaussian(weights), model=net, prior=prior, seed=0,
                    hess_start="max")  # fmt: skip
    if method == "ivon":
        return IVON(net.parameters(), lr=lr, ess=n, beta2=b2, hess_init=h0, prior=prior,
                    fused=False, seed=0)  # fmt: skip
    if method == "vadam":
        return Vadam(net.parameters(), lr=lr, ess=n, prec_init=h0, prior=prior, seed=0)
    delta = float(priors.mean())
    return BayesByBackprop(net.parameters(), lr=lr, ess=n, prior=prior,
                           init_std=(n * h0 + delta) ** -0.5, seed=0)  # fmt: skip


def _train_and_score(
    method: str,
    batch: _Batch,
    lr: float,
    checkpoints: Sequence[int],
    config: ProtocolConfig,
    score: Callable[[int, nn.Module, Any, Tensor, Tensor], None],
) -> list[bool]:
    """Train the batch's networks; call ``score(epoch, net, predictive, noise_var, alive)`` at
    each checkpoint (``alive``: per network, not stopped so far). Returns, per network,
    whether it diverged."""
    x, y = batch.x("x_train"), batch.x("y_train").unsqueeze(-1)
    n, k = x.shape[0], x.shape[1]
    priors = torch.tensor(batch.priors, dtype=x.dtype)
    weights = torch.tensor(batch.weights, dtype=x.dtype)
    rates = None if batch.rates is None else torch.tensor(batch.rates, dtype=x.dtype)
    net = _network(batch.seeds, x.shape[2], config.n_hidden, rates).to(x.dtype)
    log_noise = torch.full((k, 1), math.log(config.noise_var_init), dtype=x.dtype)
    log_noise.requires_grad_(True)
    noise_opt = torch.optim.Adam([log_noise], lr=config.noise_lr)
    opt = _optimizer(method, net, n, lr, priors, weights, config)
    gens = [torch.Generator().manual_seed(s + 1) for s in batch.seeds]
    steps = math.ceil(n / config.batch_size)
    params = list(net.parameters())
    alive = torch.ones(k, dtype=torch.bool)
    try:
        _epochs(method, net, opt, noise_opt, log_noise, x, y, priors, weights, gens, steps,
                checkpoints, config, score, alive)  # fmt: skip
    except FloatingPointError:
        return [True] * k
    finite = torch.stack([torch.isfinite(p.detach().reshape(k, -1)).all(1) for p in params])
    return (~(alive & finite.all(0))).tolist()


def _epochs(method, net, opt, noise_opt, log_noise, x, y, priors, weights, gens, steps,
            checkpoints, config, score, alive) -> None:  # fmt: skip
    n, k = x.shape[0], x.shape[1]
    sampling = method not in ("mcdropout", "ensemble")
    params = list(net.parameters())

    def loss_fn(xb: Tensor, yb: Tensor, sigma: Tensor) -> Tensor:
        per = _gaussian_nll(net(xb) * sigma, yb, log_noise).mean(0).squeeze(-1)  # (K,)
        alive.logical_and_(torch.isfinite(per.detach()) & (per.detach() <= DIVERGED_LOSS))
        per = per * weights  # c_k: the tempered likelihood
        if not sampling:  # MAP: + ½δ‖θ_k‖²/N per network
            sq = sum((p.reshape(k, -1) ** 2).sum(1) for p in params)
            per = per + 0.5 * priors * sq / n
        return torch.where(alive, per, torch.zeros_like(per)).sum()

    for epoch in range(1, max(checkpoints) + 1):
        perms = torch.stack([torch.randperm(n, generator=g) for g in gens], 1)  # (n, K)
        for s in range(steps):
            idx = perms[s * config.batch_size : (s + 1) * config.batch_size]  # (B, K)
            xb = torch.gather(x, 0, idx[..., None].expand(-1, -1, x.shape[2]))
            yb = torch.gather(y, 0, idx[..., None])
            net[-1].inv_sigma.copy_(torch.exp(-0.5 * log_noise.detach()))
            sigma = torch.exp(0.5 * log_noise.detach())
            opt.zero_grad()
            noise_opt.zero_grad()
            if sampling:
                with opt.sampled_params(train=True):
                    loss_fn(xb, yb, sigma).backward()
            else:
                loss_fn(xb, yb, sigma).backward()
            opt.step()
            noise_opt.step()
        if epoch in checkpoints:
            noise_var = torch.exp(log_noise.detach()).squeeze(-1)
            predictive = opt.posterior(net) if method == "bbb" else opt
            score(epoch, net, predictive, noise_var, alive.clone())


@torch.no_grad()
def _predict(method: str, net: nn.Module, predictive: Any, x: Tensor, samples: int,
             noise_var: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Predictive mean and variance ``(n, K)`` in standardized units."""
    sigma = torch.exp(0.5 * torch.log(noise_var))[:, None]
    net[-1].inv_sigma.copy_(1.0 / sigma)
    outs = []
    if method == "mcdropout":
        net.train()
        outs = [net(x) * sigma for _ in range(samples)]
        net.eval()
    elif method == "ensemble":
        net.eval()
        outs = [net(x) * sigma]
    else:
        net.eval()
        for _ in range(samples):
            with predictive.sampled_params():
                outs.append(net(x) * sigma)
        net.train()
    f = torch.stack(outs).squeeze(-1).double()  # (S, n, K)
    mean = f.mean(0)
    var = f.var(0, unbiased=False) + noise_var.double()
    return mean, var


def _scores(mean: Tensor, var: Tensor, splits: Sequence[Split]) -> tuple[Tensor, Tensor]:
    """Per network: RMSE and mean log-likelihood in original units on its split's test part."""
    rmse, ll = [], []
    for j, sp in enumerate(splits):
        m = mean[:, j] * sp.y_std + sp.y_mean
        v = var[:, j] * sp.y_std**2
        y = sp.y_test_raw
        rmse.append(float(((m - y) ** 2).mean().sqrt()))
        ll.append(float((-0.5 * (torch.log(2 * math.pi * v) + (y - m) ** 2 / v)).mean()))
    return torch.tensor(rmse), torch.tensor(ll)


def _ensemble_pool(mean: Tensor, var: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Members j·size … (j+1)·size − 1 pooled: the mixture's mean and variance."""
    n, k = mean.shape
    m = mean.reshape(n, k // size, size)
    v = var.reshape(n, k // size, size)
    pooled = m.mean(-1)
    return pooled, (v + m**2).mean(-1) - pooled**2


def _epoch_budget(n_train: int, data: UCIDataset, config: ProtocolConfig) -> int:
    if config.epochs is not None:
        return int(config.epochs)
    per_epoch = math.ceil(n_train / config.batch_size)
    return max(data.n_epochs, math.ceil(config.step_budget / per_epoch))


def _checkpoints(budget: int) -> list[int]:
    return sorted({max(1, round(budget * f)) for f in (0.125, 0.25, 0.5, 1.0)})


def run_protocol(
    method: str,
    data: UCIDataset,
    splits: Sequence[int],
    config: ProtocolConfig | None = None,
    *,
    progress: Any = None,
) -> dict[str, Any]:
    """The protocol (module docstring) for one method on the given splits.

    Args:
        method: one of :data:`METHODS`.
        data: the data set.
        splits: the split indices.
        config: the :class:`ProtocolConfig`.
        progress: a text stream for one line per run (None: silent).

    Returns:
        ``{"method", "splits": [per split: {"split", "choice": {"prior_prec",
        "likelihood_weight", "lr", "dropout", "epochs", "val_loglik"}, "rmse", "loglik",
        "diverged_candidates", "retrain_diverged": [the choices that diverged on all the
        training rows, in order]}], "epochs_budget", "time_s", "cpu_s"}`` (``choice``,
        ``rmse`` and ``loglik`` None when every candidate of a split diverged, on the hold-out
        or in the retrains).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    config = config or ProtocolConfig(n_hidden=data.n_hidden)
    t0, c0 = time.perf_counter(), time.process_time()
    splits = list(splits)
    members = ENSEMBLE if method == "ensemble" else 1
    val = [data.validation_split(k, fraction=config.holdout, seed=k) for k in splits]
    full = [data.split(k) for k in splits]
    budget = _epoch_budget(val[0].n_train, data, config)
    points = _checkpoints(budget)
    run_opts = config.dropout_rates if method == "mcdropout" else config.lr_scales
    c_grid = config.likelihood_weights if method in TEMPERED else (1.0,)
    # candidates: (run option, δ, c) per split; each run holds every split × δ × c (× member)
    ranked: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(splits))}
    diverged: dict[int, int] = {i: 0 for i in range(len(splits))}
    for opt_value in run_opts:
        lr = BASE_LR[method] * (1.0 if method == "mcdropout" else opt_value)
        layout = [(i, d, c, j) for i in range(len(splits)) for d in config.prior_precs
                  for c in c_grid for j in range(members)]  # fmt: skip
        batch = _Batch(
            splits=val,
            members=[i for i, _, _, _ in layout],
            priors=[d for _, d, _, _ in layout],
            weights=[c for _, _, c, _ in layout],
            rates=[opt_value] * len(layout) if method == "mcdropout" else None,
            seeds=[config.seed + 1000 * splits[i] + 100 * j for i, _, _, j in layout],
        )
        holder: dict[int, Tensor] = {}
        cands = [val[i] for i, _, _, _ in layout[::members]]

        def score(epoch, net, predictive, noise_var, alive, batch=batch, holder=holder,
                  cands=cands):  # fmt: skip
            x = batch.x("x_test")
            mean, var = _predict(method, net, predictive, x, config.val_samples, noise_var)
            if members > 1:
                mean, var = _ensemble_pool(mean, var, members)
            _, ll = _scores(mean, var, cands)
            holder[epoch] = ll

        dead = _train_and_score(method, batch, lr, points, config, score)
        dead_cand = [any(dead[c * members : (c + 1) * members])
                     for c in range(len(layout) // members)]  # fmt: skip
        for a, (i, d, c, _) in enumerate(layout[::members]):
            if dead_cand[a]:
                diverged[i] += 1
                continue
            for epoch in points:
                ll = float(holder[epoch][a])
                if math.isfinite(ll):
                    rate = opt_value if method == "mcdropout" else None
                    choice = {"prior_prec": d, "likelihood_weight": c, "lr": lr,
                              "epochs": epoch, "val_loglik": ll, "dropout": rate}  # fmt: skip
                    ranked[i].append(choice)
        if progress is not None:
            print(f"{method} {data.name}: candidates with option {opt_value} done "
                  f"({time.perf_counter() - t0:.0f} s)", file=progress, flush=True)  # fmt: skip
    for i in ranked:  # best first; a stable sort keeps the grid's order among ties
        ranked[i].sort(key=lambda ch: -ch["val_loglik"])
    # final runs: one per chosen run option, its splits with their (δ, c), each scored at its
    # epochs; a choice that diverges on all the training rows gives way to the split's next
    # best candidate on the hold-out (at most RETRAINS times), and is reported
    best: dict[int, dict[str, Any]] = {}
    results: dict[int, tuple[float, float]] = {}
    failed: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(splits))}
    todo = {i: r[0] for i, r in ranked.items() if r}
    for _ in range(RETRAINS + 1):
        groups: dict[tuple, list[int]] = {}
        for i, choice in todo.items():
            groups.setdefault((choice["lr"], choice["dropout"]), []).append(i)
        for (lr, rate), idx in groups.items():
            layout = [(i, j) for i in idx for j in range(members)]
            batch = _Batch(
                splits=full,
                members=[i for i, _ in layout],
                priors=[todo[i]["prior_prec"] for i, _ in layout],
                weights=[todo[i]["likelihood_weight"] for i, _ in layout],
                rates=[rate] * len(layout) if method == "mcdropout" else None,
                seeds=[config.seed + 1000 * splits[i] + 100 * j for i, j in layout],
            )
            wanted = {todo[i]["epochs"] for i in idx}

            def final_score(epoch, net, predictive, noise_var, alive, batch=batch, idx=idx,
                            wanted=wanted, todo=todo):  # fmt: skip
                if epoch not in wanted:
                    return
                x = batch.x("x_test")
                mean, var = _predict(method, net, predictive, x, config.test_samples, noise_var)
                if members > 1:
                    mean, var = _ensemble_pool(mean, var, members)
                rmse, ll = _scores(mean, var, [full[i] for i in idx])
                for c, i in enumerate(idx):
                    ok = bool(alive[c * members : (c + 1) * members].all())
                    ok = ok and math.isfinite(float(rmse[c])) and math.isfinite(float(ll[c]))
                    if todo[i]["epochs"] == epoch and ok:  # the split's chosen epochs only
                        results[i] = (float(rmse[c]), float(ll[c]))

            _train_and_score(method, batch, lr, sorted(wanted), config, final_score)
        retry = {}
        for i, choice in todo.items():
            if i in results:
                best[i] = choice
                continue
            failed[i].append(choice)
            rest = ranked[i][ranked[i].index(choice) + 1 :]
            if rest:
                retry[i] = rest[0]
        todo = retry
        if not todo:
            break
    out = []
    for i, k in enumerate(splits):
        r = results.get(i)
        out.append({
            "split": k,
            "choice": best.get(i),
            "rmse": None if r is None else r[0],
            "loglik": None if r is None else r[1],
            "diverged_candidates": diverged[i],
            "retrain_diverged": failed[i],
        })  # fmt: skip
    return {
        "method": method,
        "splits": out,
        "epochs_budget": budget,
        "time_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
    }


BASELINES = ("mcdropout", "ensemble")


def run_benchmark(
    data: UCIDataset,
    methods: Sequence[str] = METHODS,
    *,
    splits: int | None = None,
    config: ProtocolConfig | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """The protocol for every method on the first ``splits`` splits, with the paired
    differences of each method's test log-likelihood and RMSE against the best baseline (MC
    dropout or the ensemble, whichever has the higher mean log-likelihood, when run).

    Returns:
        ``{"dataset", "protocol": "select", "config", "splits", "epochs_budget", "results",
        "best_baseline"}``; ``results`` one dict per method: ``method``, ``rmse`` and
        ``loglik`` as [mean, s.e.] over the splits that did not diverge, ``published_rmse``,
        ``time_s`` and ``cpu_s``, ``diverged_splits`` (every candidate diverged),
        ``diverged_candidates`` (per split), ``choices`` (per split: δ, lr, dropout, epochs,
        validation log-likelihood), ``rmse_splits``, ``loglik_splits`` and, against the best
        baseline, ``loglik_diff``/``rmse_diff`` [mean, s.e.] of the paired per-split
        differences (method − baseline).
    """
    from blr.apps.uci import PUBLISHED_RMSE, _check_methods

    methods = _check_methods(methods, METHODS)
    n = data.n_splits if splits is None else int(splits)
    if not 1 <= n <= data.n_splits:
        raise ValueError(f"splits must be an integer in [1, {data.n_splits}], got {splits}")
    config = config or ProtocolConfig()
    from dataclasses import asdict, replace

    config = replace(config, n_hidden=data.n_hidden)
    results = []
    budget = None
    for method in methods:
        r = run_protocol(method, data, range(n), config, progress=progress)
        budget = r["epochs_budget"]
        per = r["splits"]
        rm = [p["rmse"] for p in per]
        ll = [p["loglik"] for p in per]
        pub = PUBLISHED_RMSE.get(data.name, {}).get(method)
        results.append({
            "method": method,
            "rmse": _summary(_present(rm)),
            "loglik": _summary(_present(ll)),
            "published_rmse": list(pub) if pub else None,
            "time_s": r["time_s"],
            "cpu_s": r["cpu_s"],
            "diverged_splits": [p["split"] for p in per if p["rmse"] is None],
            "diverged_candidates": [p["diverged_candidates"] for p in per],
            "retrain_diverged": [{"split": p["split"], **ch} for p in per
                                 for ch in p["retrain_diverged"]],
            "choices": [p["choice"] for p in per],
            "rmse_splits": rm,
            "loglik_splits": ll,
        })  # fmt: skip
    base = [r for r in results if r["method"] in BASELINES and r["loglik"] is not None]
    best = max(base, key=lambda r: r["loglik"][0]) if base else None
    for r in results:
        for key in ("loglik", "rmse"):
            diff = None
            if best is not None:
                pairs = [a - b for a, b in zip(r[f"{key}_splits"], best[f"{key}_splits"])
                         if a is not None and b is not None]  # fmt: skip
                diff = _summary(pairs) if r is not best else None
            r[f"{key}_diff"] = diff
    return {
        "dataset": data.name,
        "path": str(data.path),
        "protocol": "select",
        "splits": n,
        "epochs_budget": budget,
        "config": asdict(config),
        "best_baseline": None if best is None else best["method"],
        "results": results,
    }


_ORDER = ("vogn", "vadam", "ivon", "bbb", "mcdropout", "ensemble")
_NAMES = {"vogn": "VOGN", "vadam": "Vadam", "ivon": "IVON", "bbb": "BBB",
          "mcdropout": "MC dropout", "ensemble": "Ensemble (5)"}  # fmt: skip


def plot(reports: Sequence[dict[str, Any]], path: Any) -> Any:
    """Test RMSE (top, relative to the data set's best method) and log-likelihood (bottom) of
    every method on every data set, mean ± s.e. over the splits, from :func:`run_benchmark`'s
    reports (one per data set).

    Example:
        >>> import tempfile, pathlib
        >>> r = {"dataset": "toy", "results": [{"method": "ivon", "rmse": [1.0, 0.1],
        ...      "loglik": [-1.0, 0.1]}]}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     out = plot([r], pathlib.Path(d) / "uci.png")
        ...     out.stat().st_size > 1000
        True
    """
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(reports)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n + 1, 5.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, rep in enumerate(reports):
        res = {r["method"]: r for r in rep["results"]}
        methods = [m for m in _ORDER if m in res]
        ok = [res[m]["rmse"][0] for m in methods if res[m]["rmse"] is not None]
        best = min(ok) if ok else 1.0
        for row, key in enumerate(("rmse", "loglik")):
            ax = axes[row][col]
            for j, m in enumerate(methods):
                v = res[m][key]
                if v is None:
                    continue
                mean, se = v[0], v[1] or 0.0
                scale = best if key == "rmse" else 1.0
                ax.errorbar(j, mean / scale, yerr=se / scale, fmt="o", color=colors[j % 10],
                            capsize=3, label=_NAMES[m])  # fmt: skip
            ax.set_xticks([])
            if row == 0:
                ax.set_title(rep["dataset"].replace("-", "-\n", 1), fontsize=9)
        axes[0][0].set_ylabel("test RMSE / best RMSE")
        axes[1][0].set_ylabel("test log-likelihood")
    handles, labels = axes[1][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summary_table(reports: Sequence[dict[str, Any]]) -> str:
    """One Markdown table of :func:`run_benchmark`'s reports: data set, method, test RMSE and
    log-likelihood (mean ± s.e.), the published RMSE, the paired log-likelihood difference to
    the best baseline, the diverged splits and the time.

    Example:
        >>> r = {"dataset": "toy", "best_baseline": "ensemble", "results": [{"method": "ivon",
        ...      "rmse": [1.0, 0.1], "loglik": [-1.0, 0.1], "published_rmse": None,
        ...      "loglik_diff": [-0.5, 0.1], "diverged_splits": [], "time_s": 2.0,
        ...      "cpu_s": 1.5}]}
        >>> summary_table([r]).splitlines()[2].split(" | ")[1:6]
        ['IVON', '1.000 ± 0.100', '-1.000 ± 0.100', '—', '-0.500 ± 0.100 (Ensemble (5))']
    """
    from blr.apps.report import format_mean_se

    def pm(v, digits=3):
        return "—" if v is None else format_mean_se(v[0], v[1], digits, missing="—")

    lines = [
        "| data set | method | test RMSE | test log-lik | published RMSE | Δ log-lik vs best "
        "baseline | diverged splits | time (s): wall / CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rep in reports:
        base = _NAMES.get(rep.get("best_baseline") or "", "—")
        for r in rep["results"]:
            diff = r.get("loglik_diff")
            diff_s = "—" if diff is None else f"{pm(diff)} ({base})"
            lines.append(
                f"| {rep['dataset']} | {_NAMES[r['method']]} | {pm(r['rmse'])} | "
                f"{pm(r['loglik'])} | {pm(r.get('published_rmse'), 2)} | {diff_s} | "
                f"{_diverged(r)} | {r['time_s']:.0f} / {r['cpu_s']:.0f} |"
            )
    return "\n".join(lines)


def _diverged(r: dict[str, Any]) -> str:
    """Splits without a result, and how many chosen candidates were replaced after diverging
    on all the training rows."""
    k = len(r.get("retrain_diverged") or [])
    return f"{len(r['diverged_splits'])}" + (f" ({k} retrained)" if k else "")


def _present(values: Sequence[float | None]) -> list[float]:
    """The values of the splits that did not diverge."""
    return [v for v in values if v is not None]
