"""bSAM: Bayesian sharpness-aware minimization (Möllenhoff & Khan, ICLR 2023) as a
``torch.optim`` optimizer, on the weight-perturbation machinery of :mod:`blr.optim`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from blr.optim._args import SamplingOptions, Unpack, hyper_rules
from blr.optim._base import SamplingOptimizer
from blr.optim._buckets import Bucket


class BSAM(SamplingOptimizer):
    r"""bSAM (Möllenhoff & Khan, "SAM as an Optimal Relaxation of Bayes", ICLR 2023): a diagonal
    Gaussian q = N(m, 1/(N s)) trained by the BLR with the gradient taken at a SAM-style
    adversarial point and a √s|g₁| Hessian surrogate (derivations/bsam.py derives which parts
    are the BLR). One step, with ℓ_B the minibatch's mean loss:

    .. math::
        \theta &= m + z/\sqrt{N s},\quad g_1 = \nabla\ell_B(\theta),\quad
        \varepsilon = r\,g_1/s,\quad g = \nabla\ell_B(m + \varepsilon),\\
        \bar g &\leftarrow \beta_1\bar g + (1-\beta_1)(g + \delta m),\qquad
        m \leftarrow m - \alpha\,\bar g/s,\\
        s &\leftarrow \beta_2 s + (1-\beta_2)\big(\sqrt{s}\,|g_1| + c + \delta\big)

    (m updated with the old s). With no draw (``sample=False``: θ = m) and a frozen s
    (``beta2=1``, ``s_init=1``) it is SAM with an unnormalized ascent step ε = r∇ℓ_B(m) and
    heavy-ball momentum, its point-estimate limit (a test checks both).

    A step needs two gradients: ``step(closure)`` calls the closure at a posterior draw (inside
    ``sampled_params(train=True)``) and at the adversarial point (inside
    :meth:`adversarial_params`); in a loop without a closure, take them the same way and call
    ``step()``.

    Args:
        params: parameters or param groups.
        lr: α, the mean's rate.
        ess: N, the training-set size.
        rho: r > 0, the radius of the adversarial step.
        beta1, beta2: rates of ḡ (in [0, 1)) and s (in [0, 1]).
        weight_decay: δ ≥ 0, the prior precision per example (inside s).
        damping: c ≥ 0, added to the Hessian surrogate.
        s_init: s₀ > 0 (it includes δ).
        sample: draw θ ~ q for g₁ (bSAM) or take θ = m (SAM).
        nonfinite, seed, missing_sample, process_group, sync: as in
            :class:`~blr.optim.IVON`.

    Example:
        >>> import torch
        >>> from blr.optim import BSAM
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = BSAM(model.parameters(), lr=0.05, ess=64, rho=0.05, seed=0)
        >>> x, y = torch.randn(64, 3), torch.randn(64, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
        >>> opt.param_groups[0]["step"]
        1
    """

    _state_names = ("mean", "momentum", "scale")
    _hyper = hyper_rules(
        nonnegative=("lr", "weight_decay", "damping"),
        positive=("ess", "rho", "s_init"),
        rate=("beta1",),
        rate_closed=("beta2",),
    )
    _momentum_key = "beta1"
    # GradScaler hands its scale to step(), where BSAM refuses it: g₁ is used before step()
    _step_supports_amp_scaling = True
    _defer_stat = False  # g₁ is kept when the sample is collected (zero_grad may follow)

    def __init__(
        self,
        params: Any,
        lr: float,
        ess: float,
        rho: float = 0.05,
        beta1: float = 0.9,
        beta2: float = 0.999,
        weight_decay: float = 1e-4,
        damping: float = 0.0,
        s_init: float = 1.0,
        *,
        sample: bool = True,
        **options: Unpack[SamplingOptions],
    ) -> None:
        if int(options.get("mc_samples", 1)) != 1:
            raise ValueError("mc_samples: BSAM takes one draw per step (m-sharpness 1)")
        defaults = dict(
            lr=lr, ess=ess, rho=rho, beta1=beta1, beta2=beta2, weight_decay=weight_decay,
            damping=damping, s_init=s_init,
        )  # fmt: skip
        super().__init__(params, defaults, **options)
        self.sample = bool(sample)
        self._adversarial = False  # the adversarial gradient of this step is collected
        self._hold_draw()

    # ------------------------------------------------------------------ state, draws
    def _init_bucket(self, group: dict, bucket: Bucket) -> None:
        bucket.state["scale"].fill_(group["s_init"])

    def _noise(self, group: dict, bucket: Bucket, generator: torch.Generator) -> None:
        noise = bucket.noise
        torch.randn(noise.shape, generator=generator, out=noise)
        if not self.sample:  # SAM: θ = m (the draw is consumed all the same)
            noise.zero_()
            return
        noise.mul_(torch.rsqrt(bucket.state["scale"] * group["ess"]))

    def _sample_stat(self, group: dict, bucket: Bucket, grad: Tensor, out: Tensor) -> Tensor:
        return out.copy_(grad)  # g₁ itself: ε and √s|g₁| are formed from it

    def _posterior_fields(
        self, group: dict, param: Tensor, state: dict[str, Tensor]
    ) -> tuple[Tensor, ...]:
        """N(m, 1/(N s)) as λ = (S m, −½S), S = N s."""
        prec = group["ess"] * state["scale"]
        return prec * state["mean"], -0.5 * prec

    # ------------------------------------------------------------------ the adversarial point
    @contextlib.contextmanager
    def adversarial_params(self) -> Iterator[None]:
        """Within the context the parameters hold m + ε, ε = r g₁/s, with g₁ the gradient of
        the sample just collected (``sampled_params(train=True)``) and the gradients zeroed:
        compute the loss and ``backward`` inside; ``step()`` takes that gradient as g. On exit
        the parameters hold m again (up to one rounding).

        Example:
            >>> import torch
            >>> from blr.optim import BSAM
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = BSAM(model.parameters(), lr=0.05, ess=64, seed=0)
            >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
            >>> with opt.sampled_params(train=True):
            ...     torch.nn.functional.mse_loss(model(x), y).backward()
            >>> with opt.adversarial_params():
            ...     torch.nn.functional.mse_loss(model(x), y).backward()
            >>> opt.step()
        """
        if self._count != 1 or self._adversarial:
            raise RuntimeError(
                "adversarial_params() follows exactly one sampled_params(train=True) block of "
                f"this step (collected: {self._count}, adversarial already taken: "
                f"{self._adversarial})"
            )
        self._release_held()
        self._collected_norm = None  # (the gradients are replaced on purpose: g at m + ε)
        groups = self._all_buckets()
        with torch.no_grad():
            for group, buckets in zip(self.param_groups, groups):
                for b in buckets:
                    b.zero_grad()
                    b.add_to_params(self._epsilon(group, b), alpha=1.0)
        try:
            with torch.enable_grad():
                yield
        finally:
            with torch.no_grad():
                for group, buckets in zip(self.param_groups, groups):
                    for b in buckets:
                        b.add_to_params(self._epsilon(group, b), alpha=-1.0)
        for buckets in groups:
            for b in buckets:
                b.sync_grads()
        self._adversarial = True

    def _epsilon(self, group: dict, bucket: Bucket) -> Tensor:
        """ε = r g₁/s (into the bucket's work space)."""
        out = torch.empty_like(bucket.noise) if bucket.work is None else bucket.work
        return torch.div(self._g1(bucket), bucket.state["scale"], out=out).mul_(group["rho"])

    def _g1(self, bucket: Bucket) -> Tensor:
        """g₁: kept in the draw buffer when the sample is collected, or moved out of it by
        :meth:`_stash` before a prediction draw overwrites that buffer."""
        return bucket.acc_stat if self._stashed else bucket.noise

    def _stash(self, draw: bool = True) -> None:
        """A draw between the collection of g₁ and ``step()`` (a prediction draw, e.g. an
        evaluation inside the step) would overwrite g₁ in the draw buffer: copy it out first.
        ``zero_grad`` leaves the draw buffer alone (nothing to do)."""
        if not draw or self._count != 1 or self._stashed:
            return
        for buckets in self._all_buckets():
            for b in buckets:
                if b.acc_stat is None:
                    b.acc_stat = b.empty()
                b.acc_stat.copy_(b.noise)
        self._stashed = True

    def _sample_buffers(self, b: Bucket) -> tuple[Tensor, Tensor | None]:
        return b.state_grad, self._g1(b)  # (g at m + ε, g₁)

    # ------------------------------------------------------------------ the step
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One bSAM step. With a ``closure`` (zero the gradients, compute the loss,
        ``backward``, return the loss) it is called at a posterior draw and at the adversarial
        point; without one, the two gradients must have been taken (``sampled_params(train=
        True)``, then :meth:`adversarial_params`). Returns the loss at the draw (with a
        closure), else None.

        Example:
            >>> import torch
            >>> from blr.optim import BSAM
            >>> model = torch.nn.Linear(2, 1)
            >>> opt = BSAM(model.parameters(), lr=0.1, ess=10, seed=0)
            >>> def closure():
            ...     opt.zero_grad()
            ...     loss = model(torch.ones(4, 2)).pow(2).mean()
            ...     loss.backward()
            ...     return loss
            >>> _ = opt.step(closure)
            >>> opt.state_dict()["state"][0]["scale"].shape
            torch.Size([1, 2])
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                with self.sampled_params(train=True):
                    loss = closure().detach()
                with self.adversarial_params():
                    closure()
        if getattr(self, "grad_scale", None) is not None:
            raise RuntimeError("BSAM does not take part in GradScaler's protocol yet")
        if self._count and not self._adversarial:
            self._reset_samples()
            raise RuntimeError(
                "BSAM.step() needs the gradient at the adversarial point: take it inside "
                "adversarial_params() after sampled_params(train=True), or pass a closure"
            )
        self._adversarial = False
        return super().step() if closure is None else (super().step(), loss)[1]

    def _update(self, group: dict, bucket: Bucket, g_hat: Tensor, stat: Tensor) -> None:
        """ḡ ← β₁ḡ + (1 − β₁)(g + δm); m ← m − αḡ/s; s ← β₂s + (1 − β₂)(√s|g₁| + c + δ)."""
        m, mom, s = bucket.state["mean"], bucket.state["momentum"], bucket.state["scale"]
        b1, b2, delta = group["beta1"], group["beta2"], group["weight_decay"]
        surrogate = s.sqrt().mul_(stat.abs()).add_(group["damping"] + delta)  # (old s)
        mom.mul_(b1).add_(torch.add(g_hat, m, alpha=delta), alpha=1.0 - b1)
        m.addcdiv_(mom, s, value=-group["lr"])
        s.mul_(b2).add_(surrogate, alpha=1.0 - b2)
