r"""Fused IVON step as one Triton kernel: the memory-bound fast path of :mod:`blr.optim` on GPUs.

One launch over flat fp32 buffers (m, ḡ, h) and the gradient ĝ of the current sample does the
whole IVON update of :func:`blr.kernels.diag_gaussian.ivon_step_` (single MC sample) and writes
the parameters for the next forward pass:

1. regenerate the current sample's z from its Philox key (no noise buffer is stored or read),
2. ĥ = N(h + δ)·(σ z ⊙ ĝ) with σ = (N(h + δ))^{-1/2} (``"price"``), or ĥ = N ĝ² (``"gradsq"``),
3. update ḡ, h (with the improved-BLR correction) and m exactly as ``ivon_step_`` does,
4. draw the next z' and store θ = m + σ' z' (σ' from the new h) into ``param_out``, cast to its
   dtype (bf16/fp16 parameters with fp32 state).

Traffic per element: read m, ḡ, h, ĝ; write m, ḡ, h, θ — 32 B with fp32 parameters, 28 B with
bf16 ones (AdamW(fused) moves ~28 B).

Noise scheme (reproducible, counter-based)
------------------------------------------
Draw ``k`` (k = 0, 1, 2, … counts the samples of one buffer) under the 64-bit key ``seed`` is

.. math::  z_i = \mathtt{tl.randn}(\text{seed},\ k\cdot 2^{32} + \text{base} + i),

i.e. Philox4x32-10 with key = seed and counter = (base + i, k, 0, 0), the first two output words
through Box–Muller. Draw k is a pure function of (seed, k, base, i): independent of the block
size, the grid and the launch order, and regenerable at any later step. With one MC sample per
step, draw 0 is the initial sample (:func:`ivon_fused_sample_`) and step t (1-based) consumes draw
t − 1 and writes draw t (the defaults of :func:`ivon_fused_step_`): a checkpoint needs only
``(seed, draw)``. Buffers that share a seed (per device/dtype groups) stay disjoint when each
gets ``base`` = its offset in a virtual concatenation (total < 2³²), or each its own seed.
:func:`ivon_randn_` writes a draw with the same generator; :func:`philox_randn` recomputes it
in pure torch (same integers, Box–Muller within float32 rounding) for paths without Triton.

CPU and CI: with ``TRITON_INTERPRET=1`` set **before triton is first imported** (``triton.jit``
and ``tl.randn`` pick the interpreter when they are decorated), the kernels run on CPU tensors
through Triton's numpy interpreter — slow, for tests only; :func:`ivon_step_reference_` is the
torch reference they are tested against. The module imports without triton installed
(:func:`triton_available` says whether the kernels can run); calling a kernel then raises.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from blr.kernels.diag_gaussian import ivon_bias, ivon_hess_estimate, ivon_step_

try:  # optional accelerator dependency
    import triton
    import triton.language as tl

    _TRITON_IMPORT_ERROR: BaseException | None = None
except ImportError as _e:  # pragma: no cover - exercised only without triton
    triton = None
    tl = None
    _TRITON_IMPORT_ERROR = _e

__all__ = [
    "ivon_fused_sample_",
    "ivon_fused_step_",
    "ivon_randn_",
    "ivon_step_reference_",
    "noise_counter",
    "philox_randn",
    "triton_available",
    "triton_interpreted",
]

_MAX_DRAW = 2**31  # the draw index occupies the counter's high 32-bit word (kept non-negative)
_BLOCK = 1024


def triton_available() -> bool:
    """Whether triton imports (the fused kernels can run: CUDA tensors, or CPU tensors in the
    interpreter).

    Example:
        >>> isinstance(triton_available(), bool)
        True
    """
    return triton is not None


def triton_interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` was set before
    triton was imported): then they take CPU tensors."""
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.randn, InterpretedFunction)


def noise_counter(draw: int, base: int = 0) -> int:
    """The Philox counter offset of element 0 of draw ``draw``: ``draw·2³² + base``.

    Example:
        >>> noise_counter(1, 5)
        4294967301
    """
    if not 0 <= draw < _MAX_DRAW:
        raise ValueError(f"draw must be in [0, 2**31), got {draw}")
    if not 0 <= base < 2**32:
        raise ValueError(f"base must be in [0, 2**32), got {base}")
    return (draw << 32) + base


def _check_seed(seed: int) -> int:
    seed = int(seed)
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return seed


# --------------------------------------------------------------------------------------------
# pure-torch Philox (same stream as tl.randn)
# --------------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF
_PHILOX_A, _PHILOX_B = 0xD2511F53, 0xCD9E8D57  # round multipliers (32-bit Philox)
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85  # Weyl key increments


def _mul32(a: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """(hi, lo) 32-bit words of a·x for a constant a < 2³² and x in [0, 2³²) (int64 tensors;
    x is split in 16-bit halves so that no product overflows int64)."""
    xh, xl = x >> 16, x & 0xFFFF
    ph, pl = a * xh, a * xl  # < 2^48
    hi = (ph + (pl >> 16)) >> 16
    lo = (((ph & 0xFFFF) << 16) + pl) & _M32
    return hi, lo


def philox_randn(
    n: int, *, seed: int, draw: int, base: int = 0, device: torch.device | str | None = None
) -> Tensor:
    """Draw ``draw`` of the kernels' noise for elements 0..n−1, in pure torch (int64 Philox
    arithmetic; no triton needed): the integers equal ``tl.randn``'s exactly, the float32
    Box–Muller step agrees within rounding of log/cos/sqrt (a few ulp).

    Example:
        >>> z = philox_randn(5, seed=1234, draw=0)
        >>> z.shape, z.dtype
        (torch.Size([5]), torch.float32)
    """
    seed = _check_seed(seed)
    ctr = torch.arange(n, dtype=torch.int64, device=device) + noise_counter(draw, base)
    c0, c1 = ctr & _M32, ctr >> 32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _M32, seed >> 32
    for _ in range(10):
        hi_b, lo_b = _mul32(_PHILOX_B, c2)
        hi_a, lo_a = _mul32(_PHILOX_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32

    def uniform(x: Tensor) -> Tensor:  # triton's uint_to_uniform_float on int32 bit patterns
        x = torch.where(x >= 2**31, _M32 - x, x)
        return x.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)

    u1 = uniform(c0).clamp_min_(1.0e-7)
    theta = torch.tensor(6.283185307179586, dtype=torch.float32) * uniform(c1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(theta)


# --------------------------------------------------------------------------------------------
# torch reference
# --------------------------------------------------------------------------------------------


def _sigma(hess: Tensor, *, ess: float, weight_decay: float) -> Tensor:
    """σ = (N(h + δ))^{-1/2}, as :func:`blr.kernels.diag_gaussian.ivon_noise` computes it."""
    return torch.rsqrt(hess.add(weight_decay).mul_(ess))


@torch.no_grad()
def ivon_step_reference_(
    mean: Tensor,
    momentum: Tensor,
    hess: Tensor,
    grad: Tensor,
    param_out: Tensor,
    z: Tensor,
    z_next: Tensor | None,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    ess: float,
    step: int,
    clip_radius: float = math.inf,
    debias: bool = True,
    hess_approx: str = "price",
    correction: bool = True,
) -> None:
    """What :func:`ivon_fused_step_` computes, in torch from given standard normals: ``z`` the
    current sample's (θ = m + σz was evaluated), ``z_next`` the next one (None: θ' = m).

    Built from :func:`~blr.kernels.diag_gaussian.ivon_hess_estimate` and
    :func:`~blr.kernels.diag_gaussian.ivon_step_`; with z = :func:`ivon_randn_` (or
    :func:`philox_randn`) of the same (seed, draw) it is the kernel's result within float32
    rounding.
    """
    g = grad.to(torch.float32)
    if hess_approx == "price":
        stat = z * _sigma(hess, ess=ess, weight_decay=weight_decay) * g
    elif hess_approx == "gradsq":
        stat = g * g
    else:
        raise ValueError(f"hess_approx must be 'price' or 'gradsq', got {hess_approx!r}")
    h_hat = ivon_hess_estimate(
        stat, hess, ess=ess, weight_decay=weight_decay, hess_approx=hess_approx
    )
    ivon_step_(
        mean,
        momentum,
        hess,
        g,
        h_hat,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        step=step,
        clip_radius=clip_radius,
        debias=debias,
        correction=correction,
    )
    if z_next is None:
        param_out.copy_(mean)
    else:
        param_out.copy_(mean + z_next * _sigma(hess, ess=ess, weight_decay=weight_decay))


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _store_param(ptr, offs, x, mask, RNE_BF16: tl.constexpr):
        """Store fp32 ``x`` cast to ``ptr``'s dtype. ``RNE_BF16``: round to bf16 by hand (round to
        nearest even, NaN → 0x7FC0, as torch does): the interpreter's own fp32 → bf16 cast
        truncates, where compiled Triton rounds to nearest even (``cvt.rn``)."""
        if RNE_BF16:
            bits = x.to(tl.uint32, bitcast=True)
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            rounded = tl.where(x != x, 0x7FC0, rounded)
            tl.store(ptr + offs, rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
        else:
            tl.store(ptr + offs, x.to(ptr.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["seed", "ctr0"])
    def _randn_kernel(out_ptr, n, seed, ctr0, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        z = tl.randn(seed, offs.to(tl.int64) + ctr0)
        tl.store(out_ptr + offs, z.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["seed", "ctr0"])
    def _sample_kernel(
        mean_ptr,
        hess_ptr,
        out_ptr,
        n,
        seed,
        ctr0,
        wd,
        ess,
        SUBTRACT: tl.constexpr,
        RNE_BF16: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        m = tl.load(mean_ptr + offs, mask=mask, other=0.0)
        h = tl.load(hess_ptr + offs, mask=mask, other=1.0)
        z = tl.randn(seed, offs.to(tl.int64) + ctr0)
        if SUBTRACT:
            theta = m - z * tl.rsqrt((h + wd) * ess)
        else:
            theta = m + z * tl.rsqrt((h + wd) * ess)
        _store_param(out_ptr, offs, theta, mask, RNE_BF16)

    @triton.jit(do_not_specialize=["seed", "ctr", "seed_next", "ctr_next"])
    def _ivon_step_kernel(
        mean_ptr,
        mom_ptr,
        hess_ptr,
        grad_ptr,
        out_ptr,
        n,
        seed,
        ctr,
        seed_next,
        ctr_next,
        lr,
        beta1,
        one_m_beta1,
        beta2,
        one_m_beta2,
        corr_coef,
        wd,
        wd_bias,
        bias,
        ess,
        clip,
        PRICE: tl.constexpr,
        CORRECTION: tl.constexpr,
        CLIP: tl.constexpr,
        SAMPLE: tl.constexpr,
        FROM_SAMPLE: tl.constexpr,
        RNE_BF16: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        m = tl.load(mean_ptr + offs, mask=mask, other=0.0)
        gbar = tl.load(mom_ptr + offs, mask=mask, other=0.0)
        h = tl.load(hess_ptr + offs, mask=mask, other=1.0)
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        idx = offs.to(tl.int64)
        if FROM_SAMPLE:  # the buffer holds θ = m + σz: m = θ − σz, as _sample_kernel undoes it
            z = tl.randn(seed, idx + ctr)
            m = m - z * tl.rsqrt((h + wd) * ess)
        # Hessian estimate ĥ from the OLD h (same op order as the torch reference)
        if PRICE:
            prec = (h + wd) * ess
            if not FROM_SAMPLE:
                z = tl.randn(seed, idx + ctr)
            h_hat = ((z * tl.rsqrt(prec)) * g) * prec
        else:
            h_hat = (g * g) * ess
        # fma where torch's `add_(x, alpha=a)` fuses a·x + y (its CPU vector and CUDA kernels do)
        gbar = tl.fma(g, one_m_beta1, gbar * beta1)
        h_new = tl.fma(h_hat, one_m_beta2, h * beta2)
        if CORRECTION:
            diff = h - h_hat
            h_new = h_new + tl.math.div_rn(corr_coef * (diff * diff), h + wd)  # as addcdiv_
        d = tl.math.div_rn(tl.fma(m, wd_bias, gbar), h_new + wd)
        d = tl.math.div_rn(d, bias)
        if CLIP:
            d = tl.clamp(
                d, -clip, clip, propagate_nan=tl.PropagateNan.ALL
            )  # NaN stays, as in torch
        m = tl.fma(d, -lr, m)
        tl.store(mean_ptr + offs, m, mask=mask)
        tl.store(mom_ptr + offs, gbar, mask=mask)
        tl.store(hess_ptr + offs, h_new, mask=mask)
        if SAMPLE:
            z_next = tl.randn(seed_next, idx + ctr_next)
            theta = m + z_next * tl.rsqrt((h_new + wd) * ess)
        else:
            theta = m
        _store_param(out_ptr, offs, theta, mask, RNE_BF16)


def _require_triton(*tensors: Tensor) -> None:
    if triton is None:
        raise RuntimeError(
            "blr.kernels.triton_ivon needs triton (`pip install triton`); without it use the "
            "torch path blr.kernels.diag_gaussian"
        ) from _TRITON_IMPORT_ERROR
    interpreted = triton_interpreted()
    for t in tensors:
        if t.device.type == "cpu" and not interpreted:
            raise RuntimeError(
                "the Triton IVON kernels got CPU tensors: they run on CPU only in Triton's "
                "interpreter, with TRITON_INTERPRET=1 set before triton is first imported "
                "(tests); otherwise use blr.kernels.diag_gaussian on CPU"
            )
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(_ivon_step_kernel, InterpretedFunction) != interpreted:
        raise RuntimeError(
            "triton and blr.kernels.triton_ivon were imported in different TRITON_INTERPRET "
            "modes (it changed in between): set it before either is imported"
        )


def _on_device(t: Tensor):
    """Launch on ``t``'s CUDA device (Triton launches on the current one)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _check_flat(n: int, **tensors: Tensor) -> None:
    device = None
    for name, t in tensors.items():
        if t.dim() != 1 or not t.is_contiguous() or t.numel() != n:
            raise ValueError(f"{name} must be a contiguous 1-D tensor of {n} elements")
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(f"all tensors must be on one device; {name} is on {t.device}")
    if n >= 2**31:
        raise ValueError("buffers of 2**31 elements or more are not supported")


def _check_state(**tensors: Tensor) -> None:
    for name, t in tensors.items():
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {t.dtype}")


def _rne_bf16(out: Tensor) -> bool:
    return out.dtype == torch.bfloat16 and triton_interpreted()


def _grid(n: int, block: int) -> tuple[int]:
    return (triton.cdiv(n, block),)


def ivon_randn_(out: Tensor, *, seed: int, draw: int, base: int = 0) -> Tensor:
    """Write draw ``draw`` of the kernels' standard normals (see the module docstring) into the
    flat tensor ``out`` (cast to its dtype) and return it."""
    _require_triton(out)
    n = out.numel()
    _check_flat(n, out=out)
    ctr0 = noise_counter(draw, base)
    if n + base > 2**32:
        raise ValueError("base + numel must be at most 2**32")
    with _on_device(out):
        _randn_kernel[_grid(n, _BLOCK)](
            out, n, _check_seed(seed), ctr0, BLOCK=_BLOCK, enable_fp_fusion=False
        )
    return out


def ivon_fused_sample_(
    mean: Tensor,
    hess: Tensor,
    param_out: Tensor,
    *,
    seed: int,
    draw: int = 0,
    ess: float,
    weight_decay: float,
    base: int = 0,
    block_size: int = _BLOCK,
    subtract: bool = False,
) -> Tensor:
    """Write a posterior sample θ = m + σz, σ = (N(h + δ))^{-1/2}, z = draw ``draw`` under
    ``seed``, into ``param_out`` (any float dtype; cast on store): the first sample before the
    first :func:`ivon_fused_step_`. ``param_out`` may be ``mean`` itself (in place: each element
    is read before it is written). With ``subtract`` it writes m − σz instead: applied to a
    buffer that holds θ = m + σz it undoes the draw in place (exact up to one rounding).
    Returns ``param_out``."""
    _require_triton(mean, hess, param_out)
    n = mean.numel()
    _check_flat(n, mean=mean, hess=hess, param_out=param_out)
    _check_state(mean=mean, hess=hess)
    if n + base > 2**32:
        raise ValueError("base + numel must be at most 2**32")
    with _on_device(mean):
        _sample_kernel[_grid(n, block_size)](
            mean,
            hess,
            param_out,
            n,
            _check_seed(seed),
            noise_counter(draw, base),
            float(weight_decay),
            float(ess),
            SUBTRACT=bool(subtract),
            RNE_BF16=_rne_bf16(param_out),
            BLOCK=block_size,
            enable_fp_fusion=False,
        )
    return param_out


def ivon_fused_step_(
    mean: Tensor,
    momentum: Tensor,
    hess: Tensor,
    grad: Tensor,
    param_out: Tensor,
    *,
    seed: int,
    draw: int,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    ess: float,
    step: int,
    clip_radius: float = math.inf,
    debias: bool = True,
    hess_approx: str = "price",
    correction: bool = True,
    next_seed: int | None = None,
    next_draw: int | None = None,
    sample_next: bool = True,
    mean_from_sample: bool = False,
    base: int = 0,
    block_size: int = _BLOCK,
) -> None:
    """One fused IVON step (single MC sample), in place on ``mean``, ``momentum``, ``hess``, and
    the next sample into ``param_out``.

    Args:
        mean, momentum, hess: flat contiguous fp32 state (m, ḡ, h), updated in place.
        grad: ĝ at the current sample θ = m + σz (any float dtype, read as fp32).
        param_out: receives θ' = m + σ'z' (or m when ``sample_next`` is False), cast to its
            dtype; it may be ``mean`` itself (each element is loaded before it is stored),
            nothing else.
        seed, draw: the key and draw index of the current sample's z (module docstring).
        lr, beta1, beta2, weight_decay, ess, step, clip_radius, debias, correction: as in
            :func:`blr.kernels.diag_gaussian.ivon_step_` (``ess`` is N).
        hess_approx: ``"price"`` (ĥ = N(h + δ)·σz⊙ĝ) or ``"gradsq"`` (ĥ = N ĝ²).
        next_seed, next_draw: key and draw of z' (defaults: ``seed``, ``draw + 1``).
        sample_next: False writes the mean (evaluation) and skips drawing z'.
        mean_from_sample: ``mean`` holds the current sample θ = m + σz, not m: the kernel
            recovers m = θ − σz (as ``ivon_fused_sample_(subtract=True)`` would) before the
            update. With ``param_out`` = ``mean`` and ``sample_next`` the buffer goes from θ to
            θ' in one pass (the weights hold a draw between steps; m is never stored).
        base: counter offset of element 0 (buffers sharing a seed).
        block_size: elements per program (power of two).
    """
    _require_triton(mean, momentum, hess, grad, param_out)
    n = mean.numel()
    _check_flat(n, mean=mean, momentum=momentum, hess=hess, grad=grad, param_out=param_out)
    _check_state(mean=mean, momentum=momentum, hess=hess)
    if hess_approx not in ("price", "gradsq"):
        raise ValueError(f"hess_approx must be 'price' or 'gradsq', got {hess_approx!r}")
    if n + base > 2**32:
        raise ValueError("base + numel must be at most 2**32")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    seed = _check_seed(seed)
    next_seed = seed if next_seed is None else _check_seed(next_seed)
    next_draw = draw + 1 if next_draw is None else next_draw
    bias = ivon_bias(beta1, step, debias)
    clip = math.isfinite(clip_radius)
    with _on_device(mean):
        _ivon_step_kernel[_grid(n, block_size)](
            mean,
            momentum,
            hess,
            grad,
            param_out,
            n,
            seed,
            noise_counter(draw, base),
            next_seed,
            noise_counter(next_draw, base),
            float(lr),
            float(beta1),
            1.0 - beta1,
            float(beta2),
            1.0 - beta2,
            0.5 * (1.0 - beta2) ** 2,
            float(weight_decay),
            weight_decay * bias,
            bias,
            float(ess),
            float(clip_radius) if clip else 0.0,
            PRICE=hess_approx == "price",
            CORRECTION=bool(correction),
            CLIP=clip,
            SAMPLE=bool(sample_next),
            FROM_SAMPLE=bool(mean_from_sample),
            RNE_BF16=_rne_bf16(param_out),
            BLOCK=block_size,
            enable_fp_fusion=False,
        )
