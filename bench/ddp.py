"""Data-parallel step time: naive all-reduce after backward vs per-parameter overlap vs buckets,
and memory per rank with and without ZeRO-1.

    nice python bench/ddp.py                       # CPU: 2 gloo processes, a small TransformerLM
    python bench/ddp.py --world-size 8 --d-model 1024 --num-layers 24 --vocab-size 50257 \\
        --batch-size 4 --context-length 512        # one node, 8 GPUs: nccl, bf16 autocast

Each rank trains the same TransformerLM on its own batch; per variant it runs `--warmup`
steps, then times `--steps` steps, in `--rounds` interleaved rounds. "exposed comm" is the time spent waiting in
`finish_gradient_synchronization()` after backward, i.e. the communication that did not
overlap with computation (naive: all of it). "compute" is the same step with no gradient
sync at all, so step − compute is what data parallelism costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lm.model import ModelConfig, TransformerLM
from lm.train import AdamW, cross_entropy
from lm.train.distributed import (
    DDPBucketed,
    DDPIndividualParameters,
    DDPNaive,
    ShardedOptimizer,
    optimizer_state_bytes,
    run_local,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _NoSync(DDPNaive):
    """Compute only: the step without any gradient communication (the lower bound)."""

    def finish_gradient_synchronization(self) -> None:
        pass


def _variants(bucket_sizes: list[float]):
    yield "compute only (no sync)", _NoSync
    yield "naive (all-reduce after backward)", DDPNaive
    yield "overlap, per parameter", DDPIndividualParameters
    for mb in bucket_sizes:
        yield f"overlap, buckets of {mb:g} MB", lambda m, mb=mb: DDPBucketed(m, bucket_size_mb=mb)


def _worker(env, args, results_path):
    torch.set_num_threads(max(1, args.threads))
    dev = env.device
    cfg = ModelConfig(
        vocab_size=args.vocab_size,
        context_length=args.context_length,
        d_model=args.d_model,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        d_ff=args.d_ff or 4 * args.d_model,
        attention="sdpa",
        norm="torch",
    )
    amp = torch.bfloat16 if dev.type == "cuda" else None
    g = torch.Generator().manual_seed(1000 + env.rank)
    ids = torch.randint(0, cfg.vocab_size, (args.batch_size, cfg.context_length + 1), generator=g).to(dev)
    x, y = ids[:, :-1], ids[:, 1:]
    # All variants are built up front and measured in interleaved rounds, so that a burst of
    # load from other processes on a shared machine does not land on one variant only.
    variants = []
    for name, wrap in _variants(args.bucket_sizes):
        torch.manual_seed(0)
        model = wrap(TransformerLM(cfg).to(dev))
        variants.append((name, model, AdamW(model.parameters(), lr=1e-4), [], []))
    for _ in range(args.rounds):
        for _name, model, opt, steps, waits in variants:
            for i in range(args.warmup + args.steps):
                _sync(dev)
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                    loss = cross_entropy(model(x), y)
                loss.backward()
                _sync(dev)
                t1 = time.perf_counter()
                model.finish_gradient_synchronization()
                _sync(dev)
                t2 = time.perf_counter()
                opt.step()
                _sync(dev)
                t3 = time.perf_counter()
                if i >= args.warmup:
                    steps.append(t3 - t0)
                    waits.append(t2 - t1)
    rows = [
        (
            name,
            statistics.median(steps),
            statistics.median(waits),
            len(model.buckets) if isinstance(model, DDPBucketed) else None,
        )
        for name, model, _, steps, waits in variants
    ]
    del variants

    # Memory per rank: parameters, gradients, AdamW state, with and without ZeRO-1.
    torch.manual_seed(0)
    model = DDPBucketed(TransformerLM(cfg).to(dev), bucket_size_mb=25)
    mem = {}
    for label, make in (
        ("AdamW", lambda p: AdamW(p, lr=1e-4)),
        ("ZeRO-1 AdamW", lambda p: ShardedOptimizer(p, AdamW, lr=1e-4)),
    ):
        opt = make(model.parameters())
        opt.zero_grad(set_to_none=True)
        cross_entropy(model(x), y).backward()
        model.finish_gradient_synchronization()
        opt.step()
        state = opt.local_state_bytes() if isinstance(opt, ShardedOptimizer) else optimizer_state_bytes(opt)
        params = sum(p.numel() * p.element_size() for p in model.params)
        mem[label] = (params, params, state)  # gradients are as large as parameters
    if env.rank == 0:
        n_params = sum(p.numel() for p in model.params)
        lines = [
            (
                f"world size {env.world_size}, backend {torch.distributed.get_backend()}, device {dev}, "
                f"{n_params / 1e6:.2f} M parameters ({n_params * 4 / 2**20:.1f} MB of fp32 gradients), "
                f"batch {args.batch_size}×{cfg.context_length} per rank, "
                f"median of {args.rounds}×{args.steps} steps"
            ),
            "",
            "| variant | buckets | step (ms) | exposed comm (ms) | comm share | vs naive |",
            "|---|---|---|---|---|---|",
        ]
        naive = next(r[1] for r in rows if r[0].startswith("naive"))
        for name, step, wait, nb in rows:
            lines.append(
                f"| {name} | {nb if nb is not None else '-'} | {step * 1e3:.1f} | {wait * 1e3:.1f} | "
                f"{wait / step:.0%} | {naive / step:.2f}× |"
            )
        lines += [
            "",
            "| optimizer | params (MB) | grads (MB) | optimizer state (MB) | total per rank (MB) |",
            "|---|---|---|---|---|",
        ]
        for label, (p, g_, s) in mem.items():
            lines.append(
                f"| {label} | {p / 2**20:.1f} | {g_ / 2**20:.1f} | {s / 2**20:.1f} | {(p + g_ + s) / 2**20:.1f} |"
            )
        Path(results_path).write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--context-length", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--num-layers", type=int, default=4)
    ap.add_argument("--num-heads", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=4, help="sequences per rank")
    ap.add_argument("--bucket-sizes", type=float, nargs="+", default=[1, 10, 100])
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per variant per round")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank (CPU)")
    ap.add_argument("--out", default=None, help="also write the tables to this file")
    args = ap.parse_args()
    if torch.cuda.is_available() and args.world_size > torch.cuda.device_count():
        raise SystemExit(f"--world-size {args.world_size} > {torch.cuda.device_count()} visible GPUs")
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".md") as tmp:
        run_local(_worker, args.world_size, args, tmp.name)
        text = Path(tmp.name).read_text()
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
