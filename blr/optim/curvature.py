r"""Per-example curvature of a minibatch loss for Gauss–Newton-type optimizers (OGN, VOGN:
Khan & Rue 2023, Table 1 rows 8–9), from ONE forward (and the usual backward) of the minibatch.

For a minibatch B of M examples with per-example losses ℓ_i(θ) = ℓ(y_i, f_θ(x_i)), model outputs
f_i = f_θ(x_i), Jacobians J_i = ∂f_i/∂θ and output Hessians Λ_i = ∂²ℓ_i/∂f_i², :class:`PerExample`
returns, for every trainable parameter tensor θ_j (elementwise, a tensor of θ_j's shape),

==============  =================================================================================
``"ef"``         h_j = Σ_{i∈B} [∇_j ℓ_i(θ)]²  (per-example squared gradients, the "empirical
                 Fisher", called Gauss–Newton in Khan et al. 2018 and Osawa et al. 2019)
``"ggn"``        h_j = Σ_{i∈B} [J_iᵀ Λ_i J_i]_jj  (diagonal of the generalized Gauss–Newton)
``"mc_fisher"``  h_j = (1/K) Σ_{i∈B} Σ_{k=1}^K [J_iᵀ ∇_f ℓ(ŷ_ik, f_i)]_j², ŷ_ik ~ p(y | f_i): a
                 K-sample Monte Carlo estimate of ``"ggn"``, unbiased for the likelihood losses
                 below because E_ŷ[∇_f ℓ ∇_f ℓᵀ] = Λ_i (Fisher = Hessian in the natural parameter)
==============  =================================================================================

i.e. SUMS over the examples of the minibatch. An optimizer following Table 1 row 8 uses the mean
ĥ = h / M (and N·ĥ = (N/M) Σ_{i∈B} h_i is the unbiased estimate of the full-data curvature).

How it is computed (never one backward pass per example). Forward hooks save each layer's input
a_i; the gradient b_i of a seed with respect to the layer's output is then captured (a tensor hook
during the user's own ``backward()`` for ``"ef"``; a batched ``torch.autograd.grad`` with respect to
the layer outputs, right after the model's forward, for ``"ggn"``/``"mc_fisher"``) and the
per-example gradients follow in closed form:

- ``nn.Linear``: (∇W)_i = Σ_t b_it a_itᵀ (t runs over the extra "sequence" dimensions of an input
  ``(M, *S, in)``, summed INSIDE example i before squaring); without extra dimensions
  Σ_i (b_i a_iᵀ)² = (b²)ᵀ(a²), a single matrix product; (∇bias)_i = Σ_t b_it;
- ``nn.Conv1d``/``nn.Conv2d`` (any stride, padding incl. ``"same"`` and non-zero padding modes,
  dilation, groups): (∇W)_i = b_i · unfold(a_i)ᵀ summed over the output positions, then squared;
- ``nn.Embedding``: the rows b_it are scatter-added into the per-example gradient of the table (a
  token repeated inside an example adds up before squaring); ``padding_idx`` rows stay zero;
- ``nn.LayerNorm``, ``nn.GroupNorm``: (∇γ)_i = Σ b_i ⊙ x̂_i, (∇β)_i = Σ b_i over the positions;
- ``nn.BatchNorm{1,2,3}d`` in eval mode (running statistics: an elementwise affine map, exact).
  With batch statistics (training mode) the examples are coupled and no per-example gradient of
  ℓ_i exists in this form: an error, unless ``allow_batch_coupling=True``, which treats the batch
  statistics as constants — every layer then gets the per-example CONTRIBUTIONS b_i a_iᵀ to the
  minibatch gradient (what BackPACK and most VOGN code compute), not the gradients of ℓ_i;
- any other module with parameters: ``method="auto"`` (or ``"func"`` for every module) uses
  ``torch.func``: vmap over the examples of grad_θ <b_i, module(a_i)> through
  ``torch.func.functional_call``, the module run on one example at a time (it must be
  deterministic and free of batch coupling; its buffers are copied, never updated).

GGN: Λ_i is factorized as Σ_c v_ic v_icᵀ (:func:`loss_hessian_factors`), each column v_c is
back-propagated as an output gradient and the per-example squared gradients are accumulated:
D backward passes for D output entries per example (C for a C-class classifier; vectorized into
one ``is_grads_batched`` call), never one per example. The Monte Carlo variant back-propagates
K sampled output gradients (:func:`sampled_output_grads`), K = 1 by default.

Losses for ``"ggn"``/``"mc_fisher"`` (the per-example loss ℓ_i sums over all output entries of
example i; the GGN does not depend on the labels):

- ``"cross_entropy"``: logits ``(M, C)`` or ``(M, C, *S)`` (class dimension 1, as
  ``F.cross_entropy``), Λ = diag(p) − ppᵀ per position, v_c = √p_c (e_c − p);
- ``"bce_with_logits"``: Λ = diag(σ(f)(1 − σ(f)));
- ``"gaussian"``: ℓ_i = ‖f_i − y_i‖² / (2σ²), Λ = I/σ² (``sigma2`` = σ²);
- ``"mse"``: ℓ_i = ‖f_i − y_i‖² (``F.mse_loss(reduction="sum")`` per example), Λ = 2I.

Scale of the loss for ``"ef"``: the hooks see gradients of the loss that is back-propagated. With
``reduction="sum"`` it is Σ_i ℓ_i; with ``reduction="mean"`` it is (1/M) Σ_i ℓ_i, M the leading
(batch) dimension of each layer's input, and the factor 1/M is undone; a float c means c·Σ_i ℓ_i.
The result is always Σ_i [∇ℓ_i]² of the per-example losses. ``"ggn"`` and ``"mc_fisher"`` do not
depend on the scale of the back-propagated loss (they do not use it).

Conventions and limits: the batch dimension is dimension 0 of every layer input and output; the
model passed must be called (its forward marks the minibatch); ``backward()`` must run inside the
context (a backward after exit is ignored); the inputs a layer saw must not be modified in place
before its output gradient arrives (checked); activation checkpointing, which re-runs forwards
inside the backward pass, is not supported. Costs: ``"ef"`` adds one weight-sized matrix product per
Linear layer to the backward (per-example gradients materialized in chunks for sequence inputs,
convolutions and shared parameters); ``"ggn"`` adds D output-gradient backward passes (no weight
gradients) inside the model's forward call; ``"mc_fisher"`` adds K of them.

>>> import torch
>>> from blr.optim.curvature import PerExample
>>> model = torch.nn.Linear(2, 1, bias=False)
>>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
>>> with PerExample(model, mode="ggn", loss="mse") as pe:   # Λ_i = 2 for (y − f)²
...     _ = model(x)
>>> h = pe.squared_grads()[model.weight]   # Σ_i 2 x_i²
>>> torch.allclose(h, torch.tensor([[2.0, 8.0]]))
True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["PerExample", "loss_hessian_factors", "sampled_output_grads"]

Mode = Literal["ef", "ggn", "mc_fisher"]
LossName = Literal["cross_entropy", "bce_with_logits", "gaussian", "mse"]
_LOSSES = ("cross_entropy", "bce_with_logits", "gaussian", "mse")


# ------------------------------------------------------------------------- output Hessians
def _gauss_scale(loss: str, sigma2: float) -> float:
    """1/σ for the Gaussian losses: Λ = I/σ² (``"mse"``: σ² = 1/2)."""
    return math.sqrt(2.0) if loss == "mse" else 1.0 / math.sqrt(sigma2)


def loss_hessian_factors(output: Tensor, loss: LossName, *, sigma2: float = 1.0) -> Tensor:
    r"""Factors V of the output Hessians: Σ_c V[c, i] V[c, i]ᵀ = Λ_i = ∂²ℓ_i/∂f_i² for every
    example i, each V[c, i] flattened over the entries of example i.

    Λ_i is block diagonal over the positions of a multi-position output, so V has one column per
    output entry of an example: D = prod(output.shape[1:]) columns (C·prod(S) for cross-entropy
    over logits ``(M, C, *S)``), each nonzero at one position only.

    Args:
        output: model outputs f, shape ``(M, ...)`` (logits for the classification losses).
        loss: ``"cross_entropy"`` (v_c = √p_c (e_c − p), class dimension 1),
            ``"bce_with_logits"`` (√(σ(1−σ)) e_d), ``"gaussian"`` (e_d/σ) or ``"mse"`` (√2 e_d).
        sigma2: σ² of ``"gaussian"``.

    Returns:
        V of shape ``(D, *output.shape)``.

    Example:
        >>> import torch
        >>> f = torch.tensor([[0.3, -1.0, 2.0]], dtype=torch.float64)
        >>> V = loss_hessian_factors(f, "cross_entropy")          # (3, 1, 3)
        >>> p = f.softmax(-1)[0]
        >>> torch.allclose(torch.einsum("ca,cb->ab", V[:, 0], V[:, 0]),
        ...                torch.diag(p) - torch.outer(p, p))
        True
    """
    f = output.detach()
    if f.dim() < 1:
        raise ValueError("output must have a batch dimension")
    M = f.shape[0]
    if loss == "cross_entropy":
        if f.dim() < 2:
            raise ValueError("cross_entropy needs logits of shape (M, C) or (M, C, *S)")
        C = f.shape[1]
        p = f.softmax(1).reshape(M, C, -1)  # (M, C, S)
        S = p.shape[-1]
        eye = torch.eye(C, dtype=f.dtype, device=f.device)
        # W[c, m, c', s] = √p[m, c, s] (δ_cc' − p[m, c', s])
        W = p.sqrt().permute(1, 0, 2)[:, :, None, :] * (eye[:, None, :, None] - p[None])
        if S == 1:
            return W.reshape(C, *f.shape)
        V = f.new_zeros(C, S, M, C, S)
        s = torch.arange(S, device=f.device)
        V[:, s, :, :, s] = W.permute(3, 0, 1, 2)
        return V.reshape(C * S, *f.shape)
    flat = f.reshape(M, -1)
    D = flat.shape[1]
    if loss == "bce_with_logits":
        sig = flat.sigmoid()
        w = (sig * (1 - sig)).sqrt()  # (M, D)
        return torch.diag_embed(w).permute(1, 0, 2).reshape(D, *f.shape)
    if loss in ("gaussian", "mse"):
        eye = torch.eye(D, dtype=f.dtype, device=f.device) * _gauss_scale(loss, sigma2)
        return eye[:, None, :].expand(D, M, D).reshape(D, *f.shape)
    raise ValueError(f"unknown loss {loss!r}; expected one of {_LOSSES}")


def sampled_output_grads(
    output: Tensor,
    loss: LossName,
    *,
    samples: int = 1,
    sigma2: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Output gradients g_k = ∇_f ℓ(ŷ_k, f) at labels sampled from the model, ŷ_k ~ p(y | f),
    so that E[g_k g_kᵀ] = Λ_i example by example (the Fisher of the likelihood in its natural
    parameter equals the Hessian of the negative log-likelihood):

    - ``"cross_entropy"``: ŷ ~ Categorical(softmax(f)) per position, g = p − e_ŷ;
    - ``"bce_with_logits"``: ŷ ~ Bernoulli(σ(f)), g = σ(f) − ŷ;
    - ``"gaussian"``: g = ε/σ, ε ~ N(0, I) (``"mse"``: σ² = 1/2).

    Args:
        output: model outputs f ``(M, ...)``.
        loss: as in :func:`loss_hessian_factors`.
        samples: K, the number of sampled gradients.
        sigma2: σ² of ``"gaussian"``.
        generator: random generator for the labels.

    Returns:
        g of shape ``(K, *output.shape)``.

    Example:
        >>> import torch
        >>> f = torch.tensor([[0.5, -0.5, 1.0]], dtype=torch.float64)
        >>> gen = torch.Generator().manual_seed(0)
        >>> g = sampled_output_grads(f, "cross_entropy", samples=20000, generator=gen)[:, 0]
        >>> V = loss_hessian_factors(f, "cross_entropy")[:, 0]
        >>> torch.allclose(g.T @ g / 20000, V.T @ V, atol=0.01)   # E[g gᵀ] = Λ
        True
    """
    f = output.detach()
    K = int(samples)
    if K < 1:
        raise ValueError("samples must be >= 1")
    if loss == "cross_entropy":
        if f.dim() < 2:
            raise ValueError("cross_entropy needs logits of shape (M, C) or (M, C, *S)")
        C = f.shape[1]
        p = f.softmax(1)
        pm = p.movedim(1, -1)  # (M, *S, C)
        idx = torch.multinomial(pm.reshape(-1, C), K, replacement=True, generator=generator)
        onehot = F.one_hot(idx.T, C).to(f.dtype)  # (K, N, C)
        onehot = onehot.reshape(K, *pm.shape).movedim(-1, 2)  # (K, M, C, *S)
        return p[None] - onehot
    if loss == "bce_with_logits":
        sig = f.sigmoid()
        u = torch.rand((K, *f.shape), dtype=f.dtype, device=f.device, generator=generator)
        return sig[None] - (u < sig[None]).to(f.dtype)
    if loss in ("gaussian", "mse"):
        eps = torch.randn((K, *f.shape), dtype=f.dtype, device=f.device, generator=generator)
        return eps * _gauss_scale(loss, sigma2)
    raise ValueError(f"unknown loss {loss!r}; expected one of {_LOSSES}")


# ------------------------------------------------------------------------- layer rules
def _first_input(args: tuple, kwargs: dict, name: str = "input") -> Any:
    if args:
        return args[0]
    if name in kwargs:
        return kwargs[name]
    raise TypeError("could not find the module's input tensor")


def _chunked_sum_sq(rule, module, saved, b: Tensor, names, budget: int) -> dict[str, Tensor]:
    """Σ_{passes, examples} g² from the per-example gradients g of chunks of examples, at most
    ``budget`` elements of per-example gradients at a time."""
    P, M = b.shape[:2]
    per = P * sum(getattr(module, n).numel() for n in names)
    step = max(1, budget // max(per, 1))
    total: dict[str, Tensor] = {}
    for s in range(0, M, step):
        sl = slice(s, s + step)
        g = rule.per_example(module, rule.take(saved, sl), b[:, sl], names)
        for n, t in g.items():
            sq = t.square().sum((0, 1))
            total[n] = sq if n not in total else total[n] + sq
    return total


class _Rule:
    """Per-example gradients of one module type from its saved input and output gradients b of
    shape ``(P, M, *output.shape[1:])`` (P seeds: 1 for "ef", one per factor for "ggn")."""

    name = "module"

    def check(self, pe: PerExample, module: nn.Module, args, kwargs, output: Tensor) -> None:
        pass

    def save(self, module: nn.Module, args, kwargs, output: Tensor) -> tuple:
        return (_first_input(args, kwargs).detach(),)

    def batch_size(self, saved) -> int:
        return saved[0].shape[0]

    def tensors(self, saved) -> tuple:
        return tuple(t for t in saved if isinstance(t, Tensor))

    def take(self, saved, sl: slice):
        return tuple(t[sl] for t in saved)

    def per_example(self, module, saved, b: Tensor, names) -> dict[str, Tensor]:
        raise NotImplementedError

    def sum_sq(self, module, saved, b: Tensor, names, budget: int) -> dict[str, Tensor]:
        return _chunked_sum_sq(self, module, saved, b, names, budget)


class _LinearRule(_Rule):
    name = "Linear"

    def check(self, pe, module, args, kwargs, output):
        if _first_input(args, kwargs).dim() < 2:
            raise ValueError("PerExample needs batched inputs (M, ..., in) for nn.Linear")

    def per_example(self, module, saved, b, names):
        (a,) = saved
        P, m = b.shape[:2]
        a3 = a.to(b.dtype).reshape(m, -1, a.shape[-1])
        b4 = b.reshape(P, m, -1, b.shape[-1])
        out = {}
        if "weight" in names:
            out["weight"] = torch.einsum("pmto,mti->pmoi", b4, a3)
        if "bias" in names:
            out["bias"] = b4.sum(2)
        return out

    def sum_sq(self, module, saved, b, names, budget):
        (a,) = saved
        P, m = b.shape[:2]
        if a.numel() != m * a.shape[-1]:  # a sequence inside each example
            return super().sum_sq(module, saved, b, names, budget)
        b2 = b.reshape(P, m, -1).square().sum(0)  # (m, out): Σ over the seeds
        out = {}
        if "weight" in names:
            out["weight"] = b2.T @ a.to(b.dtype).reshape(m, -1).square()
        if "bias" in names:
            out["bias"] = b2.sum(0)
        return out


class _ConvRule(_Rule):
    name = "Conv"

    def __init__(self, nd: int):
        self.nd = nd

    def check(self, pe, module, args, kwargs, output):
        if _first_input(args, kwargs).dim() != self.nd + 2:
            raise ValueError(
                f"PerExample needs batched inputs (M, C, ...) for {type(module).__name__}"
            )

    def unfold(self, module, a: Tensor) -> Tensor:
        """Patches ``(m, C_in·prod(kernel), L)`` as the convolution sees them."""
        k, s, d = module.kernel_size, module.stride, module.dilation
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            a = F.pad(a, module._reversed_padding_repeated_twice, mode=mode)
            p = (0,) * self.nd
        else:
            p = module.padding
        if self.nd == 1:
            a = a.unsqueeze(2)
            k, s, d, p = (1, k[0]), (1, s[0]), (1, d[0]), (0, p[0])
        return F.unfold(a, k, dilation=d, padding=p, stride=s)

    def per_example(self, module, saved, b, names):
        (a,) = saved
        P, m = b.shape[:2]
        G, Cout = module.groups, module.out_channels
        bL = b.reshape(P, m, Cout, -1)
        out = {}
        if "weight" in names:
            U = self.unfold(module, a.to(b.dtype))
            if U.shape[-1] != bL.shape[-1]:  # pragma: no cover - defensive
                raise RuntimeError(f"{type(module).__name__}: unfold does not match the output")
            U = U.reshape(m, G, -1, U.shape[-1])
            W = torch.einsum("pmgol,mgkl->pmgok", bL.reshape(P, m, G, Cout // G, -1), U)
            out["weight"] = W.reshape(P, m, *module.weight.shape)
        if "bias" in names:
            out["bias"] = bL.sum(-1)
        return out


class _EmbeddingRule(_Rule):
    name = "Embedding"

    def check(self, pe, module, args, kwargs, output):
        if module.scale_grad_by_freq:
            raise ValueError(
                "nn.Embedding(scale_grad_by_freq=True) scales gradients by minibatch counts, "
                "which couples the examples: not supported by PerExample"
            )
        if _first_input(args, kwargs).dim() < 1:
            raise ValueError("PerExample needs batched indices (M, ...) for nn.Embedding")

    def _rows(self, module, saved, b):
        (idx,) = saved
        P, m = b.shape[:2]
        flat = idx.reshape(m, -1)
        bb = b.reshape(P, flat.numel(), b.shape[-1])
        if module.padding_idx is not None:
            bb = bb * (flat.reshape(-1) != module.padding_idx).to(b.dtype)[None, :, None]
        V = module.num_embeddings
        key = (torch.arange(m, device=idx.device)[:, None] * V + flat).reshape(-1)
        return bb, key, V

    def per_example(self, module, saved, b, names):
        bb, key, V = self._rows(module, saved, b)
        P, m, D = b.shape[0], b.shape[1], b.shape[-1]
        g = bb.new_zeros(P, m * V, D).index_add_(1, key, bb)
        return {"weight": g.reshape(P, m, V, D)}

    def sum_sq(self, module, saved, b, names, budget):
        bb, key, V = self._rows(module, saved, b)
        uniq, inv = torch.unique(key, return_inverse=True)
        rows = bb.new_zeros(bb.shape[0], uniq.numel(), bb.shape[-1]).index_add_(1, inv, bb)
        sq = rows.square().sum(0)
        return {"weight": sq.new_zeros(V, sq.shape[-1]).index_add_(0, uniq % V, sq)}


def _affine(b: Tensor, xh: Tensor, red: tuple, names) -> dict[str, Tensor]:
    out = {}
    if "weight" in names:
        prod = b * xh.to(b.dtype)
        out["weight"] = prod.sum(red) if red else prod
    if "bias" in names:
        out["bias"] = b.sum(red) if red else b
    return out


class _LayerNormRule(_Rule):
    name = "LayerNorm"

    def per_example(self, module, saved, b, names):
        (a,) = saved
        ns = module.normalized_shape
        xh = F.layer_norm(a, ns, eps=module.eps)
        return _affine(b, xh, tuple(range(2, b.dim() - len(ns))), names)


class _GroupNormRule(_Rule):
    name = "GroupNorm"

    def per_example(self, module, saved, b, names):
        (a,) = saved
        xh = F.group_norm(a, module.num_groups, eps=module.eps)
        return _affine(b, xh, tuple(range(3, b.dim())), names)


def _uses_batch_stats(m: _BatchNorm) -> bool:
    return m.training or m.running_mean is None


class _BatchNormRule(_Rule):
    name = "BatchNorm"

    def check(self, pe, module, args, kwargs, output):
        if _uses_batch_stats(module) and not pe.allow_batch_coupling:
            raise RuntimeError(
                f"{type(module).__name__} normalizes with batch statistics (training mode or "
                "track_running_stats=False), which couples the examples: per-example gradients "
                "of ℓ_i do not exist in closed form. Use model.eval() for the curvature pass, or "
                "PerExample(..., allow_batch_coupling=True) to treat the batch statistics as "
                "constants (per-example contributions to the minibatch gradient)"
            )

    def save(self, module, args, kwargs, output):
        a = _first_input(args, kwargs).detach()
        shape = (1, a.shape[1]) + (1,) * (a.dim() - 2)
        if _uses_batch_stats(module):
            dims = (0, *range(2, a.dim()))
            mean, var = a.mean(dims), a.var(dims, unbiased=False)
        else:
            mean, var = module.running_mean, module.running_var
        return ((a - mean.view(shape)) * torch.rsqrt(var.view(shape) + module.eps),)

    def per_example(self, module, saved, b, names):
        (xh,) = saved
        return _affine(b, xh, tuple(range(3, b.dim())), names)


class _FuncSaved:
    def __init__(self, leaves, spec, tidx, dims, m, buffers):
        self.leaves, self.spec, self.tidx, self.dims = leaves, spec, tidx, dims
        self.m, self.buffers = m, buffers


class _FuncRule(_Rule):
    """torch.func fallback: vmap over examples of grad_θ <b_i, module(a_i)>."""

    name = "torch.func"

    def check(self, pe, module, args, kwargs, output):
        for sub in module.modules():
            if isinstance(sub, _BatchNorm) and _uses_batch_stats(sub):
                raise RuntimeError(
                    f"the torch.func fallback of {type(module).__name__} would run "
                    f"{type(sub).__name__} with batch statistics on single examples; use "
                    "model.eval() for the curvature pass"
                )

    def save(self, module, args, kwargs, output):
        leaves, spec = tree_flatten((tuple(args), dict(kwargs)))
        tidx = [k for k, x in enumerate(leaves) if isinstance(x, Tensor)]
        if not tidx:
            raise ValueError(f"{type(module).__name__} was called without tensor inputs")
        leaves = [x.detach() if isinstance(x, Tensor) else x for x in leaves]
        first = next((leaves[k] for k in tidx if leaves[k].dim() > 0), None)
        m = first.shape[0] if first is not None else -1
        if output.dim() == 0 or output.shape[0] != m:
            raise ValueError(
                f"the torch.func fallback needs {type(module).__name__}'s input and output to "
                f"share the batch dimension 0 (input {m}, output {tuple(output.shape)})"
            )
        dims = [0 if leaves[k].dim() > 0 and leaves[k].shape[0] == m else None for k in tidx]
        buffers = {n: x.detach().clone() for n, x in module.named_buffers()}
        return _FuncSaved(leaves, spec, tidx, dims, m, buffers)

    def batch_size(self, saved):
        return saved.m

    def tensors(self, saved):
        return tuple(saved.leaves[k] for k in saved.tidx)

    def take(self, saved, sl):
        leaves = list(saved.leaves)
        for k, d in zip(saved.tidx, saved.dims):
            if d == 0:
                leaves[k] = leaves[k][sl]
        return _FuncSaved(leaves, saved.spec, saved.tidx, saved.dims, saved.m, saved.buffers)

    def per_example(self, module, saved, b, names):
        params = {n: getattr(module, n).detach().to(b.dtype) for n in names}

        def f(params, tens, b_i):
            leaves = list(saved.leaves)
            for k, t, d in zip(saved.tidx, tens, saved.dims):
                leaves[k] = t.unsqueeze(0) if d == 0 else t
            args, kwargs = tree_unflatten(leaves, saved.spec)
            out = functional_call(module, {**saved.buffers, **params}, args, kwargs, strict=False)
            return (out * b_i.unsqueeze(0)).sum()

        tens = [saved.leaves[k] for k in saved.tidx]
        inner = vmap(grad(f), in_dims=(None, saved.dims, 0))
        return vmap(inner, in_dims=(None, None, 0))(params, tens, b)


_FUNC = _FuncRule()
_RULES: tuple[tuple[type, _Rule], ...] = (
    (nn.Linear, _LinearRule()),
    (nn.Conv1d, _ConvRule(1)),
    (nn.Conv2d, _ConvRule(2)),
    (nn.Embedding, _EmbeddingRule()),
    (nn.LayerNorm, _LayerNormRule()),
    (nn.GroupNorm, _GroupNormRule()),
    (_BatchNorm, _BatchNormRule()),
)


def _rule_for(module: nn.Module) -> _Rule | None:
    """The closed-form rule of a module whose forward is the stock one (a subclass that overrides
    ``forward`` gets none)."""
    for cls, rule in _RULES:
        if isinstance(module, cls) and type(module).forward is cls.forward:
            return rule
    return None


# ------------------------------------------------------------------------- the context
class _Call:
    """One call of a tracked module inside one forward of the model."""

    __slots__ = ("batch", "done", "edge", "group", "module", "params", "rule", "saved", "versions")

    def __init__(self, module, rule, params, group, saved):
        self.module, self.rule, self.params, self.group = module, rule, params, group
        self.saved = saved
        self.versions = tuple(t._version for t in rule.tensors(saved))
        self.batch = rule.batch_size(saved)
        self.edge = None
        self.done = False

    def check_versions(self) -> None:
        now = tuple(t._version for t in self.rule.tensors(self.saved))
        if now != self.versions:
            raise RuntimeError(
                f"the input of {type(self.module).__name__} was modified in place after its "
                "forward; PerExample needs it unchanged until the backward pass"
            )


class PerExample:
    r"""Context manager that computes, from one forward and backward of a minibatch of M
    examples, h_θ = Σ_{i=1}^M [∇_θ ℓ_i]² (``mode="ef"``), h_θ = Σ_i diag(J_iᵀ Λ_i J_i)
    (``mode="ggn"``) or its K-sample Monte Carlo estimate (``mode="mc_fisher"``) for every
    trainable parameter θ of ``model`` (see the module docstring for the math and the layers).

    Results are SUMS over the examples seen inside the context (several forward/backward passes
    add up, like ``.grad``, also across re-entries of the same object until :meth:`reset`);
    divide by :attr:`num_examples` (or M) for the mean ĥ of Table 1 row 8. The model's
    ordinary ``.grad`` is left exactly as without the context; the hooks are removed on exit.

    Args:
        model: the network; it must be called inside the context (its forward delimits a
            minibatch) and, for ``"ef"``, ``backward()`` must run inside the context too.
        mode: ``"ef"`` (squared per-example gradients of the back-propagated loss, no extra
            backward pass), ``"ggn"`` (D extra backward passes of the output entries of one
            example, batched, run at the end of the model's forward) or ``"mc_fisher"``
            (``mc_samples`` extra backward passes with labels sampled from the model).
        loss: for ``"ggn"``/``"mc_fisher"``: ``"cross_entropy"``, ``"bce_with_logits"``,
            ``"gaussian"`` (with ``sigma2``) or ``"mse"``, applied to the model's output (see
            :func:`loss_hessian_factors`); ignored by ``"ef"``.
        reduction: for ``"ef"``: the back-propagated loss is ``"sum"`` Σ_i ℓ_i, ``"mean"``
            (1/M) Σ_i ℓ_i (M = dimension 0 of each layer's input), or a float c: c·Σ_i ℓ_i.
            The factor is undone: the result is always Σ_i [∇ℓ_i]².
        sigma2: σ² of the ``"gaussian"`` loss.
        mc_samples: K, sampled labels per example for ``"mc_fisher"``.
        generator: random generator for ``"mc_fisher"``.
        method: ``"hooks"`` (closed-form rules only; a module with parameters and no rule is an
            error naming its type), ``"auto"`` (rules, the torch.func fallback for the others) or
            ``"func"`` (the torch.func fallback for every module).
        output_fn: picks the output tensor f from the model's return value (``"ggn"`` and
            ``"mc_fisher"``), e.g. ``lambda out: out.logits``.
        allow_batch_coupling: accept BatchNorm with batch statistics (see the module docstring).
        vectorize: run the ``"ggn"``/``"mc_fisher"`` seeds as one ``is_grads_batched`` backward
            (else one ``torch.autograd.grad`` per seed).
        pass_chunk: at most this many seeds per batched backward (bounds memory: each seed
            holds a copy of the layer output gradients).
        max_chunk_elements: memory bound, in elements, on the per-example gradients materialized
            at a time (sequence inputs, convolutions, shared parameters).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        >>> with PerExample(model, mode="ef", reduction="mean") as pe:
        ...     loss = nn.functional.cross_entropy(model(x), y)   # a mean over the minibatch
        ...     loss.backward()
        >>> h = pe.squared_grads()                  # {parameter: Σ_i (∇ℓ_i)²}
        >>> w = model[0].weight
        >>> brute = sum(torch.autograd.grad(
        ...     nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), w)[0] ** 2
        ...     for i in range(8))
        >>> torch.allclose(h[w], brute, atol=1e-6), pe.num_examples
        (True, 8)
        >>> with PerExample(model, mode="ggn", loss="cross_entropy") as pe:
        ...     _ = model(x)                         # the GGN needs no labels and no backward
        >>> pe.named_squared_grads()["2.bias"].shape
        torch.Size([2])
    """

    def __init__(
        self,
        model: nn.Module,
        mode: Mode = "ef",
        *,
        loss: LossName | None = None,
        reduction: Literal["sum", "mean"] | float = "sum",
        sigma2: float = 1.0,
        mc_samples: int = 1,
        generator: torch.Generator | None = None,
        method: Literal["hooks", "auto", "func"] = "hooks",
        output_fn: Callable[[Any], Tensor] | None = None,
        allow_batch_coupling: bool = False,
        vectorize: bool = True,
        pass_chunk: int = 32,
        max_chunk_elements: int = 2**24,
    ):
        if mode not in ("ef", "ggn", "mc_fisher"):
            raise ValueError(f"mode must be 'ef', 'ggn' or 'mc_fisher', got {mode!r}")
        if mode != "ef" and loss not in _LOSSES:
            raise ValueError(f"mode={mode!r} needs loss= one of {_LOSSES}, got {loss!r}")
        if method not in ("hooks", "auto", "func"):
            raise ValueError(f"method must be 'hooks', 'auto' or 'func', got {method!r}")
        if isinstance(reduction, str):
            if reduction not in ("sum", "mean"):
                raise ValueError(f"reduction must be 'sum', 'mean' or a float, got {reduction!r}")
        elif not float(reduction) > 0:
            raise ValueError("a float reduction (the loss scale) must be positive")
        if int(mc_samples) < 1 or int(pass_chunk) < 1:
            raise ValueError("mc_samples and pass_chunk must be >= 1")
        if sigma2 <= 0:
            raise ValueError("sigma2 must be positive")
        self.model, self.mode, self.loss, self.reduction = model, mode, loss, reduction
        self.sigma2, self.mc_samples, self.generator = float(sigma2), int(mc_samples), generator
        self.method, self.output_fn = method, output_fn
        self.allow_batch_coupling, self.vectorize = allow_batch_coupling, vectorize
        self.pass_chunk, self.max_chunk_elements = int(pass_chunk), int(max_chunk_elements)
        self._plan = self._make_plan()
        self._params: dict[int, nn.Parameter] = {}
        for _, _, ps in self._plan:
            for _, p in ps:
                self._params.setdefault(id(p), p)
        self._names = {id(p): n for n, p in model.named_parameters() if id(p) in self._params}
        self._handles: list = []
        self._active = False
        self._suspended = False
        self.reset()

    # ---------------------------------------------------------------- setup
    def _make_plan(self) -> list[tuple[nn.Module, _Rule, list[tuple[str, nn.Parameter]]]]:
        plan, missing = [], []
        for name, m in self.model.named_modules():
            direct = [(n, p) for n, p in m._parameters.items() if p is not None and p.requires_grad]
            if not direct:
                continue
            rule = _FUNC if self.method == "func" else _rule_for(m)
            if rule is None:
                if self.method == "auto":
                    rule = _FUNC
                else:
                    missing.append(f"{name or '<model>'} ({type(m).__name__})")
                    continue
            plan.append((m, rule, direct))
        if missing:
            known = ", ".join(c.__name__.lstrip("_") for c, _ in _RULES)
            raise TypeError(
                "PerExample has no per-example rule for module(s) with trainable parameters: "
                f"{', '.join(missing)}. Rules exist for {known} (stock forward only); pass "
                "method='auto' to use the torch.func fallback for the others"
            )
        return plan

    def reset(self) -> None:
        """Forget the accumulated curvature (and :attr:`num_examples`).

        Example:
            >>> import torch
            >>> from blr.optim import PerExample
            >>> model = torch.nn.Linear(3, 1)
            >>> with PerExample(model) as pe:
            ...     model(torch.ones(4, 3)).sum().backward()
            >>> pe.num_examples, pe.squared_grads()[model.bias]
            (4, tensor([4.]))
            >>> pe.reset()  # e.g. before the next minibatch
            >>> pe.num_examples, pe.squared_grads()[model.bias]
            (0, tensor([0.]))
        """
        self._acc: dict[int, Tensor] = {}
        self._pending: dict[tuple[int, int], list] = {}
        self._counts: dict[tuple[int, int], int] = {}
        self._group = 0
        self._group_calls: list[_Call] = []
        self._recorded: set[int] = set()
        self._grad_marked: set[int] = set()
        self.num_examples = 0
        """Examples forwarded with gradients enabled inside the context (dimension 0 of the
        model's first tensor input)."""

    def __enter__(self) -> PerExample:
        if self._active:
            raise RuntimeError("PerExample context is already active")
        for module, rule, params in self._plan:
            hook = functools.partial(self._forward_hook, rule, params)
            self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
        self._handles.append(
            self.model.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True)
        )
        if self.mode != "ef":
            self._handles.append(
                self.model.register_forward_hook(self._root_hook, with_kwargs=True)
            )
        else:
            for pid, p in self._params.items():
                self._handles.append(p.register_hook(functools.partial(self._mark, pid)))
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._active = False
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._group_calls = []

    # ---------------------------------------------------------------- hooks
    def _mark(self, pid: int, g: Tensor) -> None:
        if self._active and not self._suspended:
            self._grad_marked.add(pid)

    def _root_pre_hook(self, module, args, kwargs) -> None:
        if self._suspended or not self._active:
            return
        self._group += 1
        self._group_calls = []
        if torch.is_grad_enabled():
            leaves, _ = tree_flatten((args, kwargs))
            first = next((x for x in leaves if isinstance(x, Tensor) and x.dim() > 0), None)
            if first is not None:
                self.num_examples += first.shape[0]

    def _forward_hook(self, rule: _Rule, params, module, args, kwargs, output) -> None:
        if self._suspended or not self._active or not torch.is_grad_enabled():
            return
        if not isinstance(output, Tensor):
            raise TypeError(
                f"PerExample needs {type(module).__name__} to return one tensor, got "
                f"{type(output).__name__}"
            )
        if output.grad_fn is None:
            return
        rule.check(self, module, args, kwargs, output)
        call = _Call(module, rule, params, self._group, rule.save(module, args, kwargs, output))
        for _, p in params:
            key = (call.group, id(p))
            self._counts[key] = self._counts.get(key, 0) + 1
            self._recorded.add(id(p))
        if self.mode == "ef":
            self._handles.append(output.register_hook(functools.partial(self._on_grad, call)))
        else:
            call.edge = get_gradient_edge(output)
            self._group_calls.append(call)

    def _on_grad(self, call: _Call, g: Tensor) -> None:
        """ "ef": the gradient of the user's loss with respect to one module output."""
        if call.done or not self._active:
            return
        call.done = True
        if self.reduction == "sum":
            scale = 1.0
        elif self.reduction == "mean":
            scale = float(call.batch)
        else:
            scale = 1.0 / float(self.reduction)
        b = g.detach().unsqueeze(0)
        self._accumulate([(call, b if scale == 1.0 else b * scale)], persist=True)
        call.saved = None

    def _root_hook(self, module, args, kwargs, output) -> None:
        """ "ggn"/"mc_fisher": back-propagate the factors of Λ from the model output."""
        if self._suspended or not self._active:
            return
        calls, self._group_calls = self._group_calls, []
        if not torch.is_grad_enabled() or not calls:
            return
        out = self.output_fn(output) if self.output_fn is not None else output
        if not isinstance(out, Tensor):
            raise TypeError(
                f"the model returned {type(output).__name__}; pass output_fn= to pick the "
                "output tensor the loss is applied to"
            )
        if out.grad_fn is None:
            return
        with torch.no_grad():
            if self.mode == "ggn":
                V = loss_hessian_factors(out, self.loss, sigma2=self.sigma2)
            else:
                K = self.mc_samples
                V = sampled_output_grads(
                    out, self.loss, samples=K, sigma2=self.sigma2, generator=self.generator
                )
                V = V / math.sqrt(K)
        edges = [c.edge for c in calls]
        for s in range(0, V.shape[0], self.pass_chunk):
            Vc = V[s : s + self.pass_chunk]
            if self.vectorize and Vc.shape[0] > 1:
                grads = torch.autograd.grad(
                    out, edges, Vc, retain_graph=True, allow_unused=True, is_grads_batched=True
                )
            else:
                per = [
                    torch.autograd.grad(out, edges, v, retain_graph=True, allow_unused=True)
                    for v in Vc
                ]
                grads = [
                    None if gs[0] is None else torch.stack(gs) for gs in zip(*per, strict=True)
                ]
            self._accumulate(
                [(c, g.detach()) for c, g in zip(calls, grads) if g is not None], persist=False
            )
        for c in calls:
            c.saved, c.done = None, True

    # ---------------------------------------------------------------- accumulation
    def _add(self, pid: int, t: Tensor) -> None:
        p = self._params[pid]
        t = t.to(p.dtype)
        self._acc[pid] = t if pid not in self._acc else self._acc[pid] + t

    def _accumulate(self, items: list[tuple[_Call, Tensor]], persist: bool) -> None:
        """Add Σ_{seeds, examples} g² of every parameter; per-example gradients of a parameter
        used by several calls of one forward are summed before squaring (``persist``: keep them
        across backward hooks until every call has arrived)."""
        local: dict[tuple[int, int], list] = {}
        store = self._pending if persist else local
        self._suspended = True
        try:
            with torch.no_grad():
                for call, b in items:
                    call.check_versions()
                    if b.dtype in (torch.float16, torch.bfloat16):
                        b = b.float()
                    single, shared = [], []
                    for n, p in call.params:
                        c = self._counts[(call.group, id(p))]
                        (shared if c > 1 else single).append((n, p))
                    if single:
                        sq = call.rule.sum_sq(
                            call.module,
                            call.saved,
                            b,
                            [n for n, _ in single],
                            self.max_chunk_elements,
                        )
                        for n, p in single:
                            self._add(id(p), sq[n])
                    if shared:
                        g = call.rule.per_example(
                            call.module, call.saved, b, [n for n, _ in shared]
                        )
                        for n, p in shared:
                            key = (call.group, id(p))
                            entry = store.get(key)
                            if entry is None:
                                store[key] = entry = [g[n], 0]
                            else:
                                entry[0] = entry[0] + g[n]
                            entry[1] += 1
                            if persist and entry[1] == self._counts[key]:
                                self._add(key[1], store.pop(key)[0].square().sum((0, 1)))
                for (_, pid), (buf, _) in local.items():
                    self._add(pid, buf.square().sum((0, 1)))
        finally:
            self._suspended = False

    def _finalize(self) -> None:
        with torch.no_grad():
            for (_, pid), (buf, _) in self._pending.items():
                self._add(pid, buf.square().sum((0, 1)))
        self._pending.clear()

    # ---------------------------------------------------------------- results
    def squared_grads(self, attr: str | None = None) -> dict[nn.Parameter, Tensor]:
        """{parameter: h} for every trainable parameter of the model (zeros for those that
        were not used); with ``attr``, also stored as ``setattr(p, attr, h)``.

        Raises:
            RuntimeError: (``"ef"``) a parameter received a gradient in the backward pass but
                its module was never called (e.g. used through ``F.linear(x, m.weight)`` by a
                parent module): its per-example gradients cannot be seen by the hooks.

        Example:
            >>> import torch
            >>> from blr.optim import PerExample
            >>> model = torch.nn.Linear(3, 1)
            >>> x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])
            >>> with PerExample(model, mode="ef") as pe:
            ...     model(x).sum().backward()  # ∇_w ℓ_i = x_i
            >>> h = pe.squared_grads(attr="hess")  # Σ_i x_i², also as model.weight.hess
            >>> h[model.weight], model.weight.hess is h[model.weight]
            (tensor([[10.,  4.,  1.]]), True)
        """
        self._finalize()
        missed = [
            self._names.get(pid, "?")
            for pid in self._grad_marked
            if pid not in self._recorded and pid in self._params
        ]
        if missed:
            raise RuntimeError(
                f"parameter(s) {sorted(missed)} received gradients, but their modules were never "
                "called (used functionally by a parent module?); PerExample cannot see their "
                "per-example gradients. Use method='auto' on a model whose modules are called"
            )
        out = {}
        for pid, p in self._params.items():
            h = self._acc.get(pid)
            if h is None:  # (of the full shape: a parameter sharded by FSDP is a DTensor)
                h = torch.zeros(p.shape, dtype=p.dtype, device=p.device)
            out[p] = h
            if attr is not None:
                setattr(p, attr, h)
        return out

    def named_squared_grads(self) -> dict[str, Tensor]:
        """{parameter name (as in ``model.named_parameters()``): h}.

        Example:
            >>> import torch
            >>> from blr.optim import PerExample
            >>> model = torch.nn.Linear(3, 1)
            >>> x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])
            >>> with PerExample(model, mode="ef") as pe:
            ...     model(x).sum().backward()
            >>> pe.named_squared_grads()
            {'weight': tensor([[10.,  4.,  1.]]), 'bias': tensor([2.])}
        """
        return {self._names[id(p)]: h for p, h in self.squared_grads().items()}

    def parameters(self) -> Iterator[nn.Parameter]:
        """The parameters whose curvature is computed (trainable, deduplicated).

        Example:
            >>> import torch
            >>> from blr.optim import PerExample
            >>> shared = torch.nn.Linear(2, 2)
            >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), shared, shared)
            >>> _ = model[0].requires_grad_(False)  # frozen: no curvature
            >>> [tuple(p.shape) for p in PerExample(model).parameters()]  # shared: listed once
            [(2, 2), (2,)]
        """
        return iter(self._params.values())
