"""Training throughput: our TransformerLM vs Hugging Face LlamaForCausalLM, same shape, eager and compiled.

Both models: same vocab, context, width, depth, heads, SwiGLU width, RMSNorm eps, RoPE theta, no
biases, untied head, same batches, same dtype. Ours trains with our cross_entropy + our AdamW
(what lm.train runs, fused implementation); Llama with F.cross_entropy + torch.optim.AdamW
(fused). "compiled" = torch.compile of the model (ours with fullgraph=True; inductor). Steps
of all variants are interleaved, round after round in rotating order, so machine load hits them
alike; the median wall and process CPU time per step are reported (on a shared machine the
CPU-time figure is the one to trust). On a GPU the step is CUDA-synchronized and MFU is given
(FLOPs per token from lm.scaling.flops; peak from lm.train.metrics).

    python bench/train_step.py                                    # CPU: 5.3M params, batch 8 × 256, fp32, 2 threads
    python bench/train_step.py --variants ours-eager llama-eager  # a subset
    python bench/train_step.py --preset gpt2-small --device cuda --dtype bfloat16 --batch 16 --json out.json
    python bench/train_step.py --preset tiny --steps 2             # seconds: checks the script runs

Needs transformers (``pip install -e '.[hf]'``).
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lm.model import ModelConfig, TransformerLM
from lm.train import AdamW, cross_entropy
from lm.train.metrics import compute_dtype_name, model_flops_per_token, peak_flops

PRESETS = {  # vocab, context, d_model, layers, heads, d_ff
    "cpu-5m": dict(vocab=4096, ctx=256, d_model=256, layers=4, heads=8, d_ff=704),  # 5.3M parameters
    "gpt2-small": dict(vocab=50304, ctx=1024, d_model=768, layers=12, heads=12, d_ff=2048),  # 124M incl. embeddings
    "tiny": dict(vocab=512, ctx=64, d_model=64, layers=2, heads=4, d_ff=192),
}
VARIANTS = ("ours-eager", "llama-eager", "ours-compiled", "llama-compiled")


def build(shape: dict, device: torch.device):
    """(our model, an HF Llama of the same shape), on ``device``, float32 weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = ModelConfig(
        vocab_size=shape["vocab"],
        context_length=shape["ctx"],
        d_model=shape["d_model"],
        num_layers=shape["layers"],
        num_heads=shape["heads"],
        d_ff=shape["d_ff"],
        attention="sdpa",
        norm="torch",
    )
    ours = TransformerLM(cfg).to(device)
    hf_cfg = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["d_model"],
        intermediate_size=shape["d_ff"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        max_position_embeddings=shape["ctx"],
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        use_cache=False,
    )
    hf_cfg._attn_implementation = "sdpa"
    theirs = LlamaForCausalLM(hf_cfg).to(device)
    n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
    assert n_ours == n_theirs, f"parameter counts differ: ours {n_ours:,} vs llama {n_theirs:,}"
    return ours, theirs


def make_step(name: str, shape: dict, device: torch.device, amp: torch.dtype | None):
    """A closure running one training step of variant ``name`` on a batch (B, T+1)."""
    torch.manual_seed(0)
    ours, theirs = build(shape, device)
    compiled = name.endswith("compiled")
    fused = device.type in ("cpu", "cuda")
    if name.startswith("ours"):
        model = ours
        run = torch.compile(model, fullgraph=True) if compiled else model
        opt = AdamW(model.parameters(), lr=1e-4, impl="fused" if fused else "foreach")

        def loss_of(b):
            return cross_entropy(run(b[:, :-1]), b[:, 1:])
    else:
        model = theirs
        run = torch.compile(model) if compiled else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)

        def loss_of(b):
            logits = run(input_ids=b[:, :-1]).logits
            return F.cross_entropy(logits.float().reshape(-1, shape["vocab"]), b[:, 1:].reshape(-1))

    def step(b):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = loss_of(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step, model


def measure(args, shape: dict, device: torch.device) -> dict:
    amp = torch.bfloat16 if args.dtype == "bfloat16" else None
    g = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, shape["vocab"], (args.batch, shape["ctx"] + 1), generator=g).to(device) for _ in range(4)
    ]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps = {}
    for name in args.variants:
        t0 = time.perf_counter()
        steps[name], _ = make_step(name, shape, device, amp)
        for b in batches[:2]:  # warmup (and compilation)
            steps[name](b)
        sync()
        print(f"  {name}: built and warmed up in {time.perf_counter() - t0:.1f} s", flush=True)
    wall = {k: [] for k in steps}
    cpu = {k: [] for k in steps}
    names = list(steps)
    for i in range(args.steps):
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate who goes first
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            steps[name](batches[i % len(batches)])
            sync()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    tokens = args.batch * shape["ctx"]
    cfg = ModelConfig(
        vocab_size=shape["vocab"],
        context_length=shape["ctx"],
        d_model=shape["d_model"],
        num_layers=shape["layers"],
        num_heads=shape["heads"],
        d_ff=shape["d_ff"],
    )
    fpt = model_flops_per_token(cfg)
    peak = peak_flops(device, compute_dtype_name(amp, allow_tf32=True))
    rows = {}
    for name in names:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        rows[name] = {
            "step_ms": round(w * 1000, 2),
            "cpu_ms": round(c * 1000, 2),
            "tokens_per_s": round(tokens / w, 1),
            "tokens_per_cpu_s": round(tokens / c, 1),
            "mfu": round(fpt * tokens / w / peak, 4) if peak else None,
        }
    return rows


def ratios(rows: dict) -> dict:
    out = {}
    for mode in ("eager", "compiled"):
        a, b = rows.get(f"ours-{mode}"), rows.get(f"llama-{mode}")
        if a and b:
            out[mode] = {
                "tokens_per_s": round(a["tokens_per_s"] / b["tokens_per_s"], 3),
                "tokens_per_cpu_s": round(a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"], 3),
            }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu-5m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=12, help="measured steps per variant")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    shape = PRESETS[args.preset]
    load = os.getloadavg()
    print(
        f"{args.preset}: {shape}, batch {args.batch}, {args.dtype}, "
        f"{device}, {args.threads} threads, torch {torch.__version__}, "
        f"load average {load[0]:.1f}",
        flush=True,
    )
    rows = measure(args, shape, device)
    result = {
        "preset": args.preset,
        "shape": shape,
        "batch": args.batch,
        "dtype": args.dtype,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": args.threads,
        "torch": torch.__version__,
        "load_before": round(load[0], 2),
        "load_after": round(os.getloadavg()[0], 2),
        "variants": rows,
        "ours_over_llama": ratios(rows),
    }
    print("| variant | step ms (wall) | step ms (CPU) | tokens/s | tokens/CPU-s | MFU |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(
            f"| {name} | {r['step_ms']:.1f} | {r['cpu_ms']:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {r['tokens_per_cpu_s']:,.0f} | {mfu} |"
        )
    for mode, r in result["ours_over_llama"].items():
        print(f"ours / llama, {mode}: tokens/s {r['tokens_per_s']:.2f}×, tokens/CPU-s {r['tokens_per_cpu_s']:.2f}×")
    print(f"load average after: {result['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
