"""Training throughput on CPU: our TransformerLM vs Hugging Face LlamaForCausalLM, same shape, one run.

Both models: same vocab, context, width, depth, heads, SwiGLU width, RMSNorm eps, RoPE theta, no
biases, untied head, float32, same batches. Ours trains with our cross_entropy + AdamW (what
lm.train runs); Llama with torch's F.cross_entropy + torch.optim.AdamW (foreach). Steps are
interleaved so machine load hits both alike; the median wall and CPU time per step are
reported (on a shared machine the CPU-time ratio is the one to trust).

    /work/bench-venv-model/bin/python bench/train_step.py            # needs torch==2.13.0 + transformers
    /work/bench-venv-model/bin/python bench/train_step.py --d-model 512 --layers 4 --steps 10
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
from lm.train import AdamW, cross_entropy  # noqa: E402


def build(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = ModelConfig(vocab_size=args.vocab, context_length=args.ctx, d_model=args.d_model, num_layers=args.layers,
                      num_heads=args.heads, d_ff=args.d_ff, attention="auto")
    torch.manual_seed(0)
    ours = TransformerLM(cfg)
    hf_cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=args.d_ff,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
                         max_position_embeddings=args.ctx, rms_norm_eps=1e-5, rope_theta=10000.0,
                         tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    hf_cfg._attn_implementation = "sdpa"
    theirs = LlamaForCausalLM(hf_cfg)
    return ours, theirs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--d-ff", type=int, default=704)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=12, help="measured steps per model")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ours, theirs = build(args)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    assert n_ours == n_theirs, f"parameter counts differ: ours {n_ours} vs llama {n_theirs}"
    opt_ours = AdamW(ours.parameters(), lr=1e-4)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, args.vocab, (args.batch, args.ctx + 1), generator=g) for _ in range(4)]

    def step_ours(b):
        loss = cross_entropy(ours(b[:, :-1]), b[:, 1:])
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def step_theirs(b):
        logits = theirs(input_ids=b[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), b[:, 1:].reshape(-1))
        opt_theirs.zero_grad(set_to_none=True)
        loss.backward()
        opt_theirs.step()

    times = {"ours": [], "llama": []}
    cpu = {"ours": [], "llama": []}  # process CPU seconds: far less sensitive to other jobs on a shared box
    for fn in (step_ours, step_theirs):  # warmup
        for b in batches[:2]:
            fn(b)
    for i in range(args.steps):
        for name, fn in (("ours", step_ours), ("llama", step_theirs)) if i % 2 == 0 else (("llama", step_theirs), ("ours", step_ours)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn(batches[i % len(batches)])
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    tokens = args.batch * args.ctx
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"shape: vocab {args.vocab} ctx {args.ctx} d_model {args.d_model} layers {args.layers} heads {args.heads} "
          f"d_ff {args.d_ff} batch {args.batch} float32, {args.threads} threads, {n_ours:,} params each, torch {torch.__version__}")
    for k in ("ours", "llama"):
        print(f"{k:6s} median step {med[k] * 1000:8.1f} ms wall, {med_cpu[k] * 1000:8.1f} ms CPU  "
              f"{tokens / med[k]:10,.0f} tokens/s  {tokens / med_cpu[k]:10,.0f} tokens/CPU-s")
    print(f"ratio ours/llama: tokens/s {med['llama'] / med['ours']:.2f}x, tokens/CPU-s {med_cpu['llama'] / med_cpu['ours']:.2f}x")


if __name__ == "__main__":
    main()
