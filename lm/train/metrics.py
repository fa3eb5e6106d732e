"""What a training run logs: ``metrics.jsonl`` (one JSON object per line), throughput and MFU.

Lines (rank 0 writes them; ``kind`` says which):

    {"kind": "train", "step": 12, "total_steps": 200, "loss": 2.93, "lr": 0.003, "grad_norm": 0.71,
     "tokens": 24576, "tokens_per_s": 15873.2, "step_time_s": 0.129, "mfu": null, "time": 1.93}
    {"kind": "eval", "step": 50, "val_loss": 2.41}
    {"kind": "diverged", "step": 8, "loss": "nan", "grad_norm": "nan"}      # the run stopped here

Every train line carries the throughput of its step: ``tokens_per_s`` (all ranks together),
``step_time_s`` (wall time of the optimizer step incl. its micro-batches, CUDA synchronized),
and ``mfu``, the model FLOPs utilization: training FLOPs per token from ``lm.scaling.flops``
(6·N + 6·d·V + 12·L·T·d) × tokens/s ÷ (peak FLOP/s of the device × ranks). The peak comes from
``TrainConfig.peak_flops`` or the table below for the detected GPU and the compute dtype
(bf16 under autocast; TF32 or FP32 for float32 matmuls). On a CPU, or a GPU not in the table,
``mfu`` is null. ``time`` is seconds since this process started training; ``tokens`` counts
training tokens since step 0. Readers should skip kinds they do not know.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lm.model.transformer import ModelConfig
from lm.scaling.flops import ModelShape, flops_per_token

# Dense (no sparsity) peak FLOP/s per GPU by compute dtype, from NVIDIA's data sheets. First
# matching name fragment wins, so the more specific names come first.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bf16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "H100 NVL": {"bf16": 835e12, "tf32": 418e12, "fp32": 60e12},
    "H100": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},  # SXM
    "H200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "L4": {"bf16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "A10": {"bf16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
}


def model_flops_per_token(model: ModelConfig) -> int:
    """Training FLOPs per token of this shape (lm.scaling.flops: matmuls, lm_head and attention)."""
    shape = ModelShape(d_model=model.d_model, num_layers=model.num_layers, num_heads=model.num_heads, d_ff=model.d_ff)
    return flops_per_token(shape, model.context_length, model.vocab_size)


def compute_dtype_name(amp_dtype: torch.dtype | None, allow_tf32: bool) -> str:
    """The PEAK_FLOPS column that bounds this run's matmuls."""
    if amp_dtype == torch.bfloat16:
        return "bf16"
    return "tf32" if allow_tf32 else "fp32"


def peak_flops(device: torch.device, dtype: str, override: float | None = None) -> float | None:
    """Peak FLOP/s of one device for ``dtype`` (a PEAK_FLOPS column); None when unknown (CPU)."""
    if override:
        return override
    if device.type != "cuda":
        return None
    return peak_for_device_name(torch.cuda.get_device_name(device), dtype)


def peak_for_device_name(name: str, dtype: str) -> float | None:
    """PEAK_FLOPS entry for a device name as torch.cuda.get_device_name gives it ("NVIDIA H100 80GB HBM3")."""
    for fragment, by_dtype in PEAK_FLOPS.items():
        if fragment in name:
            return by_dtype[dtype]
    return None


def throughput(tokens: int, seconds: float, flops_per_token: float, peak: float | None, world_size: int) -> dict:
    """The throughput fields of a train line for ``tokens`` processed (all ranks) in ``seconds``."""
    seconds = max(seconds, 1e-9)
    tps = tokens / seconds
    mfu = flops_per_token * tps / (peak * world_size) if peak else None
    return {
        "tokens_per_s": round(tps, 1),
        "step_time_s": round(seconds, 4),
        "mfu": None if mfu is None else round(mfu, 4),
    }


class MetricsLog:
    """metrics.jsonl (append; on resume, lines past the resumed step are dropped) + optional TensorBoard."""

    def __init__(self, out_dir: Path, resume_step: int, enabled: bool):
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and _step_of(ln) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency
        except ImportError:  # tensorboard not installed: JSONL only
            return
        self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step + 1)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "kind", "total_steps") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{row.get('kind', 'train')}/{k}", v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The lines of a metrics.jsonl (a torn last line of a killed run is skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def last_logged_losses(path: Path) -> tuple[float | None, float | None]:
    """(last train loss, last val loss) in a metrics.jsonl."""
    train_loss = val_loss = None
    for row in read_metrics(path):
        if row.get("kind") == "train":
            train_loss = row["loss"]
        elif row.get("kind") == "eval":
            val_loss = row["val_loss"]
    return train_loss, val_loss


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError):
        return 1 << 62  # a torn last line from a killed run: drop it
