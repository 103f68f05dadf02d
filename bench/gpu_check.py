"""One GPU run: the fused Triton IVON step against the torch path, then optimizer-side timings
and peak memory on the issue's two models (8 × Linear 4096 + GELU, 134M parameters; ResNet-50,
25.6M parameters in 161 tensors) for AdamW (fused, foreach), ivon-opt 0.1.3 (if installed),
blr.optim.IVON (torch path; fused='triton', the optimizer driving the Triton kernels in three
passes per step; with draw_ahead=True in one), the fused Triton step alone; peak GPU memory
and the bytes the optimizer holds. Well under 10 minutes on an H100.

    python bench/gpu_check.py                 # on the GPU machine
    python bench/gpu_check.py --small         # a dry run on CPU (Triton interpreted), seconds

Prints a table and, last, one JSON line with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from blr.apps.bench import _one_step, held_bytes, train_step_table
from blr.kernels import triton_ivon
from blr.optim import IVON


def mlp(width: int, depth: int = 8) -> nn.Module:
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


def resnet50(base: int = 64, classes: int = 1000) -> nn.Module:
    """ResNet-50's layout (161 parameter tensors at base 64), without torchvision."""
    layers = [nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base), nn.ReLU()]
    cin = base
    for i, blocks in enumerate((3, 4, 6, 3)):
        width = base * 2**i
        for j in range(blocks):
            layers.append(Bottleneck(cin, width, 2 if j == 0 and i > 0 else 1))
            cin = 4 * width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def check_kernel(device: torch.device, n: int) -> dict[str, float]:
    """The fused kernel vs the torch reference on the same noise, on the device and on CPU."""
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(n, generator=g)
    mom = 0.1 * torch.randn(n, generator=g)
    hess = torch.rand(n, generator=g) + 0.5
    grad = torch.randn(n, generator=g)
    kw = dict(lr=0.1, beta1=0.9, beta2=0.999, weight_decay=1e-4, ess=1e4, step=3)
    out = {}
    dev = [t.to(device) for t in (mean, mom, hess, grad)]
    param = torch.empty(n, device=device)
    z = triton_ivon.ivon_randn_(torch.empty(n, device=device), seed=7, draw=2)
    z_next = triton_ivon.ivon_randn_(torch.empty(n, device=device), seed=7, draw=3)
    ref = [t.clone() for t in (mean, mom, hess)]
    ref_param = torch.empty(n)
    triton_ivon.ivon_step_reference_(*ref, grad, ref_param, z.cpu(), z_next.cpu(), **kw)
    triton_ivon.ivon_fused_step_(*dev[:3], dev[3], param, seed=7, draw=2, **kw)
    for name, a, b in zip(
        ("mean", "momentum", "hess", "param"), [*dev[:3], param], [*ref, ref_param]
    ):
        out[name] = float((a.cpu() - b).abs().max() / b.abs().max())  # norm-wise relative
    return out


def time_opt(make_model, make_opt, device, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = make_model().to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    opt = make_opt(params)
    times = []
    for i in range(repeats + 3):
        sync(device)
        t0 = time.perf_counter()
        _one_step(opt, params, grads)
        sync(device)
        if i >= 3:
            times.append(1e3 * (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    held = held_bytes(opt, params) / 2**20
    del opt, model, params, grads
    return {"ms": statistics.median(times), "peak_gib": peak, "held_mib": held}


def time_fused(numel: int, device: torch.device, repeats: int) -> float:
    bufs = [torch.zeros(numel, device=device) for _ in range(4)]
    bufs[2].fill_(1.0)
    param = torch.empty(numel, device=device)
    kw = dict(lr=0.1, beta1=0.9, beta2=0.99999, weight_decay=1e-4, ess=1e6)
    times = []
    for i in range(repeats + 3):
        sync(device)
        t0 = time.perf_counter()
        triton_ivon.ivon_fused_step_(*bufs, param, seed=1, draw=i, step=i + 1, **kw)
        sync(device)
        if i >= 3:
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny models: a CPU dry run")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (interpreted)"
    print(
        f"device: {name}, torch {torch.__version__}, triton available: "
        f"{triton_ivon.triton_available()}"
    )
    record: dict = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    record["kernel_max_rel_diff"] = check_kernel(device, 3001 if args.small else 1_000_003)
    print("fused kernel vs torch path, max |Δ| / max |ref|:", record["kernel_max_rel_diff"])
    models = {
        "mlp": (lambda: mlp(64, 2)) if args.small else (lambda: mlp(4096)),
        "resnet50": (lambda: resnet50(4, 10)) if args.small else resnet50,
    }
    makers = {
        "adamw-fused": lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
        "adamw-foreach": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
        "blr IVON": lambda p: IVON(p, lr=0.1, ess=1e6, seed=0),
    }
    if device.type == "cuda" or triton_ivon.triton_interpreted():
        makers["blr IVON fused=triton"] = lambda p: IVON(p, lr=0.1, ess=1e6, seed=0, fused="triton")
        makers["blr IVON triton ahead"] = lambda p: IVON(
            p, lr=0.1, ess=1e6, seed=0, fused="triton", draw_ahead=True
        )
    try:
        import ivon

        makers["ivon-opt 0.1.3"] = lambda p: ivon.IVON(p, lr=0.1, ess=1e6)
    except ImportError:
        print("ivon-opt not installed: no ivon-opt row")
    repeats = 2 if args.small else args.repeats
    rows = []
    for mname, make_model in models.items():
        numel = sum(p.numel() for p in make_model().parameters())
        for oname, make_opt in makers.items():
            r = time_opt(make_model, make_opt, device, repeats)
            rows.append({"model": mname, "params": numel, "optimizer": oname, **r})
        rows.append(
            {
                "model": mname,
                "params": numel,
                "optimizer": "fused Triton step alone",
                "ms": time_fused(numel, device, repeats),
                "peak_gib": float("nan"),
                "held_mib": float("nan"),
            }
        )
    base = {r["model"]: r["ms"] for r in rows if r["optimizer"] == "adamw-fused"}
    print(
        f"{'model':9} {'optimizer':24} {'params':>11} {'ms':>9} {'×fused':>7} {'peak GiB':>9} "
        f"{'held MiB':>9}"
    )
    for r in rows:
        r["x_adamw_fused"] = r["ms"] / base[r["model"]]
        print(
            f"{r['model']:9} {r['optimizer']:24} {r['params']:11d} {r['ms']:9.3f} "
            f"{r['x_adamw_fused']:7.2f} {r['peak_gib']:9.2f} {r['held_mib']:9.1f}"
        )
    record["rows"] = rows
    steps = train_step_table(repeats, device)
    print("whole training step, MLP 512-1024-512-10, batch 128 (issue: VOGN <= 1.6x AdamW):")
    for r in steps:
        print(f"  {r['optimizer']:20} {r['step_ms']:9.3f} ms {r['x_adamw_foreach']:6.2f}x foreach")
    record["train_step"] = steps
    if device.type == "cuda":  # the paper's table with its batched kernels on the GPU
        from blr.apps.table import format_table
        from derivations import table

        results = table.run_table(device="cuda", symbolic=False)
        print(format_table(results))
        record["table_cuda"] = {r.info.key: r.passed for r in results}
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
