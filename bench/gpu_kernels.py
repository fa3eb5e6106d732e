"""Our Triton kernels against torch on a GPU: FlashAttention-2 vs SDPA's flash backend, RMSNorm vs torch.

    python bench/gpu_kernels.py                                   # CUDA: both parts, 4k and 16k tokens
    python bench/gpu_kernels.py --part attention --seqs 1024 4096 16384 --json attention.json
    TRITON_INTERPRET=1 python bench/gpu_kernels.py --smoke        # CPU: tiny shapes, checks the script runs

1. FlashAttention-2 forward+backward, bf16, causal, head size 64, 16 heads, batch·seq = 16k tokens:
   ours (``lm.model.kernels.flash_triton``) vs ``F.scaled_dot_product_attention`` restricted to
   torch's flash backend. Reported: median ms, TFLOP/s (causal: half the T² work), our time over
   torch's (target ≤ 1.5×), and the largest difference of our output and gradients from torch's.
2. RMSNorm forward+backward on (16k, d) bf16: our fused Triton kernel vs our torch RMSNorm and
   ``F.rms_norm``.
(bench/train_step.py and bench/gpu_check.sh measure whole training steps.)
(The file is not called kernels.py: transformers imports a package named ``kernels`` when one is
importable, and a script's folder comes first on sys.path.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lm.model.transformer import RMSNorm


def bench_ms(fn, warmup: int = 3, reps: int = 10) -> float:
    """Median wall time of fn() in ms (synchronizing CUDA around each call)."""
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _sdpa(device):
    """torch's attention, restricted to its flash kernel on CUDA (the fastest it has there)."""
    if device.type != "cuda":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return run


def attention_part(seqs, device, dtype, smoke: bool) -> list[dict]:
    from lm.model.kernels.flash_triton import flash_attention_triton

    impls = {"torch-sdpa-flash": _sdpa(device), "ours-triton": lambda q, k, v: flash_attention_triton(q, k, v, True)}
    heads, d = (2, 16) if smoke else (16, 64)
    total_tokens = 64 if smoke else 16384
    rows = []
    for T in seqs:
        B = max(1, total_tokens // T)
        q, k, v = (torch.randn(B, heads, T, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        do = torch.randn_like(q)
        outs, row = {}, {"seq": T, "batch": B, "heads": heads, "head_dim": d}
        for name, fn in impls.items():
            o = fn(q, k, v)
            outs[name] = (o.detach(), *torch.autograd.grad(o, (q, k, v), do))

            def step(fn=fn):
                q.grad = k.grad = v.grad = None
                fn(q, k, v).backward(do)

            row[f"{name}_ms"] = round(bench_ms(step, warmup=1 if smoke else 3, reps=2 if smoke else 10), 3)
            flops = 3.5 * 4 * B * heads * T * T * d / 2  # fwd 4·T²·d per head (QKᵀ, PV), causal half; bwd 2.5× fwd
            row[f"{name}_tflops"] = round(flops / (row[f"{name}_ms"] / 1000) / 1e12, 2)
        row["ours_over_torch"] = round(row["ours-triton_ms"] / row["torch-sdpa-flash_ms"], 3)
        row["max_abs_diff"] = max(
            float((a.float() - b.float()).abs().max()) for a, b in zip(outs["ours-triton"], outs["torch-sdpa-flash"])
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def rmsnorm_part(device, dtype, smoke: bool) -> list[dict]:
    rows_n = 64 if smoke else 16384
    rows = []
    for d in [48] if smoke else [768, 2048, 4096]:
        x = torch.randn(rows_n, d, device=device, dtype=dtype, requires_grad=True)
        dy = torch.randn_like(x)
        w = torch.ones(d, device=device, dtype=dtype, requires_grad=True)
        impls = {
            "ours-triton": RMSNorm(d, impl="triton").to(device, dtype),
            "ours-torch": RMSNorm(d, impl="torch").to(device, dtype),
            "F.rms_norm": lambda t: F.rms_norm(t, (d,), w, 1e-5),
        }
        row = {"rows": rows_n, "d": d}
        for name, norm in impls.items():

            def step(norm=norm):
                x.grad = None
                norm(x).backward(dy)

            row[f"{name}_ms"] = round(bench_ms(step), 4)
        row["F_over_ours"] = round(row["F.rms_norm_ms"] / row["ours-triton_ms"], 3)
        with torch.no_grad():
            row["max_abs_diff"] = float((impls["ours-triton"](x) - impls["ours-torch"](x)).float().abs().max())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "attention", "rmsnorm"], default="all")
    p.add_argument("--seqs", type=int, nargs="+", default=[4096, 16384])
    p.add_argument(
        "--smoke", action="store_true", help="tiny shapes on CPU (set TRITON_INTERPRET=1) to check the script"
    )
    p.add_argument("--json", help="write {'attention': [...], 'rmsnorm': [...]} here")
    args = p.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("bench/gpu_kernels.py needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1 on CPU)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)"}
    if args.part in ("all", "attention"):
        out["attention"] = attention_part([32, 48] if args.smoke else args.seqs, device, dtype, args.smoke)
    if args.part in ("all", "rmsnorm"):
        out["rmsnorm"] = rmsnorm_part(device, dtype, args.smoke)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
