"""The fused Triton IVON kernel equals the torch reference (``ivon_step_`` with the kernel's own
noise) within float32 rounding; on CPU through Triton's interpreter.

``TRITON_INTERPRET=1`` only takes effect if it is set before triton is first imported (it decides
what ``triton.jit`` and ``tl.randn`` are when they are decorated), so it is set here, at import,
when there is no GPU. If something imported triton earlier in the session without it, the kernel
tests skip with that reason (set the variable in the environment or a conftest to avoid that).
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from blr.kernels import triton_ivon as T

_INTERPRETED = T.triton_interpreted()
DEVICE = "cuda" if torch.cuda.is_available() and not _INTERPRETED else "cpu"
if not T.triton_available():
    _SKIP = "triton is not installed"
elif DEVICE == "cpu" and not _INTERPRETED:
    _SKIP = "no GPU and Triton's interpreter is off (TRITON_INTERPRET=1 before triton is imported)"
else:
    _SKIP = ""
needs_kernel = pytest.mark.skipif(bool(_SKIP), reason=_SKIP)

N = 3000  # not a multiple of the block size: masked tail
SEED = 2**40 + 12345  # exercises both 32-bit words of the Philox key

# tl.randn(1234, i) for i = 0..3 (draw 0, base 0), from the Triton interpreter
GOLDEN = [-0.44222745299339294, 0.11843180656433105, 1.157851219177246, -0.19024240970611572]


def _close(actual, expected, rtol=1e-6):
    """Equal within float32 rounding: |a − e| ≤ rtol·(|e| + max|e|·1e-1) elementwise."""
    expected = expected.to(torch.float32)
    actual = actual.to(torch.float32)
    scale = expected.abs() + 0.1 * expected.abs().max()
    err = (actual - expected).abs() / scale
    assert err.max().item() <= rtol, f"max scaled error {err.max().item():.3g}"


def _state(seed=0, n=N):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, generator=g)
    momentum = 0.1 * torch.randn(n, generator=g)
    hess = 0.5 + torch.rand(n, generator=g)
    grad = torch.randn(n, generator=g)
    return [t.to(DEVICE) for t in (mean, momentum, hess, grad)]


def _z(draw, n=N, seed=SEED):
    return T.ivon_randn_(torch.empty(n, device=DEVICE), seed=seed, draw=draw)


HYPER = dict(lr=0.05, beta1=0.9, beta2=0.99995, weight_decay=1e-3, ess=2000.0, step=3)


def test_philox_randn_golden_values():
    """The pure-torch Philox reproduces tl.randn's stream (no triton needed)."""
    z = T.philox_randn(4, seed=1234, draw=0)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, torch.tensor(GOLDEN), rtol=1e-6, atol=1e-6)


def test_import_without_triton(monkeypatch):
    """The module imports without triton; the kernels then raise a clear error."""
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("_triton_ivon_without_triton", T.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert not mod.triton_available()
    assert not mod.triton_interpreted()
    m = torch.zeros(4)
    with pytest.raises(RuntimeError, match="needs triton"):
        mod.ivon_fused_sample_(m, m + 1, m.clone(), seed=0, ess=1.0, weight_decay=0.0)
    assert mod.philox_randn(3, seed=0, draw=1).shape == (3,)


def test_noise_counter():
    assert T.noise_counter(0) == 0
    assert T.noise_counter(2, 7) == 2 * 2**32 + 7
    with pytest.raises(ValueError):
        T.noise_counter(-1)
    with pytest.raises(ValueError):
        T.noise_counter(0, 2**32)


@needs_kernel
def test_randn_stream():
    """Kernel noise = pure-torch Philox; draws are reproducible, distinct, and base-shiftable."""
    z = _z(0)
    torch.testing.assert_close(z.cpu(), T.philox_randn(N, seed=SEED, draw=0), rtol=1e-5, atol=2e-6)
    assert torch.equal(z, _z(0))
    assert not torch.allclose(z, _z(1))
    assert not torch.allclose(z, _z(0, seed=SEED + 1))
    shifted = T.ivon_randn_(torch.empty(N - 100, device=DEVICE), seed=SEED, draw=0, base=100)
    assert torch.equal(shifted, z[100:])
    assert abs(z.mean().item()) < 5 / math.sqrt(N) and abs(z.std().item() - 1) < 5 / math.sqrt(N)
    golden = T.ivon_randn_(torch.empty(4, device=DEVICE), seed=1234, draw=0)
    torch.testing.assert_close(golden.cpu(), torch.tensor(GOLDEN), rtol=1e-6, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("hess_approx", ["price", "gradsq"])
@pytest.mark.parametrize("clip_radius", [math.inf, 0.05])
@pytest.mark.parametrize("debias", [True, False])
def test_fused_step_matches_reference(hess_approx, clip_radius, debias):
    mean, momentum, hess, grad = _state()
    ref = [t.clone() for t in (mean, momentum, hess)]
    out, ref_out = torch.empty_like(mean), torch.empty_like(mean)
    kw = dict(HYPER, clip_radius=clip_radius, debias=debias, hess_approx=hess_approx)
    T.ivon_fused_step_(mean, momentum, hess, grad, out, seed=SEED, draw=4, **kw)
    T.ivon_step_reference_(*ref, grad, ref_out, _z(4), _z(5), **kw)
    for a, b in zip((mean, momentum, hess, out), (*ref, ref_out)):
        _close(a, b)
    if math.isfinite(clip_radius):  # the clip binds for some elements
        mean0 = _state()[0]
        assert ((mean - mean0).abs() >= HYPER["lr"] * clip_radius * (1 - 1e-6)).any()


@needs_kernel
def test_bf16_params_and_grad_no_correction():
    mean, momentum, hess, grad = _state(seed=1)
    grad = grad.to(torch.bfloat16)
    ref = [t.clone() for t in (mean, momentum, hess)]
    out = torch.empty(N, dtype=torch.bfloat16, device=DEVICE)
    ref_out = torch.empty_like(out)
    kw = dict(HYPER, correction=False)
    T.ivon_fused_step_(mean, momentum, hess, grad, out, seed=SEED, draw=0, **kw)
    T.ivon_step_reference_(*ref, grad, ref_out, _z(0), _z(1), **kw)
    for a, b in zip((mean, momentum, hess), ref):
        _close(a, b)
    assert out.dtype == torch.bfloat16
    # bf16 rounding of (nearly) equal fp32 values: equal up to one bf16 ulp where they straddle
    torch.testing.assert_close(out, ref_out, rtol=2**-7, atol=0.0)
    if DEVICE == "cpu":  # the interpreter's fp32 values are bitwise the reference's
        assert torch.equal(out, ref_out)
    else:
        assert (out == ref_out).float().mean() > 0.99


@needs_kernel
def test_two_steps_seed_chaining():
    """sample(draw 0) → step(0 → 1) → step(1 → 2) on a quadratic loss, gradient at the written
    sample; the reference regenerates draws 0, 1, 2 from the same key."""
    mean, momentum, hess, _ = _state(seed=2)
    a = torch.linspace(0.5, 2.0, N, device=DEVICE)
    ref = [t.clone() for t in (mean, momentum, hess)]
    theta, ref_theta = torch.empty_like(mean), torch.empty_like(mean)
    hyp = dict(HYPER, weight_decay=1e-2)
    T.ivon_fused_sample_(mean, hess, theta, seed=SEED, ess=hyp["ess"], weight_decay=1e-2)
    ref_theta.copy_(ref[0] + _z(0) * torch.rsqrt((ref[2] + 1e-2) * hyp["ess"]))
    _close(theta, ref_theta)
    for step in (1, 2):
        kw = dict(hyp, step=step)
        T.ivon_fused_step_(mean, momentum, hess, a * theta, theta, seed=SEED, draw=step - 1, **kw)
        T.ivon_step_reference_(*ref, a * ref_theta, ref_theta, _z(step - 1), _z(step), **kw)
        for x, y in zip((mean, momentum, hess, theta), (*ref, ref_theta)):
            _close(x, y)


@needs_kernel
def test_eval_mean_and_block_size_independence():
    mean, momentum, hess, grad = _state(seed=3)
    copies = [t.clone() for t in (mean, momentum, hess)]
    out, out2 = torch.empty_like(mean), torch.empty_like(mean)
    T.ivon_fused_step_(mean, momentum, hess, grad, out, seed=SEED, draw=7, **HYPER)
    T.ivon_fused_step_(*copies, grad, out2, seed=SEED, draw=7, block_size=256, **HYPER)
    for a, b in zip((mean, momentum, hess, out), (*copies, out2)):
        assert torch.equal(a, b)
    # sample_next=False writes the mean; next_seed/next_draw pick the next sample's key
    mean, momentum, hess, grad = _state(seed=3)
    T.ivon_fused_step_(mean, momentum, hess, grad, out, seed=SEED, draw=7, sample_next=False,
                       **HYPER)  # fmt: skip
    assert torch.equal(out, mean)
    mean, momentum, hess, grad = _state(seed=3)
    T.ivon_fused_step_(mean, momentum, hess, grad, out, seed=SEED, draw=7, next_seed=SEED + 1,
                       next_draw=0, **HYPER)  # fmt: skip
    z = _z(0, seed=SEED + 1)
    _close(out, mean + z * torch.rsqrt((hess + HYPER["weight_decay"]) * HYPER["ess"]))


@needs_kernel
def test_argument_checks():
    mean, momentum, hess, grad = _state()
    out = torch.empty_like(mean)
    with pytest.raises(ValueError, match="hess_approx"):
        T.ivon_fused_step_(mean, momentum, hess, grad, out, seed=0, draw=0, hess_approx="x",
                           **HYPER)  # fmt: skip
    with pytest.raises(TypeError, match="float32"):
        T.ivon_fused_step_(mean, momentum.double(), hess, grad, out, seed=0, draw=0, **HYPER)
    with pytest.raises(ValueError, match="contiguous"):
        T.ivon_fused_step_(mean, momentum, hess, grad[:-1], out, seed=0, draw=0, **HYPER)
    with pytest.raises(ValueError, match="seed"):
        T.ivon_fused_step_(mean, momentum, hess, grad, out, seed=-1, draw=0, **HYPER)


@needs_kernel
def test_nan_gradient_propagates_through_clip():
    """A NaN gradient gives a NaN mean, as torch's clamp does (not a silently clipped step)."""
    mean, momentum, hess, grad = _state(seed=4)
    grad[5] = float("nan")
    ref = [t.clone() for t in (mean, momentum, hess)]
    out, ref_out = torch.empty_like(mean), torch.empty_like(mean)
    kw = dict(HYPER, clip_radius=0.05, hess_approx="gradsq")
    T.ivon_fused_step_(mean, momentum, hess, grad, out, seed=SEED, draw=0, **kw)
    T.ivon_step_reference_(*ref, grad, ref_out, _z(0), _z(1), **kw)
    assert mean[5].isnan() and ref[0][5].isnan()
    finite = torch.ones(N, dtype=torch.bool, device=DEVICE)
    finite[5] = False
    _close(mean[finite], ref[0][finite])


_COMPILE_CHECK = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from blr.kernels import triton_ivon as T
sig = {n: "*fp32" for n in ("mean_ptr", "mom_ptr", "hess_ptr")}
sig.update(grad_ptr="*bf16", out_ptr="*bf16", n="i32", seed="i64", ctr="i64", seed_next="i64",
           ctr_next="i64")
for a in ("lr beta1 one_m_beta1 beta2 one_m_beta2 corr_coef wd wd_bias bias ess clip").split():
    sig[a] = "fp32"
consts = dict(PRICE=True, CORRECTION=True, CLIP=True, SAMPLE=True, RNE_BF16=False, BLOCK=1024)
sig.update({k: "constexpr" for k in consts})
src = ASTSource(fn=T._ivon_step_kernel, signature=sig, constexprs=consts)
ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                     options={"enable_fp_fusion": False}).asm["ptx"]
assert "div.rn.f32" in ptx and "cvt.rn.bf16" in ptx and "div.full" not in ptx
print("ok")
"""


@pytest.mark.slow
@pytest.mark.skipif(not T.triton_available(), reason="triton is not installed")
def test_step_kernel_compiles_for_sm90():
    """The compiler accepts what the interpreter ran (no GPU needed: PTX for sm_90), with IEEE
    division and round-to-nearest bf16 stores. A subprocess: the interpreter is process-wide."""
    import subprocess

    env = dict(os.environ, TRITON_INTERPRET="0")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, "-c", _COMPILE_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    if res.returncode != 0 and "ptxas" in res.stderr.lower() and "not found" in res.stderr.lower():
        pytest.skip("no ptxas for the CUDA backend")
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
