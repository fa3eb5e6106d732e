"""GPU kernel benchmarks: our FlashAttention-2 and RMSNorm (Triton) vs torch, and training MFU.

    python bench/kernels.py                       # on a CUDA machine: all three parts
    python bench/kernels.py --part attention --seqs 1024 4096 16384
    TRITON_INTERPRET=1 python bench/kernels.py --smoke   # CPU: tiny shapes, checks the script runs

1. FlashAttention-2 forward+backward, bf16, causal, head size 64, B·T = 16k tokens, 16 heads:
   ours (Triton) vs ``F.scaled_dot_product_attention`` restricted to torch's flash backend.
2. RMSNorm forward+backward on (16k, d) bf16: our fused Triton kernel vs our torch RMSNorm and
   ``F.rms_norm``.
3. One GPT-2-small training step (configs/pretrain-gpt2-small.yaml's model, bf16 autocast,
   AdamW): tokens/s and MFU = 6·N + attention FLOPs per token × tokens/s / peak (989 TFLOP/s
   dense bf16 on H100/H200), with attention sdpa and triton, compiled and not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lm.model import ModelConfig, TransformerLM  # noqa: E402
from lm.model.transformer import RMSNorm  # noqa: E402
from lm.train import AdamW, cross_entropy  # noqa: E402
from lm.train.trainer import PEAK_FLOPS  # noqa: E402


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


def attention_part(seqs, device, dtype, smoke: bool) -> None:
    from lm.model.kernels.flash_torch import flash_attention_torch

    impls = {"torch-sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)}
    if device.type == "cuda" or smoke:
        from lm.model.kernels.flash_triton import flash_attention_triton

        impls["ours-triton"] = lambda q, k, v: flash_attention_triton(q, k, v, True)
    impls["ours-torch-tiles"] = lambda q, k, v: flash_attention_torch(q, k, v, True)
    heads, d = (2, 16) if smoke else (16, 64)
    total_tokens = 64 if smoke else 16384
    print(f"\n## FlashAttention-2 fwd+bwd, causal, {dtype}, {heads} heads × d {d}, batch·seq = {total_tokens}")
    print("| seq | " + " | ".join(impls) + " | ours-triton / torch time |")
    print("|---|" + "---|" * (len(impls) + 1))
    for T in seqs:
        B = max(1, total_tokens // T)
        q, k, v = (torch.randn(B, heads, T, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        do = torch.randn_like(q)
        row = {}
        for name, fn in impls.items():
            if name == "ours-torch-tiles" and T > 4096:
                row[name] = float("nan")  # Python-level tile loops: too slow to matter at long lengths
                continue

            def step():
                q.grad = k.grad = v.grad = None
                fn(q, k, v).backward(do)

            if device.type == "cuda" and name == "torch-sdpa":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    row[name] = bench_ms(step, reps=3 if smoke else 10)
            else:
                row[name] = bench_ms(step, warmup=1 if smoke else 3, reps=2 if smoke else 10)
        ratio = row.get("ours-triton", float("nan")) / row["torch-sdpa"]
        print(f"| {T} | " + " | ".join(f"{row[n]:.2f} ms" for n in impls) + f" | {ratio:.2f}× |")


def rmsnorm_part(device, dtype, smoke: bool) -> None:
    rows = 64 if smoke else 16384
    print(f"\n## RMSNorm fwd+bwd, {rows} rows, {dtype}")
    print("| d | ours-triton | ours-torch | F.rms_norm | speedup of ours-triton vs F.rms_norm |")
    print("|---|---|---|---|---|")
    for d in ([48] if smoke else [768, 2048, 4096]):
        x = torch.randn(rows, d, device=device, dtype=dtype, requires_grad=True)
        dy = torch.randn_like(x)
        res = {}
        for name, impl in (("triton", "triton"), ("torch", "torch")):
            norm = RMSNorm(d, impl=impl).to(device, dtype)

            def step():
                x.grad = None
                norm(x).backward(dy)

            res[name] = bench_ms(step)
        w = torch.ones(d, device=device, dtype=dtype, requires_grad=True)

        def step_f():
            x.grad = None
            F.rms_norm(x, (d,), w, 1e-5).backward(dy)

        res["F"] = bench_ms(step_f)
        print(f"| {d} | {res['triton']:.3f} ms | {res['torch']:.3f} ms | {res['F']:.3f} ms | {res['F'] / res['triton']:.2f}× |")


def mfu_part(device, smoke: bool, batch: int, steps: int) -> None:
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/pretrain-gpt2-small.yaml").read_text())["train"]["model"]
    if smoke:
        cfg.update(vocab_size=512, context_length=64, d_model=64, num_layers=2, num_heads=4, d_ff=128)
        batch, steps = 2, 2
    peak = next((f for frag, f in PEAK_FLOPS.items() if device.type == "cuda" and frag in torch.cuda.get_device_name()), None)
    print(f"\n## Training step, GPT-2-small shape ({cfg['num_layers']} layers, d_model {cfg['d_model']}, ctx {cfg['context_length']}), "
          f"batch {batch}, bf16 autocast, peak {peak or 'unknown'} FLOP/s")
    print("| attention | compile | step ms | tokens/s | MFU |")
    print("|---|---|---|---|---|")
    variants = [("sdpa", False), ("sdpa", True), ("triton", False), ("triton", True)]
    if smoke:
        variants = [("sdpa", False)]
    for attention, compiled in variants:
        torch.manual_seed(0)
        model = TransformerLM(ModelConfig(**{**cfg, "attention": attention})).to(device)
        opt = AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
        run = torch.compile(model) if compiled else model
        ids = torch.randint(0, cfg["vocab_size"], (batch, cfg["context_length"] + 1), device=device)
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

        def step():
            with amp:
                loss = cross_entropy(run(ids[:, :-1]), ids[:, 1:])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        ms = bench_ms(step, warmup=1 if smoke else 5, reps=steps)
        tps = batch * cfg["context_length"] / (ms / 1000)
        mfu = model.flops_per_token() * tps / peak if peak else float("nan")
        print(f"| {attention} | {compiled} | {ms:.1f} | {tps:,.0f} | {mfu:.1%} |")
        del model, opt, run


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=["all", "attention", "rmsnorm", "mfu"], default="all")
    p.add_argument("--seqs", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--batch", type=int, default=16, help="sequences per training step in the MFU part")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (set TRITON_INTERPRET=1) to check the script")
    args = p.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("bench/kernels.py needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1 on CPU)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    seqs = [32, 64] if args.smoke else args.seqs
    if args.part in ("all", "attention"):
        attention_part(seqs, device, dtype, args.smoke)
    if args.part in ("all", "rmsnorm"):
        rmsnorm_part(device, dtype, args.smoke)
    if args.part in ("all", "mfu"):
        mfu_part(device, args.smoke, args.batch, args.steps)


if __name__ == "__main__":
    main()
