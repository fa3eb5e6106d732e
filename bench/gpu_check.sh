#!/usr/bin/env bash
# One GPU check of the training stack, ≤ 8 minutes on one GPU; run it as is from the repo root:
#
#     bench/gpu_check.sh                      # on a CUDA machine: writes outputs/gpu-check/gpu_check.{json,md}
#     bench/gpu_check.sh --out DIR            # elsewhere
#     bench/gpu_check.sh --cpu-smoke          # no GPU: every part with tiny shapes on CPU (minutes), to check the script
#
# Parts (each under its own time limit; a part that fails or times out is recorded, the rest still run):
#   1. tests      the `gpu`-marked tests (Triton FlashAttention-2 and RMSNorm in bf16 on the GPU)
#   2. kernels    our Triton FlashAttention-2 fwd+bwd vs torch SDPA (flash backend), causal bf16, 4k and 16k
#                 tokens; our RMSNorm kernel vs torch (bench/gpu_kernels.py)
#   3. models     GPT-2-small shape (124M with embeddings): our TransformerLM vs HF LlamaForCausalLM of the
#                 same shape, one training step, eager and compiled, bf16 autocast; and both eager in fp32/TF32
#                 (bench/train_step.py): tokens/s, MFU
#   4. strategies `python -m lm.train` under torchrun on every GPU present (world size = GPUs) with our DDP
#                 and FSDP strategies, compiled, bf16: tokens/s and MFU from metrics.jsonl
# Then one JSON and one markdown table of everything (and each part's log) in the output folder.
#
# Needs the project's Python dependencies (make setup, or pip install -e '.[hf]'; on a machine that has
# torch but cannot fetch, carry wheels of pydantic, pydantic-core, annotated-types, typing-inspection and
# set PYTHONPATH). PYTHON=... picks the interpreter (default: .venv/bin/python if present, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
OUT=outputs/gpu-check
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) MODE=cpu-smoke ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (use --cpu-smoke, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DO_NOT_TRACK=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STATUS="$OUT/parts.jsonl"
: >"$STATUS"

if ! "$PYTHON" -c "import torch, pydantic, yaml, safetensors, numpy, triton" 2>"$OUT/imports.log"; then
  echo "missing Python packages for $PYTHON:"; cat "$OUT/imports.log"; exit 2
fi
NGPU=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [ "$MODE" = gpu ] && [ "$NGPU" -lt 1 ]; then
  echo "no CUDA GPU visible to $PYTHON; run with --cpu-smoke to check the script on CPU" >&2; exit 2
fi
if [ "$MODE" = cpu-smoke ]; then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
  NPROC=2    # two gloo processes stand in for the GPUs
else
  NPROC=$NGPU
  export TRITON_INTERPRET=0   # tests/conftest.py defaults it to 1 (the CPU interpreter)
fi
echo "gpu_check: mode $MODE, $NGPU GPU(s), python $PYTHON, output $OUT"

# part NAME LIMIT_S COMMAND...: run, log to $OUT/NAME.log, record status and seconds
part() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local status=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status=timeout
  [ $rc -ne 0 ] && [ "$status" = ok ] && status="failed (exit $rc)"
  echo "{\"part\": \"$name\", \"status\": \"$status\", \"seconds\": $((SECONDS - t0))}" >>"$STATUS"
  echo "   $status after $((SECONDS - t0)) s; last lines:"; tail -n 4 "$OUT/$name.log" | sed 's/^/   | /'
}

# 1. gpu-marked tests (on CPU they are collected and skip: the check is that they import)
part tests 120 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/lm/model

# 2. kernels
if [ "$MODE" = gpu ]; then
  part kernels 120 "$PYTHON" bench/gpu_kernels.py --seqs 4096 16384 --json "$OUT/kernels.json"
else
  part kernels 300 "$PYTHON" bench/gpu_kernels.py --smoke --json "$OUT/kernels.json"
fi

# 3. ours vs HF Llama, one training step
if [ "$MODE" = gpu ]; then
  part models_bf16 180 "$PYTHON" bench/train_step.py --preset gpt2-small --device cuda --dtype bfloat16 --batch 16 \
    --steps 10 --json "$OUT/models_bf16.json"
  part models_fp32 60 "$PYTHON" bench/train_step.py --preset gpt2-small --device cuda --dtype float32 --batch 8 \
    --steps 6 --variants ours-eager llama-eager --json "$OUT/models_fp32.json"
else
  part models_bf16 300 "$PYTHON" bench/train_step.py --preset tiny --dtype bfloat16 --steps 2 \
    --variants ours-eager llama-eager --json "$OUT/models_bf16.json"
  part models_fp32 300 "$PYTHON" bench/train_step.py --preset tiny --dtype float32 --steps 2 \
    --variants ours-eager llama-eager --json "$OUT/models_fp32.json"
fi

# 4. our strategies through the real trainer, world size = GPUs present
TOK="$OUT/tokens"
if [ "$MODE" = gpu ]; then
  MODEL="{vocab_size: 50304, context_length: 1024, d_model: 768, num_layers: 12, num_heads: 12, d_ff: 2048, tie_embeddings: true}"
  TRAIN="batch_size=$((16 * NPROC)) max_steps=25 dtype=bfloat16 compile=true device=auto"
  VOCAB=50304; NTOK=20000000
else
  MODEL="{vocab_size: 512, context_length: 64, d_model: 64, num_layers: 2, num_heads: 4, d_ff: 192, tie_embeddings: true}"
  TRAIN="batch_size=4 max_steps=4 dtype=float32 compile=true compile_backend=aot_eager device=cpu"
  VOCAB=512; NTOK=200000
fi
"$PYTHON" - "$TOK" "$VOCAB" "$NTOK" <<'EOF' >"$OUT/tokens.log" 2>&1
import sys
import numpy as np
from lm.train.data import write_token_shards
out, vocab, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)  # throughput only: random ids are as costly to train on as text
write_token_shards(out, {"train": [rng.integers(0, vocab, n)], "val": [rng.integers(0, vocab, n // 100)]}, vocab_size=vocab)
EOF
for strategy in ddp fsdp; do
  sets=(--set "model=$MODEL" --set "data=$TOK" --set "out_dir=$OUT/run-$strategy" --set strategy=$strategy \
        --set eval_interval=1000 --set checkpoint_interval=1000 --set log_interval=5 --set resume=false)
  for kv in $TRAIN; do sets+=(--set "$kv"); done
  rm -rf "$OUT/run-$strategy"
  part "strategy_$strategy" 150 "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" --local-ranks-filter=0 \
    -m lm.train "${sets[@]}"
done

# one JSON + one markdown table
"$PYTHON" - "$OUT" "$MODE" "$NPROC" <<'EOF'
import json, statistics, sys
from pathlib import Path
out, mode, nproc = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
load = lambda p: json.loads(p.read_text()) if p.exists() else None
report = {"mode": mode, "world_size": nproc, "parts": [json.loads(l) for l in (out / "parts.jsonl").read_text().splitlines()],
          "kernels": load(out / "kernels.json"), "models_bf16": load(out / "models_bf16.json"),
          "models_fp32": load(out / "models_fp32.json"), "strategies": {}}
for s in ("ddp", "fsdp"):
    m = out / f"run-{s}" / "metrics.jsonl"
    rows = [json.loads(l) for l in m.read_text().splitlines() if '"train"' in l] if m.exists() else []
    steady = rows[len(rows) // 3:] or rows  # the first steps compile and warm up
    if steady:
        mfu = [r["mfu"] for r in steady if r.get("mfu") is not None]
        report["strategies"][s] = {"steps": len(rows), "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
                                   "mfu": statistics.median(mfu) if mfu else None}
(out / "gpu_check.json").write_text(json.dumps(report, indent=1))
pct = lambda x: "-" if x is None else f"{x:.1%}"
md = [f"# GPU check ({mode}, world size {nproc})", "", "| part | status | seconds |", "|---|---|---|"]
md += [f"| {p['part']} | {p['status']} | {p['seconds']} |" for p in report["parts"]]
if report["kernels"]:
    md += ["", f"## Kernels ({report['kernels']['device']})", "",
           "| attention seq | batch | ours ms | torch flash ms | ours / torch | ours TFLOP/s | max abs diff |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['seq']} | {r['batch']} | {r['ours-triton_ms']} | {r['torch-sdpa-flash_ms']} | {r['ours_over_torch']}× | "
           f"{r['ours-triton_tflops']} | {r['max_abs_diff']:.2g} |" for r in report["kernels"].get("attention", [])]
    md += ["", "| RMSNorm d | ours triton ms | ours torch ms | F.rms_norm ms | F / ours |", "|---|---|---|---|---|"]
    md += [f"| {r['d']} | {r['ours-triton_ms']} | {r['ours-torch_ms']} | {r['F.rms_norm_ms']} | {r['F_over_ours']}× |"
           for r in report["kernels"].get("rmsnorm", [])]
md += ["", "## Training step, ours vs HF Llama (same shape)", "", "| dtype | variant | tokens/s | MFU |", "|---|---|---|---|"]
for key in ("models_bf16", "models_fp32"):
    for name, r in ((report[key] or {}).get("variants") or {}).items():
        md.append(f"| {report[key]['dtype']} | {name} | {r['tokens_per_s']:,.0f} | {pct(r['mfu'])} |")
md += ["", f"## Our strategies through lm.train (torchrun, {nproc} processes, compiled)", "",
       "| strategy | steps | tokens/s (median) | MFU |", "|---|---|---|---|"]
md += [f"| {s} | {r['steps']} | {r['tokens_per_s']:,.0f} | {pct(r['mfu'])} |" for s, r in report["strategies"].items()]
(out / "gpu_check.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF
echo "gpu_check: wrote $OUT/gpu_check.json and $OUT/gpu_check.md"
grep -qv '"status": "ok"' "$STATUS" && exit 1
exit 0
