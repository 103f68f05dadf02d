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
                 K-sample Monte Carlo estimate of ``"ggn"``, unbiased for the likelihoods of
                 :mod:`blr.curvature` because E_ŷ[∇_f ℓ ∇_f ℓᵀ] = Λ_i (Fisher = Hessian in the
                 natural parameter)
==============  =================================================================================

i.e. SUMS over the examples of the minibatch. An optimizer following Table 1 row 8 uses the mean
ĥ = h / M (and N·ĥ = (N/M) Σ_{i∈B} h_i is the unbiased estimate of the full-data curvature).

How it is computed (never one backward pass per example). Forward hooks save each layer's input
a_i; the gradient b_i of a seed with respect to the layer's output is then captured (a tensor hook
during the user's own ``backward()`` for ``"ef"``; a batched ``torch.autograd.grad`` with respect to
the layer outputs, right after the model's forward, for ``"ggn"``/``"mc_fisher"``) and the
per-example gradients follow in closed form, layer by layer (:mod:`blr.curvature.layers`:
``nn.Linear``, ``nn.Conv1d``/``nn.Conv2d``, ``nn.Embedding``, ``nn.LayerNorm``, ``nn.GroupNorm``,
``nn.BatchNorm{1,2,3}d`` in eval mode; any other module with parameters through ``torch.func``
with ``method="auto"``). BatchNorm with batch statistics (training mode) couples the examples and
no per-example gradient of ℓ_i exists in this form: an error, unless
``allow_batch_coupling=True``, which treats the batch statistics as constants — every layer then
gets the per-example CONTRIBUTIONS b_i a_iᵀ to the minibatch gradient (what BackPACK and most VOGN
code compute), not the gradients of ℓ_i. The torch.func fallback runs the module on one example
at a time (it must be deterministic and free of batch coupling; its buffers are copied, never
updated).

GGN: Λ_i is factorized as Σ_c v_ic v_icᵀ (:meth:`~blr.curvature.Likelihood.hessian_factors`),
each column v_c is back-propagated as an output gradient and the per-example squared gradients
are accumulated: D backward passes for D output entries per example (C for a C-class classifier;
vectorized into one ``is_grads_batched`` call), never one per example. The Monte Carlo variant
back-propagates K sampled output gradients (:meth:`~blr.curvature.Likelihood.sample_grads`),
K = 1 by default.

Losses for ``"ggn"``/``"mc_fisher"``: a likelihood of :mod:`blr.curvature` by name (the
per-example loss ℓ_i sums over all output entries of example i; the GGN does not depend on the
labels): ``"cross_entropy"`` (logits ``(M, C)`` or ``(M, C, *S)``, class dimension 1, as
``F.cross_entropy``; Λ = diag(p) − ppᵀ per position), ``"bce_with_logits"``
(Λ = diag(σ(f)(1 − σ(f)))), ``"gaussian"`` (ℓ_i = ‖f_i − y_i‖² / (2σ²), Λ = I/σ², ``sigma2`` = σ²),
``"mse"`` (ℓ_i = ‖f_i − y_i‖², ``F.mse_loss(reduction="sum")`` per example, Λ = 2I),
``"poisson"`` (log link, Λ = diag(eᶠ)) or any other name of :data:`blr.curvature.NAMES`.

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
>>> from blr.curvature import PerExample
>>> model = torch.nn.Linear(2, 1, bias=False)
>>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
>>> with PerExample(model, mode="ggn", loss="mse") as pe:   # Λ_i = 2 for (y − f)²
...     _ = model(x)
>>> h = pe.squared_grads()[model.weight]   # Σ_i 2 x_i²
>>> torch.allclose(h, torch.tensor([[2.0, 8.0]]))
True
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.utils._pytree import tree_flatten

from blr.curvature.layers import FUNC, RULES, Rule, rule_for
from blr.curvature.likelihoods import FACTORED, Likelihood, resolve

__all__ = ["PerExample"]

Mode = Literal["ef", "ggn", "mc_fisher"]


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
        loss: for ``"ggn"``/``"mc_fisher"``: the likelihood applied to the model's output, a
            name of :data:`blr.curvature.NAMES` (``"cross_entropy"``, ``"bce_with_logits"``,
            ``"gaussian"`` with ``sigma2``, ``"mse"``, ...) or a
            :class:`~blr.curvature.Likelihood` (see its
            :meth:`~blr.curvature.Likelihood.hessian_factors`); ignored by ``"ef"``.
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
        loss: str | Likelihood | None = None,
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
        if mode != "ef" and loss is None:
            raise ValueError(
                f"mode={mode!r} needs loss= (the likelihood, e.g. 'cross_entropy'), got None"
            )
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
        self.likelihood = (
            None if mode == "ef" else resolve(loss, sigma2=sigma2, supported=FACTORED, arg="loss")
        )
        """The :class:`~blr.curvature.Likelihood` of ``loss`` (None for ``"ef"``)."""
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
    def _make_plan(self) -> list[tuple[nn.Module, Rule, list[tuple[str, nn.Parameter]]]]:
        plan, missing = [], []
        for name, m in self.model.named_modules():
            direct = [(n, p) for n, p in m._parameters.items() if p is not None and p.requires_grad]
            if not direct:
                continue
            rule = FUNC if self.method == "func" else rule_for(m)
            if rule is None:
                if self.method == "auto":
                    rule = FUNC
                else:
                    missing.append(f"{name or '<model>'} ({type(m).__name__})")
                    continue
            plan.append((m, rule, direct))
        if missing:
            known = ", ".join(c.__name__.lstrip("_") for c, _ in RULES)
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
            >>> from blr.curvature import PerExample
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

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Within it the hooks record nothing (forward passes that are not the minibatch's,
        e.g. an evaluation while the context stays open between optimizer steps).

        Example:
            >>> import torch
            >>> from blr.curvature import PerExample
            >>> model = torch.nn.Linear(2, 1)
            >>> with PerExample(model, mode="ef") as pe:
            ...     with pe.paused():
            ...         _ = model(torch.ones(3, 2))
            ...     pe.num_examples
            0
        """
        before, self._suspended = self._suspended, True
        try:
            yield
        finally:
            self._suspended = before

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

    def _forward_hook(self, rule: Rule, params, module, args, kwargs, output) -> None:
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
                V = self.likelihood.hessian_factors(out)
            else:
                K = self.mc_samples
                V = self.likelihood.sample_grads(out, K, generator=self.generator)
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
            >>> from blr.curvature import PerExample
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
            >>> from blr.curvature import PerExample
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
            >>> from blr.curvature import PerExample
            >>> shared = torch.nn.Linear(2, 2)
            >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), shared, shared)
            >>> _ = model[0].requires_grad_(False)  # frozen: no curvature
            >>> [tuple(p.shape) for p in PerExample(model).parameters()]  # shared: listed once
            [(2, 2), (2,)]
        """
        return iter(self._params.values())
