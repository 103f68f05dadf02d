r"""Laplace approximations for neural networks: a Gaussian posterior at a trained MAP θ* whose
precision is the generalized Gauss–Newton (GGN) matrix of the negative log-likelihood plus the prior
precision (Khan & Rue 2023, Table 1 row 12, with the GGN in place of the Hessian), the linearized
("GLM") predictive and the Laplace log marginal likelihood for tuning the prior precision δ.

For data D = {(x_i, y_i)}, a network f(x; θ) with K outputs per example, a per-example negative
log-likelihood ℓ_i(f) = −log p(y_i | f) and the prior p(θ | δ) = N(0, δ⁻¹I):

.. math::
    P = \sum_i J_i^\top \Lambda_i J_i + \delta I,\qquad
    J_i = \frac{\partial f(x_i;\theta)}{\partial\theta}\Big|_{\theta_*}\ (K\times P),\qquad
    \Lambda_i = \frac{\partial^2\ell_i}{\partial f^2}\Big|_{f(x_i;\theta_*)}\ (K\times K),

    q(\theta) = \mathcal N(\theta_*, P^{-1}).

Likelihoods (the :class:`~blr.curvature.Categorical`, :class:`~blr.curvature.Bernoulli` and
:class:`~blr.curvature.Gaussian` of :mod:`blr.curvature`, under these names or any other of
:data:`blr.curvature.NAMES` for them; Λ_i does not depend on y_i):

- ``"classification"``: K logits, y_i ∈ {0, …, K−1}, ℓ_i = −log softmax(f)_{y_i},
  Λ_i = diag(p) − ppᵀ with p = softmax(f);
- ``"binary"``: one logit, y_i ∈ {0, 1}, ℓ_i = softplus(f) − y_i f, Λ_i = σ(f)(1 − σ(f));
- ``"regression"``: K real outputs, y_i ∈ ℝᴷ, ℓ_i = ‖y_i − f‖²/(2σ²) + (K/2) log(2πσ²),
  Λ_i = I/σ² (σ² = ``sigma2``, the noise variance).

Structures (:class:`NNLaplace` ``structure=``): ``"full"`` (the P×P matrix, for small P only:
``max_params``), ``"diag"`` (its diagonal, never forming the matrix: Σ_i diag(J_iᵀΛ_iJ_i)
chunk by chunk), ``"last_layer"`` (the full matrix over the parameters of the final
``nn.Linear`` layer only, the rest fixed at θ*; in closed form from the penultimate features
φ_i: with φ̃_i = (φ_i, 1) for a layer with bias, J_i = I_K ⊗ φ̃_iᵀ and
Σ_i J_iᵀΛ_iJ_i = Σ_i Λ_i ⊗ φ̃_iφ̃_iᵀ, reordered to the (weight, bias) parameter order).

Per-example Jacobians come from ``torch.func`` (:func:`blr.curvature.jacobians`: ``vmap`` over the
examples of ``jacrev`` of the model called through ``functional_call`` on one example): K
reverse-mode passes per example, vectorized, in chunks of at most ``chunk_elements`` Jacobian
entries. The predictive approximations (``link=`` of :meth:`NNLaplace.predictive`) are the tuple
``PREDICTIVES``; the structures, ``STRUCTURES``.

>>> from blr.nn_laplace import PREDICTIVES, STRUCTURES
>>> PREDICTIVES, STRUCTURES
(('probit', 'bridge', 'mc'), ('full', 'diag', 'last_layer'))
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Literal

import numpy as np
import scipy.optimize
import torch
from torch import Tensor, nn
from torch.func import functional_call

from blr.curvature import Gaussian, Likelihood, ggn, jacobians, resolve

__all__ = ["PREDICTIVES", "STRUCTURES", "NNLaplace"]

Structure = Literal["full", "diag", "last_layer"]
Predictive = Literal["probit", "bridge", "mc"]
STRUCTURES = ("full", "diag", "last_layer")
PREDICTIVES = ("probit", "bridge", "mc")
_SUPPORTED = ("categorical", "bernoulli", "gaussian")


# ---------------------------------------------------------------------------- helpers
def _positive(value, name: str) -> float:
    try:
        v = float(value.detach()) if isinstance(value, Tensor) else float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {v}")
    return v


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluation mode inside, every submodule's own training flag restored on exit."""
    modes = [(mod, mod.training) for mod in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for mod, mode in modes:
            mod.training = mode


# ---------------------------------------------------------------------------- the posterior
class NNLaplace:
    r"""Laplace approximation q(θ) = N(θ*, P⁻¹) of a neural network at a trained MAP θ*, with
    the GGN posterior precision (module docstring)

    .. math::
        P = \sum_i J_i^\top\Lambda_i J_i + \delta I
        \quad(\mathtt{"diag"}: \operatorname{diag}(P);\ \mathtt{"last\_layer"}: J_i\ \text{w.r.t.
        the final linear layer only}).

    **Predictive.** The linearized network f(x; θ) ≈ f(x; θ*) + J(x)(θ − θ*) maps q to a
    Gaussian over the outputs, f(x) ~ N(f*, V) with f* = f(x; θ*) and V = J(x) P⁻¹ J(x)ᵀ
    (:meth:`glm_predictive_distribution`). :meth:`predictive` then returns

    - ``"regression"``: the mean f* and the covariance V + σ²I (epistemic + aleatoric);
    - ``"binary"``: p(y = 1 | x) ≈ σ(f*/√(1 + πV/8)) (probit approximation, ``link="probit"``);
    - ``"classification"``, ``link="probit"`` (default): the multiclass probit approximation
      softmax_k(f*_k/√(1 + πV_kk/8)) (each logit scaled by its own variance, Lu et al. 2020);
      ``link="bridge"``: the Laplace bridge (Hobbhahn et al. 2022) after conditioning N(f*, V)
      on 1ᵀf = 0 (softmax is shift invariant; as laplace-torch's ``"bridge"``):
      f̄ = f* − V1·(1ᵀf*)/(1ᵀV1), V̄ = V − V11ᵀV/(1ᵀV1), α_k = (1 − 2/K + e^{f̄_k}Σ_l e^{−f̄_l}/K²)
      / V̄_kk, and the Dirichlet mean α/Σα;
    - either classification likelihood with ``link="mc"``: the average of softmax (σ) over
      ``n_samples`` draws f_s = f* + J(x)(θ_s − θ*), θ_s ~ q (exact draws from N(f*, V)).

    **Marginal likelihood.** With P_q the number of parameters in the posterior (all trainable
    parameters, or those of the last layer), ``‖θ*‖²`` over those parameters and
    log p(D | θ*) the full log-likelihood (constants included),

    .. math::
        \log p(D\mid\delta) \approx \log p(D\mid\theta_*) + \log\mathcal N(\theta_*; 0,
        \delta^{-1}I) + \tfrac{P_q}{2}\log 2\pi - \tfrac12\log\det P
        = \log p(D\mid\theta_*) + \tfrac{P_q}{2}\log\delta - \tfrac{\delta}{2}\|\theta_*\|^2
        - \tfrac12\sum_{k}\log(h_k + \delta),

    h_k the eigenvalues (``"diag"``: the diagonal entries) of the GGN Σ_i J_iᵀΛ_iJ_i, computed
    once, so that :meth:`log_marginal_likelihood` is cheap and differentiable in δ (and σ²) for
    any number of evaluations; :meth:`optimize_prior_precision` maximizes it over log δ (and
    log σ²) with L-BFGS-B. The formula holds at θ*, the minimizer of Σ_i ℓ_i + δ‖θ‖²/2: train
    with the summed NLL and weight decay δ (or re-fit after tuning).

    The model is never modified: every computation calls it through
    ``torch.func.functional_call`` with a snapshot of θ* (and of its buffers) taken by
    :meth:`fit`, in evaluation mode (each submodule's training flag is restored afterwards);
    only :meth:`sampled_params` writes a posterior draw into the parameters, and restores them
    exactly on exit. Parameters with ``requires_grad=False`` stay fixed and are not in the
    posterior. The model must map a batch ``(m, ...)`` to outputs ``(m, K)`` (``(m,)`` for
    ``"binary"``/``"regression"`` with K = 1), treat examples independently, and support
    ``torch.func`` transforms (for ``"full"``/``"diag"``).

    Args:
        model: the trained network (its current parameters are θ*).
        likelihood: ``"classification"`` (cross-entropy on K logits), ``"binary"`` (sigmoid,
            one logit) or ``"regression"`` (Gaussian with noise variance ``sigma2``), or another
            name of :data:`blr.curvature.NAMES` for one of them (``"categorical"``,
            ``"cross_entropy"``, ``"bernoulli"``, ``"gaussian"``, ...).
        structure: ``"full"``, ``"diag"`` or ``"last_layer"``.
        prior_prec: δ > 0 (prior N(0, δ⁻¹I)).
        sigma2: σ² > 0, the noise variance of ``"regression"`` (default 1; not for the
            classification likelihoods).
        max_params: the largest P_q for which ``"full"``/``"last_layer"`` form a P_q × P_q
            matrix (ValueError naming the parameter count above it).
        last_layer: name (as in ``model.named_modules()``) of the final ``nn.Linear`` layer for
            ``"last_layer"``; None takes the last ``nn.Linear`` registered. Its output must be
            the model's output (checked in :meth:`fit`).
        chunk_elements: at most this many Jacobian entries (examples × K × P_q) at once.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from blr.nn_laplace import NNLaplace
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(60, 2, generator=g, dtype=torch.float64)
        >>> y = (X[:, 0] + X[:, 1] > 0).long()
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).double()
        >>> opt = torch.optim.LBFGS(model.parameters(), max_iter=50)
        >>> def closure():   # MAP: summed NLL + δ‖θ‖²/2 with δ = 1
        ...     opt.zero_grad()
        ...     loss = nn.functional.cross_entropy(model(X), y, reduction="sum")
        ...     loss = loss + 0.5 * sum(p.square().sum() for p in model.parameters())
        ...     loss.backward()
        ...     return loss
        >>> _ = opt.step(closure)
        >>> la = NNLaplace(model, "classification", "full", prior_prec=1.0).fit(X, y)
        >>> la.posterior_precision.shape        # P = 2·8 + 8 + 8·2 + 2 = 42
        torch.Size([42, 42])
        >>> probs = la.predictive(torch.tensor([[3.0, 3.0], [0.0, 0.0]], dtype=torch.float64))
        >>> bool(probs[0, 1] > 0.9), bool(abs(probs[1, 1] - 0.5) < 0.2)
        (True, True)
        >>> before = float(la.log_marginal_likelihood())
        >>> delta = la.optimize_prior_precision()
        >>> bool(float(la.log_marginal_likelihood()) >= before)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str | Likelihood,
        structure: Structure = "full",
        *,
        prior_prec: float = 1.0,
        sigma2: float | None = None,
        max_params: int = 5000,
        last_layer: str | None = None,
        chunk_elements: int = 2**22,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        kind = resolve(likelihood, supported=_SUPPORTED, arg="likelihood").name
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        if sigma2 is None and isinstance(likelihood, Gaussian):
            sigma2 = likelihood.sigma2
        if sigma2 is not None and kind != "gaussian":
            raise ValueError(
                f"sigma2 is the noise variance of likelihood='regression'; it does not apply to "
                f"likelihood={likelihood!r}"
            )
        if int(max_params) < 1:
            raise ValueError(f"max_params must be ≥ 1, got {max_params}")
        if int(chunk_elements) < 1:
            raise ValueError(f"chunk_elements must be ≥ 1, got {chunk_elements}")
        if last_layer is not None and structure != "last_layer":
            raise ValueError("last_layer names the layer of structure='last_layer' only")
        self.model = model
        self.likelihood = likelihood
        self._kind = kind  # the canonical name
        self._lik = resolve(kind)  # σ² = 1: the GGN is accumulated for unit noise
        self.structure: str = structure
        self.max_params = int(max_params)
        self.chunk_elements = int(chunk_elements)
        self._prior_prec = _positive(prior_prec, "prior_prec")
        self._sigma2 = 1.0 if sigma2 is None else _positive(sigma2, "sigma2")

        named = dict(model.named_parameters())
        if structure == "last_layer":
            self.last_layer_name = self._find_last_layer(last_layer)
            layer = dict(model.named_modules())[self.last_layer_name]
            prefix = f"{self.last_layer_name}." if self.last_layer_name else ""
            names = [prefix + n for n, p in layer.named_parameters() if p.requires_grad]
            if f"{prefix}weight" not in names:
                raise ValueError(
                    f"last_layer: the weight of layer {self.last_layer_name!r} must be trainable "
                    "(requires_grad=True)"
                )
        else:
            self.last_layer_name = None
            names = [n for n, p in named.items() if p.requires_grad]
        if not names:
            raise ValueError("model has no trainable parameters (requires_grad=True)")
        self.param_names: list[str] = names
        self._shapes = [named[n].shape for n in names]
        self.n_params: int = sum(named[n].numel() for n in names)
        if structure != "diag" and self.n_params > self.max_params:
            what = "the last layer has" if structure == "last_layer" else "the model has"
            raise ValueError(
                f"structure={structure!r} forms a P×P matrix, but {what} P = {self.n_params} "
                f"trainable parameters, more than max_params = {self.max_params}; use "
                "structure='diag' or 'last_layer', or raise max_params"
            )
        self._fitted = False
        self._chol_cache: tuple[tuple[float, float], Tensor] | None = None
        self._eig_cache: Tensor | None = None

    # ------------------------------------------------------------------ hyperparameters
    @property
    def prior_prec(self) -> float:
        """δ, the prior precision (settable; must be positive).

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
            >>> model = torch.nn.Linear(3, 2)
            >>> la = NNLaplace(model, "classification").fit(X, y)
            >>> la.prior_prec = 2.0              # P = GGN + δI follows the new δ
            >>> bool(torch.allclose(la.posterior_precision, la.ggn + 2.0 * torch.eye(8)))
            True
        """
        return self._prior_prec

    @prior_prec.setter
    def prior_prec(self, value: float) -> None:
        self._prior_prec = _positive(value, "prior_prec")

    @property
    def sigma2(self) -> float:
        """σ², the noise variance of ``"regression"`` (1 otherwise; settable for regression).

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randn(16)
            >>> la = NNLaplace(torch.nn.Linear(3, 1), "regression", sigma2=0.5).fit(X, y)
            >>> ggn = la.ggn
            >>> la.sigma2 = 0.25                  # the GGN scales as 1/σ²
            >>> la.sigma2, bool(torch.allclose(la.ggn, 2 * ggn))
            (0.25, True)
        """
        return self._sigma2

    @sigma2.setter
    def sigma2(self, value: float) -> None:
        if self._kind != "gaussian":
            raise ValueError(
                f"sigma2 applies to likelihood='regression' only, not {self.likelihood!r}"
            )
        self._sigma2 = _positive(value, "sigma2")

    def __repr__(self) -> str:
        state = f"n_data={self.n_data}" if self._fitted else "not fitted"
        s2 = f", sigma2={self.sigma2:g}" if self._kind == "gaussian" else ""
        return (
            f"NNLaplace(likelihood={self.likelihood!r}, structure={self.structure!r}, "
            f"n_params={self.n_params}, prior_prec={self.prior_prec:g}{s2}, {state})"
        )

    # ------------------------------------------------------------------ model plumbing
    def _find_last_layer(self, name: str | None) -> str:
        modules = dict(self.model.named_modules())
        if name is None:
            linear = [n for n, mod in modules.items() if isinstance(mod, nn.Linear)]
            if not linear:
                raise ValueError(
                    "structure='last_layer' needs an nn.Linear output layer; the model has none"
                )
            return linear[-1]
        if name not in modules:
            raise ValueError(f"last_layer: the model has no submodule named {name!r}")
        if not isinstance(modules[name], nn.Linear):
            raise ValueError(
                f"last_layer: {name!r} must be an nn.Linear layer, got "
                f"{type(modules[name]).__name__}"
            )
        return name

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError("call fit(X, y) first")

    def _as_input(self, x) -> Tensor:
        x = torch.as_tensor(x, device=self._device)
        if x.is_floating_point():
            x = x.to(self._dtype)
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"X must be a batch (m, ...) with m ≥ 1, got shape {tuple(x.shape)}")
        return x

    def _forward(self, x: Tensor, features: bool = False) -> tuple[Tensor, Tensor | None]:
        """f(x; θ*) as ``(m, K)`` and (``features=True``) the last layer's inputs ``(m, H)``."""
        params = {**self._fixed, **self._theta}
        if not features:
            out = functional_call(self.model, params, (x,))
            return self._as_output(out, x.shape[0]), None
        layer = dict(self.model.named_modules())[self.last_layer_name]
        seen: list[tuple[Tensor, Tensor]] = []
        handle = layer.register_forward_hook(lambda mod, inp, out: seen.append((inp[0], out)))
        try:
            out = functional_call(self.model, params, (x,))
        finally:
            handle.remove()
        f = self._as_output(out, x.shape[0])
        if len(seen) != 1:
            raise ValueError(
                f"last_layer: layer {self.last_layer_name!r} must run exactly once per forward, "
                f"ran {len(seen)} times"
            )
        phi, layer_out = seen[0]
        if phi.ndim != 2 or layer_out.shape[0] != x.shape[0]:
            raise ValueError(
                f"last_layer: layer {self.last_layer_name!r} must see inputs (m, H) for a batch of "
                f"m examples, got {tuple(phi.shape)}"
            )
        if layer_out.reshape(f.shape).data_ptr() != f.data_ptr() and not torch.equal(
            layer_out.reshape(f.shape), f
        ):
            raise ValueError(
                f"last_layer: the output of layer {self.last_layer_name!r} is not the model's "
                "output; structure='last_layer' needs the final operation to be that nn.Linear"
            )
        return f, phi

    def _as_output(self, out, m: int) -> Tensor:
        if not isinstance(out, Tensor) or out.ndim == 0 or out.shape[0] != m:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"model must return a tensor (m, K) for m = {m} inputs, got {got}")
        if self._kind == "categorical" and out.ndim != 2:
            raise ValueError(
                f"likelihood={self.likelihood!r} needs logits of shape (m, K), got "
                f"{tuple(out.shape)}"
            )
        if out.ndim > 2:
            raise ValueError(f"model outputs must be (m,) or (m, K), got {tuple(out.shape)}")
        f = out.reshape(m, -1)
        if self._kind == "bernoulli" and f.shape[1] != 1:
            raise ValueError(
                f"likelihood={self.likelihood!r} needs one logit per example, (m,) or (m, 1), got "
                f"{tuple(out.shape)}"
            )
        return f

    def jacobians(self, X) -> tuple[Tensor, Tensor]:
        r"""f(x; θ*) and J(x) = ∂f/∂θ at θ* for a batch, shapes ``(m, K)`` and ``(m, K, P_q)``
        (columns in the order of :attr:`param_names`, each parameter flattened row-major).
        ``"last_layer"``: in closed form, J = [I_K ⊗ φ(x)ᵀ, I_K] (weight, bias).

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
            >>> model = torch.nn.Linear(3, 2)
            >>> la = NNLaplace(model, "classification").fit(X, y)
            >>> f, J = la.jacobians(X[:4])        # P_q = 3·2 + 2 = 8
            >>> f.shape, J.shape, bool(torch.allclose(f, model(X[:4])))
            (torch.Size([4, 2]), torch.Size([4, 2, 8]), True)
        """
        self._check_fitted()
        x = self._as_input(X)
        with _eval_mode(self.model):
            if self.structure == "last_layer":
                f, phi = self._forward(x, features=True)
                return f.detach(), self._ll_jacobian(phi.detach())
            out, J = jacobians(self.model, self._theta, x, fixed=self._fixed)
        return self._as_output(out.detach(), x.shape[0]), J.detach()

    def _ll_jacobian(self, phi: Tensor) -> Tensor:
        m, H = phi.shape
        K = self._K
        eye = torch.eye(K, dtype=phi.dtype, device=phi.device)
        JW = (eye[None, :, :, None] * phi[:, None, None, :]).reshape(m, K, K * H)
        if not self._ll_bias:
            return JW
        return torch.cat([JW, eye.expand(m, K, K)], dim=-1)

    def _chunks(self, x: Tensor, y: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor | None]]:
        size = max(1, self.chunk_elements // max(1, self._K * self.n_params))
        for start in range(0, x.shape[0], size):
            yield x[start : start + size], None if y is None else y[start : start + size]

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None) -> NNLaplace:
        r"""Accumulate the GGN Σ_i J_iᵀΛ_iJ_i (σ² = 1) and the log-likelihood at θ* (the
        model's current parameters, snapshotted here) over the data.

        Args:
            X: inputs ``(n, ...)``, or an iterable of ``(x, y)`` minibatches (a DataLoader)
                when ``y`` is None.
            y: targets ``(n,)``: class labels (integers in [0, K)) for ``"classification"``,
                0/1 labels for ``"binary"``, real values ``(n,)`` or ``(n, K)`` for
                ``"regression"``.

        Returns:
            self.

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
            >>> model = torch.nn.Linear(3, 2)
            >>> la = NNLaplace(model, "classification").fit(X, y)
            >>> batches = zip(X.split(8), y.split(8))   # or a DataLoader of (x, y)
            >>> la2 = NNLaplace(model, "classification").fit(batches)
            >>> la2.n_data, bool(torch.allclose(la2.ggn, la.ggn))
            (16, True)
        """
        named = dict(self.model.named_parameters())
        if not named:
            raise ValueError("model has no parameters")
        first = named[self.param_names[0]]
        self._dtype, self._device = first.dtype, first.device
        self._theta = {n: named[n].detach().clone() for n in self.param_names}
        self._fixed = {n: p.detach().clone() for n, p in named.items() if n not in self._theta}
        self._fixed.update({n: b.detach().clone() for n, b in self.model.named_buffers()})
        if y is None:
            if isinstance(X, Tensor):
                raise ValueError("y is required when X is a tensor (or pass an iterable of (x, y))")
            batches: Iterable = X
        else:
            x_all, y_all = self._as_input(X), torch.as_tensor(y)
            if y_all.ndim == 0 or y_all.shape[0] != x_all.shape[0]:
                raise ValueError(
                    f"y must have {x_all.shape[0]} rows to match X, got shape {tuple(y_all.shape)}"
                )
            batches = [(x_all, y_all)]

        P = self.n_params
        ggn = None
        n, nll, sse, n_out = 0, 0.0, 0.0, 0
        self._K = None
        self._ll_bias = False
        with _eval_mode(self.model), torch.no_grad():
            for batch in batches:
                try:
                    xb, yb = batch
                except (TypeError, ValueError):
                    raise ValueError("X must be a tensor or an iterable of (x, y) pairs") from None
                xb, yb = self._as_input(xb), torch.as_tensor(yb)
                if self._K is None:
                    self._K = self._forward(xb[:1])[0].shape[1]
                    if self.structure == "last_layer":
                        self._ll_bias = f"{self.param_names[-1]}".endswith("bias")
                    size = P if self.structure == "diag" else (P, P)
                    ggn = torch.zeros(size, dtype=self._dtype, device=self._device)
                if self.structure == "last_layer":
                    pieces = [(xb, yb)]
                else:
                    pieces = list(self._chunks(xb, yb))
                for xc, yc in pieces:
                    f, ggn_part = self._curvature(xc)
                    ggn += ggn_part
                    yc = self._check_targets(yc, f)
                    nll_c, sse_c = self._nll(f, yc)
                    nll, sse = nll + nll_c, sse + sse_c
                    n, n_out = n + f.shape[0], n_out + f.numel()
        if n == 0:
            raise ValueError("X holds no data")
        if self.structure != "diag":
            ggn = 0.5 * (ggn + ggn.mT)
        self._ggn_unit = ggn
        self._nll_value, self._sse, self.n_data, self._n_out = nll, sse, n, n_out
        self._theta_flat = torch.cat([t.reshape(-1) for t in self._theta.values()])
        self._chol_cache, self._eig_cache = None, None
        self._fitted = True
        return self

    def _curvature(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """f at θ* and this chunk's Σ_i J_iᵀΛ_iJ_i (σ² = 1): matrix, or its diagonal."""
        if self.structure == "last_layer":
            f, phi = self._forward(x, features=True)
            lam = self._lik.hessian(f)
            if self._ll_bias:
                phi = torch.cat([phi, phi.new_ones(phi.shape[0], 1)], dim=-1)
            K, A = f.shape[1], phi.shape[1]
            G = torch.einsum("mkl,ma,mb->kalb", lam, phi, phi).reshape(K * A, K * A)
            idx = self._ll_order(K, A)
            return f, G[idx][:, idx]
        out, J = jacobians(self.model, self._theta, x, fixed=self._fixed)
        f = self._as_output(out, x.shape[0])
        return f, ggn(J, self._lik.hessian(f), diagonal=self.structure == "diag")

    def _ll_order(self, K: int, A: int) -> Tensor:
        """Indices into the (k, a) grid (a < H: weight W[k, a]; a = H: bias b[k]) in the
        parameter order (W row-major, then b)."""
        H = A - 1 if self._ll_bias else A
        grid = torch.arange(K * A, device=self._device).reshape(K, A)
        order = grid[:, :H].reshape(-1)
        return torch.cat([order, grid[:, H]]) if self._ll_bias else order

    def _check_targets(self, y: Tensor, f: Tensor) -> Tensor:
        m, K = f.shape
        if y.shape[0] != m:
            raise ValueError(f"y must have {m} rows to match X, got shape {tuple(y.shape)}")
        if self._kind == "categorical":
            if y.ndim != 1 or y.is_floating_point() or y.is_complex():
                raise ValueError(
                    f"y must hold integer class labels of shape (n,), got {y.dtype} "
                    f"{tuple(y.shape)}"
                )
            y = self._lik.check_targets(y, classes=K, context=f" for K = {K} logits")
            return y.to(device=f.device)
        y = y.to(device=f.device, dtype=f.dtype)
        if y.numel() != m * K or (y.ndim > 1 and y.shape[-1] != K):
            raise ValueError(
                f"y must have shape ({m},) or ({m}, {K}) to match the model outputs, got "
                f"{tuple(y.shape)}"
            )
        y = y.reshape(m, K)
        if not torch.isfinite(y).all():
            raise ValueError("y must be finite")
        if self._kind == "bernoulli" and not ((y >= 0) & (y <= 1)).all():
            raise ValueError("y must hold labels in {0, 1} for likelihood='binary'")
        return y

    def _nll(self, f: Tensor, y: Tensor) -> tuple[float, float]:
        """(Σ_i ℓ_i, 0) for classification, (0, the sum of squared errors) for regression (whose
        log-likelihood depends on σ², :meth:`log_likelihood`)."""
        if self._kind != "gaussian":
            return float(self._lik.nll(f, y).sum()), 0.0
        return 0.0, float((y - f).square().sum())

    # ------------------------------------------------------------------ posterior
    @property
    def map_params(self) -> Tensor:
        """θ*, the flattened MAP of the parameters in the posterior, ``(P_q,)``.

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
            >>> model = torch.nn.Linear(3, 2)
            >>> la = NNLaplace(model, "classification").fit(X, y)
            >>> theta = torch.cat([model.weight.flatten(), model.bias]).detach()
            >>> la.map_params.shape, torch.equal(la.map_params, theta)
            (torch.Size([8]), True)
        """
        self._check_fitted()
        return self._theta_flat

    @property
    def ggn(self) -> Tensor:
        """Σ_i J_iᵀΛ_iJ_i at the current σ²: ``(P_q, P_q)``, or its diagonal ``(P_q,)`` for
        ``"diag"``.

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
            >>> model = torch.nn.Linear(3, 2)
            >>> la = NNLaplace(model, "classification").fit(X, y)
            >>> diag = NNLaplace(model, "classification", "diag").fit(X, y)
            >>> la.ggn.shape, bool(torch.allclose(diag.ggn, la.ggn.diagonal()))
            (torch.Size([8, 8]), True)
        """
        self._check_fitted()
        return self._ggn_unit / self._lik_scale(self.sigma2)

    @property
    def posterior_precision(self) -> Tensor:
        """P = GGN + δI: ``(P_q, P_q)``, or its diagonal ``(P_q,)`` for ``"diag"``.

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
            >>> model = torch.nn.Linear(3, 2)
            >>> la = NNLaplace(model, "classification").fit(X, y)
            >>> P = la.posterior_precision
            >>> P.shape, bool(torch.allclose(P, la.ggn + la.prior_prec * torch.eye(8)))
            (torch.Size([8, 8]), True)
        """
        ggn = self.ggn
        if self.structure == "diag":
            return ggn + self.prior_prec
        return ggn + self.prior_prec * torch.eye(self.n_params, dtype=ggn.dtype, device=ggn.device)

    @property
    def posterior_covariance(self) -> Tensor:
        """P⁻¹: ``(P_q, P_q)``, or its diagonal ``(P_q,)`` for ``"diag"``.

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
            >>> model = torch.nn.Linear(3, 2)
            >>> la = NNLaplace(model, "classification").fit(X, y)
            >>> Sigma = la.posterior_covariance
            >>> bool(torch.allclose(Sigma @ la.posterior_precision, torch.eye(8), atol=1e-5))
            True
        """
        if self.structure == "diag":
            return 1.0 / self.posterior_precision
        return torch.cholesky_inverse(self._chol())

    def _lik_scale(self, sigma2) -> float | Tensor:
        return sigma2 if self._kind == "gaussian" else 1.0

    def _chol(self) -> Tensor:
        """Lower Cholesky factor of P (full and last-layer), cached per (δ, σ²)."""
        key = (self.prior_prec, self.sigma2)
        if self._chol_cache is None or self._chol_cache[0] != key:
            L, info = torch.linalg.cholesky_ex(self.posterior_precision)
            if int(info) != 0:
                raise ValueError(
                    "the posterior precision is not positive definite; is prior_prec > 0 too "
                    "small for the round-off of the GGN?"
                )
            self._chol_cache = (key, L)
        return self._chol_cache[1]

    def _unit_eigenvalues(self) -> Tensor:
        if self._eig_cache is None:
            g = self._ggn_unit
            self._eig_cache = g if self.structure == "diag" else torch.linalg.eigvalsh(g)
        return self._eig_cache

    def sample(self, n_samples: int = 1, *, generator: torch.Generator | None = None) -> Tensor:
        r"""Draws θ_s = θ* + L⁻ᵀz_s ~ N(θ*, P⁻¹) (P = LLᵀ; ``"diag"``: z_s/√P), shape
        ``(n_samples, P_q)``.

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
            >>> model = torch.nn.Linear(3, 2)
            >>> la = NNLaplace(model, "classification").fit(X, y)
            >>> thetas = la.sample(2000, generator=torch.Generator().manual_seed(0))
            >>> thetas.shape, bool(torch.allclose(thetas.mean(0), la.map_params, atol=0.2))
            (torch.Size([2000, 8]), True)
        """
        self._check_fitted()
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be ≥ 1, got {n_samples}")
        return self._theta_flat + self._sample_deviations(int(n_samples), generator)

    def _sample_deviations(self, n: int, generator: torch.Generator | None) -> Tensor:
        z = torch.randn(
            n, self.n_params, generator=generator, dtype=self._dtype, device=self._device
        )
        if self.structure == "diag":
            return z * self.posterior_precision.rsqrt()
        L = self._chol()
        return torch.linalg.solve_triangular(L.mT, z.mT, upper=True).mT

    @contextlib.contextmanager
    def sampled_params(self, *, generator: torch.Generator | None = None) -> Iterator[Tensor]:
        """Write one posterior draw θ_s into the model's parameters (those in the posterior)
        for the duration of the block; the previous values are restored exactly on exit, also
        after an exception. Yields θ_s ``(P_q,)``.

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
            >>> model = torch.nn.Linear(3, 2)
            >>> la = NNLaplace(model, "classification").fit(X, y)
            >>> with la.sampled_params(generator=torch.Generator().manual_seed(0)) as theta:
            ...     drawn = torch.equal(model.weight.flatten(), theta[:6])
            >>> drawn, torch.equal(model.weight.flatten(), la.map_params[:6])   # θ* restored
            (True, True)
        """
        theta = self.sample(1, generator=generator)[0]
        named = dict(self.model.named_parameters())
        params = [named[n] for n in self.param_names]
        saved = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                start = 0
                for p in params:
                    p.copy_(theta[start : start + p.numel()].view_as(p))
                    start += p.numel()
            yield theta
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)

    # ------------------------------------------------------------------ marginal likelihood
    def log_likelihood(self, sigma2: float | Tensor | None = None) -> Tensor:
        r"""log p(D | θ*) with all constants: −Σ_i ℓ_i; for ``"regression"``
        −SSE/(2σ²) − (nK/2) log(2πσ²), differentiable in a tensor ``sigma2``.

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
            >>> model = torch.nn.Linear(3, 2)
            >>> la = NNLaplace(model, "classification").fit(X, y)
            >>> nll = torch.nn.functional.cross_entropy(model(X), y, reduction="sum")
            >>> bool(torch.allclose(la.log_likelihood(), -nll))
            True
        """
        self._check_fitted()
        if self._kind != "gaussian":
            if sigma2 is not None:
                raise ValueError(f"sigma2 does not apply to likelihood={self.likelihood!r}")
            return torch.tensor(-self._nll_value, dtype=self._dtype, device=self._device)
        s2 = self._hyper(sigma2, self.sigma2, "sigma2")
        return -0.5 * self._sse / s2 - 0.5 * self._n_out * torch.log(2 * math.pi * s2)

    def _hyper(self, value, default: float, name: str) -> Tensor:
        if value is None:
            return torch.tensor(default, dtype=self._dtype, device=self._device)
        _positive(value, name)
        return torch.as_tensor(value, dtype=self._dtype, device=self._device)

    def log_marginal_likelihood(
        self, prior_prec: float | Tensor | None = None, sigma2: float | Tensor | None = None
    ) -> Tensor:
        r"""The Laplace approximation of log p(D | δ, σ²) (class docstring):

        .. math::
            \log p(D\mid\theta_*) + \tfrac{P_q}{2}\log\delta - \tfrac{\delta}{2}\|\theta_*\|^2
            - \tfrac12\sum_k\log(h_k/\sigma^2 + \delta)

        (σ² = 1 and log p(D | θ*) = −Σ_i ℓ_i for classification; h_k the eigenvalues of the
        unit-noise GGN, or its diagonal for ``"diag"``). Arguments default to the current
        :attr:`prior_prec` and :attr:`sigma2` and may be tensors with ``requires_grad`` (the
        result is differentiable in them, e.g. in log δ through ``delta = log_delta.exp()``).

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
            >>> model = torch.nn.Linear(3, 2)
            >>> la = NNLaplace(model, "classification").fit(X, y)
            >>> log_delta = torch.zeros((), requires_grad=True)   # δ = 1
            >>> la.log_marginal_likelihood(log_delta.exp()).backward()
            >>> log_delta.grad.shape, bool(torch.isfinite(log_delta.grad))
            (torch.Size([]), True)
        """
        self._check_fitted()
        delta = self._hyper(prior_prec, self.prior_prec, "prior_prec")
        if sigma2 is not None and self._kind != "gaussian":
            raise ValueError(f"sigma2 does not apply to likelihood={self.likelihood!r}")
        s2 = self._hyper(sigma2, self.sigma2, "sigma2")
        h = self._unit_eigenvalues() / self._lik_scale(s2)
        P = self.n_params
        log_det = torch.log(h + delta).sum()
        scatter = self._theta_flat.square().sum()
        loglik = self.log_likelihood(s2 if self._kind == "gaussian" else None)
        return loglik + 0.5 * P * torch.log(delta) - 0.5 * delta * scatter - 0.5 * log_det

    def optimize_prior_precision(
        self,
        *,
        fit_sigma2: bool = False,
        bounds: tuple[float, float] = (1e-8, 1e8),
        max_iter: int = 200,
    ) -> float:
        """Maximize :meth:`log_marginal_likelihood` over log δ (and log σ² with ``fit_sigma2``,
        regression only) by L-BFGS-B with autograd gradients, from the current values; sets
        :attr:`prior_prec` (and :attr:`sigma2`) to the optimum and returns δ.

        Args:
            fit_sigma2: also tune σ² (``"regression"`` only).
            bounds: (low, high) for δ (and σ²).
            max_iter: L-BFGS-B iterations.

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
            >>> model = torch.nn.Linear(3, 2)
            >>> la = NNLaplace(model, "classification").fit(X, y)
            >>> before = float(la.log_marginal_likelihood())
            >>> delta = la.optimize_prior_precision()
            >>> delta == la.prior_prec, float(la.log_marginal_likelihood()) >= before
            (True, True)
        """
        self._check_fitted()
        if fit_sigma2 and self._kind != "gaussian":
            raise ValueError("fit_sigma2 applies to likelihood='regression' only")
        lo, hi = (_positive(b, "bounds") for b in bounds)
        if not lo < hi:
            raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}")
        x0 = [math.log(min(max(self.prior_prec, lo), hi))]
        if fit_sigma2:
            x0.append(math.log(min(max(self.sigma2, lo), hi)))

        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            logs = torch.tensor(x, dtype=self._dtype, device=self._device, requires_grad=True)
            hyper = logs.exp()
            value = -self.log_marginal_likelihood(hyper[0], hyper[1] if fit_sigma2 else None)
            (grad,) = torch.autograd.grad(value, logs)
            return float(value.detach()), grad.detach().cpu().numpy().astype(np.float64)

        result = scipy.optimize.minimize(
            objective,
            np.array(x0, dtype=np.float64),
            jac=True,
            method="L-BFGS-B",
            bounds=[(math.log(lo), math.log(hi))] * len(x0),
            options={"maxiter": int(max_iter), "gtol": 1e-10, "ftol": 1e-15},
        )
        self.prior_prec = math.exp(float(result.x[0]))
        if fit_sigma2:
            self.sigma2 = math.exp(float(result.x[1]))
        return self.prior_prec

    # ------------------------------------------------------------------ predictive
    def glm_predictive_distribution(self, X) -> tuple[Tensor, Tensor]:
        r"""The linearized predictive over the outputs, f(x) ~ N(f*, J(x)P⁻¹J(x)ᵀ): the mean
        ``(m, K)`` and the (epistemic) covariance ``(m, K, K)``.

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
            >>> model = torch.nn.Linear(3, 2)
            >>> la = NNLaplace(model, "classification").fit(X, y)
            >>> f, V = la.glm_predictive_distribution(X[:4])
            >>> f.shape, V.shape, bool(torch.allclose(f, model(X[:4])))
            (torch.Size([4, 2]), torch.Size([4, 2, 2]), True)
        """
        self._check_fitted()
        x = self._as_input(X)
        means, covs = [], []
        with _eval_mode(self.model), torch.no_grad():
            for xc, _ in self._chunks(x):
                f, J = self.jacobians(xc)
                means.append(f)
                covs.append(self._functional_cov(J))
        return torch.cat(means), torch.cat(covs)

    def _functional_cov(self, J: Tensor) -> Tensor:
        if self.structure == "diag":
            return torch.einsum("mkp,p,mlp->mkl", J, self.posterior_covariance, J)
        m, K, P = J.shape
        B = torch.linalg.solve_triangular(self._chol(), J.reshape(m * K, P).mT, upper=False)
        B = B.mT.reshape(m, K, P)
        return B @ B.mT

    def glm_samples(
        self, X, n_samples: int = 100, *, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""Draws of the linearized outputs f_s = f* + J(x)(θ_s − θ*), θ_s ~ q (exactly
        N(f*, J P⁻¹ Jᵀ), jointly over the batch), shape ``(n_samples, m, K)``.

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
            >>> model = torch.nn.Linear(3, 2)
            >>> la = NNLaplace(model, "classification").fit(X, y)
            >>> fs = la.glm_samples(X[:4], 2000, generator=torch.Generator().manual_seed(0))
            >>> fs.shape, bool(torch.allclose(fs.mean(0), model(X[:4]), atol=0.2))
            (torch.Size([2000, 4, 2]), True)
        """
        self._check_fitted()
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be ≥ 1, got {n_samples}")
        x = self._as_input(X)
        dev = self._sample_deviations(int(n_samples), generator)  # (S, P)
        out = []
        with _eval_mode(self.model), torch.no_grad():
            for xc, _ in self._chunks(x):
                f, J = self.jacobians(xc)
                out.append(f + torch.einsum("mkp,sp->smk", J, dev))
        return torch.cat(out, dim=1)

    def predictive(
        self,
        X,
        *,
        link: Predictive = "probit",
        n_samples: int = 100,
        generator: torch.Generator | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""The GLM predictive (class docstring): class probabilities ``(m, K)``
        (``"classification"``), p(y = 1 | x) ``(m,)`` (``"binary"``), or the mean ``(m, K)`` and
        the covariance J P⁻¹ Jᵀ + σ²I ``(m, K, K)`` (``"regression"``).

        Args:
            X: inputs ``(m, ...)``.
            link: the predictive approximation, one of ``PREDICTIVES``: ``"probit"``,
                ``"bridge"`` (multiclass only) or ``"mc"`` (classification).
            n_samples: draws for ``link="mc"``.
            generator: random-number generator for ``link="mc"``.

        Example:
            >>> import torch
            >>> from blr.nn_laplace import NNLaplace
            >>> _ = torch.manual_seed(0)
            >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
            >>> model = torch.nn.Linear(3, 2)
            >>> la = NNLaplace(model, "classification").fit(X, y)
            >>> probs = la.predictive(X[:4])          # (m, K) class probabilities
            >>> probs.shape, bool(torch.allclose(probs.sum(-1), torch.ones(4)))
            (torch.Size([4, 2]), True)
        """
        if link not in PREDICTIVES:
            raise ValueError(f"link must be one of {PREDICTIVES}, got {link!r}")
        if self._kind == "gaussian":
            f, V = self.glm_predictive_distribution(X)
            eye = torch.eye(f.shape[1], dtype=f.dtype, device=f.device)
            return f, V + self.sigma2 * eye
        binary = self._kind == "bernoulli"
        if link == "mc":  # the mean response σ(f) or softmax(f), averaged over the draws
            probs = self._lik.mean(self.glm_samples(X, n_samples, generator=generator)).mean(0)
            return probs[..., 0] if binary else probs
        f, V = self.glm_predictive_distribution(X)
        var = V.diagonal(dim1=-2, dim2=-1)
        if link == "probit":
            probs = self._lik.mean(f / torch.sqrt(1 + math.pi / 8 * var))
            return probs[:, 0] if binary else probs
        if binary:
            raise ValueError("link='bridge' is for likelihood='classification' (K ≥ 2 logits)")
        return _laplace_bridge(f, V)


def _laplace_bridge(f: Tensor, V: Tensor) -> Tensor:
    """Dirichlet mean of the Laplace bridge of N(f, V) conditioned on 1ᵀf = 0 (NNLaplace docs)."""
    K = f.shape[-1]
    v1 = V.sum(-1)  # V1, (m, K)
    total = v1.sum(-1, keepdim=True)  # 1ᵀV1
    f = f - v1 * f.sum(-1, keepdim=True) / total
    V = V - v1.unsqueeze(-1) * v1.unsqueeze(-2) / total.unsqueeze(-1)
    var = V.diagonal(dim1=-2, dim2=-1)
    alpha = (1 - 2 / K + f.exp() * torch.exp(-f).sum(-1, keepdim=True) / K**2) / var
    return alpha / alpha.sum(-1, keepdim=True)
